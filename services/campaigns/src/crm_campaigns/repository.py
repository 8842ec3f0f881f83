"""Where campaigns and their members are stored.

- ``campaigns``: one document per campaign, its cost ledger inside, written with an optimistic
  version check so two concurrent changes cannot both win silently.
- ``members``: one document per (campaign, lead or contact), with its status and, for a lead,
  its touch of the campaign and whether that is the lead's first touch. Keyed by the campaign id
  alone, without requiring the campaign to exist, so a lead naming a campaign that is created
  later is kept and shows up once the campaign does: arrival order does not matter.
- ``lead_conversions``: one document per converted lead, so a conversion that arrives before the
  lead's membership is still applied when the membership appears.
- ``opportunities``: the opportunities attributed to a campaign with their state (open, won,
  lost), guarded by the opportunity's version so an older event never overwrites a newer one.
- ``lead_merges``: one document per lead merged into another (``lead.merged``): the survivor
  it points at, so an event about the duplicate arriving after the merge lands on the survivor.
  Written insert-only.
- ``known_leads``: every lead seen in a ``lead.created`` or ``lead.updated``, with the system it
  was captured from and its id there, so a members import can name leads by either. Written
  insert-only (``$setOnInsert``): no indexed key ever moves by update.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from datetime import datetime
from decimal import Decimal
from typing import Any

from crm_contracts.events.campaigns import MemberStatus, MemberType
from crm_contracts.events.leads import LeadConverted
from crm_runtime.mongo import Document, compound_key, from_bson, to_bson
from crm_runtime.projection import replace_if_newer
from pymongo import ASCENDING, UpdateOne
from pymongo.asynchronous.client_session import AsyncClientSession
from pymongo.asynchronous.database import AsyncDatabase
from pymongo.errors import BulkWriteError

from .domain import (
    Campaign,
    CampaignMember,
    LeadConversion,
    LeadReference,
    LeadTouch,
    MemberCounts,
    OpportunityOutcome,
    OpportunityState,
    member_id_for,
)

CAMPAIGNS = "campaigns"
MEMBERS = "members"
LEAD_CONVERSIONS = "lead_conversions"
OPPORTUNITIES = "opportunities"
KNOWN_LEADS = "known_leads"
LEAD_MERGES = "lead_merges"
# Survivors are merged again rarely; a chain longer than this is followed no further.
MAX_MERGE_CHAIN = 16
DUPLICATE_KEY = 11000


class ConcurrentModification(Exception):
    """Someone else changed the campaign since it was read."""


class CampaignRepository:
    def __init__(self, db: AsyncDatabase[Document]) -> None:
        self._campaigns = db[CAMPAIGNS]

    async def ensure_indexes(self) -> None:
        await self._campaigns.create_index([("status", ASCENDING), ("_id", ASCENDING)])
        await self._campaigns.create_index([("type", ASCENDING), ("_id", ASCENDING)])
        await self._campaigns.create_index([("owner_id", ASCENDING), ("_id", ASCENDING)])
        await self._campaigns.create_index([("parent_campaign_id", ASCENDING), ("_id", ASCENDING)])

    async def get(self, campaign_id: str, session: AsyncClientSession | None = None) -> Campaign | None:
        doc = await self._campaigns.find_one({"_id": campaign_id}, session=session)
        return _to_campaign(doc) if doc else None

    async def exists(self, campaign_id: str, session: AsyncClientSession | None = None) -> bool:
        return await self._campaigns.find_one({"_id": campaign_id}, {"_id": 1}, session=session) is not None

    async def ancestors(
        self, campaign_id: str, session: AsyncClientSession, *, limit: int
    ) -> list[str] | None:
        """``campaign_id`` and the campaigns above it, nearest first (at most ``limit``);
        None if ``campaign_id`` does not exist."""
        chain: list[str] = []
        current: str | None = campaign_id
        while current is not None and len(chain) < limit:
            doc = await self._campaigns.find_one({"_id": current}, {"parent_campaign_id": 1}, session=session)
            if doc is None:
                return None if not chain else chain
            chain.append(current)
            current = doc.get("parent_campaign_id")
        return chain

    async def sub_campaigns(self, campaign_id: str, *, depth: int) -> list[Campaign]:
        """Every campaign below ``campaign_id``, level by level, down to ``depth`` levels."""
        found: list[Campaign] = []
        seen = {campaign_id}
        level = [campaign_id]
        for _ in range(depth):
            children = [
                _to_campaign(doc)
                for doc in await self._campaigns.find(
                    {"parent_campaign_id": {"$in": level}}, sort=[("_id", ASCENDING)]
                ).to_list()
            ]
            children = [c for c in children if c.id not in seen]
            if not children:
                break
            found += children
            seen.update(c.id for c in children)
            level = [c.id for c in children]
        return found

    async def named(
        self, campaign_ids: Iterable[str], names: Iterable[str], session: AsyncClientSession
    ) -> list[Campaign]:
        """The campaigns with these ids or names, in one query (without their cost ledgers:
        for reading their member statuses, never for saving)."""
        query: Document = {
            "$or": [{"_id": {"$in": sorted(set(campaign_ids))}}, {"name": {"$in": sorted(set(names))}}]
        }
        cursor = self._campaigns.find(query, {"cost_entries": 0}, session=session)
        return [_to_campaign(doc) for doc in await cursor.to_list()]

    async def names(self, session: AsyncClientSession, *, limit: int) -> list[tuple[str, str]]:
        """Up to ``limit`` campaigns' ids and names (what a rejected reference may have meant)."""
        cursor = self._campaigns.find({}, {"name": 1}, limit=limit, session=session)
        return [(doc["_id"], doc["name"]) for doc in await cursor.to_list()]

    async def add(self, campaign: Campaign, session: AsyncClientSession) -> None:
        await self._campaigns.insert_one(_to_document(campaign), session=session)

    async def update(self, campaign: Campaign, expected_version: int, session: AsyncClientSession) -> None:
        result = await self._campaigns.replace_one(
            {"_id": campaign.id, "version": expected_version}, _to_document(campaign), session=session
        )
        if result.matched_count != 1:
            raise ConcurrentModification(f"campaign {campaign.id} changed since version {expected_version}")

    async def list(self, *, filters: dict[str, Any], limit: int, after_id: str | None) -> list[Campaign]:
        query: Document = dict(filters)
        if after_id is not None:
            query["_id"] = {"$gt": after_id}
        cursor = self._campaigns.find(query, sort=[("_id", ASCENDING)], limit=limit)
        return [_to_campaign(doc) for doc in await cursor.to_list()]


def _to_document(campaign: Campaign) -> Document:
    doc: Document = to_bson(campaign.model_dump(exclude={"id"}))
    doc["_id"] = campaign.id
    # Denormalised for lists and queries; the ledger stays the source of truth.
    doc["actual_cost"] = to_bson(campaign.actual_cost)
    return doc


def _to_campaign(doc: Document) -> Campaign:
    data = from_bson(doc)
    data["id"] = data.pop("_id")
    data.pop("actual_cost", None)
    return Campaign.model_validate(data)


class MemberRepository:
    def __init__(self, db: AsyncDatabase[Document]) -> None:
        self.db = db
        self._members = db[MEMBERS]
        self._conversions = db[LEAD_CONVERSIONS]
        self._known_leads = db[KNOWN_LEADS]
        self._merges = db[LEAD_MERGES]

    async def ensure_indexes(self) -> None:
        await self._members.create_index([("campaign_id", ASCENDING), ("member_id", ASCENDING)], unique=True)
        await self._members.create_index([("lead_id", ASCENDING)], sparse=True)
        await self._members.create_index(
            [("campaign_id", ASCENDING), ("first_touch", ASCENDING), ("converted", ASCENDING)]
        )
        # Not unique (a lead id may be re-captured under another key); insert-only, never moved.
        await self._known_leads.create_index([("capture_key", ASCENDING)])

    # -- leads known here ---------------------------------------------------------------------
    async def record_leads(self, leads: Sequence[LeadReference], session: AsyncClientSession) -> None:
        """Remember leads seen in lead events; the first capture key seen for a lead stays."""
        operations = [
            UpdateOne({"_id": lead.lead_id}, {"$setOnInsert": _lead_document(lead)}, upsert=True)
            for lead in leads
        ]
        if operations:
            await self._known_leads.bulk_write(operations, ordered=False, session=session)

    async def known_leads(
        self, lead_ids: Iterable[str], capture_keys: Iterable[str], session: AsyncClientSession
    ) -> list[LeadReference]:
        """The known leads with these ids or capture keys (``LeadReference.capture_key``)."""
        query: Document = {
            "$or": [
                {"_id": {"$in": sorted(set(lead_ids))}},
                {"capture_key": {"$in": sorted(set(capture_keys))}},
            ]
        }
        cursor = self._known_leads.find(query, session=session)
        return [
            LeadReference(
                lead_id=doc["_id"], source_system=doc["source_system"], external_id=doc["external_id"]
            )
            for doc in await cursor.to_list()
        ]

    async def known_lead_ids(self, lead_ids: Iterable[str], session: AsyncClientSession) -> set[str]:
        """Those of these leads a lead event (or a conversion) has named: two queries."""
        wanted = {"_id": {"$in": sorted(set(lead_ids))}}
        known = {
            doc["_id"] for doc in await self._known_leads.find(wanted, {"_id": 1}, session=session).to_list()
        }
        converted = await self._conversions.find(wanted, {"_id": 1}, session=session).to_list()
        return known | {doc["_id"] for doc in converted}

    # -- merges -------------------------------------------------------------------------------
    async def record_merge(
        self, duplicate_id: str, survivor_id: str, merged_at: datetime, session: AsyncClientSession
    ) -> None:
        """Remember that ``duplicate_id`` lives on as ``survivor_id`` (the first merge seen stays:
        a lead is merged once)."""
        await self._merges.update_one(
            {"_id": duplicate_id},
            {"$setOnInsert": {"survivor_id": survivor_id, "merged_at": merged_at}},
            upsert=True,
            session=session,
        )

    async def merged_into(self, lead_ids: Iterable[str], session: AsyncClientSession) -> dict[str, str]:
        """For those of these leads that were merged: the survivor each one points at, and so on
        along the chain (one query per link; ``surviving_lead`` resolves it)."""
        found: dict[str, str] = {}
        wanted = sorted(set(lead_ids))
        for _ in range(MAX_MERGE_CHAIN):
            if not wanted:
                break
            docs = await self._merges.find({"_id": {"$in": wanted}}, session=session).to_list()
            found.update({doc["_id"]: doc["survivor_id"] for doc in docs})
            wanted = sorted({doc["survivor_id"] for doc in docs} - found.keys())
        return found

    async def lead_memberships(
        self, lead_ids: Sequence[str], session: AsyncClientSession
    ) -> list[CampaignMember]:
        """Every campaign membership of these leads."""
        cursor = self._members.find(
            {"lead_id": {"$in": list(lead_ids)}, "member_type": MemberType.LEAD.value}, session=session
        )
        return [_to_member(doc) for doc in await cursor.to_list()]

    async def get(
        self, campaign_id: str, member_id: str, session: AsyncClientSession | None = None
    ) -> CampaignMember | None:
        doc = await self._members.find_one({"_id": _member_key(campaign_id, member_id)}, session=session)
        return _to_member(doc) if doc else None

    async def get_many(
        self, campaign_id: str, member_ids: Sequence[str], session: AsyncClientSession
    ) -> dict[str, CampaignMember]:
        keys = [_member_key(campaign_id, member_id) for member_id in member_ids]
        cursor = self._members.find({"_id": {"$in": keys}}, session=session)
        return {member.member_id: member for member in map(_to_member, await cursor.to_list())}

    async def add(self, member: CampaignMember, session: AsyncClientSession) -> None:
        await self._members.insert_one(_member_document(member), session=session)

    async def add_many(self, members: Sequence[CampaignMember], session: AsyncClientSession) -> None:
        if not members:
            return
        try:
            await self._members.insert_many([_member_document(m) for m in members], session=session)
        except BulkWriteError as exc:
            errors = exc.details.get("writeErrors", [])
            if not errors or any(error.get("code") != DUPLICATE_KEY for error in errors):
                raise
            # Another request added one of them since this one looked: the client may retry.
            raise ConcurrentModification("a member was added concurrently") from exc

    async def save(self, member: CampaignMember, expected_version: int, session: AsyncClientSession) -> None:
        """Store a changed membership unless someone changed it since ``expected_version``."""
        result = await self._members.replace_one(
            {"_id": _member_key(member.campaign_id, member.member_id), "version": expected_version},
            _member_document(member),
            session=session,
        )
        if result.matched_count != 1:
            raise ConcurrentModification(
                f"member {member.member_id} changed since version {expected_version}"
            )

    async def remove(
        self, member: CampaignMember, expected_version: int, session: AsyncClientSession
    ) -> None:
        """Delete a membership (a merged duplicate's, folded into the survivor's) unless someone
        changed it since ``expected_version``."""
        result = await self._members.delete_one(
            {"_id": _member_key(member.campaign_id, member.member_id), "version": expected_version},
            session=session,
        )
        if result.deleted_count != 1:
            raise ConcurrentModification(
                f"member {member.member_id} changed since version {expected_version}"
            )

    async def statuses_in_use(
        self, campaign_id: str, statuses: Iterable[MemberStatus], session: AsyncClientSession
    ) -> list[MemberStatus]:
        wanted = sorted(s.value for s in statuses)
        held = await self._members.distinct(
            "status", {"campaign_id": campaign_id, "status": {"$in": wanted}}, session=session
        )
        return sorted(MemberStatus(s) for s in held)

    # -- conversions --------------------------------------------------------------------------
    async def conversions(
        self, lead_ids: Sequence[str], session: AsyncClientSession
    ) -> dict[str, LeadConversion]:
        cursor = self._conversions.find({"_id": {"$in": list(lead_ids)}}, session=session)
        return {doc["_id"]: _to_conversion(doc) for doc in await cursor.to_list()}

    async def record_conversion(self, converted: LeadConverted, session: AsyncClientSession) -> None:
        """Remember the lead's conversion (a membership made later picks it up) and mark its
        memberships converted."""
        conversion = LeadConversion(
            converted_at=converted.converted_at,
            account_id=converted.account.account_id,
            contact_id=converted.contact.contact_id,
            opportunity_id=converted.opportunity.opportunity_id if converted.opportunity else None,
        )
        await self._conversions.replace_one(
            {"_id": converted.lead_id},
            {**to_bson(conversion.model_dump()), "campaign_id": converted.campaign_id},
            upsert=True,
            session=session,
        )
        await self._members.update_many(
            {"lead_id": converted.lead_id, "member_type": MemberType.LEAD.value},
            {"$set": to_bson(conversion.fields()), "$inc": {"version": 1}},
            session=session,
        )

    # -- touches and attribution --------------------------------------------------------------
    async def lead_touches(
        self, lead_ids: Sequence[str], session: AsyncClientSession | None = None
    ) -> dict[str, list[tuple[LeadTouch, bool]]]:
        """Each lead's touches (its memberships), with whether each is marked as its first."""
        cursor = self._members.find(
            {"lead_id": {"$in": list(lead_ids)}, "member_type": MemberType.LEAD.value},
            {
                "lead_id": 1,
                "campaign_id": 1,
                "joined_at": 1,
                "last_touched_at": 1,
                "touched_via": 1,
                "first_touch": 1,
            },
            session=session,
        )
        touches: dict[str, list[tuple[LeadTouch, bool]]] = {}
        for doc in await cursor.to_list():
            touch = LeadTouch(
                campaign_id=doc["campaign_id"],
                first_touched_at=doc["joined_at"],
                last_touched_at=doc["last_touched_at"],
                touched_via=doc["touched_via"],
            )
            touches.setdefault(doc["lead_id"], []).append((touch, bool(doc.get("first_touch"))))
        return touches

    async def mark_first_touches(
        self, marks: dict[str, dict[str, bool]], session: AsyncClientSession
    ) -> None:
        """Set or clear the first-touch mark of memberships: ``{lead_id: {campaign_id: mark}}``."""
        operations = [
            UpdateOne(
                {"_id": _member_key(campaign_id, member_id_for(MemberType.LEAD, lead_id))},
                {"$set": {"first_touch": mark}},
            )
            for lead_id, by_campaign in marks.items()
            for campaign_id, mark in by_campaign.items()
        ]
        if operations:
            await self._members.bulk_write(operations, ordered=False, session=session)

    async def first_touch_campaign(self, lead_id: str, session: AsyncClientSession) -> str | None:
        doc = await self._members.find_one(
            {"lead_id": lead_id, "member_type": MemberType.LEAD.value, "first_touch": True},
            {"campaign_id": 1},
            session=session,
        )
        return doc["campaign_id"] if doc else None

    # -- reading ------------------------------------------------------------------------------
    async def list(
        self,
        campaign_id: str,
        *,
        limit: int,
        after_member_id: str | None,
        converted: bool | None = None,
        status: MemberStatus | None = None,
        member_type: MemberType | None = None,
    ) -> list[CampaignMember]:
        query: Document = {"campaign_id": campaign_id}
        if after_member_id is not None:
            query["member_id"] = {"$gt": after_member_id}
        if converted is not None:
            query["converted"] = converted
        if status is not None:
            query["status"] = status.value
        if member_type is not None:
            query["member_type"] = member_type.value
        cursor = self._members.find(query, sort=[("member_id", ASCENDING)], limit=limit)
        return [_to_member(doc) for doc in await cursor.to_list()]

    async def counts(self, campaigns: Sequence[Campaign]) -> MemberCounts:
        """The member figures of these campaigns (see ``MemberCounts``). A member of several of
        them counts once; a lead has one first touch, so it counts once as a lead."""
        ids = [c.id for c in campaigns]
        members: Document = {"campaign_id": {"$in": ids}}
        responded: Document = {
            "$or": [
                {"campaign_id": c.id, "reached": {"$in": sorted(s.value for s in c.response_statuses)}}
                for c in campaigns
            ]
        }
        attributed: Document = {**members, "first_touch": True}
        return MemberCounts(
            members=await self._count_members(members, single=len(ids) == 1),
            responses=await self._count_members(responded, single=len(ids) == 1),
            leads=await self._members.count_documents(attributed),
            converted_leads=await self._members.count_documents({**attributed, "converted": True}),
        )

    async def _count_members(self, query: Document, *, single: bool) -> int:
        # Within one campaign a member has one document; across several, count distinct ids.
        if single:
            return await self._members.count_documents(query)
        return len(await self._members.distinct("member_id", query))


def _member_key(campaign_id: str, member_id: str) -> str:
    return compound_key(campaign_id, member_id)


def _lead_document(lead: LeadReference) -> Document:
    return {
        "source_system": lead.source_system,
        "external_id": lead.external_id,
        "capture_key": lead.capture_key,
    }


def _member_document(member: CampaignMember) -> Document:
    doc: Document = to_bson(member.model_dump())
    doc["_id"] = _member_key(member.campaign_id, member.member_id)
    # Denormalised so responses can be counted by the campaign's current response statuses.
    doc["reached"] = [status.value for status in member.reached]
    return doc


def _to_member(doc: Document) -> CampaignMember:
    data = from_bson(doc)
    data.pop("_id")
    data.pop("reached", None)
    return CampaignMember.model_validate(data)


def _to_conversion(doc: Document) -> LeadConversion:
    return LeadConversion.model_validate(from_bson(doc))


class OpportunityRepository:
    """Opportunities attributed to campaigns, as the opportunities service reports them. Each
    keeps its own campaign (``own_campaign_id``, from the opportunity or its lead's conversion)
    and the campaign it is credited to (``campaign_id``): its lead's first touch when the lead
    has touches here, else its own."""

    def __init__(self, db: AsyncDatabase[Document]) -> None:
        self.db = db
        self._opportunities = db[OPPORTUNITIES]

    async def ensure_indexes(self) -> None:
        await self._opportunities.create_index([("campaign_id", ASCENDING)])
        await self._opportunities.create_index([("lead_id", ASCENDING)], sparse=True)

    async def of(
        self, opportunity_ids: Sequence[str], lead_ids: Sequence[str], session: AsyncClientSession
    ) -> list[Document]:
        """The stored opportunities with these ids or of these leads, as stored."""
        query: Document = {
            "$or": [{"_id": {"$in": list(opportunity_ids)}}, {"lead_id": {"$in": list(lead_ids)}}]
        }
        return await self._opportunities.find(query, session=session).to_list()

    async def own_campaign(self, opportunity_id: str, session: AsyncClientSession) -> str | None:
        doc = await self._opportunities.find_one(
            {"_id": opportunity_id}, {"own_campaign_id": 1}, session=session
        )
        return doc.get("own_campaign_id") if doc else None

    async def record(
        self,
        opportunity_id: str,
        *,
        campaign_id: str | None,
        own_campaign_id: str | None,
        lead_id: str | None,
        amount: Decimal | None,
        currency: str | None,
        state: OpportunityState,
        version: int | None,
        session: AsyncClientSession,
    ) -> bool:
        """Store the opportunity's outcome unless a newer version is stored. Without a campaign
        it waits for its lead's touches or conversion to attribute it."""
        document = to_bson(
            {
                "campaign_id": campaign_id,
                "own_campaign_id": own_campaign_id,
                "lead_id": lead_id,
                "amount": amount,
                "currency": currency,
                "state": state,
            }
        )
        return await replace_if_newer(self._opportunities, opportunity_id, version, document, session)

    async def attribute(
        self,
        opportunity_id: str,
        *,
        campaign_id: str,
        own_campaign_id: str | None,
        lead_id: str,
        amount: Decimal | None,
        currency: str,
        session: AsyncClientSession,
    ) -> None:
        """The opportunity opened on the conversion of a lead of ``own_campaign_id``. Its outcome,
        if already known from the opportunities service, is kept."""
        if await self._opportunities.find_one({"_id": opportunity_id}, {"_id": 1}, session=session):
            await self._opportunities.update_one(
                {"_id": opportunity_id, "own_campaign_id": None},
                {"$set": {"own_campaign_id": own_campaign_id}},
                session=session,
            )
            await self._opportunities.update_one(
                {"_id": opportunity_id, "campaign_id": None},
                {"$set": {"campaign_id": campaign_id}},
                session=session,
            )
            return
        await self.record(
            opportunity_id,
            campaign_id=campaign_id,
            own_campaign_id=own_campaign_id,
            lead_id=lead_id,
            amount=amount,
            currency=currency,
            state=OpportunityState.OPEN,
            version=None,
            session=session,
        )

    async def reattribute(self, first_touch: dict[str, str], session: AsyncClientSession) -> None:
        """Credit the opportunities of these leads to each lead's (new) first-touch campaign."""
        if not first_touch:
            return
        cursor = self._opportunities.find(
            {"lead_id": {"$in": list(first_touch)}}, {"lead_id": 1, "campaign_id": 1}, session=session
        )
        operations = [
            UpdateOne({"_id": doc["_id"]}, {"$set": {"campaign_id": first_touch[doc["lead_id"]]}})
            for doc in await cursor.to_list()
            if doc.get("campaign_id") != first_touch[doc["lead_id"]]
        ]
        if operations:
            await self._opportunities.bulk_write(operations, ordered=False, session=session)

    async def relink_lead(self, duplicate_id: str, survivor_id: str, session: AsyncClientSession) -> None:
        """The opportunities of a merged duplicate are the survivor's from now on."""
        await self._opportunities.update_many(
            {"lead_id": duplicate_id}, {"$set": {"lead_id": survivor_id}}, session=session
        )

    async def outcomes(self, campaign_ids: Sequence[str]) -> list[OpportunityOutcome]:
        cursor = self._opportunities.find(
            {"campaign_id": {"$in": list(campaign_ids)}}, {"amount": 1, "currency": 1, "state": 1}
        )
        return [
            OpportunityOutcome.model_validate({**from_bson(doc), "opportunity_id": doc["_id"]})
            for doc in await cursor.to_list()
        ]
