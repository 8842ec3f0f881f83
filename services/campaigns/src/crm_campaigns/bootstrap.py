"""Composition root of the campaigns service: the one place where its parts are wired."""

from __future__ import annotations

from crm_runtime import ServiceRuntime, ServiceSettings
from crm_runtime.imports import ImportJobs
from fastapi import FastAPI

from .api import attribution_router, campaigns_router
from .handlers import register_handlers
from .imports import member_import
from .repository import CampaignRepository, MemberRepository, OpportunityRepository


class CampaignsSettings(ServiceSettings):
    service_name: str = "campaigns"


def create_app(settings: CampaignsSettings | None = None) -> FastAPI:
    runtime = ServiceRuntime(settings or CampaignsSettings())
    campaigns = CampaignRepository(runtime.db)
    members = MemberRepository(runtime.db)
    opportunities = OpportunityRepository(runtime.db)
    for repository in (campaigns, members, opportunities):
        runtime.on_startup(repository.ensure_indexes)
    register_handlers(runtime.consumer, members, opportunities)
    imports = ImportJobs(runtime, [member_import(campaigns, members, opportunities)])
    return runtime.create_app(
        title="CRM campaigns",
        description=(
            "Marketing campaigns that generate leads or inform: status lifecycle, cost ledger, "
            "members (leads and contacts) with configurable statuses and responses, the touches "
            "that attribute leads to campaigns (first touch credited), the opportunities and "
            "revenue they bring, and each campaign's performance summary with response rate, cost "
            "per lead and ROI."
        ),
        routers=[
            campaigns_router(runtime, campaigns, members, opportunities),
            attribution_router(runtime, members),
            imports.router(),
        ],
        openapi_tags=[
            {"name": "campaigns", "description": "Campaigns, their costs, members and member statuses."},
            {
                "name": "attribution",
                "description": "The campaigns that touched each lead (first touch credited).",
            },
            {
                "name": "imports",
                "description": "Import jobs: a file of campaign members worked in the background",
            },
        ],
    )
