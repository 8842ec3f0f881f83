"""HTTP routes of the leads service's bulk actions (``crm_runtime.bulk`` gives the shape)."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

from crm_contracts.events.common import Actor
from crm_runtime import ServiceRuntime, UnitOfWork
from crm_runtime.bulk import BULK_DESCRIPTION, BulkResult, items_field, run_bulk
from fastapi import APIRouter, Depends
from pydantic import BaseModel, ConfigDict

from .bulk_actions import (
    ConvertItem,
    DisqualifyItem,
    OwnerItem,
    QualifyItem,
    assign_lead_owners,
    convert_leads,
    disqualify_leads,
    qualify_leads,
)
from .repository import ConcurrentModification, LeadRepository

REP: dict[str, Any] = {"id": "rep-42", "name": "Rita Rep"}
LEAD = "0b8e3c2a-8d1e-5f0a-9a57-2f6c1d4e7b90"


def _example(**item: Any) -> ConfigDict:
    return ConfigDict(
        extra="forbid", json_schema_extra={"examples": [{"by": REP, "items": [{"id": LEAD, **item}]}]}
    )


class BulkQualify(BaseModel):
    model_config = _example(rating="hot", expected_version=3)
    by: Actor
    items: list[QualifyItem] = items_field("The leads to qualify, each optionally with the rep's rating")


class BulkDisqualify(BaseModel):
    model_config = _example(reason="no budget this year")
    by: Actor
    items: list[DisqualifyItem] = items_field("The leads to disqualify, each with its reason")


class BulkConvert(BaseModel):
    model_config = _example(opportunity={"name": "Analytical Engines - 50 seats", "amount": "12000.00"})
    by: Actor
    items: list[ConvertItem] = items_field("The leads to convert, each as the single convert route takes it")


class BulkAssignOwner(BaseModel):
    model_config = _example(owner_id="rep-7")
    by: Actor
    items: list[OwnerItem] = items_field("The leads to give to a rep, each with its owner_id")


def bulk_router(runtime: ServiceRuntime, repo: LeadRepository) -> APIRouter:
    """Registered before the single-lead routes, whose ``/{lead_id}/…`` would take ``bulk``."""
    router = APIRouter(prefix="/leads/bulk", tags=["leads"])
    write = [Depends(runtime.auth.require("write"))]

    def run(work: Callable[[UnitOfWork], Awaitable[BulkResult]]) -> Awaitable[BulkResult]:
        return run_bulk(runtime, work, conflict=ConcurrentModification)

    @router.post(
        "/qualify",
        dependencies=write,
        summary="Qualify many leads (as POST /leads/{id}/qualify, a lead.qualified each)",
        description=BULK_DESCRIPTION,
    )
    async def bulk_qualify(body: BulkQualify) -> BulkResult:
        return await run(lambda uow: qualify_leads(repo, uow, body.items, body.by))

    @router.post(
        "/disqualify",
        dependencies=write,
        summary="Disqualify many leads with their reasons (a lead.disqualified each)",
        description=BULK_DESCRIPTION,
    )
    async def bulk_disqualify(body: BulkDisqualify) -> BulkResult:
        return await run(lambda uow: disqualify_leads(repo, uow, body.items, body.by))

    @router.post(
        "/convert",
        dependencies=write,
        summary="Convert many leads (a lead.converted each; opportunities creates the records)",
        description=BULK_DESCRIPTION,
    )
    async def bulk_convert(body: BulkConvert) -> BulkResult:
        currency = runtime.settings.company_currency
        return await run(lambda uow: convert_leads(repo, uow, body.items, body.by, company_currency=currency))

    @router.post(
        "/assign-owner",
        dependencies=write,
        summary="Give many leads to reps (a lead.updated of owner_id each)",
        description=BULK_DESCRIPTION,
    )
    async def bulk_assign_owner(body: BulkAssignOwner) -> BulkResult:
        return await run(lambda uow: assign_lead_owners(repo, uow, body.items, body.by))

    return router
