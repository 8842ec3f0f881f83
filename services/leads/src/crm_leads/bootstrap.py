"""Composition root of the leads service: the one place where its parts are wired."""

from __future__ import annotations

from crm_runtime import ServiceRuntime, ServiceSettings
from fastapi import FastAPI

from .api import leads_router
from .handlers import register_handlers
from .repository import LeadRepository
from .use_cases import BackgroundRescoring


class LeadsSettings(ServiceSettings):
    service_name: str = "leads"


def create_app(settings: LeadsSettings | None = None) -> FastAPI:
    runtime = ServiceRuntime(settings or LeadsSettings())
    repo = LeadRepository(runtime.db)
    rescoring = BackgroundRescoring(runtime.transaction, repo)
    # Another replica changed the rules: rescore what this one scored under the old ones.
    repo.on_new_scoring_rules(lambda _: rescoring.trigger())

    async def start_rescoring() -> None:
        rescoring.trigger()  # finishes a rescoring pass a restart interrupted

    runtime.on_startup(repo.ensure_indexes)
    runtime.on_startup(start_rescoring)
    runtime.on_shutdown(rescoring.stop)
    register_handlers(runtime.consumer, repo)
    return runtime.create_app(
        title="CRM leads",
        description="Capture leads from any system, de-duplicate, qualify hot/warm/cold, convert.",
        routers=leads_router(runtime, repo, rescoring),
        openapi_tags=[
            {
                "name": "leads",
                "description": "Capture, import, search, work, qualify, merge and convert leads",
            },
            {"name": "scoring", "description": "Qualification scoring rules an administrator configures"},
        ],
    )
