"""The memberships, conversions and opportunities a batch of lead and opportunity events (or a
chunk of a members import) can touch, read with one ``$in`` query per collection and held in
memory while the use cases apply the batch one event (row) at a time, in order; then stored
with one bulk write per collection.

Everything the use cases read about a lead is in the lead's memberships, its conversion and its
opportunities, and every write they make changes one of those, so what is held answers each read
exactly as the database would inside a transaction that had already applied the batch's earlier
events. A record the batch did not load (a lead no event named) is read when first asked for,
so the held state stays complete either way. Anything else a held repository is asked for is not
part of following lead events: it fails the batch, and the consumer applies its events one at a
time on the real repositories. A membership changed or added concurrently (an HTTP request)
fails the batch the same way: replacements are guarded by the version read, inserts by the
unique ``_id``."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any, NoReturn

import bson
from bson.codec_options import CodecOptions
from crm_contracts.events.campaigns import MemberStatus, MemberType
from crm_contracts.events.leads import LeadConverted
from crm_runtime.mongo import Document, to_bson
from crm_runtime.projection import VERSION_FIELD, is_newer
from pymongo import DeleteOne, InsertOne, ReplaceOne, UpdateOne
from pymongo.asynchronous.client_session import AsyncClientSession
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
from .repository import (
    ConcurrentModification,
    MemberRepository,
    OpportunityRepository,
    _lead_document,
    _member_document,
    _member_key,
    _to_conversion,
    _to_member,
)

_STORED: CodecOptions[Document] = CodecOptions(tz_aware=True)
_LEAD_PREFIX = member_id_for(MemberType.LEAD, "")


class NotInABatch(Exception):
    """A held repository was asked for something following lead events never does."""


def _not_in_a_batch(what: str) -> NoReturn:
    raise NotInABatch(f"{what} is not part of following lead events")


def _as_stored(doc: Document) -> Document:
    """The document as reading it back would give it (times at millisecond precision)."""
    return bson.decode(bson.encode(doc), codec_options=_STORED)


class HeldMembers(MemberRepository):
    """Lead memberships, lead conversions and known leads of one batch."""

    def __init__(self, real: MemberRepository, session: AsyncClientSession) -> None:
        super().__init__(real.db)
        self._session = session
        self._by_lead: dict[str, dict[str, CampaignMember]] = {}  # lead -> campaign -> member
        self._read_version: dict[str, int] = {}  # member key -> version as read
        self._changed: dict[str, CampaignMember] = {}
        self._held_conversions: dict[str, Document | None] = {}
        self._changed_conversions: dict[str, Document] = {}
        self._seen_leads: dict[str, LeadReference] = {}
        self._merged_into: dict[str, str] = {}  # duplicate -> survivor, of the leads loaded
        self._new_merges: dict[str, Document] = {}
        self._removed: dict[str, int] = {}  # member key -> version as read, to delete

    async def load(self, lead_ids: Iterable[str]) -> None:
        """The memberships and conversions of these leads: one query each."""
        wanted = sorted(set(lead_ids) - self._by_lead.keys())
        if not wanted:
            return
        for lead_id in wanted:
            self._by_lead[lead_id] = {}
            self._held_conversions[lead_id] = None
        for member in await super().lead_memberships(wanted, self._session):
            assert member.lead_id is not None
            self._by_lead[member.lead_id][member.campaign_id] = member
            self._read_version[_member_key(member.campaign_id, member.member_id)] = member.version
        for doc in await self._conversions.find({"_id": {"$in": wanted}}, session=self._session).to_list():
            self._held_conversions[doc["_id"]] = doc
        # Merges of the leads: one query, and one more per link of a chain (rare).
        for duplicate, survivor in (await super().merged_into(wanted, self._session)).items():
            self._merged_into.setdefault(duplicate, survivor)

    async def _of_lead(self, lead_id: str) -> dict[str, CampaignMember]:
        await self.load([lead_id])
        return self._by_lead[lead_id]

    def _hold(self, member: CampaignMember) -> None:
        assert member.lead_id is not None
        stored = _to_member(_as_stored(_member_document(member)))
        self._by_lead[member.lead_id][member.campaign_id] = stored
        self._changed[_member_key(member.campaign_id, member.member_id)] = stored

    async def merged_into(self, lead_ids: Iterable[str], session: AsyncClientSession) -> dict[str, str]:
        wanted = set(lead_ids)
        await self.load(wanted)
        found: dict[str, str] = {}
        while wanted:
            links = {lead: self._merged_into[lead] for lead in wanted if lead in self._merged_into}
            found.update(links)
            wanted = set(links.values()) - found.keys()
            await self.load(wanted)
        return found

    async def record_merge(
        self, duplicate_id: str, survivor_id: str, merged_at: Any, session: AsyncClientSession
    ) -> None:
        await self.load([duplicate_id])
        if duplicate_id not in self._merged_into:
            self._merged_into[duplicate_id] = survivor_id
            self._new_merges[duplicate_id] = {"survivor_id": survivor_id, "merged_at": merged_at}

    async def lead_memberships(
        self, lead_ids: Sequence[str], session: AsyncClientSession
    ) -> list[CampaignMember]:
        await self.load(lead_ids)
        return [m.model_copy(deep=True) for lead_id in lead_ids for m in self._by_lead[lead_id].values()]

    async def known_lead_ids(self, lead_ids: Iterable[str], session: AsyncClientSession) -> set[str]:
        _not_in_a_batch("checking a lead added by hand")

    async def remove(
        self, member: CampaignMember, expected_version: int, session: AsyncClientSession
    ) -> None:
        if member.lead_id is None or member.member_type is not MemberType.LEAD:
            _not_in_a_batch("removing a contact's membership")
        held = (await self._of_lead(member.lead_id)).get(member.campaign_id)
        if held is None or held.version != expected_version:
            raise ConcurrentModification(
                f"member {member.member_id} changed since version {expected_version}"
            )
        key = _member_key(member.campaign_id, member.member_id)
        del self._by_lead[member.lead_id][member.campaign_id]
        self._changed.pop(key, None)
        if key in self._read_version:
            self._removed[key] = self._read_version[key]

    def known(self, lead_id: str) -> bool:
        """Whether the lead has a membership or a conversion (it was seen in a lead event)."""
        return bool(self._by_lead.get(lead_id)) or self._held_conversions.get(lead_id) is not None

    # -- what the use cases ask -----------------------------------------------------------
    async def get(
        self, campaign_id: str, member_id: str, session: AsyncClientSession | None = None
    ) -> CampaignMember | None:
        if not member_id.startswith(_LEAD_PREFIX):
            _not_in_a_batch("reading a contact's membership")
        member = (await self._of_lead(member_id.removeprefix(_LEAD_PREFIX))).get(campaign_id)
        return member.model_copy(deep=True) if member is not None else None

    async def add(self, member: CampaignMember, session: AsyncClientSession) -> None:
        await self.add_many([member], session)

    async def add_many(self, members: Sequence[CampaignMember], session: AsyncClientSession) -> None:
        for member in members:
            if member.lead_id is None or member.member_type is not MemberType.LEAD:
                _not_in_a_batch("adding a contact")
            if member.campaign_id in await self._of_lead(member.lead_id):
                raise ConcurrentModification(f"member {member.member_id} exists already")
            self._hold(member)

    async def save(self, member: CampaignMember, expected_version: int, session: AsyncClientSession) -> None:
        if member.lead_id is None or member.member_type is not MemberType.LEAD:
            _not_in_a_batch("changing a contact's membership")
        held = (await self._of_lead(member.lead_id)).get(member.campaign_id)
        if held is None or held.version != expected_version:
            raise ConcurrentModification(
                f"member {member.member_id} changed since version {expected_version}"
            )
        self._hold(member)

    async def conversions(
        self, lead_ids: Sequence[str], session: AsyncClientSession
    ) -> dict[str, LeadConversion]:
        await self.load(lead_ids)
        return {
            lead_id: _to_conversion(doc)
            for lead_id in lead_ids
            if (doc := self._held_conversions.get(lead_id)) is not None
        }

    async def record_conversion(self, converted: LeadConverted, session: AsyncClientSession) -> None:
        conversion = LeadConversion(
            converted_at=converted.converted_at,
            account_id=converted.account.account_id,
            contact_id=converted.contact.contact_id,
            opportunity_id=converted.opportunity.opportunity_id if converted.opportunity else None,
        )
        await self.load([converted.lead_id])
        doc = _as_stored(
            {
                "_id": converted.lead_id,
                **to_bson(conversion.model_dump()),
                "campaign_id": converted.campaign_id,
            }
        )
        self._held_conversions[converted.lead_id] = self._changed_conversions[converted.lead_id] = doc
        stored = _to_conversion(doc)
        for member in list(self._by_lead[converted.lead_id].values()):
            changed = member.model_copy(deep=True)
            changed.apply_conversion(stored)
            changed.version += 1
            self._hold(changed)

    async def lead_touches(
        self, lead_ids: Sequence[str], session: AsyncClientSession | None = None
    ) -> dict[str, list[tuple[LeadTouch, bool]]]:
        await self.load(lead_ids)
        return {
            lead_id: [(m.lead_touch(), m.first_touch) for m in self._by_lead[lead_id].values()]
            for lead_id in lead_ids
            if self._by_lead[lead_id]
        }

    async def mark_first_touches(
        self, marks: dict[str, dict[str, bool]], session: AsyncClientSession
    ) -> None:
        for lead_id, by_campaign in marks.items():
            held = await self._of_lead(lead_id)
            for campaign_id, mark in by_campaign.items():
                if (member := held.get(campaign_id)) is not None:
                    self._hold(member.model_copy(update={"first_touch": mark}))

    async def first_touch_campaign(self, lead_id: str, session: AsyncClientSession) -> str | None:
        marked = sorted(c for c, m in (await self._of_lead(lead_id)).items() if m.first_touch)
        return marked[0] if marked else None

    async def record_leads(self, leads: Sequence[LeadReference], session: AsyncClientSession) -> None:
        for lead in leads:
            self._seen_leads.setdefault(lead.lead_id, lead)  # the first capture key stays

    # -- not part of a batch --------------------------------------------------------------
    async def get_many(
        self, campaign_id: str, member_ids: Sequence[str], session: AsyncClientSession
    ) -> dict[str, CampaignMember]:
        _not_in_a_batch("reading members by hand")

    async def statuses_in_use(
        self, campaign_id: str, statuses: Iterable[MemberStatus], session: AsyncClientSession
    ) -> list[MemberStatus]:
        _not_in_a_batch("checking a campaign's statuses")

    async def counts(self, campaigns: Sequence[Campaign]) -> MemberCounts:
        _not_in_a_batch("counting members")

    # -- storing --------------------------------------------------------------------------
    async def save_batch(self) -> None:
        """One bulk write per collection: new memberships inserted, changed ones replaced if
        still at the version read."""
        operations: list[Any] = []
        replaced = 0
        for key, version in self._removed.items():
            operations.append(DeleteOne({"_id": key, "version": version}))
        for key, member in self._changed.items():
            doc = _member_document(member)
            if key in self._read_version:
                operations.append(ReplaceOne({"_id": key, "version": self._read_version[key]}, doc))
                replaced += 1
            else:
                operations.append(InsertOne(doc))
        if operations:
            try:
                result = await self._members.bulk_write(operations, ordered=False, session=self._session)
            except BulkWriteError as exc:
                raise ConcurrentModification("a member of the batch was added concurrently") from exc
            if result.matched_count != replaced or result.deleted_count != len(self._removed):
                raise ConcurrentModification("a member of the batch changed concurrently")
        if self._new_merges:
            await self._merges.bulk_write(
                [
                    UpdateOne({"_id": duplicate}, {"$setOnInsert": doc}, upsert=True)
                    for duplicate, doc in self._new_merges.items()
                ],
                ordered=False,
                session=self._session,
            )
        if self._changed_conversions:
            await self._conversions.bulk_write(
                [ReplaceOne({"_id": i}, doc, upsert=True) for i, doc in self._changed_conversions.items()],
                ordered=False,
                session=self._session,
            )
        if self._seen_leads:
            await self._known_leads.bulk_write(
                [
                    UpdateOne({"_id": lead.lead_id}, {"$setOnInsert": _lead_document(lead)}, upsert=True)
                    for lead in self._seen_leads.values()
                ],
                ordered=False,
                session=self._session,
            )


class HeldOpportunities(OpportunityRepository):
    """The opportunities of one batch: those it names and those of its leads."""

    def __init__(self, real: OpportunityRepository, session: AsyncClientSession) -> None:
        super().__init__(real.db)
        self._session = session
        self._by_id: dict[str, Document | None] = {}
        self._leads_loaded: set[str] = set()
        self._changed: dict[str, Document] = {}

    async def load(self, opportunity_ids: Iterable[str], lead_ids: Iterable[str]) -> None:
        ids = sorted(set(opportunity_ids) - self._by_id.keys())
        leads = sorted(set(lead_ids) - self._leads_loaded)
        if not ids and not leads:
            return
        docs = await super().of(ids, leads, self._session)
        for opportunity_id in ids:
            self._by_id[opportunity_id] = None
        for doc in docs:
            # One the batch holds already is newer than the stored one.
            if self._by_id.get(doc["_id"]) is None and doc["_id"] not in self._changed:
                self._by_id[doc["_id"]] = doc
        self._leads_loaded.update(leads)

    async def _get(self, opportunity_id: str) -> Document | None:
        await self.load([opportunity_id], [])
        return self._by_id[opportunity_id]

    def _hold(self, doc: Document) -> None:
        stored = _as_stored(doc)
        self._by_id[stored["_id"]] = self._changed[stored["_id"]] = stored

    async def own_campaign(self, opportunity_id: str, session: AsyncClientSession) -> str | None:
        doc = await self._get(opportunity_id)
        return doc.get("own_campaign_id") if doc else None

    async def record(
        self,
        opportunity_id: str,
        *,
        campaign_id: str | None,
        own_campaign_id: str | None,
        lead_id: str | None,
        amount: Any,
        currency: str | None,
        state: OpportunityState,
        version: int | None,
        session: AsyncClientSession,
    ) -> bool:
        current = await self._get(opportunity_id)
        # As ``replace_if_newer`` reads it: a stored state without a version counts as -1.
        stored_version: int | None = None
        if current is not None:
            stored_version = -1 if current.get(VERSION_FIELD) is None else int(current[VERSION_FIELD])
        if not is_newer(stored_version, version):
            return False
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
        self._hold({"_id": opportunity_id, **document, VERSION_FIELD: version})
        return True

    async def attribute(
        self,
        opportunity_id: str,
        *,
        campaign_id: str,
        own_campaign_id: str | None,
        lead_id: str,
        amount: Any,
        currency: str,
        session: AsyncClientSession,
    ) -> None:
        current = await self._get(opportunity_id)
        if current is not None:
            changed = dict(current)
            if changed.get("own_campaign_id") is None:
                changed["own_campaign_id"] = own_campaign_id
            if changed.get("campaign_id") is None:
                changed["campaign_id"] = campaign_id
            if changed != current:
                self._hold(changed)
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
        await self.load([], first_touch)
        for doc in list(self._by_id.values()):
            if doc is None or doc.get("lead_id") not in first_touch:
                continue
            if doc.get("campaign_id") != first_touch[doc["lead_id"]]:
                self._hold({**doc, "campaign_id": first_touch[doc["lead_id"]]})

    async def relink_lead(self, duplicate_id: str, survivor_id: str, session: AsyncClientSession) -> None:
        await self.load([], [duplicate_id, survivor_id])
        for doc in list(self._by_id.values()):
            if doc is not None and doc.get("lead_id") == duplicate_id:
                self._hold({**doc, "lead_id": survivor_id})

    async def outcomes(self, campaign_ids: Sequence[str]) -> list[OpportunityOutcome]:
        _not_in_a_batch("reading outcomes")

    async def save_batch(self) -> None:
        if self._changed:
            await self._opportunities.bulk_write(
                [ReplaceOne({"_id": i}, doc, upsert=True) for i, doc in self._changed.items()],
                ordered=False,
                session=self._session,
            )


class LeadBatch:
    """``MemberRepository`` and ``OpportunityRepository`` over one batch's records."""

    def __init__(
        self, members: MemberRepository, opportunities: OpportunityRepository, session: AsyncClientSession
    ) -> None:
        self.members = HeldMembers(members, session)
        self.opportunities = HeldOpportunities(opportunities, session)

    @classmethod
    async def load(
        cls,
        members: MemberRepository,
        opportunities: OpportunityRepository,
        session: AsyncClientSession,
        *,
        lead_ids: Iterable[str],
        opportunity_ids: Iterable[str] = (),
    ) -> LeadBatch:
        """The memberships, conversions and opportunities of these leads, and these
        opportunities: three queries."""
        batch = cls(members, opportunities, session)
        leads = sorted(set(lead_ids))
        await batch.members.load(leads)
        await batch.opportunities.load(opportunity_ids, leads)
        return batch

    async def save(self) -> None:
        await self.members.save_batch()
        await self.opportunities.save_batch()
