"""Composition root of the reporting service: the one place where its parts are wired."""

from __future__ import annotations

from crm_runtime import ServiceRuntime, ServiceSettings
from fastapi import FastAPI

from .api import reports_router
from .handlers import register_handlers
from .repository import ReportingRepository


class ReportingSettings(ServiceSettings):
    service_name: str = "reporting"


def create_app(settings: ReportingSettings | None = None) -> FastAPI:
    runtime = ServiceRuntime(settings or ReportingSettings())
    repo = ReportingRepository(runtime.db)
    runtime.on_startup(repo.ensure_indexes)
    register_handlers(runtime.consumer, repo)
    return runtime.create_app(
        title="CRM reporting",
        description=(
            "Read models for BI tools, built from the suite's events: the lead-to-won funnel and "
            "the open pipeline, as JSON or CSV, each stamped with the time of the newest event applied."
        ),
        routers=[reports_router(runtime, repo)],
        openapi_tags=[{"name": "reports", "description": "Views for BI tools (read scope)."}],
    )
