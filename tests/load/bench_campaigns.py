"""Campaign members: how fast they are added in bulk, and how long a campaign's summary takes
once it has a realistic number of members.

Runs the campaigns service in-process (its HTTP API through ASGI, its outbox relay publishing
to Kafka meanwhile) on its own Kafka and SecantusDB, started on free loopback ports in a
temporary directory and stopped by pid at the end (or on CRM_TEST_KAFKA_BOOTSTRAP and
CRM_TEST_MONGO_URL if both are set). Everything is bounded: MEMBERS members in batches of BATCH,
SINGLE one-by-one adds, SUMMARIES summary calls. Figures are printed next to baselines measured
in the same run on the same server:

- bulk adds vs. adding members one request at a time, and vs. a bare ``insert_many`` of the
  same number of documents in one transaction (the storage floor, no rules, no events);
- the summary (four counts and the opportunities) vs. one bare ``count_documents`` on the same
  members collection;
- the members import job (a file of MEMBERS rows naming leads by their source system's ids,
  each a member that joined, responded and registered on its own dates), next to the bulk adds
  and the bare ``insert_many`` above;
- the consumer: EVENTS lead and opportunity events (``lead.created`` through a campaign, a
  re-capture through another, ``opportunity.created`` for some) applied set-based, a fetched
  batch per transaction with one ``$in`` read and one bulk write per collection, vs. the same
  events applied the way the service did before (each event's own reads and writes, still one
  transaction per batch), each on fresh topics and a fresh database of the same servers.

    ./crm bench campaigns [--members 5000] [--batch 500] [--events 3000]
"""

from __future__ import annotations

import argparse
import statistics
import time
import uuid
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

from crm_campaigns.bootstrap import CampaignsSettings, create_app
from crm_campaigns.domain import LeadReference
from crm_campaigns.repository import MemberRepository
from crm_contracts import catalog
from crm_contracts.catalog import EventSpec
from crm_contracts.events.common import Actor
from crm_contracts.events.leads import (
    Company,
    LeadCreated,
    LeadOrigin,
    LeadSnapshot,
    LeadSource,
    LeadStatus,
    LeadUpdated,
    Person,
)
from crm_contracts.events.opportunities import (
    ForecastCategory,
    OpportunityCreated,
    OpportunityFigures,
    StageKind,
)
from crm_localinfra.testing import Outgoing, eventually, publish_all, service_client
from crm_runtime import ServiceRuntime, UnitOfWork
from crm_runtime.events import encode, make_event
from harness import BenchInfra, percentile, run_bounded
from pymongo import AsyncMongoClient

REP = {"id": "bench"}
DEADLINE_SECONDS = 600  # the whole run gives up after this
CAPTURED = datetime(2026, 3, 2, 9, 0, tzinfo=UTC)


async def timed(call: Callable[[], Awaitable[Any]], times: int) -> list[float]:
    samples = []
    for _ in range(times):
        start = time.perf_counter()
        await call()
        samples.append((time.perf_counter() - start) * 1000)
    return samples


def latency(name: str, samples: list[float]) -> str:
    return (
        f"  {name:<44} p50 {statistics.median(samples):7.1f} ms   p95 {percentile(samples, 95):7.1f} ms"
        f"   ({len(samples)} calls)"
    )


def bench_settings(kafka: str, mongo_url: str) -> CampaignsSettings:
    run_id = uuid.uuid4().hex[:8]
    return CampaignsSettings(
        kafka_bootstrap_servers=kafka,
        mongo_url=mongo_url,
        topic_prefix=f"bench{run_id}.",
        mongo_database=f"bench_{run_id}_campaigns",
        consumer_group=f"bench{run_id}.crm-campaigns",
        outbox_poll_seconds=0.2,
        log_level="WARNING",
    )


def lead(lead_id: str, campaign_id: str, captured_at: datetime) -> LeadSnapshot:
    return LeadSnapshot(
        lead_id=lead_id,
        status=LeadStatus.NEW,
        source_system="bench",
        external_id=lead_id,
        person=Person(first_name="Ada", email=f"{lead_id}@engines.example"),
        company=Company(name="Analytical Engines"),
        lead_source=LeadSource.WEB,
        origin=LeadOrigin.LANDING_PAGE_FORM,
        campaign_id=campaign_id,
        captured_at=captured_at,
    )


def lead_events(total: int) -> list[tuple[EventSpec[Any], Outgoing]]:
    """About ``total`` events over 10 campaigns: per 4 leads, 4 captures, 2 re-captures
    through another campaign and 1 opportunity."""
    events: list[tuple[EventSpec[Any], Outgoing]] = []

    def add(spec: EventSpec[Any], event: Any) -> None:
        events.append((spec, Outgoing(encode(event), key=event.subject.encode())))

    n = 0
    while len(events) < total:
        lead_id, campaign = f"lead-{n}", f"campaign-{n % 10}"
        add(
            catalog.LEAD_CREATED,
            make_event(
                catalog.LEAD_CREATED,
                LeadCreated(lead=lead(lead_id, campaign, CAPTURED)),
                source="/bench",
                subject=lead_id,
                version=1,
            ),
        )
        if n % 2 == 0:
            again = lead(lead_id, f"campaign-{(n + 3) % 10}", CAPTURED - timedelta(days=n % 7))
            add(
                catalog.LEAD_UPDATED,
                make_event(
                    catalog.LEAD_UPDATED,
                    LeadUpdated(lead=again, changed_fields=["campaign_id"]),
                    source="/bench",
                    subject=lead_id,
                    version=2,
                ),
            )
        if n % 4 == 0:
            figures = OpportunityFigures(
                opportunity_id=f"opp-{n}",
                name="Deal",
                account_id="acc-1",
                pipeline_id="default",
                stage_id="prospecting",
                stage_name="Prospecting",
                stage_kind=StageKind.OPEN,
                probability=10,
                forecast_category=ForecastCategory.PIPELINE,
                amount=Decimal("100.00"),
                currency="EUR",
                lead_id=lead_id,
                created_at=CAPTURED,
            )
            add(
                catalog.OPPORTUNITY_CREATED,
                make_event(
                    catalog.OPPORTUNITY_CREATED,
                    OpportunityCreated(opportunity=figures, created_by=Actor(id="bench")),
                    source="/bench",
                    subject=figures.opportunity_id,
                    version=1,
                ),
            )
        n += 1
    return events


async def consumer_rate(kafka: str, mongo_url: str, total: int, *, set_based: bool) -> tuple[float, int]:
    """Events/s of the campaigns consumer over ``total`` events on fresh topics and database
    (``set_based=False``: without the batch handler, each event applied on its own reads and
    writes, as before), and the members it ended with."""
    settings = bench_settings(kafka, mongo_url)
    app = create_app(settings)
    runtime: ServiceRuntime = app.state.runtime
    if not set_based:
        runtime.consumer.batch_handler = None
    events = lead_events(total)

    def applied() -> float:
        return sum(
            runtime.registry.get_sample_value("crm_events_processed_total", {"topic": spec.topic}) or 0.0
            for spec in (catalog.LEAD_CREATED, catalog.LEAD_UPDATED, catalog.OPPORTUNITY_CREATED)
        )

    async def first_applied() -> bool:
        return applied() >= 1

    async def all_applied() -> bool:
        return applied() >= len(events)

    async with service_client(app):
        # One event first, so the group has joined before the clock starts.
        await publish_all(kafka, settings.topic(events[0][0].topic), [events[0][1]])
        await eventually(first_applied, timeout=120, interval=0.05)
        started = time.perf_counter()
        for spec in (catalog.LEAD_CREATED, catalog.LEAD_UPDATED, catalog.OPPORTUNITY_CREATED):
            await publish_all(kafka, settings.topic(spec.topic), [o for s, o in events[1:] if s is spec])
        await eventually(all_applied, timeout=300, interval=0.05)
        seconds = time.perf_counter() - started
        mongo: AsyncMongoClient[dict[str, Any]] = AsyncMongoClient(mongo_url, tz_aware=True)
        members = await mongo[settings.database_name]["members"].count_documents({})
        await mongo.drop_database(settings.database_name)
        await mongo.close()
    return (len(events) - 1) / seconds, members


async def know_leads(runtime: ServiceRuntime, lead_ids: list[str]) -> None:
    """The leads as their lead.created leaves them in known_leads (not part of the timings)."""
    repository = MemberRepository(runtime.db)
    for first in range(0, len(lead_ids), 1000):
        references = [
            LeadReference(lead_id=i, source_system="bench", external_id=i)
            for i in lead_ids[first : first + 1000]
        ]

        async def work(uow: UnitOfWork, references: list[LeadReference] = references) -> None:
            await repository.record_leads(references, uow.session)

        await runtime.transaction(work)


async def run(
    kafka: str, mongo_url: str, members: int, batch: int, single: int, summaries: int, events: int
) -> None:
    settings = bench_settings(kafka, mongo_url)
    app = create_app(settings)
    runtime: ServiceRuntime = app.state.runtime
    async with service_client(app) as http:

        async def new_campaign(name: str) -> str:
            body = {"name": name, "type": "email", "by": REP}
            response = await http.post("/campaigns", json=body)
            assert response.status_code == 201, response.text
            campaign_id: str = response.json()["id"]
            return campaign_id

        # Leads are added by hand only once the service has seen them (their lead.created).
        await know_leads(
            runtime, [f"lead-{n}" for n in range(members)] + [f"single-{n}" for n in range(single)]
        )

        # -- bulk adds -------------------------------------------------------------------------
        newsletter = await new_campaign("Newsletter")
        started = time.perf_counter()
        for first in range(0, members, batch):
            items = [{"lead_id": f"lead-{n}"} for n in range(first, min(first + batch, members))]
            response = await http.post(
                f"/campaigns/{newsletter}/members/bulk", json={"members": items, "by": REP}
            )
            assert response.status_code == 200 and response.json()["added"] == len(items), response.text
        bulk_seconds = time.perf_counter() - started

        async def outbox_drained() -> bool:
            return await runtime.outbox.pending() == 0

        await eventually(outbox_drained, timeout=300, interval=0.05)
        published_seconds = time.perf_counter() - started

        # Baseline 1: the same kind of member, one request each.
        one_by_one = await new_campaign("One by one")
        started = time.perf_counter()
        for n in range(single):
            response = await http.post(
                f"/campaigns/{one_by_one}/members", json={"lead_id": f"single-{n}", "by": REP}
            )
            assert response.status_code == 201, response.text
        single_seconds = time.perf_counter() - started

        # Baseline 2: bare documents of the same size, one insert_many per batch, in transactions.
        mongo: AsyncMongoClient[dict[str, Any]] = AsyncMongoClient(mongo_url, tz_aware=True)
        scratch = mongo[settings.database_name]["bench_scratch"]
        sample = await mongo[settings.database_name]["members"].find_one({"campaign_id": newsletter})
        assert sample is not None
        started = time.perf_counter()
        for first in range(0, members, batch):
            documents = [{**sample, "_id": f"raw|{n}"} for n in range(first, min(first + batch, members))]
            async with mongo.start_session() as session, await session.start_transaction():
                await scratch.insert_many(documents, session=session)
        raw_seconds = time.perf_counter() - started

        # Statuses as a campaign would see them: a fifth clicked, a tenth registered.
        for n in range(0, min(members, 300), 5):
            status = "registered" if n % 10 == 0 else "clicked"
            response = await http.post(
                f"/campaigns/{newsletter}/members/lead:lead-{n}/status", json={"status": status, "by": REP}
            )
            assert response.status_code == 200, response.text

        # -- summary latency ------------------------------------------------------------------
        summary_samples = await timed(lambda: http.get(f"/campaigns/{newsletter}/summary"), summaries)
        summary = (await http.get(f"/campaigns/{newsletter}/summary")).json()
        members_collection = mongo[settings.database_name]["members"]
        count_samples = await timed(
            lambda: members_collection.count_documents({"campaign_id": newsletter}), summaries
        )
        touches_samples = await timed(lambda: http.get("/leads/lead-7/touches"), summaries)

        # -- members import ---------------------------------------------------------------------
        # The leads as their lead.created would have made them known (setup, not timed).
        await mongo[settings.database_name]["known_leads"].insert_many(
            [
                {
                    "_id": f"imp-{n}",
                    "source_system": "old-crm",
                    "external_id": f"L{n}",
                    "capture_key": f"old-crm\x1fL{n}",
                }
                for n in range(members)
            ]
        )
        imported_campaign = await new_campaign("Imported fair")
        rows = "".join(
            f"{imported_campaign},L{n},registered,2025-03-0{1 + n % 7}T10:00:00Z,2025-03-09T10:00:00Z\n"
            for n in range(members)
        )
        started = time.perf_counter()
        response = await http.post(
            "/imports/members?source_system=old-crm",
            content=("campaign_id,lead_external_id,status,joined_at,responded_at\n" + rows).encode(),
            headers={"content-type": "text/csv"},
        )
        request_seconds = time.perf_counter() - started
        assert response.status_code == 202, response.text

        async def import_done() -> bool:
            job = (await http.get(response.headers["location"])).json()
            assert job["state"] in ("queued", "running", "done"), job
            return bool(job["state"] == "done" and job["applied"] == members)

        await eventually(import_done, timeout=300, interval=0.05)
        import_seconds = time.perf_counter() - started
        await eventually(outbox_drained, timeout=300, interval=0.05)
        import_published_seconds = time.perf_counter() - started
        await mongo.drop_database(settings.database_name)
        await mongo.close()

    print(
        f"campaign members, {members} in batches of {batch} (SecantusDB + Kafka on loopback, in-process API)"
    )
    print(
        f"  bulk add (POST /members/bulk)                {members / bulk_seconds:8.0f} members/s"
        f"   ({bulk_seconds:.2f} s; all {members} member_added events in Kafka"
        f" after {published_seconds:.2f} s)"
    )
    print(
        f"  baseline: one request per member             {single / single_seconds:8.0f} members/s"
        f"   ({single} members in {single_seconds:.2f} s)"
    )
    print(
        f"  baseline: bare insert_many, same documents   {members / raw_seconds:8.0f} docs/s"
        f"      ({raw_seconds:.2f} s; no rules, no events)"
    )
    print(
        f"summary of a campaign with {summary['members']} members "
        f"({summary['responses']} responses, {summary['leads']} leads)"
    )
    print(latency("GET /campaigns/{id}/summary", summary_samples))
    print(latency("baseline: one count_documents on members", count_samples))
    print(latency("GET /leads/{id}/touches", touches_samples))
    print(f"members import (POST /imports/members), {members} rows by the leads' ids in their source system")
    print(
        f"  import job                                   {members / import_seconds:8.0f} rows/s"
        f"      ({import_seconds:.2f} s; the request took {request_seconds:.2f} s; each row a member"
        f" with 3 events, all in Kafka after {import_published_seconds:.2f} s)"
    )

    set_based, set_members = await consumer_rate(kafka, mongo_url, events, set_based=True)
    one_by_one_rate, plain_members = await consumer_rate(kafka, mongo_url, events, set_based=False)
    assert set_members == plain_members, (set_members, plain_members)
    print(f"consumer, {events} lead and opportunity events ({set_members} memberships)")
    print(f"  set-based batches (one $in read, one bulk write per collection) {set_based:8.0f} events/s")
    print(f"  before: each event its own reads and writes, same batches      {one_by_one_rate:8.0f} events/s")


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--members", type=int, default=5000, help="members added in bulk (at most 20000)")
    parser.add_argument("--batch", type=int, default=500, help="members per bulk request (at most 1000)")
    parser.add_argument("--single", type=int, default=200, help="members added one by one (baseline)")
    parser.add_argument("--summaries", type=int, default=30, help="summary calls timed")
    parser.add_argument("--events", type=int, default=3000, help="events consumed (at most 20000)")
    args = parser.parse_args()
    members, batch = min(args.members, 20000), min(args.batch, 1000)
    single, summaries = min(args.single, 1000), min(args.summaries, 200)
    events = max(2, min(args.events, 20000))

    async def work(infra: BenchInfra, _: Path) -> None:
        await run(infra.kafka_bootstrap, infra.mongo_url, members, batch, single, summaries, events)

    run_bounded("campaigns", work, deadline_seconds=DEADLINE_SECONDS)


if __name__ == "__main__":
    main()
