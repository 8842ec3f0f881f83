"""Benchmark of the reporting service: read latency per view at 1,000,000 leads and 200,000
opportunities, and the rate at which events from Kafka become visible in the views.

    ./crm bench reporting            (about 10 minutes on 2 cores; --quick for a small run)

What it does, all on loopback, with its own Kafka and SecantusDB (stopped by pid at the end):

1. State. 40,000 distinct lead stories (8,000 of them with an opportunity, 40 campaigns) are
   generated as events and folded through the service's own projection (``project``) into
   facts, and their counters computed with the service's own ``aggregates`` (the tally of a
   final fact equals the sum of the per-event differences the live service applies; the
   hypothesis tests prove that). Each story is then stored 25 times under different ids: its
   facts cloned, its counters multiplied by 25. That is exactly the state the projection builds
   for the 1,000,000 leads and 200,000 opportunities of those events. A self-check folds a
   sample of cloned stories event by event (``MemoryFactStore``) and compares the counters.
   Everything is written with insert_many in batches into generation 1.
2. Reads. The service runs as a real process (``python -m crm_reporting``); each view is asked
   a fixed number of times over HTTP; p50/p99 are printed next to /health/live over HTTP and a
   raw find_one on SecantusDB, measured in the same run.
3. Ingest. A bounded stream of events (new leads and opportunities of the last weeks) is
   published to Kafka; the rate is events per second from publishing until every event is
   applied and merged into the views, next to the database's own rate of small transactions.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import statistics
import time
from collections.abc import Iterable
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

import httpx
from aiokafka import AIOKafkaProducer
from crm_contracts import catalog
from crm_contracts.envelope import CloudEvent
from crm_contracts.events.campaigns import (
    CampaignCostRecorded,
    CampaignCreated,
    CampaignMemberAdded,
    CampaignPurpose,
    CampaignSnapshot,
    CampaignStatus,
    CampaignType,
    CostEntry,
    MemberType,
)
from crm_contracts.events.common import Actor
from crm_contracts.events.leads import (
    Company,
    ConvertedAccount,
    ConvertedContact,
    ConvertedOpportunity,
    LeadConverted,
    LeadCreated,
    LeadDisqualified,
    LeadOrigin,
    LeadQualified,
    LeadRating,
    LeadSnapshot,
    LeadSource,
    LeadStatus,
    Person,
)
from crm_contracts.events.opportunities import (
    ForecastCategory,
    OpportunityClosed,
    OpportunityCreated,
    OpportunityFigures,
    OpportunityStageChanged,
    PipelineDefined,
    StageKind,
)
from crm_contracts.events.picklists import PicklistRevised
from crm_localinfra.testing import running_services, service_env
from crm_reporting.aggregates import COUNTER_VIEWS, Changes, Tally, nest
from crm_reporting.domain import CampaignFacts, LeadFacts, OpportunityFacts
from crm_reporting.memory import MemoryFactStore, run_now
from crm_reporting.projection import project
from crm_reporting.repository import (
    GENERATIONS,
    LIVE,
    Generation,
    ReportingRepository,
    _to_document,
)
from crm_runtime import make_event
from crm_runtime.events import encode
from crm_runtime.mongo import Document, in_transaction, to_bson
from harness import BenchInfra, run_bounded
from pymongo import AsyncMongoClient, UpdateOne
from pymongo.asynchronous.client_session import AsyncClientSession

BY = Actor(id="importer")
EPOCH = datetime(2025, 1, 1, tzinfo=UTC)
SPAN_DAYS = 730
SOURCES = list(LeadSource)
ORIGINS = list(LeadOrigin)
CAMPAIGNS = [f"cmp-{i:02d}" for i in range(40)]
OWNERS = [f"rep-{i:02d}" for i in range(60)]
TEAMS = [f"team-{i}" for i in range(8)]
REGIONS = ["emea", "amer", "apac", "latam"]
INDUSTRIES = [
    "energy",
    "retail",
    "banking",
    "health",
    "telecom",
    "public",
    "media",
    "logistics",
    "food",
    "auto",
]
PRODUCTS = [f"prod-{i:02d}" for i in range(20)]
PIPELINES = ["default", "enterprise", "partner"]
LOSS_REASONS = ["price", "timing", "competitor", "no decision", "budget", "fit"]

DEADLINE_SECONDS = 3600  # the whole run (about 15 minutes on 2 cores) gives up after this


@dataclass(frozen=True)
class Stage:
    stage_id: str
    name: str
    kind: StageKind
    probability: int
    category: ForecastCategory
    order: int


OPEN = [
    Stage("prospecting", "Prospecting", StageKind.OPEN, 10, ForecastCategory.PIPELINE, 0),
    Stage("qualification", "Qualification", StageKind.OPEN, 20, ForecastCategory.PIPELINE, 1),
    Stage("proposal", "Proposal", StageKind.OPEN, 50, ForecastCategory.BEST_CASE, 2),
    Stage("negotiation", "Negotiation", StageKind.OPEN, 80, ForecastCategory.COMMIT, 3),
]
WON = Stage("closed_won", "Closed Won", StageKind.CLOSED_WON, 100, ForecastCategory.CLOSED, 4)
LOST = Stage("closed_lost", "Closed Lost", StageKind.CLOSED_LOST, 0, ForecastCategory.OMITTED, 5)


# -- event stories ----------------------------------------------------------------------------
def lead_story(
    number: int, copy: int, *, epoch: datetime = EPOCH, span_days: int = SPAN_DAYS
) -> list[CloudEvent[Any]]:
    """Story ``number`` of a lead (and, for every fifth, an opportunity), for copy ``copy``:
    the same attributes and times for every copy, its own ids."""
    rng = random.Random(number)
    lead_id, opportunity_id = f"L{number}-{copy}", f"O{number}-{copy}"
    captured = epoch + timedelta(seconds=rng.uniform(0, span_days * 86400))
    captured = captured.replace(microsecond=captured.microsecond // 1000 * 1000)
    campaign = rng.choice(CAMPAIGNS) if rng.random() < 0.7 else None
    source = rng.choice(SOURCES)
    snapshot = LeadSnapshot(
        lead_id=lead_id,
        status=LeadStatus.NEW,
        source_system="crm-import",
        external_id=lead_id,
        person=Person(first_name="Ada"),
        company=Company(name="Engines"),
        lead_source=source,
        origin=rng.choice(ORIGINS),
        campaign_id=campaign,
        owner_id=rng.choice(OWNERS) if rng.random() < 0.9 else None,
        captured_at=captured,
    )

    def event(
        spec: Any, data: Any, version: int | None, at: datetime, subject: str = lead_id
    ) -> CloudEvent[Any]:
        return make_event(
            spec,
            data,
            source="/bench",
            subject=subject,
            version=version,
            time=at,
            event_id=f"{subject}:{spec.topic}:{version}:{at.timestamp()}",
        )

    events: list[CloudEvent[Any]] = [event(catalog.LEAD_CREATED, LeadCreated(lead=snapshot), 1, captured)]
    if campaign:
        member = CampaignMemberAdded(
            campaign_id=campaign,
            member_id=f"lead:{lead_id}",
            member_type=MemberType.LEAD,
            lead_id=lead_id,
            added_at=captured,
            added_via="lead.created",
        )
        member_event = make_event(
            catalog.CAMPAIGN_MEMBER_ADDED,
            member,
            source="/bench",
            subject=campaign,
            time=captured,
            event_id=f"{campaign}:member:{lead_id}",
        )
        events.append(member_event)
    moment, version = captured, 1
    with_opportunity = number % 5 == 0
    if with_opportunity or rng.random() < 0.45:
        moment, version = moment + timedelta(hours=rng.uniform(1, 240)), version + 1
        qualified = LeadQualified(
            lead_id=lead_id,
            rating=rng.choice(list(LeadRating)),
            lead_source=source,
            campaign_id=campaign,
            qualified_at=moment,
            qualified_by=BY,
        )
        events.append(event(catalog.LEAD_QUALIFIED, qualified, version, moment))
    elif rng.random() < 0.2:
        moment, version = moment + timedelta(hours=rng.uniform(1, 240)), version + 1
        disqualified = LeadDisqualified(
            lead_id=lead_id,
            reason="no budget",
            lead_source=source,
            campaign_id=campaign,
            disqualified_at=moment,
            disqualified_by=BY,
        )
        events.append(event(catalog.LEAD_DISQUALIFIED, disqualified, version, moment))
    if not with_opportunity:
        return events
    moment, version = moment + timedelta(hours=rng.uniform(1, 480)), version + 1
    converted = LeadConverted(
        lead_id=lead_id,
        account=ConvertedAccount(account_id=f"A{number}-{copy}", is_new=True),
        contact=ConvertedContact(contact_id=f"C{number}-{copy}", is_new=True),
        opportunity=ConvertedOpportunity(opportunity_id=opportunity_id, name="Deal"),
        lead_source=source,
        campaign_id=campaign,
        converted_at=moment,
        converted_by=BY,
    )
    events.append(event(catalog.LEAD_CONVERTED, converted, version, moment))
    return events + opportunity_story(rng, opportunity_id, lead_id, source, campaign, moment)


def opportunity_story(
    rng: random.Random,
    opportunity_id: str,
    lead_id: str,
    source: LeadSource,
    campaign: str | None,
    created: datetime,
) -> list[CloudEvent[Any]]:
    created = created + timedelta(minutes=1)
    amount = Decimal(rng.randrange(50_000, 5_000_000)) / 100
    currency = "EUR" if rng.random() < 0.9 else "USD"
    steady = {
        "opportunity_id": opportunity_id,
        "name": "Deal",
        "account_id": "acc",
        "owner_id": rng.choice(OWNERS),
        "pipeline_id": rng.choice(PIPELINES),
        "amount": amount,
        "currency": currency,
        "expected_close_date": (created + timedelta(days=rng.randrange(20, 200))).date(),
        "lead_id": lead_id,
        "lead_source": source,
        "campaign_id": campaign,
        "created_at": created,
        "sales_team_id": rng.choice(TEAMS),
        "sales_region": rng.choice(REGIONS),
        "account_industry": rng.choice(INDUSTRIES),
        "product_ids": sorted(set(rng.sample(PRODUCTS, rng.randrange(0, 3)))),
    }

    def figures(stage: Stage) -> OpportunityFigures:
        return OpportunityFigures(
            **steady,
            stage_id=stage.stage_id,
            stage_name=stage.name,
            stage_kind=stage.kind,
            probability=stage.probability,
            forecast_category=stage.category,
            stage_order=stage.order,
        )

    def event(spec: Any, data: Any, version: int, at: datetime) -> CloudEvent[Any]:
        event_id = f"{opportunity_id}:{spec.topic}:{version}"
        return make_event(
            spec, data, source="/bench", subject=opportunity_id, version=version, time=at, event_id=event_id
        )

    stage, moment, version = OPEN[0], created, 1
    events = [
        event(
            catalog.OPPORTUNITY_CREATED,
            OpportunityCreated(opportunity=figures(stage), created_by=BY),
            1,
            created,
        )
    ]
    ending = rng.random()
    moves = [s for s in OPEN[1:] if rng.random() < 0.6]
    if ending >= 0.35:
        moves.append(WON if ending < 0.75 else LOST)
    for target in moves:
        moment, version = moment + timedelta(hours=rng.expovariate(1 / 200)), version + 1
        changed = OpportunityStageChanged(
            opportunity_id=opportunity_id,
            pipeline_id=steady["pipeline_id"],
            previous_stage_id=stage.stage_id,
            previous_stage_name=stage.name,
            stage_id=target.stage_id,
            stage_name=target.name,
            stage_kind=target.kind,
            probability=target.probability,
            forecast_category=target.category,
            amount=amount,
            currency=currency,
            changed_at=moment,
            changed_by=BY,
            opportunity=figures(target),
        )
        events.append(event(catalog.OPPORTUNITY_STAGE_CHANGED, changed, version, moment))
        if target.kind != StageKind.OPEN:
            closed = OpportunityClosed(
                opportunity_id=opportunity_id,
                won=target.kind == StageKind.CLOSED_WON,
                amount=amount,
                currency=currency,
                loss_reason=rng.choice(LOSS_REASONS) if target.kind == StageKind.CLOSED_LOST else None,
                closed_at=moment,
                closed_by=BY,
                opportunity=figures(target),
            )
            events.append(event(catalog.OPPORTUNITY_CLOSED, closed, version, moment))
        stage = target
    return events


def campaign_events() -> list[CloudEvent[Any]]:
    events: list[CloudEvent[Any]] = []
    for index, campaign_id in enumerate(CAMPAIGNS):
        snapshot = CampaignSnapshot(
            campaign_id=campaign_id,
            name=f"Campaign {index}",
            type=list(CampaignType)[index % len(CampaignType)],
            purpose=CampaignPurpose.LEAD_GENERATION,
            status=CampaignStatus.ACTIVE,
            currency="EUR",
            budgeted_cost=Decimal(50_000),
        )
        events.append(
            make_event(
                catalog.CAMPAIGN_CREATED,
                CampaignCreated(campaign=snapshot, created_at=EPOCH, created_by=BY),
                source="/bench",
                subject=campaign_id,
                version=1,
                time=EPOCH,
            )
        )
        entry = CostEntry(
            entry_id="e1",
            amount=Decimal(1000 * (index + 1)),
            currency="EUR",
            incurred_on=EPOCH.date(),
            recorded_at=EPOCH,
            recorded_by=BY,
        )
        cost = CampaignCostRecorded(
            campaign_id=campaign_id, entry=entry, actual_cost=entry.amount, currency="EUR"
        )
        events.append(
            make_event(
                catalog.CAMPAIGN_COST_RECORDED,
                cost,
                source="/bench",
                subject=campaign_id,
                version=2,
                time=EPOCH,
            )
        )
    return events


# -- folding ----------------------------------------------------------------------------------
class PlainStore:
    """Facts of one story, folded by the service's projection without per-event counting."""

    def __init__(self) -> None:
        self.leads: dict[str, LeadFacts] = {}
        self.opportunities: dict[str, OpportunityFacts] = {}
        self.campaigns: dict[str, CampaignFacts] = {}
        self.members: list[tuple[str, str, datetime]] = []
        self.pipelines: list[PipelineDefined] = []

    async def lead(self, lead_id: str) -> LeadFacts | None:
        return self.leads.get(lead_id)

    async def save_lead(self, lead: LeadFacts) -> None:
        self.leads[lead.lead_id] = lead

    async def opportunity(self, opportunity_id: str) -> OpportunityFacts | None:
        return self.opportunities.get(opportunity_id)

    async def save_opportunity(self, opportunity: OpportunityFacts) -> None:
        self.opportunities[opportunity.opportunity_id] = opportunity

    async def campaign(self, campaign_id: str) -> CampaignFacts | None:
        return self.campaigns.get(campaign_id)

    async def save_campaign(self, campaign: CampaignFacts) -> None:
        self.campaigns[campaign.campaign_id] = campaign

    async def add_member(self, campaign_id: str, member_id: str, at: datetime) -> bool:
        if any(c == campaign_id and m == member_id for c, m, _ in self.members):
            return False
        self.members.append((campaign_id, member_id, at))
        return True

    async def define_pipeline(self, pipeline: PipelineDefined) -> None:
        self.pipelines.append(pipeline)

    async def define_picklist(self, picklist: PicklistRevised) -> None:
        pass  # the benchmark's events revise no picklist

    def tally(self) -> Tally:
        """The counters of the final facts: what all the per-event differences add up to."""
        changes = Changes()
        for lead in self.leads.values():
            changes.lead(None, lead)
        for opportunity in self.opportunities.values():
            changes.opportunity(None, opportunity)
        changes.new_members = [(c, at) for c, _, at in self.members]
        changes.pipelines = list(self.pipelines)
        return changes.tally()


@dataclass
class Folded:
    leads: list[Document]
    opportunities: list[Document]
    members: list[Document]
    tally: Tally
    as_of: dict[str, datetime]


def fold_stories(numbers: range, copies: int) -> Folded:
    """Fold stories (copy 0) and return their fact documents and their counters x ``copies``."""
    folded = Folded([], [], [], Tally(), {})
    for number in numbers:
        store = PlainStore()
        for event in lead_story(number, 0):
            run_now(project(event, store))
        tally = store.tally()
        for key, fields in tally.counts.items():
            folded.tally.add(key, fields, copies)
        folded.tally.merge(Tally(names=tally.names))
        folded.leads += [_to_document(f, "lead_id") for f in store.leads.values()]
        folded.opportunities += [_to_document(f, "opportunity_id") for f in store.opportunities.values()]
        folded.members += [{"_id": f"{c}|{m}", "added_at": at} for c, m, at in store.members]
        for kind, facts in (("leads", store.leads.values()), ("opportunities", store.opportunities.values())):
            for fact in facts:
                if fact.as_of and fact.as_of > folded.as_of.get(kind, fact.as_of - timedelta(1)):
                    folded.as_of[kind] = fact.as_of
    return folded


def clone(document: Document, copy: int) -> Document:
    """A story's fact document for another copy: every id of the story gets the copy's suffix."""
    if copy == 0:
        return document
    suffix = f"-{copy}"

    def moved(value: Any) -> Any:
        return (
            value[:-2] + suffix
            if isinstance(value, str) and value.endswith("-0") and value[:1] in "LOAC"
            else value
        )

    result = dict(document)
    result["_id"] = moved(document["_id"]) if "|" not in document["_id"] else document["_id"][:-2] + suffix
    for name in ("opportunity_id", "lead_id", "converted_from_lead_id", "account_id", "contact_id"):
        if name in result:
            result[name] = moved(result[name])
    if "opportunities" in result:
        result["opportunities"] = [
            {**o, "opportunity_id": moved(o["opportunity_id"])} for o in result["opportunities"]
        ]
    return result


def counter_documents(tally: Tally, view: str) -> Iterable[Document]:
    for key in {*tally.counts, *tally.names}:
        if key.view == view:
            measures = nest({**to_bson(tally.counts.get(key, {})), **tally.names.get(key, {})})
            yield {"_id": key.doc_id, "k": key.labels(), **measures}


def self_check(stories: int = 60, copies: int = 2) -> None:
    """Counters of cloned stories x copies == the event-by-event fold of all the copies."""
    by_story = fold_stories(range(stories), copies).tally
    by_event = MemoryFactStore().fold(
        e for n in range(stories) for k in range(copies) for e in lead_story(n, k)
    )
    assert (by_story.counts, by_story.names) == (by_event.counts, by_event.names), "cloned state differs"


# -- measuring --------------------------------------------------------------------------------
def percentiles(samples: list[float]) -> tuple[float, float]:
    ordered = sorted(samples)
    p99 = ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))]
    return statistics.median(ordered) * 1000, p99 * 1000


READS: list[tuple[str, str, dict[str, str]]] = [
    ("funnel (total, all time)", "/reports/funnel", {}),
    (
        "funnel by source per month, 2026",
        "/reports/funnel",
        {"group_by": "lead_source", "period": "month", "from": "2026-01-01", "to": "2027-01-01"},
    ),
    ("funnel of a campaign by owner", "/reports/funnel", {"campaign_id": "cmp-07", "group_by": "owner_id"}),
    (
        "funnel per week, one quarter, cohort",
        "/reports/funnel",
        {"period": "week", "basis": "cohort", "from": "2026-04-01", "to": "2026-07-01"},
    ),
    (
        "funnel by rating, odd range",
        "/reports/funnel",
        {"group_by": "rating", "from": "2025-02-17", "to": "2026-09-05"},
    ),
    ("pipeline by stage", "/reports/pipeline", {}),
    ("pipeline by owner", "/reports/pipeline", {"group_by": "owner"}),
    (
        "pipeline of a product by team",
        "/reports/pipeline",
        {"group_by": "sales_team", "product_id": "prod-03"},
    ),
    ("forecast", "/reports/forecast", {}),
    ("forecast of an owner", "/reports/forecast", {"owner_id": "rep-11"}),
    (
        "win/loss by owner per quarter",
        "/reports/win-loss",
        {"group_by": "owner_id", "period": "quarter", "from": "2026-01-01", "to": "2027-01-01"},
    ),
    ("win/loss by loss reason", "/reports/win-loss", {"group_by": "loss_reason"}),
    ("stage velocity", "/reports/stage-velocity", {}),
    ("stage conversion", "/reports/stage-conversion", {}),
    ("lead sources", "/reports/lead-sources", {}),
    ("campaign ROI", "/reports/campaign-roi", {}),
    ("pipeline history, 90 days", "/reports/pipeline-history", {"from": "2026-06-01", "to": "2026-08-30"}),
    ("funnel as CSV by campaign", "/reports/funnel", {"group_by": "campaign_id", "format": "csv"}),
]


async def load_state(
    mongo: AsyncMongoClient[Document], database: str, folded: Folded, campaigns: PlainStore, copies: int
) -> None:
    db = mongo[database]
    repo = ReportingRepository(mongo, db)
    await db[GENERATIONS].replace_one({"_id": LIVE}, {"generation": 1, "since": None}, upsert=True)
    generation = repo.generation(1)
    await generation.ensure_indexes()

    async def insert(collection: Any, documents: Iterable[Document], batch: int = 5000) -> int:
        count, chunk = 0, []
        for document in documents:
            chunk.append(document)
            if len(chunk) == batch:
                await collection.insert_many(chunk, ordered=False)
                count, chunk = count + len(chunk), []
        if chunk:
            await collection.insert_many(chunk, ordered=False)
            count += len(chunk)
        return count

    started = time.monotonic()
    for name, collection, documents in (
        ("lead facts", generation.leads, folded.leads),
        ("opportunity facts", generation.opportunities, folded.opportunities),
        ("campaign members", generation.members, folded.members),
    ):
        count = await insert(collection, (clone(d, k) for k in range(copies) for d in documents))
        print(f"  {name:<22} {count:>9,} documents  ({time.monotonic() - started:.0f} s)", flush=True)
    await insert(generation.campaigns, (_to_document(c, "campaign_id") for c in campaigns.campaigns.values()))
    tally = folded.tally.merge(campaigns.tally())
    total = 0
    for view in COUNTER_VIEWS:
        total += await insert(generation.counters[view], counter_documents(tally, view))
    print(
        f"  {'counter documents':<22} {total:>9,}            ({time.monotonic() - started:.0f} s)", flush=True
    )
    years = [int(key.period) for key in tally.counts if key.grain == "year"]
    marks = {**folded.as_of, "first_year": min(years), "last_year": max(years)}
    await generation.freshness.replace_one({"_id": "as_of"}, marks, upsert=True)


async def measure(infra: BenchInfra, root: Path, args: argparse.Namespace) -> None:
    stories, copies = args.stories, args.copies
    print(
        f"reporting benchmark: {stories * copies:,} leads, {stories // 5 * copies:,} opportunities",
        flush=True,
    )
    started = time.monotonic()
    self_check()
    print(
        f"  self-check: cloned stories x copies == event-by-event fold ({time.monotonic() - started:.0f} s)"
    )
    halves = [range(0, stories // 2), range(stories // 2, stories)]
    with ProcessPoolExecutor(max_workers=2) as pool:
        parts = list(pool.map(fold_stories, halves, [copies, copies]))
    folded = Folded([], [], [], Tally(), {})
    for part in parts:
        folded.leads += part.leads
        folded.opportunities += part.opportunities
        folded.members += part.members
        folded.tally.merge(part.tally)
        for kind, moment in part.as_of.items():
            folded.as_of[kind] = max(folded.as_of.get(kind, moment), moment)
    campaigns = PlainStore()
    for event in campaign_events():
        run_now(project(event, campaigns))
    print(
        f"  folded {stories:,} stories through the projection ({time.monotonic() - started:.0f} s)",
        flush=True,
    )

    bench = infra
    isolation = "run."
    database = service_env(bench, "reporting", isolation=isolation)["mongo_database"]
    mongo: AsyncMongoClient[Document] = AsyncMongoClient(infra.mongo_url, tz_aware=True)
    try:
        await load_state(mongo, database, folded, campaigns, copies)
        del folded, parts
        async with running_services(
            bench,
            ["reporting"],
            log_dir=root / "logs",
            isolation=isolation,
            extra_env={"CRM_LOG_LEVEL": "WARNING"},
        ) as services:
            base = services["reporting"].base_url
            async with httpx.AsyncClient(base_url=base, timeout=60) as http:
                await reads(http, mongo, database, args.requests)
                await ingest(http, mongo, database, bench, isolation, args.events)
    finally:
        await mongo.close()


async def reads(
    http: httpx.AsyncClient, mongo: AsyncMongoClient[Document], database: str, requests: int
) -> None:
    print(f"\nread latency over HTTP on loopback ({requests} requests each, after 2 warm-ups), ms:")
    print(f"  {'request':<40} {'p50':>8} {'p99':>8}  rows")
    samples = []
    for _ in range(requests):
        t = time.perf_counter()
        (await http.get("/health/live")).raise_for_status()
        samples.append(time.perf_counter() - t)
    p50, p99 = percentiles(samples)[:2]
    print(f"  {'baseline: GET /health/live':<40} {p50:>8.2f} {p99:>8.2f}")
    collection = mongo[database]["g1.lead_facts"]
    samples = []
    for index in range(requests):
        t = time.perf_counter()
        await collection.find_one({"_id": f"L{index * 5}-{index % 3}"})
        samples.append(time.perf_counter() - t)
    p50, p99 = percentiles(samples)[:2]
    print(f"  {'baseline: SecantusDB find_one by _id':<40} {p50:>8.2f} {p99:>8.2f}")
    for label, path, params in READS:
        for _ in range(2):
            (await http.get(path, params=params)).raise_for_status()
        samples = []
        for _ in range(requests):
            t = time.perf_counter()
            response = await http.get(path, params=params)
            samples.append(time.perf_counter() - t)
            response.raise_for_status()
        rows = (
            len(response.text.splitlines()) - 1
            if params.get("format") == "csv"
            else len(response.json()["rows"])
        )
        p50, p99 = percentiles(samples)
        print(f"  {label:<40} {p50:>8.2f} {p99:>8.2f}  {rows}", flush=True)


async def ingest(
    http: httpx.AsyncClient,
    mongo: AsyncMongoClient[Document],
    database: str,
    bench: BenchInfra,
    isolation: str,
    count: int,
) -> None:
    events: list[CloudEvent[Any]] = []
    number = 10_000_000
    recent = datetime(2026, 12, 1, tzinfo=UTC)
    while len(events) < count:
        events += lead_story(number, 0, epoch=recent, span_days=30)
        number += 1
    events = events[:count]
    # Baseline: the database's own rate of small transactions (read one, insert one).
    probe = mongo[database]["bench_probe"]
    started, rounds = time.monotonic(), 400

    for index in range(rounds):

        async def work(session: AsyncClientSession, index: int = index) -> None:
            await probe.find_one({"_id": index}, session=session)
            await probe.insert_one({"_id": index}, session=session)

        await in_transaction(mongo, work)
    baseline = rounds / (time.monotonic() - started)
    await probe.drop()

    generation = ReportingRepository(mongo, mongo[database]).generation(1)
    inc_rate = await counter_update_baseline(mongo, generation)
    before = await processed(http)
    updates_before = await metric(http, "crm_reporting_counter_updates_total")
    producer = AIOKafkaProducer(
        bootstrap_servers=bench.kafka_bootstrap, enable_idempotence=True, acks="all", linger_ms=5
    )
    await producer.start()
    started = time.monotonic()
    try:
        sends = []
        for event in events:
            assert event.subject is not None
            topic = (
                bench.topic_prefix
                + isolation
                + next(s.topic for s in catalog.ALL_EVENTS if s.type == event.type)
            )
            sends.append(await producer.send(topic, encode(event), key=event.subject.encode()))
        await asyncio.gather(*sends)
    finally:
        await producer.stop()
    published = time.monotonic() - started
    deadline = started + 900
    while True:
        if await processed(http) - before >= count and await generation.pending() == 0:
            break
        if time.monotonic() > deadline:
            raise SystemExit("ingest did not finish within 15 minutes")
        await asyncio.sleep(1.0)
    elapsed = time.monotonic() - started
    print(f"\ningest: {count:,} events (new leads, conversions, opportunities of the last 30 days)")
    print(f"  published to Kafka in {published:.1f} s")
    updates = await metric(http, "crm_reporting_counter_updates_total") - updates_before
    print(f"  applied and merged into the views: {count / elapsed:,.0f} events/s ({elapsed:.1f} s)")
    print(
        f"  counter documents written: {updates:,.0f} ({updates / count:.1f} per event), "
        f"{updates / elapsed:,.0f} /s"
    )
    print(f"  baseline: SecantusDB small transactions (find_one + insert_one): {baseline:,.0f} /s")
    print(
        "  baseline: SecantusDB $inc on this state's counter documents, 1,000 per transaction: "
        f"{inc_rate:,.0f} /s"
    )


async def counter_update_baseline(mongo: AsyncMongoClient[Document], generation: Generation) -> float:
    """How fast the database rewrites counter documents of this size: one $inc each on a
    sample of them, in one transaction that is then aborted (nothing changes)."""
    per_view = 1000 // len(generation.counters)
    ids: list[tuple[str, Any]] = []
    for view, collection in generation.counters.items():
        sample = await collection.aggregate([{"$sample": {"size": per_view}}, {"$project": {"_id": 1}}])
        ids += [(view, doc["_id"]) async for doc in sample]
    async with mongo.start_session() as session:
        await session.start_transaction()
        started = time.monotonic()
        for view in generation.counters:
            ops = [
                UpdateOne({"_id": doc_id}, {"$inc": {"t.bench_probe": 1}}) for v, doc_id in ids if v == view
            ]
            if ops:
                await generation.counters[view].bulk_write(ops, ordered=False, session=session)
        elapsed = time.monotonic() - started
        await session.abort_transaction()
    return len(ids) / elapsed


async def processed(http: httpx.AsyncClient) -> float:
    return await metric(http, "crm_events_processed_total{", "crm_events_duplicate_total{")


async def metric(http: httpx.AsyncClient, *prefixes: str) -> float:
    """The sum of the service's Prometheus samples whose lines start with ``prefixes``."""
    metrics = (await http.get("/metrics")).text
    return sum(float(line.rsplit(" ", 1)[1]) for line in metrics.splitlines() if line.startswith(prefixes))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument(
        "--stories", type=int, default=40_000, help="distinct lead stories (every fifth with an opportunity)"
    )
    parser.add_argument("--copies", type=int, default=25, help="times each story is stored under other ids")
    parser.add_argument("--requests", type=int, default=50, help="timed requests per view")
    parser.add_argument("--events", type=int, default=6_000, help="events in the ingest stream")
    parser.add_argument("--cache", default="3G", help="SecantusDB's WiredTiger cache")
    parser.add_argument("--quick", action="store_true", help="a small run (2,000 leads) to try the script")
    args = parser.parse_args()
    if args.quick:
        args.stories, args.copies, args.requests, args.events = 1000, 2, 10, 500

    async def work(infra: BenchInfra, root: Path) -> None:
        await measure(infra, root, args)

    # The state is ~2 GB on disk; with a 256 MB WiredTiger cache SecantusDB stalls under
    # concurrent transactions (threads spin in WiredTiger). MongoDB sizes its cache to half the RAM.
    run_bounded(
        "reporting",
        work,
        deadline_seconds=DEADLINE_SECONDS,
        mongo_cache=args.cache,
        keep_files=bool(os.environ.get("CRM_BENCH_KEEP")),
    )


if __name__ == "__main__":
    main()
