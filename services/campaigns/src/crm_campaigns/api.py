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
    MemberStatus,
    MemberStatusOption,
    MemberType,
    ResponsePercent,
)
from crm_contracts.events.common import Actor, Currency, Id, IsoDate, Money, MultiLine, ShortText
from crm_runtime import ApiError, ServiceRuntime, UnitOfWork
from fastapi import APIRouter, Depends, Query, Response, status
from pydantic import AwareDatetime, BaseModel, ConfigDict, Field, ValidationInfo, field_validator

from .domain import (
    MAX_HIERARCHY_DEPTH,
    AddOutcome,
    Campaign,
    CampaignDetails,
    CampaignMember,
    CampaignPlan,
    CampaignSummary,
    IllegalTransition,
    InvalidCampaign,
    MemberAddition,
    MemberStatusEntry,
    NewCostEntry,
    NewMember,
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
    LeadTouches,
    MemberNotFound,
    add_members,
    change_campaign_status,
    change_member_status,
    create_campaign,
    record_campaign_cost,
    revise_campaign,
    touches_of_lead,
)

HTTP_SYSTEM = Actor(id="crm-api")
T = TypeVar("T")
# One bulk request is one transaction with one event per new member: bounded so it stays short.
MAX_BULK_MEMBERS = 1000

ExpectedVersion = Annotated[
    int | None,
    Field(default=None, ge=1, description="Refuse the change (409) unless the campaign is at this version."),
]


class NewCampaign(CampaignPlan):
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

    currency: Currency | None = Field(
        default=None, description="The company currency (CRM_COMPANY_CURRENCY) when omitted"
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
    start_date: IsoDate | None = None
    end_date: IsoDate | None = None
    owner_id: Id | None = None
    parent_campaign_id: Id | None = None
    budgeted_cost: Money | None = None
    expected_revenue: Money | None = None
    expected_response: ResponsePercent | None = None
    currency: Currency | None = None
    member_statuses: list[MemberStatusOption] | None = Field(
        default=None,
        description="The statuses to offer and which count as a response; one that members hold "
        "cannot be dropped.",
    )
    expected_version: ExpectedVersion = None
    by: Actor

    def changes(self) -> dict[str, Any]:
        return {name: getattr(self, name) for name in self.model_fields_set - {"expected_version", "by"}}


class StatusRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    status: CampaignStatus
    reason: Annotated[str, MultiLine(max_length=500)] | None = None
    expected_version: ExpectedVersion = None
    by: Actor


class CostRequest(BaseModel):
    """A cost to book; negative amounts correct earlier entries. Send an ``entry_id`` (e.g. the
    invoice number) to make retries safe."""

    model_config = ConfigDict(extra="forbid")

    entry_id: Id | None = None
    amount: CostAmount
    currency: Currency
    incurred_on: IsoDate
    note: Annotated[str, MultiLine(max_length=500)] | None = None
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
    member_statuses: list[MemberStatusOption]
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


class MemberToAdd(BaseModel):
    """A lead or contact to add: exactly one of ``lead_id`` and ``contact_id``. Ids are taken as
    given (the leads and opportunities services own those records)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    lead_id: Id | None = None
    contact_id: Id | None = Field(default=None, validate_default=True)
    status: MemberStatus | None = Field(
        default=None, description="Defaults to the first status the campaign offers (sent by default)."
    )

    @field_validator("contact_id")
    @classmethod
    def _one_record(cls, contact_id: str | None, info: ValidationInfo) -> str | None:
        lead_id = info.data.get("lead_id")
        if (lead_id is None) == (contact_id is None) and "lead_id" in info.data:
            raise ValueError("give either lead_id or contact_id, not both and not neither")
        return contact_id

    def new_member(self) -> NewMember:
        if self.lead_id is not None:
            return NewMember(member_type=MemberType.LEAD, record_id=self.lead_id, status=self.status)
        assert self.contact_id is not None
        return NewMember(member_type=MemberType.CONTACT, record_id=self.contact_id, status=self.status)


class MemberRequest(MemberToAdd):
    model_config = ConfigDict(
        extra="forbid",
        frozen=True,
        json_schema_extra={"examples": [{"contact_id": "con-42", "status": "sent", "by": {"id": "rep-7"}}]},
    )

    by: Actor


class BulkMemberRequest(BaseModel):
    """Up to 1,000 leads and contacts, added in one transaction (all outcomes or none)."""

    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={
            "examples": [
                {
                    "members": [{"lead_id": "lead-1"}, {"contact_id": "con-9", "status": "registered"}],
                    "by": {"id": "rep-7"},
                }
            ]
        },
    )

    members: list[MemberToAdd] = Field(min_length=1, max_length=MAX_BULK_MEMBERS)
    by: Actor


class MemberStatusRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    status: MemberStatus
    expected_version: Annotated[
        int | None,
        Field(
            default=None, ge=1, description="Refuse the change (409) unless the member is at this version."
        ),
    ] = None
    by: Actor


class MemberView(BaseModel):
    """A member as the API shows it: its status, whether it has responded, and (leads) its touch."""

    campaign_id: str
    member_id: str
    member_type: MemberType
    lead_id: str | None
    contact_id: str | None
    status: MemberStatus
    responded: bool = Field(description="Reached a status that counts as a response in this campaign.")
    status_history: list[MemberStatusEntry]
    joined_at: AwareDatetime
    last_touched_at: AwareDatetime
    touched_via: list[str]
    first_touch: bool
    lead_source: str | None
    converted: bool
    converted_at: AwareDatetime | None
    account_id: str | None
    opportunity_id: str | None
    merged_from: list[str] = Field(
        default_factory=list,
        description="Duplicate leads merged into this lead whose membership was folded in here.",
    )
    version: int

    @classmethod
    def of(cls, member: CampaignMember, campaign: Campaign) -> MemberView:
        return cls.model_validate(
            {**member.model_dump(), "responded": member.has_responded(campaign.response_statuses)}
        )


class MemberPage(BaseModel):
    items: list[MemberView]
    next_cursor: str | None


class BulkItemResult(BaseModel):
    index: int = Field(description="Position of the item in the request.")
    member_id: str
    outcome: AddOutcome
    reason: str | None = Field(default=None, description="Why it was refused.")
    field: str | None = Field(default=None, description="The field a refusal names (status, lead_id).")


class BulkResult(BaseModel):
    campaign_id: str
    added: int
    already_members: int
    refused: int
    results: list[BulkItemResult]


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
        except MemberNotFound as exc:
            raise ApiError(
                404, "not_found", f"member {exc} is not in the campaign", field="member_id"
            ) from exc
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
        details = CampaignDetails.model_validate(
            body.model_dump(exclude={"campaign_id", "status", "by"})
            | {"currency": body.currency or runtime.settings.company_currency}
        )

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
                members,
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
        member_status: Annotated[MemberStatus | None, Query(alias="status")] = None,
        member_type: MemberType | None = None,
        limit: Annotated[int, Query(ge=1, le=500)] = 100,
        cursor: Id | None = None,
    ) -> MemberPage:
        campaign = await existing(campaign_id)
        found = await members.list(
            campaign_id,
            limit=limit,
            after_member_id=cursor,
            converted=converted,
            status=member_status,
            member_type=member_type,
        )
        next_cursor = found[-1].member_id if len(found) == limit else None
        return MemberPage(items=[MemberView.of(m, campaign) for m in found], next_cursor=next_cursor)

    @router.post(
        "/{campaign_id}/members",
        status_code=status.HTTP_201_CREATED,
        dependencies=write,
        summary="Add a lead or contact to the campaign",
        responses={200: {"description": "Already a member: returned as it is, nothing changed"}},
    )
    async def add_member(campaign_id: Id, body: MemberRequest, response: Response) -> MemberView:
        async def work(uow: UnitOfWork) -> tuple[Campaign, MemberAddition]:
            [result] = await add_members(
                campaigns, members, opportunities, uow, campaign_id, [body.new_member()], by=body.by
            )
            if result.outcome is AddOutcome.REFUSED:
                raise InvalidCampaign(result.field or "status", result.reason or "refused")
            campaign = await campaigns.get(campaign_id, uow.session)
            assert campaign is not None
            return campaign, result

        campaign, result = await run(work)
        if result.outcome is AddOutcome.ALREADY_MEMBER:
            response.status_code = status.HTTP_200_OK
        assert result.member is not None
        return MemberView.of(result.member, campaign)

    @router.post(
        "/{campaign_id}/members/bulk",
        dependencies=write,
        summary="Add many leads and contacts at once, with an outcome per item",
    )
    async def add_members_in_bulk(campaign_id: Id, body: BulkMemberRequest) -> BulkResult:
        async def work(uow: UnitOfWork) -> list[MemberAddition]:
            wanted = [item.new_member() for item in body.members]
            return await add_members(campaigns, members, opportunities, uow, campaign_id, wanted, by=body.by)

        results = await run(work)
        return BulkResult(
            campaign_id=campaign_id,
            added=sum(1 for r in results if r.outcome is AddOutcome.ADDED),
            already_members=sum(1 for r in results if r.outcome is AddOutcome.ALREADY_MEMBER),
            refused=sum(1 for r in results if r.outcome is AddOutcome.REFUSED),
            results=[BulkItemResult.model_validate(r.model_dump(exclude={"member"})) for r in results],
        )

    @router.get("/{campaign_id}/members/{member_id}", dependencies=read, summary="One member of the campaign")
    async def get_member(campaign_id: Id, member_id: Id) -> MemberView:
        campaign = await existing(campaign_id)
        member = await members.get(campaign_id, member_id)
        if member is None:
            raise ApiError(404, "not_found", f"member {member_id} is not in the campaign", field="member_id")
        return MemberView.of(member, campaign)

    @router.post(
        "/{campaign_id}/members/{member_id}/status",
        dependencies=write,
        summary="Move a member to another status (forward, or unsubscribed)",
    )
    async def change_status_of_member(
        campaign_id: Id, member_id: Id, body: MemberStatusRequest
    ) -> MemberView:
        async def work(uow: UnitOfWork) -> tuple[Campaign, CampaignMember]:
            member = await change_member_status(
                campaigns,
                members,
                uow,
                campaign_id,
                member_id,
                body.status,
                by=body.by,
                expected_version=body.expected_version,
            )
            campaign = await campaigns.get(campaign_id, uow.session)
            assert campaign is not None
            return campaign, member

        campaign, member = await run(work)
        return MemberView.of(member, campaign)

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
        counts = await members.counts(included)
        return summarize(campaign, counts, await opportunities.outcomes([c.id for c in included]), below)

    return router


def attribution_router(runtime: ServiceRuntime, members: MemberRepository) -> APIRouter:
    router = APIRouter(tags=["attribution"])
    read = [Depends(runtime.auth.require("read"))]

    @router.get(
        "/leads/{lead_id}/touches",
        dependencies=read,
        summary="Every campaign that reached a lead, with when, and its first and last touch",
    )
    async def lead_touches(lead_id: Id) -> LeadTouches:
        # A lead no campaign reached has no touches; the leads service owns whether it exists.
        return await touches_of_lead(members, lead_id)

    return router


def _ledger(campaign: Campaign) -> CostLedger:
    return CostLedger(
        campaign_id=campaign.id,
        version=campaign.version,
        currency=campaign.currency,
        actual_cost=campaign.actual_cost,
        entries=campaign.cost_entries,
    )
