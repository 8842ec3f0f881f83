"""Where campaigns and their members are stored.

- ``campaigns``: one document per campaign, its cost ledger inside, written with an optimistic
  version check so two concurrent changes cannot both win silently.
- ``members``: one document per (campaign, lead or contact). Keyed by the campaign id alone,
  without requiring the campaign to exist, so a lead naming a campaign that is created later is
  kept and shows up once the campaign does: arrival order does not matter.
- ``lead_conversions``: one document per converted lead, so a conversion that arrives before the
  lead's membership is still applied when the membership appears.
- ``opportunities``: the opportunities attributed to a campaign with their outcome, guarded by
  the opportunity's version so an older event never overwrites a newer one.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from decimal import Decimal
from typing import Any

from crm_contracts.events.campaigns import MemberType
from crm_contracts.events.leads import LeadConverted
from crm_runtime.mongo import Document, from_bson, to_bson
from crm_runtime.projection import replace_if_newer
from pymongo import ASCENDING
from pymongo.asynchronous.client_session import AsyncClientSession
from pymongo.asynchronous.database import AsyncDatabase

from .domain import (
    Campaign,
    CampaignMember,
    MemberCounts,
    OpportunityOutcome,
    OpportunityState,
    member_id_for,
)

CAMPAIGNS = "campaigns"
MEMBERS = "members"
LEAD_CONVERSIONS = "lead_conversions"
OPPORTUNITIES = "opportunities"


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
        self._members = db[MEMBERS]
        self._conversions = db[LEAD_CONVERSIONS]

    async def ensure_indexes(self) -> None:
        await self._members.create_index([("campaign_id", ASCENDING), ("member_id", ASCENDING)], unique=True)
        await self._members.create_index([("lead_id", ASCENDING)], sparse=True)

    async def add_lead(
        self,
        campaign_id: str,
        lead_id: str,
        *,
        joined_at: datetime,
        lead_source: str,
        session: AsyncClientSession,
    ) -> bool:
        """Make the lead a member of the campaign (once). Returns whether it was new."""
        conversion = await self._conversions.find_one({"_id": lead_id}, session=session)
        update: Document = {
            "$set": {"lead_source": lead_source},
            "$min": {"joined_at": joined_at},
        }
        if conversion is None:
            update["$setOnInsert"] = {"converted": False}
        else:
            update["$set"].update(_converted_fields(conversion))
        return await self._upsert_lead_member(campaign_id, lead_id, update, session)

    async def record_conversion(self, converted: LeadConverted, session: AsyncClientSession) -> bool:
        """Remember the lead's conversion and mark its memberships converted; a lead converted
        with a campaign is that campaign's member even if its ``lead.created`` is still on the
        way. Returns whether that made a new member."""
        conversion: Document = {
            "_id": converted.lead_id,
            "converted_at": converted.converted_at,
            "account_id": converted.account.account_id,
            "contact_id": converted.contact.contact_id,
            "opportunity_id": converted.opportunity.opportunity_id if converted.opportunity else None,
            "campaign_id": converted.campaign_id,
        }
        await self._conversions.replace_one(
            {"_id": converted.lead_id}, conversion, upsert=True, session=session
        )
        converted_fields = _converted_fields(conversion)
        await self._members.update_many(
            {"lead_id": converted.lead_id}, {"$set": converted_fields}, session=session
        )
        if converted.campaign_id is None:
            return False
        update: Document = {"$set": {"lead_source": converted.lead_source.value, **converted_fields}}
        if converted.captured_at is not None:
            update["$min"] = {"joined_at": converted.captured_at}
        return await self._upsert_lead_member(converted.campaign_id, converted.lead_id, update, session)

    async def _upsert_lead_member(
        self, campaign_id: str, lead_id: str, update: Document, session: AsyncClientSession
    ) -> bool:
        member_id = member_id_for(MemberType.LEAD, lead_id)
        update["$set"].update(
            {
                "campaign_id": campaign_id,
                "member_id": member_id,
                "member_type": MemberType.LEAD.value,
                "lead_id": lead_id,
            }
        )
        result = await self._members.update_one(
            {"_id": _member_key(campaign_id, member_id)}, update, upsert=True, session=session
        )
        return result.upserted_id is not None

    async def list(
        self,
        campaign_id: str,
        *,
        limit: int,
        after_member_id: str | None,
        converted: bool | None = None,
    ) -> list[CampaignMember]:
        query: Document = {"campaign_id": campaign_id}
        if after_member_id is not None:
            query["member_id"] = {"$gt": after_member_id}
        if converted is not None:
            query["converted"] = converted
        cursor = self._members.find(query, sort=[("member_id", ASCENDING)], limit=limit)
        return [_to_member(doc) for doc in await cursor.to_list()]

    async def counts(self, campaign_ids: Sequence[str]) -> MemberCounts:
        """Members of these campaigns, each lead or contact counted once however many of the
        campaigns it belongs to."""
        members: Document = {"campaign_id": {"$in": list(campaign_ids)}}
        leads = {**members, "member_type": MemberType.LEAD.value}
        return MemberCounts(
            members=len(await self._members.distinct("member_id", members)),
            leads=len(await self._members.distinct("member_id", leads)),
            converted_leads=len(await self._members.distinct("member_id", {**leads, "converted": True})),
        )


def _member_key(campaign_id: str, member_id: str) -> str:
    # '|' cannot occur in an id (see the Id pattern), so the key is unambiguous.
    return f"{campaign_id}|{member_id}"


def _converted_fields(conversion: Document) -> Document:
    return {
        "converted": True,
        "converted_at": conversion["converted_at"],
        "account_id": conversion["account_id"],
        "contact_id": conversion["contact_id"],
        "opportunity_id": conversion["opportunity_id"],
    }


def _to_member(doc: Document) -> CampaignMember:
    data = from_bson(doc)
    data.pop("_id")
    return CampaignMember.model_validate(data)


class OpportunityRepository:
    """Opportunities attributed to campaigns, as the opportunities service reports them."""

    def __init__(self, db: AsyncDatabase[Document]) -> None:
        self._opportunities = db[OPPORTUNITIES]

    async def ensure_indexes(self) -> None:
        await self._opportunities.create_index([("campaign_id", ASCENDING)])

    async def attributed_campaign(self, opportunity_id: str, session: AsyncClientSession) -> str | None:
        doc = await self._opportunities.find_one({"_id": opportunity_id}, {"campaign_id": 1}, session=session)
        return doc.get("campaign_id") if doc else None

    async def record(
        self,
        opportunity_id: str,
        *,
        campaign_id: str | None,
        lead_id: str | None,
        amount: Decimal | None,
        currency: str | None,
        state: OpportunityState,
        version: int | None,
        session: AsyncClientSession,
    ) -> bool:
        """Store the opportunity's outcome unless a newer version is stored. Without a campaign
        it waits for its lead's conversion to attribute it."""
        document = to_bson(
            {
                "campaign_id": campaign_id,
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
        lead_id: str,
        amount: Decimal | None,
        currency: str,
        session: AsyncClientSession,
    ) -> None:
        """The opportunity opened on the conversion of a lead of ``campaign_id`` is that
        campaign's. Its outcome, if already known from the opportunities service, is kept."""
        if await self._opportunities.find_one({"_id": opportunity_id}, {"_id": 1}, session=session):
            await self._opportunities.update_one(
                {"_id": opportunity_id, "campaign_id": None},
                {"$set": {"campaign_id": campaign_id}},
                session=session,
            )
            return
        await self.record(
            opportunity_id,
            campaign_id=campaign_id,
            lead_id=lead_id,
            amount=amount,
            currency=currency,
            state=OpportunityState.OPEN,
            version=None,
            session=session,
        )

    async def outcomes(self, campaign_ids: Sequence[str]) -> list[OpportunityOutcome]:
        cursor = self._opportunities.find(
            {"campaign_id": {"$in": list(campaign_ids)}}, {"amount": 1, "currency": 1, "state": 1}
        )
        return [
            OpportunityOutcome.model_validate({**from_bson(doc), "opportunity_id": doc["_id"]})
            for doc in await cursor.to_list()
        ]
