"""HTTP routes of the opportunities service's bulk actions (``crm_runtime.bulk`` gives the shape)."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

from crm_contracts.events.common import Actor
from crm_runtime import ServiceRuntime, UnitOfWork
from crm_runtime.bulk import BULK_DESCRIPTION, BulkResult, items_field, run_bulk
from fastapi import APIRouter, Depends
from pydantic import BaseModel, ConfigDict

from .bulk_actions import OwnerItem, StageItem, assign_opportunity_owners, move_opportunities
from .repository import ConcurrentModification, Repositories
from .use_cases import Policy

REP: dict[str, Any] = {"id": "rep-42", "name": "Rita Rep"}


class BulkAssignOwner(BaseModel):
    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={"examples": [{"by": REP, "items": [{"id": "opp-1", "owner_id": "rep-7"}]}]},
    )
    by: Actor
    items: list[OwnerItem] = items_field("The opportunities to give to a rep, each with its owner_id")


class BulkMoveStage(BaseModel):
    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={
            "examples": [
                {
                    "by": REP,
                    "items": [
                        {"id": "opp-1", "stage_id": "proposal", "expected_version": 2},
                        {"id": "opp-2", "stage_id": "closed_won"},
                        {"id": "opp-3", "stage_id": "closed_lost", "loss_reason": "price"},
                    ],
                }
            ]
        },
    )
    by: Actor
    items: list[StageItem] = items_field("The opportunities to move, each with its stage")


def bulk_router(runtime: ServiceRuntime, repos: Repositories, policy: Policy) -> APIRouter:
    """Registered before the single-record routes, whose ``/{opportunity_id}/…`` would take ``bulk``."""
    router = APIRouter(prefix="/opportunities/bulk", tags=["opportunities"])
    write = [Depends(runtime.auth.require("write"))]

    def run(work: Callable[[UnitOfWork], Awaitable[BulkResult]]) -> Awaitable[BulkResult]:
        return run_bulk(runtime, work, conflict=ConcurrentModification)

    @router.post(
        "/assign-owner",
        dependencies=write,
        summary="Give many open opportunities to reps (an opportunity.updated of owner_id each)",
        description=BULK_DESCRIPTION + " A closed opportunity is rejected naming `status`.",
    )
    async def bulk_assign_owner(body: BulkAssignOwner) -> BulkResult:
        return await run(lambda uow: assign_opportunity_owners(repos, uow, body.items, body.by))

    @router.post(
        "/move-stage",
        dependencies=write,
        summary="Move many opportunities to stages of their pipelines; closes them as won or lost too",
        description=BULK_DESCRIPTION
        + " Each item follows the rules of POST /opportunities/{id}/stage: an opportunity.stage_changed "
        "each, plus opportunity.closed for a closed stage (won deals make their prospect account a "
        "customer); closing as lost needs a `loss_reason` from the pipeline's list; a closed "
        "opportunity is rejected naming `stage_id` (reopen it first). An item already in its stage "
        "(with that probability) is `unchanged`, so a retried request does no harm.",
    )
    async def bulk_move_stage(body: BulkMoveStage) -> BulkResult:
        return await run(lambda uow: move_opportunities(repos, uow, policy, body.items, body.by))

    return router
