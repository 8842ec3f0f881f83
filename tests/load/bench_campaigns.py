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
  members collection.

    ./crm bench campaigns [--members 5000] [--batch 500]
"""

from __future__ import annotations

import argparse
import statistics
import time
import uuid
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from crm_campaigns.bootstrap import CampaignsSettings, create_app
from crm_localinfra.testing import eventually, service_client
from crm_runtime import ServiceRuntime
from harness import BenchInfra, percentile, run_bounded
from pymongo import AsyncMongoClient

REP = {"id": "bench"}
DEADLINE_SECONDS = 600  # the whole run gives up after this


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


async def run(kafka: str, mongo_url: str, members: int, batch: int, single: int, summaries: int) -> None:
    run_id = uuid.uuid4().hex[:8]
    settings = CampaignsSettings(
        kafka_bootstrap_servers=kafka,
        mongo_url=mongo_url,
        topic_prefix=f"bench{run_id}.",
        mongo_database=f"bench_{run_id}_campaigns",
        consumer_group=f"bench{run_id}.crm-campaigns",
        outbox_poll_seconds=0.2,
        log_level="WARNING",
    )
    app = create_app(settings)
    runtime: ServiceRuntime = app.state.runtime
    async with service_client(app) as http:

        async def new_campaign(name: str) -> str:
            body = {"name": name, "type": "email", "by": REP}
            response = await http.post("/campaigns", json=body)
            assert response.status_code == 201, response.text
            campaign_id: str = response.json()["id"]
            return campaign_id

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


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--members", type=int, default=5000, help="members added in bulk (at most 20000)")
    parser.add_argument("--batch", type=int, default=500, help="members per bulk request (at most 1000)")
    parser.add_argument("--single", type=int, default=200, help="members added one by one (baseline)")
    parser.add_argument("--summaries", type=int, default=30, help="summary calls timed")
    args = parser.parse_args()
    members, batch = min(args.members, 20000), min(args.batch, 1000)
    single, summaries = min(args.single, 1000), min(args.summaries, 200)

    async def work(infra: BenchInfra, _: Path) -> None:
        await run(infra.kafka_bootstrap, infra.mongo_url, members, batch, single, summaries)

    run_bounded("campaigns", work, deadline_seconds=DEADLINE_SECONDS)


if __name__ == "__main__":
    main()
