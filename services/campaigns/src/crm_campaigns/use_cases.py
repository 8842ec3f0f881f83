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
    CampaignMemberStatusChanged,
    CampaignStatus,
    CampaignStatusChanged,
    CampaignUpdated,
    MemberStatus,
    MemberType,
)
from crm_contracts.events.common import Actor
from crm_contracts.events.leads import LeadConverted, LeadCreated, LeadMerged, LeadSnapshot, LeadUpdated
from crm_contracts.events.opportunities import OpportunityFigures
from crm_runtime import UnitOfWork, make_event
from pydantic import BaseModel
from pymongo.errors import DuplicateKeyError

from .domain import (
    MAX_HIERARCHY_DEPTH,
    STATUS_ON_CAPTURE,
    AddOutcome,
    Campaign,
    CampaignDetails,
    CampaignMember,
    CampaignRuleViolation,
    IllegalTransition,
    ImportedStatus,
    InvalidCampaign,
    LeadReference,
    LeadTouch,
    MemberAddition,
    MemberStatusEntry,
    NewCostEntry,
    NewMember,
    OpportunityState,
    check_hierarchy,
    check_member_status_change,
    first_touch,
    first_touch_changes,
    last_touch,
    member_id_for,
    merge_chain,
    removed_statuses,
    surviving_lead,
)
from .repository import CampaignRepository, MemberRepository, OpportunityRepository

SOURCE = "/crm/campaigns"
VIA_API = "api"
VIA_IMPORT = "import"
# How a membership a lead got from a duplicate merged into it was added (campaign.member_added).
VIA_MERGE = "lead.merged"
# Who moves a member to ``responded`` when its lead is captured through the campaign.
CAPTURE = Actor(id="lead-capture", name="Lead captured through the campaign")
# Every campaign counts ``responded`` as a response (a rule of its member statuses), so a
# status change made by a capture can say whether the member responded without the campaign.
CAPTURE_RESPONSES = frozenset({STATUS_ON_CAPTURE})

# The topic each event payload travels on. A payload whose topic the catalogue does not have yet
# (None) changes state without an event; catalogue it and fill in its spec here to emit it.
TOPICS: dict[type[BaseModel], EventSpec[Any]] = {
    CampaignCreated: catalog.CAMPAIGN_CREATED,
    CampaignStatusChanged: catalog.CAMPAIGN_STATUS_CHANGED,
    CampaignCostRecorded: catalog.CAMPAIGN_COST_RECORDED,
    CampaignMemberAdded: catalog.CAMPAIGN_MEMBER_ADDED,
    CampaignMemberStatusChanged: catalog.CAMPAIGN_MEMBER_STATUS_CHANGED,
    CampaignUpdated: catalog.CAMPAIGN_UPDATED,
}


class CampaignNotFound(Exception):
    pass


class CampaignAlreadyExists(Exception):
    pass


class MemberNotFound(Exception):
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
    members: MemberRepository,
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
    offered_before = campaign.member_statuses
    updated = campaign.revise(changes, now=now, by=by)
    if updated is None:
        return campaign
    dropped = removed_statuses(offered_before, campaign.member_statuses)
    if dropped and (held := await members.statuses_in_use(campaign.id, dropped, uow.session)):
        raise IllegalTransition(
            "member_statuses",
            "members hold " + ", ".join(s.value for s in held) + ": the campaign must keep offering it",
        )
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


# -- members ----------------------------------------------------------------------------------
async def add_members(
    campaigns: CampaignRepository,
    members: MemberRepository,
    opportunities: OpportunityRepository,
    uow: UnitOfWork,
    campaign_id: str,
    wanted: list[NewMember],
    *,
    by: Actor,
) -> list[MemberAddition]:
    """Add leads and contacts by hand, in one transaction. Each is added, found to be a member
    already (and left as it is, so a retried request changes nothing), or refused with the
    reason; a lead added by hand is touched by the campaign now."""
    campaign = await _load(campaigns, uow, campaign_id, None)
    existing = await members.get_many(campaign.id, [w.member_id for w in wanted], uow.session)
    lead_ids = [w.record_id for w in wanted if w.member_type is MemberType.LEAD]
    conversions = await members.conversions(lead_ids, uow.session) if lead_ids else {}
    merged_into = await members.merged_into(lead_ids, uow.session) if lead_ids else {}
    unknown = set(lead_ids) - merged_into.keys()
    if unknown:
        unknown -= await members.known_lead_ids(unknown, uow.session)
    now = _now()
    added: dict[str, CampaignMember] = {}
    results: list[MemberAddition] = []
    for index, new in enumerate(wanted):
        known = existing.get(new.member_id) or added.get(new.member_id)
        if known is not None:
            results.append(
                MemberAddition(
                    index=index, member_id=new.member_id, outcome=AddOutcome.ALREADY_MEMBER, member=known
                )
            )
            continue
        if (refusal := _lead_refusal(new, merged_into, unknown)) is not None:
            results.append(
                MemberAddition(
                    index=index,
                    member_id=new.member_id,
                    outcome=AddOutcome.REFUSED,
                    reason=refusal,
                    field="lead_id",
                )
            )
            continue
        status = new.status or campaign.first_member_status
        try:
            campaign.check_offers(status)
        except InvalidCampaign as exc:
            results.append(
                MemberAddition(
                    index=index,
                    member_id=new.member_id,
                    outcome=AddOutcome.REFUSED,
                    reason=exc.reason,
                    field=exc.field,
                )
            )
            continue
        member = CampaignMember.join(
            campaign.id, new.member_type, new.record_id, status=status, at=now, via=VIA_API, by=by.id
        )
        if (conversion := conversions.get(new.record_id)) and new.member_type is MemberType.LEAD:
            member.apply_conversion(conversion)
        added[new.member_id] = member
        results.append(
            MemberAddition(index=index, member_id=new.member_id, outcome=AddOutcome.ADDED, member=member)
        )
    joining = {m.lead_id: m for m in added.values() if m.lead_id is not None}
    await _refresh_attribution(members, opportunities, uow, list(joining), joining)
    await members.add_many(list(added.values()), uow.session)
    for member in added.values():
        await _emit(uow, member.added_event(VIA_API), subject=campaign.id, version=None, time=now)
    return results


def _lead_refusal(new: NewMember, merged_into: dict[str, str], unknown: set[str]) -> str | None:
    """Why a lead cannot be added by hand: one merged into another lives on as the survivor
    (add that one), and one no lead event has named yet is no lead campaigns can count."""
    if new.member_type is not MemberType.LEAD:
        return None  # contacts are the opportunities service's; none of their events come here
    if new.record_id in merged_into:
        survivor = surviving_lead(new.record_id, merged_into)
        return f"lead {new.record_id} was merged into lead {survivor}: add {survivor} instead"
    if new.record_id in unknown:
        return (
            f"unknown lead {new.record_id}: no lead.created has named it here yet "
            "(a lead captured just now is known within seconds; retry then)"
        )
    return None


async def change_member_status(
    campaigns: CampaignRepository,
    members: MemberRepository,
    uow: UnitOfWork,
    campaign_id: str,
    member_id: str,
    status: MemberStatus,
    *,
    by: Actor,
    expected_version: int | None = None,
) -> CampaignMember:
    """Move a member to another of the campaign's statuses (forward, or to unsubscribed);
    the same status again changes nothing."""
    campaign = await _load(campaigns, uow, campaign_id, None)
    member = await members.get(campaign.id, member_id, uow.session)
    if member is None:
        raise MemberNotFound(member_id)
    if expected_version is not None and expected_version != member.version:
        raise IllegalTransition(
            "expected_version",
            f"the member is at version {member.version}, not {expected_version}: reload and retry",
        )
    now = _now()
    previous = member.change_status(status, offered=campaign.offered_statuses, now=now, by=by.id)
    if previous is None:
        return member
    expected = member.version
    member.version += 1
    await members.save(member, expected, uow.session)
    changed = member.status_changed_event(previous, responses=campaign.response_statuses, at=now, by=by)
    await _emit(uow, changed, subject=campaign.id, version=None, time=now)
    return member


async def add_lead_member(
    members: MemberRepository, opportunities: OpportunityRepository, uow: UnitOfWork, created: LeadCreated
) -> bool:
    """A lead captured with a campaign id becomes that campaign's member: a touch at its
    capture. Returns whether the membership was new."""
    lead = created.lead
    await members.record_leads([_reference(lead)], uow.session)
    if lead.campaign_id is None:
        return False
    return await _touch_lead(
        members,
        opportunities,
        uow,
        lead.campaign_id,
        lead.lead_id,
        at=lead.captured_at,
        via=catalog.LEAD_CREATED.topic,
        lead_source=lead.lead_source,
    )


def _reference(lead: LeadSnapshot) -> LeadReference:
    return LeadReference(lead_id=lead.lead_id, source_system=lead.source_system, external_id=lead.external_id)


async def follow_lead_update(
    members: MemberRepository, opportunities: OpportunityRepository, uow: UnitOfWork, updated: LeadUpdated
) -> bool:
    """A lead re-captured through another campaign (or the same one again) is touched by it at
    that capture; the snapshot's campaign and capture time say which and when. Touches are never
    taken back: a lead whose campaign is cleared keeps the touches it had."""
    lead = updated.lead
    await members.record_leads([_reference(lead)], uow.session)
    if lead.campaign_id is None:
        return False
    return await _touch_lead(
        members,
        opportunities,
        uow,
        lead.campaign_id,
        lead.lead_id,
        at=lead.captured_at,
        via=catalog.LEAD_UPDATED.topic,
        lead_source=lead.lead_source,
    )


async def record_lead_conversion(
    members: MemberRepository,
    opportunities: OpportunityRepository,
    uow: UnitOfWork,
    converted: LeadConverted,
) -> bool:
    """The lead's memberships count as converted, and an opportunity opened on conversion is
    credited to the lead's first touch; a lead converted with a campaign is its member even
    before its ``lead.created`` arrives. Returns whether a member was new."""
    survivor = surviving_lead(converted.lead_id, await members.merged_into([converted.lead_id], uow.session))
    if survivor != converted.lead_id:
        # The leads service converts no merged lead; should one come, it is the survivor's.
        converted = converted.model_copy(update={"lead_id": survivor})
    await members.record_conversion(converted, uow.session)
    added = False
    if converted.campaign_id is not None:
        added = await _touch_lead(
            members,
            opportunities,
            uow,
            converted.campaign_id,
            converted.lead_id,
            at=converted.captured_at or converted.converted_at,
            via=catalog.LEAD_CONVERTED.topic,
            lead_source=converted.lead_source,
        )
    opened = converted.opportunity
    if opened is not None:
        credited = await members.first_touch_campaign(converted.lead_id, uow.session) or converted.campaign_id
        if credited is not None:
            await opportunities.attribute(
                opened.opportunity_id,
                campaign_id=credited,
                own_campaign_id=converted.campaign_id,
                lead_id=converted.lead_id,
                amount=opened.amount,
                currency=opened.currency,
                session=uow.session,
            )
    return added


async def _touch_lead(
    members: MemberRepository,
    opportunities: OpportunityRepository,
    uow: UnitOfWork,
    campaign_id: str,
    lead_id: str,
    *,
    at: datetime,
    via: str,
    lead_source: str,
) -> bool:
    """The campaign reached the lead at ``at`` through a capture: make it a member (status
    ``responded``) or widen its touch, then re-derive the lead's first touch. Every step keeps
    minimums, maximums and sets, so the same touches in any order give the same membership.
    A touch of a lead merged into another one is the duplicate's membership as it would have
    been, folded into the survivor's (as the merge folded what it had)."""
    chain = merge_chain(lead_id, await members.merged_into([lead_id], uow.session))
    if len(chain) > 1:
        late = CampaignMember.join(
            campaign_id,
            MemberType.LEAD,
            lead_id,
            status=STATUS_ON_CAPTURE,
            at=at,
            via=via,
            by=CAPTURE.id,
            lead_source=lead_source,
        )
        late.merged_from = chain[1:-1]  # the leads in between were merged on, as it was
        return await _fold_into_survivor(members, opportunities, uow, chain[-1], [late])
    member = await members.get(campaign_id, member_id_for(MemberType.LEAD, lead_id), uow.session)
    if member is None:
        member = CampaignMember.join(
            campaign_id,
            MemberType.LEAD,
            lead_id,
            status=STATUS_ON_CAPTURE,
            at=at,
            via=via,
            by=CAPTURE.id,
            lead_source=lead_source,
        )
        if conversion := (await members.conversions([lead_id], uow.session)).get(lead_id):
            member.apply_conversion(conversion)
        await _refresh_attribution(members, opportunities, uow, [lead_id], {lead_id: member})
        await members.add(member, uow.session)
        await _emit(uow, member.added_event(via), subject=campaign_id, version=None, time=_now())
        return True
    before = member.model_dump()
    member.touch(at, via=via, lead_source=lead_source)
    previous = member.respond_through_capture(at, by=CAPTURE.id)
    if member.model_dump() == before:
        return False
    expected = member.version
    member.version += 1
    await _refresh_attribution(members, opportunities, uow, [lead_id], {lead_id: member})
    await members.save(member, expected, uow.session)
    if previous is not None:
        changed = member.status_changed_event(previous, responses=CAPTURE_RESPONSES, at=at, by=CAPTURE)
        await _emit(uow, changed, subject=campaign_id, version=None, time=_now())
    return False


async def merge_lead_memberships(
    members: MemberRepository, opportunities: OpportunityRepository, uow: UnitOfWork, merged: LeadMerged
) -> bool:
    """A duplicate lead was merged into a survivor: its memberships become the survivor's (one
    per campaign: folded into the survivor's own, or moved to it), its opportunities follow,
    and the survivor's first touch is re-derived. The merge is remembered, so a touch of the
    duplicate arriving later lands on the survivor too; a survivor merged again later passes
    everything on along the chain. Returns whether anything changed."""
    duplicate_id = merged.merged_lead_id
    await members.record_merge(duplicate_id, merged.survivor.lead_id, merged.merged_at, uow.session)
    chain = merge_chain(duplicate_id, await members.merged_into([duplicate_id], uow.session))
    survivor = chain[-1]
    if survivor == duplicate_id:
        return False  # a cycle of merges, which the leads service never makes
    theirs = await members.lead_memberships([duplicate_id], uow.session)
    for membership in theirs:
        await members.remove(membership, membership.version, uow.session)
        # The survivor merged on since: its membership passes through it, as it would have.
        membership.merged_from = sorted({*membership.merged_from, *chain[1:-1]})
    await opportunities.relink_lead(duplicate_id, survivor, uow.session)
    changed = await _fold_into_survivor(members, opportunities, uow, survivor, theirs)
    return changed or bool(theirs)


async def _fold_into_survivor(
    members: MemberRepository,
    opportunities: OpportunityRepository,
    uow: UnitOfWork,
    survivor_id: str,
    duplicates: list[CampaignMember],
) -> bool:
    """Fold memberships of leads merged into ``survivor_id`` (already removed, or never
    stored) into the survivor's, re-derive its first touch and credit its opportunities to it.
    A membership new to the survivor is announced (``campaign.member_added``, via
    ``lead.merged``); a status a fold moves is not (``lead.merged`` says what happened)."""
    held = {m.campaign_id: m for m in await members.lead_memberships([survivor_id], uow.session)}
    conversion = (await members.conversions([survivor_id], uow.session)).get(survivor_id)
    read_versions = {campaign_id: m.version for campaign_id, m in held.items()}
    added: dict[str, CampaignMember] = {}
    changed: set[str] = set()
    for duplicate in duplicates:
        mine = held.get(duplicate.campaign_id) or added.get(duplicate.campaign_id)
        if mine is None:
            added[duplicate.campaign_id] = duplicate.for_survivor(survivor_id, conversion)
            continue
        before = mine.model_dump()
        mine.absorb(duplicate)
        if mine.model_dump() != before and duplicate.campaign_id in held:
            changed.add(duplicate.campaign_id)
    everyone = {**held, **added}
    first_campaign, marks = first_touch_changes((m.lead_touch(), m.first_touch) for m in everyone.values())
    for campaign_id, mark in marks.items():
        everyone[campaign_id].first_touch = mark
        if campaign_id in held:
            changed.add(campaign_id)
    for campaign_id in sorted(changed):
        member = held[campaign_id]
        member.version = read_versions[campaign_id] + 1
        await members.save(member, read_versions[campaign_id], uow.session)
    await members.add_many(list(added.values()), uow.session)
    now = _now()
    for member in added.values():
        await _emit(uow, member.added_event(VIA_MERGE), subject=member.campaign_id, version=None, time=now)
    first = first_touch(m.lead_touch() for m in everyone.values())
    if first is not None:
        await opportunities.reattribute({survivor_id: first.campaign_id}, uow.session)
    return bool(changed or added or first_campaign)


async def _refresh_attribution(
    members: MemberRepository,
    opportunities: OpportunityRepository,
    uow: UnitOfWork,
    lead_ids: list[str],
    pending: dict[str, CampaignMember],
) -> None:
    """Re-derive the first touch of these leads from their touches; where it moved, move the
    mark and credit the leads' opportunities to it. ``pending`` holds, per lead, a membership
    changed in memory and written by the caller afterwards: its touch counts as it is now, and
    its mark is set on the object, so it needs no second write."""
    if not lead_ids:
        return
    stored = await members.lead_touches(lead_ids, uow.session)
    moved: dict[str, str] = {}
    marks: dict[str, dict[str, bool]] = {}
    for lead_id in lead_ids:
        touches = stored.get(lead_id, [])
        member = pending.get(lead_id)
        if member is not None:
            touches = [t for t in touches if t[0].campaign_id != member.campaign_id]
            touches.append((member.lead_touch(), member.first_touch))
        campaign_id, changes = first_touch_changes(touches)
        if campaign_id is not None:
            moved[lead_id] = campaign_id
        if member is not None and member.campaign_id in changes:
            member.first_touch = changes.pop(member.campaign_id)
        if changes:
            marks[lead_id] = changes
    await members.mark_first_touches(marks, uow.session)
    await opportunities.reattribute(moved, uow.session)


async def import_lead_member(
    members: MemberRepository,
    opportunities: OpportunityRepository,
    uow: UnitOfWork,
    campaign: Campaign,
    lead_id: str,
    history: list[ImportedStatus],
    *,
    by: Actor,
) -> bool:
    """An exported membership of a lead: a touch of the campaign at its join, and the statuses
    it held (``imported_history``), each emitted as a live member's would be, at its own time
    (``campaign.member_added`` with the joining status, then ``campaign.member_status_changed``
    per step). A membership the campaign has already (e.g. from the lead's capture) gains the
    statuses it did not reach yet that are forward moves from where it stands; statuses it has
    reached are skipped, so importing the same file again changes nothing and emits nothing.
    Returns whether anything changed."""
    joined = history[0]
    member = await members.get(campaign.id, member_id_for(MemberType.LEAD, lead_id), uow.session)
    events: list[tuple[BaseModel, datetime]] = []
    if member is None:
        member = CampaignMember.join(
            campaign.id,
            MemberType.LEAD,
            lead_id,
            status=joined.status,
            at=joined.at,
            via=VIA_IMPORT,
            by=by.id,
        )
        if conversion := (await members.conversions([lead_id], uow.session)).get(lead_id):
            member.apply_conversion(conversion)
        events.append((member.added_event(VIA_IMPORT), joined.at))
        expected = None
        touched = True
    else:
        expected = member.version
        touched = member.touch(joined.at, via=VIA_IMPORT)
    for step in history:
        if step.status in member.reached or not _moves_forward(member, step.status, campaign):
            continue
        previous = member.status
        member.status = step.status
        member.status_history.append(MemberStatusEntry(status=step.status, at=step.at, by=by.id))
        member.version += 1
        changed = member.status_changed_event(
            previous, responses=campaign.response_statuses, at=step.at, by=by
        )
        events.append((changed, step.at))
    if expected is not None and not touched and not events:
        return False
    if expected is not None and member.version == expected:
        member.version += 1  # a widened touch is a change of the membership too
    if touched:
        await _refresh_attribution(members, opportunities, uow, [lead_id], {lead_id: member})
    if expected is None:
        await members.add(member, uow.session)
    else:
        await members.save(member, expected, uow.session)
    for data, at in events:
        await _emit(uow, data, subject=campaign.id, version=None, time=at)
    return True


def _moves_forward(member: CampaignMember, status: MemberStatus, campaign: Campaign) -> bool:
    try:
        return check_member_status_change(member.status, status, campaign.offered_statuses)
    except CampaignRuleViolation:
        return False  # behind where the member stands now: what it holds is newer


class LeadTouches(BaseModel):
    """Every campaign that reached a lead, earliest first, and the first and last touch."""

    lead_id: str
    first_touch_campaign_id: str | None
    last_touch_campaign_id: str | None
    touches: list[LeadTouch]


async def touches_of_lead(members: MemberRepository, lead_id: str) -> LeadTouches:
    found = [touch for touch, _ in (await members.lead_touches([lead_id])).get(lead_id, [])]
    first, last = first_touch(found), last_touch(found)
    return LeadTouches(
        lead_id=lead_id,
        first_touch_campaign_id=first.campaign_id if first else None,
        last_touch_campaign_id=last.campaign_id if last else None,
        touches=sorted(found, key=lambda t: (t.first_touched_at, t.campaign_id)),
    )


# -- opportunities ----------------------------------------------------------------------------
async def follow_opportunity(
    members: MemberRepository,
    opportunities: OpportunityRepository,
    uow: UnitOfWork,
    figures: OpportunityFigures,
    *,
    state: OpportunityState,
    version: int | None,
) -> bool:
    """Keep the state of an opportunity a campaign may be credited with: its lead's first touch,
    else its own campaign (from the event, or from its lead's conversion). One with a lead but
    no campaign yet is kept until the lead's touches or conversion arrive. Returns whether
    anything changed."""
    if figures.lead_id is not None:
        merged_into = await members.merged_into([figures.lead_id], uow.session)
        figures = figures.model_copy(update={"lead_id": surviving_lead(figures.lead_id, merged_into)})
    own = figures.campaign_id or await opportunities.own_campaign(figures.opportunity_id, uow.session)
    if own is None and figures.lead_id is None:
        return False  # nothing can ever attribute it to a campaign
    first = await members.first_touch_campaign(figures.lead_id, uow.session) if figures.lead_id else None
    return await opportunities.record(
        figures.opportunity_id,
        campaign_id=first or own,
        own_campaign_id=own,
        lead_id=figures.lead_id,
        amount=figures.amount,
        currency=figures.currency,
        state=state,
        version=version,
        session=uow.session,
    )
