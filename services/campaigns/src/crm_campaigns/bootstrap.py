"""Composition root of the campaigns service: the one place where its parts are wired."""

from __future__ import annotations

from crm_runtime import ServiceRuntime, ServiceSettings
from fastapi import FastAPI

from .api import campaigns_router
from .handlers import register_handlers
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
    return runtime.create_app(
        title="CRM campaigns",
        description=(
            "Marketing campaigns that generate leads or inform: status lifecycle, cost ledger, "
            "members joined from lead events, the opportunities and revenue they bring, and each "
            "campaign's performance summary with cost per lead and ROI."
        ),
        routers=[campaigns_router(runtime, campaigns, members, opportunities)],
        openapi_tags=[{"name": "campaigns", "description": "Campaigns, their costs and members."}],
    )
