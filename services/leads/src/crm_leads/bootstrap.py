"""Composition root of the leads service: the one place where its parts are wired."""

from __future__ import annotations

from crm_runtime import ServiceRuntime, ServiceSettings
from crm_runtime.imports import ImportJobs
from crm_runtime.picklist_api import picklists_router
from fastapi import FastAPI
from pydantic import Field

from .api import leads_router
from .bulk_api import bulk_router
from .handlers import register_handlers
from .imports import lead_import
from .repository import LeadRepository
from .use_cases import RESCORING_JOB, SOURCE, Rescoring, rescoring_step


class LeadsSettings(ServiceSettings):
    service_name: str = "leads"
    rescore_batch_size: int = Field(
        default=200, ge=1, le=1000, description="Leads the rescoring job rescores per transaction."
    )


def create_app(settings: LeadsSettings | None = None) -> FastAPI:
    settings = settings or LeadsSettings()
    runtime = ServiceRuntime(settings)
    repo = LeadRepository(runtime.db)
    runtime.jobs.register(RESCORING_JOB, rescoring_step(repo, settings.rescore_batch_size), exclusive=True)
    rescoring = Rescoring(runtime.jobs, repo)
    imports = ImportJobs(runtime, [lead_import(repo)])
    # The rules changed (here or in another replica): the one rescoring job takes the new ones.
    repo.on_new_scoring_rules(lambda _: rescoring.request_soon())

    runtime.on_startup(repo.ensure_indexes)
    runtime.on_startup(rescoring.resume_if_needed)
    runtime.on_shutdown(rescoring.stop)
    register_handlers(runtime.consumer, repo)
    lead_picklists = picklists_router(
        runtime,
        repo.picklist_store,
        source=SOURCE,
        lists="lead sources, origins",
        matched_by="Captures (lead.captured, HTTP, imports)",
    )
    return runtime.create_app(
        title="CRM leads",
        description="Capture leads from any system, de-duplicate, qualify hot/warm/cold, convert.",
        routers=[
            bulk_router(runtime, repo),
            *leads_router(runtime, repo, rescoring),
            lead_picklists,
            imports.router(),
        ],
        openapi_tags=[
            {
                "name": "leads",
                "description": "Capture, import, search, work, qualify, merge and convert leads; "
                "bulk qualify, disqualify, convert and assign owners",
            },
            {"name": "scoring", "description": "Qualification scoring rules an administrator configures"},
            {
                "name": "picklists",
                "description": "The organisation's value lists for lead source and origin: values, labels, "
                "aliases that fold spellings together, and what a blank or unknown value gets",
            },
            {
                "name": "imports",
                "description": "Import jobs: a CSV or NDJSON file of leads worked in the background",
            },
        ],
    )
