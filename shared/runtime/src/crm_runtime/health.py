"""Liveness (the process answers) and readiness (what the HTTP API needs answers), with
optional informational details (e.g. reporting's merger) that never make a service unready.

Readiness has required checks (MongoDB: every route reads or writes it) and degrading ones
(Kafka: writes go to the outbox and reach Kafka once it is back, reads never need it). A
failing required check answers 503 and takes the pod out of its Service; a failing degrading
check answers 200 with status ``degraded``, so a Kafka blip does not empty every Service.
``crm_readiness_check_passing{check, required}`` exports each check's last result for alerts.

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
from prometheus_client import CollectorRegistry, Gauge

from .http import TokenAuth

log = logging.getLogger(__name__)

Check = Callable[[], Awaitable[None]]
FAILING = "failing"
OK, DEGRADED, UNAVAILABLE = "ok", "degraded", "unavailable"


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


def readiness_status(required_passing: bool, degrading_passing: bool) -> str:
    if not required_passing:
        return UNAVAILABLE
    return OK if degrading_passing else DEGRADED


def health_router(
    checks: dict[str, Check],
    timeout: float = 2.0,
    auth: TokenAuth | None = None,
    details: dict[str, Detail] | None = None,
    degrading: dict[str, Check] | None = None,
    registry: CollectorRegistry | None = None,
) -> APIRouter:
    """``checks`` decide readiness; ``degrading`` checks only degrade it (see the module)."""
    router = APIRouter(prefix="/health", tags=["operations"])
    transitions = _Transitions()
    every: dict[str, Check] = {**checks, **(degrading or {})}
    passing = (
        Gauge(
            "crm_readiness_check_passing",
            "1 when the check passed at the last readiness probe; required=false checks only "
            "degrade readiness",
            ["check", "required"],
            registry=registry,
        )
        if registry is not None
        else None
    )

    @router.get("/live", summary="The process is alive")
    async def live() -> dict[str, str]:
        return {"status": "ok"}

    @router.get(
        "/ready",
        summary="MongoDB answers (Kafka trouble: degraded)",
        description='`status` is "ok"; "degraded" (200) while a check the HTTP API can do '
        'without fails (Kafka: writes wait in the outbox); or "unavailable" (503) while a '
        'required one fails (MongoDB). Each check is "ok" or "failing"; why it fails is shown '
        "to an admin token only (and logged).",
        responses={
            200: {"description": "ready: `ok`, or `degraded` while Kafka does not answer"},
            503: {"description": "not ready: MongoDB does not answer"},
        },
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

        names = list(every)
        reasons = await asyncio.gather(*(run(every[name]) for name in names))
        failing: set[str] = set()
        for name, reason in zip(names, reasons, strict=True):
            transitions.observe(name, reason)
            if passing is not None:
                passing.labels(name, str(name in checks).lower()).set(int(reason is None))
            if reason is not None:
                failing.add(name)
        healthy = not failing & set(checks)
        report: dict[str, Any] = {
            "status": readiness_status(healthy, not failing),
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
