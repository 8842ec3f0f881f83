"""``/health/ready`` details: informational sections (e.g. reporting's merger) shown beside the
checks, never a reason to be unready, and safe when one cannot be read."""

from __future__ import annotations

from typing import Any

import httpx
from crm_runtime.health import health_router
from fastapi import FastAPI


async def ready(checks: dict[str, Any], details: dict[str, Any] | None) -> httpx.Response:
    app = FastAPI()
    app.include_router(health_router(checks, details=details))
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://service") as http:
        return await http.get("/health/ready")


async def fine() -> None:
    return None


async def stalled() -> dict[str, Any]:
    return {"status": "failing", "failing_since": "2026-12-01T10:00:00+00:00"}


async def broken() -> dict[str, Any]:
    raise RuntimeError("secret connection string")


async def test_details_are_shown_without_making_the_service_unready() -> None:
    response = await ready({"mongodb": fine}, {"merger": stalled, "other": broken})
    assert response.status_code == 200
    assert response.json() == {
        "status": "ok",
        "checks": {"mongodb": "ok"},
        "details": {
            "merger": {"status": "failing", "failing_since": "2026-12-01T10:00:00+00:00"},
            "other": {"status": "unknown", "error": "RuntimeError"},
        },
    }


async def test_without_details_the_body_is_unchanged() -> None:
    response = await ready({"mongodb": fine}, None)
    assert response.json() == {"status": "ok", "checks": {"mongodb": "ok"}}
