"""Liveness (the process answers) and readiness (Kafka and MongoDB answer), with optional
informational details (e.g. reporting's merger) that never make a service unready.

Why a check fails (exception texts name hosts, ports and connection strings) is for operators:
an admin token sees it in the answer, everyone else (probes, anonymous callers, read and write
tokens) sees each check's name and "ok" or "failing". With auth disabled nobody is admin, so
the reason is only in the log, written once when a check starts failing and once when it
recovers, not on every probe. Detail sections are for everyone: they hold states, times,
counts and error type names, never messages or addresses."""

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
    """What a non-admin caller sees of a readiness report: the status, each check's name with
    "ok" or "failing" (no reason), and the detail sections, which hold no secrets."""
    checks = {name: "ok" if result == "ok" else FAILING for name, result in report["checks"].items()}
    public: dict[str, Any] = {"status": report["status"], "checks": checks}
    if "details" in report:
        public["details"] = report["details"]
    return public


Detail = Callable[[], Awaitable[dict[str, Any]]]


def health_router(
    checks: dict[str, Check],
    timeout: float = 2.0,
    auth: TokenAuth | None = None,
    details: dict[str, Detail] | None = None,
) -> APIRouter:
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
        if details:
            report["details"] = await _details(details, timeout)
        admin = auth is not None and auth.scope_of(request) == "admin"
        return JSONResponse(report if admin else public_view(report), status_code=200 if healthy else 503)

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
