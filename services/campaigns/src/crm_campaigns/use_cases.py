"""What the campaigns service does, shared by its HTTP routes and its Kafka handlers. Each use
case runs inside one unit of work: the campaign and the events it emits commit together."""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Any

from crm_contracts import catalog
from crm_contracts.catalog import EventSpec
from crm_contracts.envelope import utcnow
from crm_contracts.events.campaigns import (
    CampaignCostRecorded,
    CampaignCreated,
    CampaignMemberAdded,
    CampaignStatus,
    CampaignStatusChanged,
    CampaignUpdated,
    MemberType,
)
from crm_contracts.events.common import Actor
from crm_contracts.events.leads import LeadConverted, LeadCreated
from crm_contracts.events.opportunities import OpportunityFigures
from crm_runtime import UnitOfWork, make_event
from pydantic import BaseModel
from pymongo.errors import DuplicateKeyError

from .domain import (
    MAX_HIERARCHY_DEPTH,
    Campaign,
    CampaignDetails,
    IllegalTransition,
    InvalidCampaign,
    NewCostEntry,
    OpportunityState,
    check_hierarchy,
    member_id_for,
)
from .repository import CampaignRepository, MemberRepository, OpportunityRepository

SOURCE = "/crm/campaigns"
MEMBER_VIA_LEAD = "lead.campaign_id"

# The topic each event payload travels on. A payload whose topic the catalogue does not have yet
# (None) changes state without an event; catalogue it and fill in its spec here to emit it.
TOPICS: dict[type[BaseModel], EventSpec[Any]] = {
    CampaignCreated: catalog.CAMPAIGN_CREATED,
    CampaignStatusChanged: catalog.CAMPAIGN_STATUS_CHANGED,
    CampaignCostRecorded: catalog.CAMPAIGN_COST_RECORDED,
    CampaignMemberAdded: catalog.CAMPAIGN_MEMBER_ADDED,
    CampaignUpdated: catalog.CAMPAIGN_UPDATED,
}


class CampaignNotFound(Exception):
    pass


class CampaignAlreadyExists(Exception):
    pass


def _now() -> datetime:
    """The current time at the millisecond precision BSON stores, so the answer, the stored
    campaign and the event all carry the same instant."""
    now = utcnow()
    return now.replace(microsecond=now.microsecond // 1000 * 1000)


async def _emit(
    uow: UnitOfWork, data: BaseModel, *, subject: str, version: int | None, time: datetime
) -> None:
    spec = TOPICS[type(data)]
    await uow.emit(spec, make_event(spec, data, source=SOURCE, subject=subject, version=version, time=time))


async def _load(
    repo: CampaignRepository, uow: UnitOfWork, campaign_id: str, expected_version: int | None
) -> Campaign:
    campaign = await repo.get(campaign_id, uow.session)
    if campaign is None:
        raise CampaignNotFound(campaign_id)
    if expected_version is not None and expected_version != campaign.version:
        raise IllegalTransition(
            "expected_version",
            f"the campaign is at version {campaign.version}, not {expected_version}: reload and retry",
        )
    return campaign


async def create_campaign(
    repo: CampaignRepository,
    uow: UnitOfWork,
    details: CampaignDetails,
    *,
    by: Actor,
    status: CampaignStatus = CampaignStatus.PLANNED,
    campaign_id: str | None = None,
) -> Campaign:
    campaign_id = campaign_id or str(uuid.uuid4())
    if await repo.exists(campaign_id, uow.session):
        raise CampaignAlreadyExists(campaign_id)
    if details.parent_campaign_id is not None:
        await _check_parent(repo, uow, campaign_id, details.parent_campaign_id)
    now = _now()
    campaign = Campaign.plan(campaign_id, details, now=now, by=by.id, status=status)
    try:
        await repo.add(campaign, uow.session)
    except DuplicateKeyError as exc:  # created concurrently with the same chosen id
        raise CampaignAlreadyExists(campaign_id) from exc
    created = CampaignCreated(campaign=campaign.snapshot(), created_at=now, created_by=by)
    await _emit(uow, created, subject=campaign.id, version=campaign.version, time=now)
    return campaign


async def _check_parent(repo: CampaignRepository, uow: UnitOfWork, campaign_id: str, parent_id: str) -> None:
    chain = await repo.ancestors(parent_id, uow.session, limit=MAX_HIERARCHY_DEPTH + 1)
    if chain is None:
        raise InvalidCampaign("parent_campaign_id", f"the parent campaign {parent_id} does not exist")
    check_hierarchy(campaign_id, chain)


async def revise_campaign(
    repo: CampaignRepository,
    uow: UnitOfWork,
    campaign_id: str,
    changes: dict[str, Any],
    *,
    by: Actor,
    expected_version: int | None = None,
) -> Campaign:
    campaign = await _load(repo, uow, campaign_id, expected_version)
    version = campaign.version
    parent_id = changes.get("parent_campaign_id")
    if parent_id is not None and parent_id != campaign.parent_campaign_id:
        await _check_parent(repo, uow, campaign.id, parent_id)
    now = _now()
    updated = campaign.revise(changes, now=now, by=by)
    if updated is None:
        return campaign
    await repo.update(campaign, version, uow.session)
    await _emit(uow, updated, subject=campaign.id, version=campaign.version, time=now)
    return campaign


async def change_campaign_status(
    repo: CampaignRepository,
    uow: UnitOfWork,
    campaign_id: str,
    status: CampaignStatus,
    *,
    by: Actor,
    reason: str | None = None,
    expected_version: int | None = None,
) -> Campaign:
    campaign = await _load(repo, uow, campaign_id, expected_version)
    version = campaign.version
    now = _now()
    changed = campaign.change_status(status, now=now, by=by, reason=reason)
    await repo.update(campaign, version, uow.session)
    await _emit(uow, changed, subject=campaign.id, version=campaign.version, time=now)
    return campaign


async def record_campaign_cost(
    repo: CampaignRepository,
    uow: UnitOfWork,
    campaign_id: str,
    entry: NewCostEntry,
    *,
    by: Actor,
    expected_version: int | None = None,
) -> tuple[Campaign, bool]:
    """Append a cost entry; returns the campaign and whether the entry was new (a retried
    entry with the same id and content is accepted without change)."""
    campaign = await _load(repo, uow, campaign_id, expected_version)
    version = campaign.version
    now = _now()
    recorded = campaign.record_cost(entry, now=now, by=by)
    if recorded is None:
        return campaign, False
    await repo.update(campaign, version, uow.session)
    await _emit(uow, recorded, subject=campaign.id, version=campaign.version, time=now)
    return campaign, True


async def add_lead_member(members: MemberRepository, uow: UnitOfWork, created: LeadCreated) -> bool:
    """A lead captured with a campaign id becomes that campaign's member (first touch).
    Returns whether it was new."""
    lead = created.lead
    if lead.campaign_id is None:
        return False
    added = await members.add_lead(
        lead.campaign_id,
        lead.lead_id,
        joined_at=lead.captured_at,
        lead_source=lead.lead_source.value,
        session=uow.session,
    )
    if added:
        await _member_added(uow, lead.campaign_id, lead.lead_id, lead.captured_at)
    return added


async def record_lead_conversion(
    members: MemberRepository,
    opportunities: OpportunityRepository,
    uow: UnitOfWork,
    converted: LeadConverted,
) -> bool:
    """The lead's memberships count as converted, and an opportunity opened on conversion is
    the campaign's; a lead converted with a campaign is its member even before its
    ``lead.created`` arrives. Returns whether a member was new."""
    added = await members.record_conversion(converted, uow.session)
    opened = converted.opportunity
    if opened is not None and converted.campaign_id is not None:
        await opportunities.attribute(
            opened.opportunity_id,
            campaign_id=converted.campaign_id,
            lead_id=converted.lead_id,
            amount=opened.amount,
            currency=opened.currency,
            session=uow.session,
        )
    if added and converted.campaign_id is not None:
        joined = converted.captured_at or converted.converted_at
        await _member_added(uow, converted.campaign_id, converted.lead_id, joined)
    return added


async def _member_added(uow: UnitOfWork, campaign_id: str, lead_id: str, at: datetime) -> None:
    data = CampaignMemberAdded(
        campaign_id=campaign_id,
        member_id=member_id_for(MemberType.LEAD, lead_id),
        member_type=MemberType.LEAD,
        lead_id=lead_id,
        added_at=at,
        added_via=MEMBER_VIA_LEAD,
    )
    # Keyed by the campaign so its events stay in order; membership has no aggregate version.
    await _emit(uow, data, subject=campaign_id, version=None, time=_now())


async def follow_opportunity(
    opportunities: OpportunityRepository,
    uow: UnitOfWork,
    figures: OpportunityFigures,
    *,
    state: OpportunityState,
    version: int | None,
) -> bool:
    """Keep the outcome of an opportunity attributed to a campaign: its own campaign, else the
    one its lead's conversion named (which may arrive later, so an opportunity with a lead is
    kept until then). Returns whether anything changed."""
    campaign_id = figures.campaign_id or await opportunities.attributed_campaign(
        figures.opportunity_id, uow.session
    )
    if campaign_id is None and figures.lead_id is None:
        return False  # nothing can ever attribute it to a campaign
    return await opportunities.record(
        figures.opportunity_id,
        campaign_id=campaign_id,
        lead_id=figures.lead_id,
        amount=figures.amount,
        currency=figures.currency,
        state=state,
        version=version,
        session=uow.session,
    )
