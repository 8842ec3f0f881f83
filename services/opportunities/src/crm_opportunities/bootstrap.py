"""Composition root of the opportunities service: the one place where its parts are wired."""

from __future__ import annotations

from crm_runtime import ServiceRuntime, ServiceSettings
from crm_runtime.imports import ImportJobs
from crm_runtime.picklist_api import picklists_router
from fastapi import FastAPI
from pydantic import Field

from .api import routers
from .bulk_api import bulk_router
from .domain import DEFAULT_LOSS_REASONS, LossReason
from .handlers import register_handlers
from .import_targets import import_targets
from .opportunity_events import SOURCE
from .repository import Repositories
from .use_cases import DuplicateRecord, Policy, seed_default_pipeline


class OpportunitiesSettings(ServiceSettings):
    service_name: str = "opportunities"
    default_loss_reasons: list[LossReason] = Field(
        default=list(DEFAULT_LOSS_REASONS),
        min_length=1,
        description="The loss_reason picklist until an administrator revises it (JSON list in "
        'CRM_DEFAULT_LOSS_REASONS): values (no_budget) or names to make values of ("Bad luck": bad_luck).',
    )


def create_app(settings: OpportunitiesSettings | None = None) -> FastAPI:
    settings = settings or OpportunitiesSettings()
    runtime = ServiceRuntime(settings)
    repos = Repositories.of(runtime.db, settings.default_loss_reasons)
    policy = Policy(
        company_currency=settings.company_currency, default_loss_reasons=tuple(settings.default_loss_reasons)
    )
    imports = ImportJobs(runtime, import_targets(repos, policy))

    async def prepare_storage() -> None:
        await repos.ensure_indexes()
        try:
            await runtime.transaction(lambda uow: seed_default_pipeline(repos, uow, policy))
        except DuplicateRecord:
            pass  # another replica seeded it at the same moment

    runtime.on_startup(prepare_storage)
    register_handlers(runtime.consumer, repos)
    return runtime.create_app(
        title="CRM opportunities",
        description=(
            "Accounts, contacts and opportunities moving through configurable pipelines until "
            "they are won or lost; the closed opportunity's case."
        ),
        routers=[
            bulk_router(runtime, repos, policy),
            *routers(runtime, repos, policy),
            picklists_router(
                runtime,
                repos.picklists,
                source=SOURCE,
                lists="loss reasons",
                matched_by="Closing an opportunity as lost (HTTP, the opportunities import)",
            ),
            imports.router(),
        ],
        openapi_tags=[
            {"name": "pipelines", "description": "Pipelines and their ordered stages"},
            {"name": "products", "description": "The product catalogue line items come from"},
            {"name": "sales teams", "description": "Teams of reps with their manager and region"},
            {"name": "accounts", "description": "Companies the business tracks"},
            {"name": "contacts", "description": "People, usually at an account"},
            {
                "name": "opportunities",
                "description": "Potential revenue, stage moves (one or in bulk), the case",
            },
            {
                "name": "picklists",
                "description": "The organisation's loss reasons: values, labels, aliases that fold "
                "spellings together, and what a blank or unknown reason gets",
            },
            {
                "name": "imports",
                "description": "Import jobs: CSV or NDJSON files of accounts, contacts and opportunities "
                "from another CRM worked in the background (progress, rejections as CSV)",
            },
        ],
    )
