"""Liveness (the process answers) and readiness (Kafka and MongoDB answer), with optional
informational details (e.g. reporting's merger) that never make a service unready."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any

from fastapi import APIRouter
from fastapi.responses import JSONResponse

Check = Callable[[], Awaitable[None]]
Detail = Callable[[], Awaitable[dict[str, Any]]]


def health_router(
    checks: dict[str, Check], timeout: float = 2.0, details: dict[str, Detail] | None = None
) -> APIRouter:
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
        body: dict[str, Any] = {"status": "ok" if healthy else "unavailable", "checks": report}
        if details:
            body["details"] = await _details(details, timeout)
        return JSONResponse(body, status_code=200 if healthy else 503)

    return router


async def _details(details: dict[str, Detail], timeout: float) -> dict[str, Any]:
    """Each detail section (or that it could not be read), never part of readiness."""

    async def read(detail: Detail) -> dict[str, Any]:
        try:
            return await asyncio.wait_for(detail(), timeout)
        except Exception as exc:
            return {"status": "unknown", "error": type(exc).__name__}

    names = list(details)
    sections = await asyncio.gather(*(read(details[name]) for name in names))
    return dict(zip(names, sections, strict=True))
