"""Reporting's storage: facts, counter documents and the log of counter differences, grouped
in *generations*; a pointer document names the live one.

- A projection's transaction saves the changed facts and appends one *delta* document (the
  counter differences the change makes, ``aggregates.Changes.tally``) to ``view_deltas``.
- The *merger* folds deltas into the counter collections: in one transaction it reads a batch,
  adds the differences up per counter document, applies them with ``$inc`` (names with
  ``$max``), advances the freshness marks and deletes the batch. Deltas of many events that
  hit the same documents (today's, this month's) become one update, which keeps ingest close
  to the consumer's own transaction rate. Counter fields are int64, sums beyond int64 are kept
  exact in a high part beside them (``deltas``). A delta the merger cannot apply is moved to
  ``view_deltas_set_aside`` with the reason (``merger``), from where it can be retried.
- A rebuild fills a new generation from the topics and swaps the pointer (``rebuild``).

Collections of generation N are named ``g<N>.<name>``. Queries use only equality, ``$in``,
range and ``$or`` on indexed fields, which MongoDB 7+ and SecantusDB both serve from indexes.
"""

from __future__ import annotations

import random
from collections.abc import Collection, Iterable
from datetime import UTC, datetime
from typing import Any, NamedTuple, TypeVar

from crm_contracts.events.opportunities import PipelineDefined
from crm_contracts.events.picklists import PicklistRevised
from crm_runtime.mongo import Document, compound_key, from_bson, in_transaction, to_bson
from pymongo import ASCENDING, AsyncMongoClient, ReplaceOne, UpdateOne
from pymongo.asynchronous.client_session import AsyncClientSession
from pymongo.asynchronous.collection import AsyncCollection
from pymongo.asynchronous.database import AsyncDatabase

from .aggregates import COUNTER_VIEWS, EVERYTHING, Changes, CounterKey, joined, tag
from .deltas import DeltaSum, delta_documents, increments
from .domain import CampaignFacts, Fact, LeadFacts, OpportunityFacts
from .views import CounterDoc, Selector, matches_values

GENERATIONS = "generations"
LIVE = "live"
LEAD_FACTS = "lead_facts"
OPPORTUNITY_FACTS = "opportunity_facts"
CAMPAIGN_FACTS = "campaign_facts"
CAMPAIGN_MEMBERS = "campaign_members"
DELTAS = "view_deltas"
SET_ASIDE = "view_deltas_set_aside"  # deltas the merger could not apply, kept with the reason
FRESHNESS = "freshness"
# Freshness documents with running event totals: the merger's, and a few for the folders
# (a random one each time, so concurrent consumers rarely write the same document).
EVENT_TOTALS = "event_totals"
FOLDED_SHARDS = 8
MERGED_TOTALS = f"{EVENT_TOTALS}:merged"
SET_ASIDE_TOTALS = f"{EVENT_TOTALS}:set_aside"
FACT_KINDS = ("leads", "opportunities", "campaigns")
MERGE_BATCH = 500  # deltas one merge reads at most
MERGE_AFTER_EVENTS = 500  # pending events that start a merge without waiting out the gathering
# Counter documents one merge transaction may update. SecantusDB stalls on transactions of
# ~10,000 updates against collections of 100,000 documents; MongoDB takes far more.
MERGE_MAX_KEYS = 1000

F = TypeVar("F", bound=Fact)


class Merged(NamedTuple):
    """What one merge did: deltas folded, counter documents written."""

    deltas: int
    counter_updates: int


def _to_document(fact: Fact, key_field: str) -> Document:
    document: Document = to_bson(fact.model_dump())
    document["_id"] = document.pop(key_field)
    return document


def _to_fact(document: Document, model: type[F], key_field: str) -> F:
    data = from_bson(document)
    data[key_field] = data.pop("_id")
    return model.model_validate(data)


class Generation:
    """The collections of one generation of reporting's read models."""

    def __init__(self, db: AsyncDatabase[Document], number: int) -> None:
        self.number = number
        self.prefix = f"g{number}."
        self.leads: AsyncCollection[Document] = db[self.prefix + LEAD_FACTS]
        self.opportunities: AsyncCollection[Document] = db[self.prefix + OPPORTUNITY_FACTS]
        self.campaigns: AsyncCollection[Document] = db[self.prefix + CAMPAIGN_FACTS]
        self.members: AsyncCollection[Document] = db[self.prefix + CAMPAIGN_MEMBERS]
        self.deltas: AsyncCollection[Document] = db[self.prefix + DELTAS]
        self.set_aside_deltas: AsyncCollection[Document] = db[self.prefix + SET_ASIDE]
        self.freshness: AsyncCollection[Document] = db[self.prefix + FRESHNESS]
        self.counters: dict[str, AsyncCollection[Document]] = {
            view: db[self.prefix + view] for view in COUNTER_VIEWS
        }
        self._db = db

    async def ensure_indexes(self) -> None:
        # One index per view: every index costs on each write (SecantusDB rewrites them even on
        # $inc); the multikey tags serve a filter on any dimension, and "*" no filter.
        for collection in self.counters.values():
            await collection.create_index(
                [("k.cuboid", ASCENDING), ("k.tags", ASCENDING), ("k.period", ASCENDING)]
            )
        await self.campaigns.create_index([("status", ASCENDING)])

    async def drop(self) -> None:
        for name in await self._db.list_collection_names():
            if name.startswith(self.prefix):
                await self._db.drop_collection(name)

    def facts(self, session: AsyncClientSession) -> MongoFactStore:
        return MongoFactStore(self, session)

    # -- freshness --------------------------------------------------------------------------
    async def as_of(self) -> dict[str, datetime]:
        """Per kind of fact, the newest event time merged into the counters."""
        document = await self.freshness.find_one({"_id": "as_of"})
        return {kind: document[kind] for kind in FACT_KINDS if document and document.get(kind)}

    async def year_span(self) -> tuple[int, int] | None:
        """The first and last year any dated counter has (never narrows)."""
        document = await self.freshness.find_one({"_id": "as_of"}, {"first_year": 1, "last_year": 1})
        if not document or "first_year" not in document:
            return None
        return int(document["first_year"]), int(document["last_year"])

    async def pending(self) -> int:
        """Events folded into the facts whose differences are not in the counters yet. Kept
        as running totals (folders add, the merger adds what it merged): counting the deltas
        would say nothing of how many events each holds, and ``count_documents`` decodes every
        delta (hundreds of kilobytes each): it took half the database's time during ingest."""
        totals = await self.freshness.find({"kind": EVENT_TOTALS}).to_list()
        folded = sum(int(doc.get("folded", 0)) for doc in totals)
        merged = sum(int(doc.get("merged", 0)) for doc in totals)
        return max(folded - merged, 0)

    # -- merging ----------------------------------------------------------------------------
    async def merge(
        self,
        client: AsyncMongoClient[Document],
        batch: int = MERGE_BATCH,
        max_keys: int = MERGE_MAX_KEYS,
        only: Any = None,
    ) -> Merged:
        """Fold one batch of deltas (the oldest ones, or the delta ``only``) into the counters."""

        async def work(session: AsyncClientSession) -> Merged:
            # Sizes first, then only the deltas that fit the key budget: a delta of a batch of
            # events is a large document, and decoding ones the budget leaves for the next
            # round was a fifth of the service's time during ingest.
            sizes = await self.deltas.find(
                {} if only is None else {"_id": only},
                {"_id": 1, "keys": 1},
                sort=[("_id", ASCENDING)],
                limit=batch,
                session=session,
            ).to_list()
            chosen: list[Any] = []
            keys = 0
            for size in sizes:
                # A delta written before sizes were stored is taken alone.
                more = int(size.get("keys", max_keys))
                if chosen and keys + more > max_keys:
                    break  # keep one transaction bounded; the rest comes next round
                chosen.append(size["_id"])
                keys += more
            if not chosen:
                return Merged(0, 0)
            total = DeltaSum()
            cursor = self.deltas.find({"_id": {"$in": chosen}}, sort=[("_id", ASCENDING)], session=session)
            async for delta in cursor:
                total.add(delta)
            if not total.ids:
                return Merged(0, 0)
            operations: dict[str, list[UpdateOne]] = {}
            years: list[int] = []
            for (view, doc_id), fields in total.counts.items():
                if written := increments(fields):
                    # Labels are derived from the id here rather than carried in every delta.
                    key = CounterKey.of_doc_id(view, doc_id)
                    if key.grain == "year":
                        years.append(int(key.period))
                    update = {"$inc": written, "$setOnInsert": {"k": key.labels()}}
                    operations.setdefault(view, []).append(UpdateOne({"_id": doc_id}, update, upsert=True))
            for (view, doc_id), maxima in total.names.items():
                update = {"$max": maxima, "$setOnInsert": {"k": CounterKey.of_doc_id(view, doc_id).labels()}}
                operations.setdefault(view, []).append(UpdateOne({"_id": doc_id}, update, upsert=True))
            for view, ops in operations.items():
                await self.counters[view].bulk_write(ops, ordered=False, session=session)
            marks: Document = {}
            if total.newest:
                marks["$max"] = dict(total.newest)
            if years:
                marks.setdefault("$max", {})["last_year"] = max(years)
                marks["$min"] = {"first_year": min(years)}
            if marks:
                await self.freshness.update_one({"_id": "as_of"}, marks, upsert=True, session=session)
            if total.events:
                await self._count_handled(MERGED_TOTALS, total.events, session)
            await self.deltas.delete_many({"_id": {"$in": total.ids}}, session=session)
            return Merged(len(total.ids), sum(len(ops) for ops in operations.values()))

        return await in_transaction(client, work)

    async def merge_all(self, client: AsyncMongoClient[Document], max_keys: int = MERGE_MAX_KEYS) -> int:
        merged = 0
        while done := (await self.merge(client, max_keys=max_keys)).deltas:
            merged += done
        return merged

    async def _count_handled(self, totals: str, events: int, session: AsyncClientSession) -> None:
        """Events whose differences left the delta log (merged, or set aside): the pending
        figure counts them no more."""
        await self.freshness.update_one(
            {"_id": totals},
            {"$inc": {"merged": events}, "$set": {"kind": EVENT_TOTALS}},
            upsert=True,
            session=session,
        )

    async def oldest_delta(self) -> Any:
        """The id of the oldest delta not merged yet (None: none)."""
        found = await self.deltas.find_one({}, {"_id": 1}, sort=[("_id", ASCENDING)])
        return found["_id"] if found else None

    # -- deltas set aside ---------------------------------------------------------------------
    async def set_aside(
        self, client: AsyncMongoClient[Document], delta_id: Any, error: BaseException
    ) -> bool:
        """Move a delta the merger cannot apply out of the log, with the reason, so merging goes
        on; its events count as handled. False if it was gone already (another replica)."""

        async def work(session: AsyncClientSession) -> bool:
            delta = await self.deltas.find_one({"_id": delta_id}, session=session)
            if delta is None:
                return False
            events = int(delta.get("events", 0))
            await self.set_aside_deltas.insert_one(
                {
                    "_id": delta_id,
                    "error": type(error).__name__,
                    "reason": str(error)[:2000],
                    "set_aside_at": datetime.now(UTC),
                    "events": events,
                    "delta": delta,
                },
                session=session,
            )
            await self.deltas.delete_one({"_id": delta_id}, session=session)
            if events:
                await self._count_handled(SET_ASIDE_TOTALS, events, session)
            return True

        return await in_transaction(client, work)

    async def set_aside_count(self) -> int:
        return await self.set_aside_deltas.count_documents({})

    async def set_aside_list(self) -> list[Document]:
        """The deltas set aside, oldest first, without their content."""
        projection = {"delta": 0}
        return await self.set_aside_deltas.find({}, projection, sort=[("_id", ASCENDING)]).to_list()

    async def retry_set_aside(
        self, client: AsyncMongoClient[Document], ids: Collection[Any] | None = None
    ) -> int:
        """Put deltas set aside (all, or those of ``ids``) back into the log, e.g. after a fix:
        the merger applies them (or sets them aside again). Returns how many went back."""
        query: Document = {} if ids is None else {"_id": {"$in": list(ids)}}
        wanted = [doc["_id"] for doc in await self.set_aside_deltas.find(query, {"_id": 1}).to_list()]
        retried = 0
        for delta_id in wanted:

            async def work(session: AsyncClientSession, delta_id: Any = delta_id) -> bool:
                held = await self.set_aside_deltas.find_one({"_id": delta_id}, session=session)
                if held is None:
                    return False
                await self.deltas.insert_one(held["delta"], session=session)
                await self.set_aside_deltas.delete_one({"_id": delta_id}, session=session)
                if held.get("events"):
                    await self._count_handled(SET_ASIDE_TOTALS, -int(held["events"]), session)
                return True

            retried += await in_transaction(client, work)
        return retried

    # -- reading ----------------------------------------------------------------------------
    async def counters_for(self, selector: Selector, span: tuple[int, int] | None = None) -> list[CounterDoc]:
        """The selected counter documents. Open ranges of years become the list of years that
        have data (``span``): SecantusDB serves a tag with a list of periods from the index,
        but scans the collection for a tag with a range."""
        query: Document = {"k.cuboid": "+".join(selector.cuboid) or "total"}
        # One dimension goes to the index (its tag, or the tag every document has); any others
        # are checked on the documents found: SecantusDB scans the collection for two tags, or
        # for a list of them.
        indexed = next(iter(selector.match), None)
        query["k.tags"] = tag(indexed, selector.match[indexed]) if indexed else EVERYTHING
        periods = list(selector.periods)
        if selector.years is not None and span is not None:
            low, high = selector.years
            first = span[0] if low is None else max(low, span[0])
            last = span[1] if high is None else min(high - 1, span[1])
            periods += [f"{year:04d}" for year in range(first, last + 1)]
        if not periods:
            return []
        query["k.period"] = {"$in": sorted(set(periods))}
        projection = {"_id": 0, "k": 1, **dict.fromkeys(selector.parts, 1)}
        documents = await self.counters[selector.view].find(query, projection).to_list()
        result = []
        for document in documents:
            labels = document.pop("k")
            values = {name: labels.get(name) for name in selector.cuboid}
            if not matches_values(selector, values):
                continue
            result.append(
                CounterDoc(
                    values=values,
                    period=labels["period"],
                    measures=document,
                )
            )
        return result

    async def counters_by_id(self, keys: Collection[CounterKey]) -> list[CounterDoc]:
        by_view: dict[str, list[CounterKey]] = {}
        for key in keys:
            by_view.setdefault(key.view, []).append(key)
        result = []
        for view, wanted in by_view.items():
            cuboids = {key.doc_id: key.cuboid for key in wanted}
            async for document in self.counters[view].find({"_id": {"$in": sorted(cuboids)}}):
                labels = document.pop("k")
                cuboid = cuboids[document.pop("_id")]
                values = {name: labels.get(name) for name in cuboid}
                result.append(CounterDoc(values=values, period=labels["period"], measures=document))
        return result

    async def campaign_facts(self, campaign_ids: Collection[str] | None) -> list[CampaignFacts]:
        query: Document = {"_id": {"$in": list(campaign_ids)}} if campaign_ids is not None else {}
        documents = await self.campaigns.find(query).to_list()
        return [_to_fact(document, CampaignFacts, "campaign_id") for document in documents]

    # -- whole collections (rebuild checks, tests) ------------------------------------------
    async def all_leads(self) -> list[LeadFacts]:
        documents = await self.leads.find({}, sort=[("_id", ASCENDING)]).to_list()
        return [_to_fact(document, LeadFacts, "lead_id") for document in documents]

    async def all_opportunities(self) -> list[OpportunityFacts]:
        documents = await self.opportunities.find({}, sort=[("_id", ASCENDING)]).to_list()
        return [_to_fact(document, OpportunityFacts, "opportunity_id") for document in documents]

    async def all_counters(self, view: str) -> dict[str, Document]:
        """Every non-empty counter document of ``view`` by id, without zero fields."""
        documents = await self.counters[view].find({}).to_list()
        return {doc["_id"]: kept for doc in documents if (kept := _without_zeros(joined(from_bson(doc))))}


def _without_zeros(document: Document) -> Document:
    kept: Document = {}
    for name, value in document.items():
        if isinstance(value, dict):
            inner = _without_zeros(value)
            if inner:
                kept[name] = inner
        elif value != 0 or isinstance(value, str | bool) or value is None:
            kept[name] = value
    measures = {k: v for k, v in kept.items() if k not in ("_id", "k")}
    return kept if measures else {}


class GenerationSource:
    """The views' ``ViewSource`` over one generation."""

    def __init__(self, generation: Generation) -> None:
        self.generation = generation
        self._span: tuple[int, int] | None = None
        self._span_read = False

    async def counters(self, selector: Selector) -> list[CounterDoc]:
        if selector.years is not None and not self._span_read:
            self._span, self._span_read = await self.generation.year_span(), True
        return await self.generation.counters_for(selector, self._span)

    async def counters_by_key(self, keys: Collection[CounterKey]) -> list[CounterDoc]:
        return await self.generation.counters_by_id(keys)

    async def campaigns(self, campaign_ids: Collection[str] | None) -> list[CampaignFacts]:
        return await self.generation.campaign_facts(campaign_ids)


class MongoFactStore:
    """The ``FactStore`` of one transaction: facts are read once through its session, changes
    are kept until ``flush`` writes them together with their delta document."""

    def __init__(self, generation: Generation, session: AsyncClientSession) -> None:
        self._generation = generation
        self._session = session
        self._leads: dict[str, LeadFacts | None] = {}
        self._opportunities: dict[str, OpportunityFacts | None] = {}
        self._campaigns: dict[str, CampaignFacts | None] = {}
        self._members: dict[str, bool] = {}
        self._new_members: list[Document] = []  # inserted by ``flush``
        self.changes = Changes()

    async def prefetch(
        self,
        leads: Iterable[str],
        opportunities: Iterable[str],
        campaigns: Iterable[str],
        members: Iterable[tuple[str, str]] = (),
    ) -> None:
        """Load many facts (and which memberships are known) with one query per collection
        that has anything not loaded yet."""
        g = self._generation
        self._leads.update(await self._fetch(g.leads, LeadFacts, "lead_id", set(leads) - set(self._leads)))
        self._opportunities.update(
            await self._fetch(
                g.opportunities,
                OpportunityFacts,
                "opportunity_id",
                set(opportunities) - set(self._opportunities),
            )
        )
        self._campaigns.update(
            await self._fetch(
                g.campaigns, CampaignFacts, "campaign_id", set(campaigns) - set(self._campaigns)
            )
        )
        keys = {compound_key(campaign_id, member_id) for campaign_id, member_id in members} - set(
            self._members
        )
        if keys:
            cursor = g.members.find({"_id": {"$in": sorted(keys)}}, {"_id": 1}, session=self._session)
            found = {doc["_id"] async for doc in cursor}
            self._members.update({key: key in found for key in keys})

    async def known_opportunities(self) -> list[OpportunityFacts]:
        return [fact for fact in self._opportunities.values() if fact is not None]

    async def _fetch(
        self, collection: AsyncCollection[Document], model: type[F], key: str, wanted: set[str]
    ) -> dict[str, F | None]:
        if not wanted:
            return {}
        cursor = collection.find({"_id": {"$in": sorted(wanted)}}, session=self._session)
        found = {doc["_id"]: _to_fact(doc, model, key) async for doc in cursor}
        return {fact_id: found.get(fact_id) for fact_id in wanted}

    async def _load(
        self,
        cache: dict[str, Any],
        collection: AsyncCollection[Document],
        key: str,
        model: type[F],
        fact_id: str,
    ) -> F | None:
        if fact_id not in cache:
            document = await collection.find_one({"_id": fact_id}, session=self._session)
            cache[fact_id] = _to_fact(document, model, key) if document else None
        fact: F | None = cache[fact_id]
        return fact

    async def lead(self, lead_id: str) -> LeadFacts | None:
        return await self._load(self._leads, self._generation.leads, "lead_id", LeadFacts, lead_id)

    async def save_lead(self, lead: LeadFacts) -> None:
        self.changes.lead(self._leads.get(lead.lead_id), lead)
        self._leads[lead.lead_id] = lead

    async def opportunity(self, opportunity_id: str) -> OpportunityFacts | None:
        return await self._load(
            self._opportunities,
            self._generation.opportunities,
            "opportunity_id",
            OpportunityFacts,
            opportunity_id,
        )

    async def save_opportunity(self, opportunity: OpportunityFacts) -> None:
        self.changes.opportunity(self._opportunities.get(opportunity.opportunity_id), opportunity)
        self._opportunities[opportunity.opportunity_id] = opportunity

    async def campaign(self, campaign_id: str) -> CampaignFacts | None:
        return await self._load(
            self._campaigns, self._generation.campaigns, "campaign_id", CampaignFacts, campaign_id
        )

    async def save_campaign(self, campaign: CampaignFacts) -> None:
        self.changes.campaign(self._campaigns.get(campaign.campaign_id), campaign)
        self._campaigns[campaign.campaign_id] = campaign

    async def add_member(self, campaign_id: str, member_id: str, at: datetime) -> bool:
        key = compound_key(campaign_id, member_id)
        if key not in self._members:
            found = await self._generation.members.find_one({"_id": key}, {"_id": 1}, session=self._session)
            self._members[key] = found is not None
        if self._members[key]:
            return False
        self._members[key] = True
        self.changes.new_members.append((campaign_id, at))
        self._new_members.append({"_id": key, "added_at": at})
        return True

    async def define_pipeline(self, pipeline: PipelineDefined) -> None:
        self.changes.pipelines.append(pipeline)

    async def define_picklist(self, picklist: PicklistRevised) -> None:
        self.changes.picklists.append(picklist)

    async def flush(self, *, events: int) -> None:
        """Write the changed facts and the delta document of their counter differences;
        ``events`` folded since the last flush are counted as pending until merged."""
        changes, session = self.changes, self._session
        if not changes:
            return
        for collection, documents in (
            (self._generation.leads, [_to_document(c, "lead_id") for _, c in changes.leads.values()]),
            (
                self._generation.opportunities,
                [_to_document(c, "opportunity_id") for _, c in changes.opportunities.values()],
            ),
            (
                self._generation.campaigns,
                [_to_document(c, "campaign_id") for _, c in changes.campaigns.values()],
            ),
        ):
            if len(documents) == 1:
                await collection.replace_one(
                    {"_id": documents[0]["_id"]}, documents[0], upsert=True, session=session
                )
            elif documents:
                ops = [ReplaceOne({"_id": d["_id"]}, d, upsert=True) for d in documents]
                await collection.bulk_write(ops, ordered=False, session=session)
        if self._new_members:
            await self._generation.members.insert_many(self._new_members, ordered=False, session=session)
        deltas = delta_documents(changes.tally(), changes.as_of())
        deltas[0]["events"] = events
        await self._generation.deltas.insert_many(deltas, session=session)
        shard = f"{EVENT_TOTALS}:folded:{random.randrange(FOLDED_SHARDS)}"
        await self._generation.freshness.update_one(
            {"_id": shard},
            {"$inc": {"folded": events}, "$set": {"kind": EVENT_TOTALS}},
            upsert=True,
            session=session,
        )
        self.changes = Changes()
        self._new_members = []


class ReportingRepository:
    """Finds the live generation (and others, for the rebuild)."""

    def __init__(self, client: AsyncMongoClient[Document], db: AsyncDatabase[Document]) -> None:
        self.client = client
        self.db = db
        self.pointers: AsyncCollection[Document] = db[GENERATIONS]

    def generation(self, number: int) -> Generation:
        return Generation(self.db, number)

    async def setup(self) -> None:
        """Make sure there is a live generation (the first start creates generation 1)."""
        await self.pointers.update_one(
            {"_id": LIVE}, {"$setOnInsert": {"generation": 1, "since": None}}, upsert=True
        )
        await (await self.live()).ensure_indexes()

    async def live(self, session: AsyncClientSession | None = None) -> Generation:
        pointer = await self.pointers.find_one({"_id": LIVE}, session=session)
        return self.generation(int(pointer["generation"]) if pointer else 1)

    async def generation_numbers(self) -> list[int]:
        numbers = set()
        for name in await self.db.list_collection_names():
            head, _, _ = name.partition(".")
            if head.startswith("g") and head[1:].isdigit():
                numbers.add(int(head[1:]))
        return sorted(numbers)

    async def swap(self, number: int, since: datetime) -> int:
        """Make generation ``number`` the live one; returns the one it replaces."""

        async def work(session: AsyncClientSession) -> int:
            pointer = await self.pointers.find_one({"_id": LIVE}, session=session)
            previous = int(pointer["generation"]) if pointer else 1
            await self.pointers.replace_one(
                {"_id": LIVE}, {"generation": number, "since": since}, upsert=True, session=session
            )
            return previous

        return await in_transaction(self.client, work)
