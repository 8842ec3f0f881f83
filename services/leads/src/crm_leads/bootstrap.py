"""Composition root of the leads service: the one place where its parts are wired."""

from __future__ import annotations

from crm_runtime import ServiceRuntime, ServiceSettings
from fastapi import FastAPI

from .api import leads_router
from .handlers import register_handlers
from .repository import LeadRepository


class LeadsSettings(ServiceSettings):
    service_name: str = "leads"


def create_app(settings: LeadsSettings | None = None) -> FastAPI:
    runtime = ServiceRuntime(settings or LeadsSettings())
    repo = LeadRepository(runtime.db)
    runtime.on_startup(repo.ensure_indexes)
    register_handlers(runtime.consumer, repo)
    return runtime.create_app(
        title="CRM leads",
        description="Capture leads from any system, de-duplicate, qualify hot/warm/cold, convert.",
        routers=[leads_router(runtime, repo)],
    )
