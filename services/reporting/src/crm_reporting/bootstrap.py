"""Composition root of the reporting service: the one place where its parts are wired."""

from __future__ import annotations

from crm_runtime import ServiceRuntime, ServiceSettings
from fastapi import FastAPI
from pydantic import Field

from .api import reports_router
from .handlers import register_handlers
from .merger import Merger
from .repository import MERGE_MAX_KEYS, ReportingRepository


class ReportingSettings(ServiceSettings):
    service_name: str = "reporting"
    # Larger than the other services' batches: a batch's facts are loaded and written with a
    # constant number of queries, and its events' counter differences add up into one delta
    # (the same day's and month's counters of many events become one update), so the cost per
    # event falls with the batch (about 100 events/s at 100, see tests/load/README.md).
    consumer_batch_size: int = Field(
        default=500, ge=1, le=1000, description="Most events applied together in one transaction."
    )
    merge_max_keys: int = Field(
        default=MERGE_MAX_KEYS,
        ge=10,
        description="Counter documents one merge transaction may update (raise it on MongoDB).",
    )


def create_app(settings: ReportingSettings | None = None) -> FastAPI:
    settings = settings or ReportingSettings()
    runtime = ServiceRuntime(settings)
    repo = ReportingRepository(runtime.client, runtime.db)
    merger = Merger(repo, runtime.registry, max_keys=settings.merge_max_keys)

    async def start_merging() -> None:
        merger.start()

    runtime.on_startup(repo.setup)
    runtime.on_startup(start_merging)
    runtime.on_shutdown(merger.stop)
    register_handlers(runtime.consumer, repo)
    app = runtime.create_app(
        title="CRM reporting",
        description=(
            "Read models for BI tools, built from the suite's events: funnel, pipeline, forecast, "
            "win/loss, stage velocity and conversion, lead sources, campaign ROI and pipeline "
            "history, as JSON or CSV, each stamped with the time of the newest event applied and "
            "the events still to apply."
        ),
        routers=[reports_router(runtime, repo)],
        openapi_tags=[{"name": "reports", "description": "Views for BI tools (read scope)."}],
        health_details={"merger": merger.health},
    )
    app.state.repository = repo
    app.state.merger = merger
    return app
