"""Where leads are stored: the ``leads`` collection, one document per lead, written with an
optimistic version check so two concurrent changes cannot both win silently; and the
``scoring_rules`` collection, one document holding the rule set in force."""

from __future__ import annotations

import re
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from enum import StrEnum
from typing import Any, Protocol

import bson
from bson.codec_options import CodecOptions
from crm_contracts.events.leads import LeadStatus
from crm_runtime.mongo import Document, from_bson, to_bson
from crm_runtime.picklist_store import PicklistStore
from pymongo import ASCENDING, DESCENDING, ReplaceOne, UpdateMany
from pymongo.asynchronous.client_session import AsyncClientSession
from pymongo.asynchronous.database import AsyncDatabase
from pymongo.errors import BulkWriteError, DuplicateKeyError

from .domain import MAX_DUPLICATE_LINKS, OPEN_STATUSES, Lead, MatchKeys
from .picklists import LEAD_PICKLISTS, Picklist, Picklists
from .scoring import ScoringRules, default_rules

LEADS = "leads"
SCORING_RULES = "scoring_rules"
CURRENT_RULES = "current"
RULES_TTL_SECONDS = 5.0
_STORED: CodecOptions[Document] = CodecOptions(tz_aware=True)


class ConcurrentModification(Exception):
    """Someone else changed the lead (or the rules) since it was read."""


class LeadSort(StrEnum):
    """Orders a lead list can be read in; ties are broken by id, so paging is stable."""

    CAPTURED_AT = "captured_at"
    CAPTURED_AT_DESC = "-captured_at"
    SCORE = "score"
    SCORE_DESC = "-score"
    UPDATED_AT = "updated_at"
    UPDATED_AT_DESC = "-updated_at"

    @property
    def field(self) -> str:
        return self.value.lstrip("-")

    @property
    def direction(self) -> int:
        return DESCENDING if self.value.startswith("-") else ASCENDING


@dataclass(frozen=True)
class LeadQuery:
    """A filtered, sorted page of leads. ``filters`` hold typed equality filters only."""

    filters: dict[str, str] = field(default_factory=dict)
    captured_from: datetime | None = None
    captured_to: datetime | None = None
    terms: tuple[str, ...] = ()
    sort: LeadSort = LeadSort.CAPTURED_AT_DESC
    after: tuple[Any, str] | None = None
    limit: int = 50
    capture_key: tuple[str, str] | None = None  # (source_system, external_id)


class LeadStore(Protocol):
    """What the use cases need from storage (MongoDB here; a dict in domain-level tests)."""

    async def get(self, lead_id: str, session: AsyncClientSession | None = None) -> Lead | None: ...

    async def add(self, lead: Lead, session: AsyncClientSession) -> None: ...

    async def update(self, lead: Lead, expected_version: int, session: AsyncClientSession) -> None: ...

    async def find_matches(self, lead: Lead, session: AsyncClientSession) -> list[Lead]: ...

    async def scoring_rules(self, session: AsyncClientSession | None = None) -> ScoringRules: ...

    async def picklists(self, session: AsyncClientSession | None = None) -> Picklists: ...


class LeadRepository:
    def __init__(self, db: AsyncDatabase[Document], *, rules_ttl_seconds: float = RULES_TTL_SECONDS) -> None:
        self._leads = db[LEADS]
        self._rules = db[SCORING_RULES]
        self._rules_ttl = rules_ttl_seconds
        self._cached_rules: tuple[float, ScoringRules] | None = None
        self._rules_observers: list[Callable[[ScoringRules], None]] = []
        self.picklist_store = PicklistStore(db, {name: Picklist.default(name) for name in LEAD_PICKLISTS})

    async def picklists(self, session: AsyncClientSession | None = None) -> Picklists:
        """The organisation's picklists captures are folded with."""
        return Picklists((await self.picklist_store.all(session)).lists)

    def on_new_scoring_rules(self, observer: Callable[[ScoringRules], None]) -> None:
        """Call ``observer`` when this process first sees a rule set another version than the
        one it used before (changed here or by another replica)."""
        self._rules_observers.append(observer)

    async def ensure_indexes(self) -> None:
        leads = self._leads
        await leads.create_index(
            [("source_system", ASCENDING), ("external_id", ASCENDING)], unique=True, name="capture_key"
        )
        await leads.create_index([("email_normalised", ASCENDING)], sparse=True)
        await leads.create_index([("phone_key", ASCENDING)], sparse=True)
        await leads.create_index([("company_domain", ASCENDING), ("name_key", ASCENDING)], sparse=True)
        await leads.create_index([("search_terms", ASCENDING)])
        await leads.create_index([("status", ASCENDING), ("captured_at", DESCENDING)])
        for sort_field in ("captured_at", "score", "updated_at"):
            await leads.create_index([(sort_field, ASCENDING), ("_id", ASCENDING)])
        await leads.create_index([("scoring_rules_version", ASCENDING), ("status", ASCENDING)])

    # -- leads ------------------------------------------------------------------------------
    async def get(self, lead_id: str, session: AsyncClientSession | None = None) -> Lead | None:
        doc = await self._leads.find_one({"_id": lead_id}, session=session)
        return _to_lead(doc) if doc else None

    async def get_many(self, lead_ids: list[str], session: AsyncClientSession | None = None) -> list[Lead]:
        docs = await self._leads.find({"_id": {"$in": lead_ids}}, session=session).to_list()
        by_id = {doc["_id"]: _to_lead(doc) for doc in docs}
        return [by_id[lead_id] for lead_id in lead_ids if lead_id in by_id]

    async def add(self, lead: Lead, session: AsyncClientSession) -> None:
        try:
            await self._leads.insert_one(_to_document(lead), session=session)
        except DuplicateKeyError as exc:
            # Another transaction stored the same capture key first: retrying finds it.
            raise ConcurrentModification(f"lead {lead.id} was stored concurrently") from exc

    async def update(self, lead: Lead, expected_version: int, session: AsyncClientSession) -> None:
        result = await self._leads.replace_one(
            {"_id": lead.id, "version": expected_version}, _to_document(lead), session=session
        )
        if result.matched_count != 1:
            raise ConcurrentModification(f"lead {lead.id} changed since version {expected_version}")

    async def find_matches(self, lead: Lead, session: AsyncClientSession) -> list[Lead]:
        """Stored leads (not merged, not ``lead``) sharing one of its duplicate keys: one
        equality lookup per key, each on its own index (an ``$or`` of them is a collection scan
        on some servers)."""
        found: dict[str, Lead] = {}
        for key_filter in _key_filters(lead.match_keys):
            docs = await self._leads.find(
                key_filter,
                sort=[("captured_at", ASCENDING), ("_id", ASCENDING)],
                limit=MAX_DUPLICATE_LINKS * 2,
                session=session,
            ).to_list()
            for doc in docs:
                if (
                    doc["_id"] != lead.id
                    and doc["_id"] not in found
                    and doc["status"] != LeadStatus.MERGED.value
                ):
                    found[doc["_id"]] = _to_lead(doc)
        return sorted(found.values(), key=lambda match: (match.captured_at, match.id))[
            : MAX_DUPLICATE_LINKS * 2
        ]

    async def find_by_match_keys(
        self,
        emails: set[str],
        phones: set[str],
        names_at_domains: set[tuple[str, str]],
        session: AsyncClientSession,
    ) -> list[Lead]:
        """Every stored lead (merged ones too) with one of ``emails``, ``phones`` or
        (company domain, name key) pairs: a batch's duplicate candidates, one ``$in`` query
        per key kind, each on its own index."""
        queries: list[Document] = []
        if emails:
            queries.append({"email_normalised": {"$in": sorted(emails)}})
        if phones:
            queries.append({"phone_key": {"$in": sorted(phones)}})
        if names_at_domains:
            # Both ``$in`` on the compound index: the cross product, narrowed to the pairs here.
            queries.append(
                {
                    "company_domain": {"$in": sorted({domain for domain, _ in names_at_domains})},
                    "name_key": {"$in": sorted({name for _, name in names_at_domains})},
                }
            )
        found: dict[str, Lead] = {}
        for query in queries:
            for doc in await self._leads.find(query, session=session).to_list():
                if doc["_id"] not in found:
                    found[doc["_id"]] = _to_lead(doc)
        return list(found.values())

    async def save_captured(
        self, added: list[Lead], changed: list[tuple[Lead, int]], session: AsyncClientSession
    ) -> None:
        """Store a captured batch: the new leads in one insert, the changed ones in one bulk
        write, each guarded by the version it was read at."""
        if added:
            try:
                await self._leads.insert_many([_to_document(lead) for lead in added], session=session)
            except BulkWriteError as exc:
                # Another transaction stored one of the capture keys first: retrying finds it.
                raise ConcurrentModification("a captured lead was stored concurrently") from exc
        if changed:
            result = await self._leads.bulk_write(
                [
                    ReplaceOne({"_id": lead.id, "version": expected}, _to_document(lead))
                    for lead, expected in changed
                ],
                ordered=False,
                session=session,
            )
            if result.matched_count != len(changed):
                raise ConcurrentModification("leads changed while their captures were applied")

    async def search(self, query: LeadQuery) -> list[Lead]:
        clauses: list[Document] = [{name: value} for name, value in sorted(query.filters.items())]
        if query.capture_key is not None:  # the capture_key index; a merged lead still answers it
            system, external_id = query.capture_key
            clauses += [{"source_system": system}, {"external_id": external_id}]
        elif "status" not in query.filters:
            clauses.append({"status": {"$ne": LeadStatus.MERGED.value}})
        if query.captured_from is not None:
            clauses.append({"captured_at": {"$gte": query.captured_from}})
        if query.captured_to is not None:
            clauses.append({"captured_at": {"$lt": query.captured_to}})
        # Anchored and escaped: user text is a literal prefix of a folded term, never a pattern.
        clauses += [{"search_terms": {"$regex": "^" + re.escape(term)}} for term in query.terms]
        sort_field, direction = query.sort.field, query.sort.direction
        if query.after is not None:
            value, after_id = query.after
            beyond = "$gt" if direction == ASCENDING else "$lt"
            clauses.append(
                {"$or": [{sort_field: {beyond: value}}, {sort_field: value, "_id": {"$gt": after_id}}]}
            )
        mongo_query: Document = {"$and": clauses} if clauses else {}
        cursor = self._leads.find(
            mongo_query, sort=[(sort_field, direction), ("_id", ASCENDING)], limit=query.limit
        )
        return [_to_lead(doc) for doc in await cursor.to_list()]

    async def ids_to_rescore(
        self, rules_version: int, limit: int, session: AsyncClientSession | None = None
    ) -> list[str]:
        """Open leads last scored under another rule set."""
        docs = await self._leads.find(
            _scored_under_other_rules(rules_version),
            {"_id": 1},
            sort=[("_id", ASCENDING)],
            limit=limit,
            session=session,
        ).to_list()
        return [doc["_id"] for doc in docs]

    async def count_to_rescore(self, rules_version: int, session: AsyncClientSession | None = None) -> int:
        return await self._leads.count_documents(_scored_under_other_rules(rules_version), session=session)

    async def save_rescored(
        self,
        changed: list[tuple[Lead, int]],
        unchanged_ids: list[str],
        rules_version: int,
        session: AsyncClientSession,
    ) -> None:
        """Store a rescored batch in one bulk write: each changed lead (with the version it was
        read at), and for the others only that they were scored under ``rules_version``
        (bookkeeping for the rescoring pass, not a change of the lead)."""
        writes: list[ReplaceOne[Document] | UpdateMany] = [
            ReplaceOne({"_id": lead.id, "version": expected}, _to_document(lead))
            for lead, expected in changed
        ]
        if unchanged_ids:
            scored = {"$set": {"scoring_rules_version": rules_version}}
            writes.append(UpdateMany({"_id": {"$in": unchanged_ids}}, scored))
        if not writes:
            return
        result = await self._leads.bulk_write(writes, ordered=True, session=session)
        if result.matched_count != len(changed) + len(unchanged_ids):
            raise ConcurrentModification("leads changed while they were rescored")

    # -- scoring rules ----------------------------------------------------------------------
    async def scoring_rules(
        self, session: AsyncClientSession | None = None, *, fresh: bool = False
    ) -> ScoringRules:
        """The rule set in force. Captures use a copy at most ``rules_ttl_seconds`` old: rules
        change rarely, and a lead scored under an older set is found by its
        ``scoring_rules_version`` and rescored (the observers start that)."""
        cached = self._cached_rules
        if not fresh and cached is not None and time.monotonic() - cached[0] < self._rules_ttl:
            return cached[1]
        doc = await self._rules.find_one({"_id": CURRENT_RULES}, session=session)
        if doc is None:
            rules = default_rules()
        else:
            doc.pop("_id")
            rules = ScoringRules.model_validate(from_bson(doc))
        self._remember(rules)
        return rules

    def _remember(self, rules: ScoringRules) -> None:
        previous = self._cached_rules[1].version if self._cached_rules else None
        self._cached_rules = (time.monotonic(), rules)
        if previous is not None and previous != rules.version:
            for observer in self._rules_observers:
                observer(rules)

    async def save_scoring_rules(
        self, rules: ScoringRules, expected_version: int, session: AsyncClientSession
    ) -> None:
        doc: Document = to_bson(rules.model_dump())
        if expected_version == 0:
            try:
                await self._rules.insert_one({"_id": CURRENT_RULES, **doc}, session=session)
            except DuplicateKeyError as exc:
                raise ConcurrentModification("the scoring rules were changed concurrently") from exc
        else:
            result = await self._rules.replace_one(
                {"_id": CURRENT_RULES, "version": expected_version}, doc, session=session
            )
            if result.matched_count != 1:
                raise ConcurrentModification(f"the scoring rules changed since version {expected_version}")
        # Not yet committed: drop the copy, so the next read sees whichever set is in force.
        self._cached_rules = None


def _scored_under_other_rules(rules_version: int) -> Document:
    return {
        "scoring_rules_version": {"$ne": rules_version},
        "status": {"$in": sorted(status.value for status in OPEN_STATUSES)},
    }


def _key_filters(keys: MatchKeys) -> list[Document]:
    alternatives: list[Document] = []
    if keys.email is not None:
        alternatives.append({"email_normalised": keys.email})
    if keys.phone is not None:
        alternatives.append({"phone_key": keys.phone})
    if keys.company_domain is not None and keys.name is not None:
        alternatives.append({"company_domain": keys.company_domain, "name_key": keys.name})
    return alternatives


def _to_document(lead: Lead) -> Document:
    doc: Document = to_bson(lead.model_dump(exclude={"id"}))
    doc["_id"] = lead.id
    return doc


def stored_form(lead: Lead) -> Lead:
    """``lead`` as reading it back after storing it gives (times at millisecond precision):
    what a batch held in memory must equal, so it decides as the database-backed path would."""
    return _to_lead(bson.decode(bson.encode(_to_document(lead)), codec_options=_STORED))


def _to_lead(doc: Document) -> Lead:
    data = from_bson(doc)
    data["id"] = data.pop("_id")
    return Lead.model_validate(data)
