"""Liveness (the process answers) and readiness (Kafka and MongoDB answer).

Why a check fails (exception texts name hosts, ports and connection strings) is for operators:
an admin token sees it in the answer, everyone else (probes, anonymous callers, read and write
tokens) sees each check's name and "ok" or "failing". With auth disabled nobody is admin, so
the reason is only in the log, written once when a check starts failing and once when it
recovers, not on every probe."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse

from .http import TokenAuth

log = logging.getLogger(__name__)

Check = Callable[[], Awaitable[None]]
FAILING = "failing"


class _Transitions:
    """Logs a check when it changes between passing and failing (never per probe)."""

    def __init__(self) -> None:
        self._failing: dict[str, bool] = {}

    def observe(self, name: str, reason: str | None) -> None:
        failing = reason is not None
        if self._failing.get(name, False) == failing:
            return
        self._failing[name] = failing
        if failing:
            log.warning("readiness check failing", extra={"check": name, "reason": reason})
        else:
            log.info("readiness check passing again", extra={"check": name})


def public_view(report: dict[str, Any]) -> dict[str, Any]:
    """What a non-admin caller sees of a readiness report: the status and each check's name
    with "ok" or "failing"; everything else (reasons, detail sections) stays out."""
    checks = {name: "ok" if result == "ok" else FAILING for name, result in report["checks"].items()}
    return {"status": report["status"], "checks": checks}


def health_router(checks: dict[str, Check], timeout: float = 2.0, auth: TokenAuth | None = None) -> APIRouter:
    router = APIRouter(prefix="/health", tags=["operations"])
    transitions = _Transitions()

    @router.get("/live", summary="The process is alive")
    async def live() -> dict[str, str]:
        return {"status": "ok"}

    @router.get(
        "/ready",
        summary="Kafka and MongoDB answer",
        description='Each check is "ok" or "failing"; why it fails is shown to an admin token '
        "only (and logged).",
        responses={503: {"description": "not ready"}},
    )
    async def ready(request: Request) -> JSONResponse:
        async def run(check: Check) -> str | None:
            try:
                await asyncio.wait_for(check(), timeout)
            except TimeoutError:
                return f"no answer within {timeout:g} s"
            except Exception as exc:
                return f"{type(exc).__name__}: {exc}"[:300]
            return None

        names = list(checks)
        reasons = await asyncio.gather(*(run(checks[name]) for name in names))
        for name, reason in zip(names, reasons, strict=True):
            transitions.observe(name, reason)
        healthy = all(reason is None for reason in reasons)
        report: dict[str, Any] = {
            "status": "ok" if healthy else "unavailable",
            "checks": {
                name: "ok" if reason is None else f"{FAILING}: {reason}"
                for name, reason in zip(names, reasons, strict=True)
            },
        }
        admin = auth is not None and auth.scope_of(request) == "admin"
        return JSONResponse(report if admin else public_view(report), status_code=200 if healthy else 503)

    return router
