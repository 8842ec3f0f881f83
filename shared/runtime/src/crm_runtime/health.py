"""Liveness (the process answers) and readiness (Kafka and MongoDB answer)."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

from fastapi import APIRouter
from fastapi.responses import JSONResponse

Check = Callable[[], Awaitable[None]]


def health_router(checks: dict[str, Check], timeout: float = 2.0) -> APIRouter:
    router = APIRouter(prefix="/health", tags=["operations"])

    @router.get("/live", summary="The process is alive")
    async def live() -> dict[str, str]:
        return {"status": "ok"}

    @router.get("/ready", summary="Kafka and MongoDB answer", responses={503: {"description": "not ready"}})
    async def ready() -> JSONResponse:
        async def run(check: Check) -> str:
            try:
                await asyncio.wait_for(check(), timeout)
            except Exception as exc:
                return f"failing: {type(exc).__name__}: {exc}"[:300]
            return "ok"

        names = list(checks)
        results = await asyncio.gather(*(run(checks[name]) for name in names))
        report = dict(zip(names, results, strict=True))
        healthy = all(result == "ok" for result in results)
        return JSONResponse(
            {"status": "ok" if healthy else "unavailable", "checks": report},
            status_code=200 if healthy else 503,
        )

    return router
