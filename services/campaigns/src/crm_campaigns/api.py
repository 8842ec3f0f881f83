"""HTTP routes of the campaigns service."""

from __future__ import annotations

import uuid
from collections.abc import Awaitable, Callable
from datetime import date
from decimal import Decimal
from typing import Annotated, Any, TypeVar

from crm_contracts.events.campaigns import (
    CampaignPurpose,
    CampaignStatus,
    CampaignType,
    CostAmount,
    CostEntry,
    ResponsePercent,
)
from crm_contracts.events.common import Actor, Currency, Id, Money, ShortText
from crm_runtime import ApiError, ServiceRuntime, UnitOfWork
from fastapi import APIRouter, Depends, Query, Response, status
from pydantic import AwareDatetime, BaseModel, ConfigDict, Field

from .domain import (
    MAX_HIERARCHY_DEPTH,
    Campaign,
    CampaignDetails,
    CampaignMember,
    CampaignSummary,
    IllegalTransition,
    InvalidCampaign,
    NewCostEntry,
    StatusChange,
    rollup_scope,
    summarize,
)
from .repository import (
    CampaignRepository,
    ConcurrentModification,
    MemberRepository,
    OpportunityRepository,
)
from .use_cases import (
    CampaignAlreadyExists,
    CampaignNotFound,
    change_campaign_status,
    create_campaign,
    record_campaign_cost,
    revise_campaign,
)

HTTP_SYSTEM = Actor(id="crm-api")
T = TypeVar("T")

ExpectedVersion = Annotated[
    int | None,
    Field(default=None, ge=1, description="Refuse the change (409) unless the campaign is at this version."),
]


class NewCampaign(CampaignDetails):
    """A campaign to plan (or to record afterwards, in any status)."""

    model_config = ConfigDict(
        extra="forbid",
        frozen=True,
        json_schema_extra={
            "examples": [
                {
                    "name": "Autumn webinar series",
                    "type": "webinar",
                    "purpose": "lead_generation",
                    "start_date": "2026-10-01",
                    "end_date": "2026-11-30",
                    "owner_id": "rep-7",
                    "budgeted_cost": "12000.00",
                    "expected_revenue": "90000.00",
                    "expected_response": "2.50",
                    "currency": "EUR",
                }
            ]
        },
    )

    campaign_id: Id | None = Field(
        default=None, description="Choose the id (e.g. the one used in ad links); generated when omitted."
    )
    status: CampaignStatus = CampaignStatus.PLANNED
    by: Actor = HTTP_SYSTEM


class CampaignChanges(BaseModel):
    """Details to change; fields left out stay as they are, ``null`` clears an optional one."""

    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={
            "examples": [{"end_date": "2026-12-15", "budgeted_cost": "15000.00", "by": {"id": "rep-7"}}]
        },
    )

    name: ShortText | None = None
    type: CampaignType | None = None
    purpose: CampaignPurpose | None = None
    start_date: date | None = None
    end_date: date | None = None
    owner_id: Id | None = None
    parent_campaign_id: Id | None = None
    budgeted_cost: Money | None = None
    expected_revenue: Money | None = None
    expected_response: ResponsePercent | None = None
    currency: Currency | None = None
    expected_version: ExpectedVersion = None
    by: Actor

    def changes(self) -> dict[str, Any]:
        return {name: getattr(self, name) for name in self.model_fields_set - {"expected_version", "by"}}


class StatusRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    status: CampaignStatus
    reason: str | None = Field(default=None, max_length=500)
    expected_version: ExpectedVersion = None
    by: Actor


class CostRequest(BaseModel):
    """A cost to book; negative amounts correct earlier entries. Send an ``entry_id`` (e.g. the
    invoice number) to make retries safe."""

    model_config = ConfigDict(extra="forbid")

    entry_id: Id | None = None
    amount: CostAmount
    currency: Currency
    incurred_on: date
    note: str | None = Field(default=None, max_length=500)
    expected_version: ExpectedVersion = None
    by: Actor


class CampaignView(BaseModel):
    """A campaign as the API shows it."""

    id: str
    version: int
    name: str
    type: CampaignType
    purpose: CampaignPurpose
    status: CampaignStatus
    start_date: date | None
    end_date: date | None
    owner_id: str | None
    parent_campaign_id: str | None
    budgeted_cost: Decimal | None
    expected_revenue: Decimal | None
    expected_response: Decimal | None
    currency: str
    actual_cost: Decimal
    cost_entry_count: int
    status_history: list[StatusChange]
    created_at: AwareDatetime
    created_by: str
    updated_at: AwareDatetime

    @classmethod
    def of(cls, campaign: Campaign) -> CampaignView:
        return cls.model_validate(
            {
                **campaign.model_dump(exclude={"cost_entries"}),
                "actual_cost": campaign.actual_cost,
                "cost_entry_count": len(campaign.cost_entries),
            }
        )


class CampaignPage(BaseModel):
    items: list[CampaignView]
    next_cursor: str | None


class CostLedger(BaseModel):
    campaign_id: str
    version: int
    currency: str
    actual_cost: Decimal
    entries: list[CostEntry]


class MemberPage(BaseModel):
    items: list[CampaignMember]
    next_cursor: str | None


def campaigns_router(
    runtime: ServiceRuntime,
    campaigns: CampaignRepository,
    members: MemberRepository,
    opportunities: OpportunityRepository,
) -> APIRouter:
    router = APIRouter(prefix="/campaigns", tags=["campaigns"])
    read = [Depends(runtime.auth.require("read"))]
    write = [Depends(runtime.auth.require("write"))]

    async def run(work: Callable[[UnitOfWork], Awaitable[T]]) -> T:
        try:
            return await runtime.transaction(work)
        except CampaignNotFound as exc:
            raise ApiError(404, "not_found", f"campaign {exc} does not exist", field="campaign_id") from exc
        except CampaignAlreadyExists as exc:
            raise ApiError(409, "already_exists", f"campaign {exc} exists", field="campaign_id") from exc
        except InvalidCampaign as exc:
            raise ApiError(422, "invalid_campaign", exc.reason, field=exc.field) from exc
        except IllegalTransition as exc:
            error = "version_conflict" if exc.field == "expected_version" else "illegal_transition"
            raise ApiError(409, error, exc.reason, field=exc.field) from exc
        except ConcurrentModification as exc:
            raise ApiError(409, "concurrent_modification", f"{exc}: reload and retry") from exc

    async def existing(campaign_id: str) -> Campaign:
        campaign = await campaigns.get(campaign_id)
        if campaign is None:
            raise ApiError(404, "not_found", f"campaign {campaign_id} does not exist", field="campaign_id")
        return campaign

    @router.post("", status_code=status.HTTP_201_CREATED, dependencies=write, summary="Create a campaign")
    async def create(body: NewCampaign) -> CampaignView:
        details = CampaignDetails.model_validate(body.model_dump(exclude={"campaign_id", "status", "by"}))

        async def work(uow: UnitOfWork) -> Campaign:
            return await create_campaign(
                campaigns, uow, details, by=body.by, status=body.status, campaign_id=body.campaign_id
            )

        return CampaignView.of(await run(work))

    @router.get("/{campaign_id}", dependencies=read, summary="One campaign")
    async def get(campaign_id: Id) -> CampaignView:
        return CampaignView.of(await existing(campaign_id))

    @router.get("", dependencies=read, summary="List campaigns with filters and cursor pagination")
    async def list_campaigns(
        campaign_status: Annotated[CampaignStatus | None, Query(alias="status")] = None,
        campaign_type: Annotated[CampaignType | None, Query(alias="type")] = None,
        purpose: CampaignPurpose | None = None,
        owner_id: Id | None = None,
        parent_campaign_id: Id | None = None,
        limit: Annotated[int, Query(ge=1, le=500)] = 50,
        cursor: Id | None = None,
    ) -> CampaignPage:
        filters: dict[str, Any] = {
            name: value
            for name, value in (
                ("status", campaign_status),
                ("type", campaign_type),
                ("purpose", purpose),
                ("owner_id", owner_id),
                ("parent_campaign_id", parent_campaign_id),
            )
            if value is not None
        }
        found = await campaigns.list(filters=filters, limit=limit, after_id=cursor)
        next_cursor = found[-1].id if len(found) == limit else None
        return CampaignPage(items=[CampaignView.of(c) for c in found], next_cursor=next_cursor)

    @router.patch("/{campaign_id}", dependencies=write, summary="Change a campaign's details")
    async def revise(campaign_id: Id, body: CampaignChanges) -> CampaignView:
        async def work(uow: UnitOfWork) -> Campaign:
            return await revise_campaign(
                campaigns,
                uow,
                campaign_id,
                body.changes(),
                by=body.by,
                expected_version=body.expected_version,
            )

        return CampaignView.of(await run(work))

    @router.post(
        "/{campaign_id}/status",
        dependencies=write,
        summary="Move a campaign along its lifecycle (planned → active → completed, or aborted)",
    )
    async def change_status(campaign_id: Id, body: StatusRequest) -> CampaignView:
        async def work(uow: UnitOfWork) -> Campaign:
            return await change_campaign_status(
                campaigns,
                uow,
                campaign_id,
                body.status,
                by=body.by,
                reason=body.reason,
                expected_version=body.expected_version,
            )

        return CampaignView.of(await run(work))

    @router.post(
        "/{campaign_id}/costs",
        status_code=status.HTTP_201_CREATED,
        dependencies=write,
        summary="Book a cost entry in the campaign's ledger",
        responses={200: {"description": "The same entry was booked before: nothing changed"}},
    )
    async def record_cost(campaign_id: Id, body: CostRequest, response: Response) -> CostLedger:
        entry = NewCostEntry(
            entry_id=body.entry_id or f"cost-{uuid.uuid4().hex}",
            amount=body.amount,
            currency=body.currency,
            incurred_on=body.incurred_on,
            note=body.note,
        )

        async def work(uow: UnitOfWork) -> tuple[Campaign, bool]:
            return await record_campaign_cost(
                campaigns, uow, campaign_id, entry, by=body.by, expected_version=body.expected_version
            )

        campaign, new = await run(work)
        if not new:
            response.status_code = status.HTTP_200_OK
        return _ledger(campaign)

    @router.get("/{campaign_id}/costs", dependencies=read, summary="The campaign's cost ledger")
    async def costs(campaign_id: Id) -> CostLedger:
        return _ledger(await existing(campaign_id))

    @router.get(
        "/{campaign_id}/members", dependencies=read, summary="Leads and contacts the campaign reached"
    )
    async def list_members(
        campaign_id: Id,
        converted: bool | None = None,
        limit: Annotated[int, Query(ge=1, le=500)] = 100,
        cursor: Id | None = None,
    ) -> MemberPage:
        await existing(campaign_id)
        found = await members.list(campaign_id, limit=limit, after_member_id=cursor, converted=converted)
        next_cursor = found[-1].member_id if len(found) == limit else None
        return MemberPage(items=found, next_cursor=next_cursor)

    @router.get("/{campaign_id}/summary", dependencies=read, summary="The campaign's performance figures")
    async def summary(
        campaign_id: Id,
        include_sub_campaigns: Annotated[
            bool, Query(description="Roll up the figures of every campaign below this one.")
        ] = False,
    ) -> CampaignSummary:
        campaign = await existing(campaign_id)
        below = (
            await campaigns.sub_campaigns(campaign_id, depth=MAX_HIERARCHY_DEPTH)
            if include_sub_campaigns
            else []
        )
        included, _ = rollup_scope(campaign, below)
        ids = [c.id for c in included]
        return summarize(campaign, await members.counts(ids), await opportunities.outcomes(ids), below)

    return router


def _ledger(campaign: Campaign) -> CostLedger:
    return CostLedger(
        campaign_id=campaign.id,
        version=campaign.version,
        currency=campaign.currency,
        actual_cost=campaign.actual_cost,
        entries=campaign.cost_entries,
    )
