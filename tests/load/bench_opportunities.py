"""Opportunities: stage moves per second over HTTP with optimistic versioning, and converted
leads handled per second end to end (Kafka in, records and outbox, Kafka out).

Runs the opportunities service as a real process (``python -m crm_opportunities`` under uvicorn
on a loopback port, as ``./crm up`` does) on its own Kafka and SecantusDB, started on free
loopback ports in a temporary directory and stopped by pid at the end (or on
CRM_TEST_KAFKA_BOOTSTRAP and CRM_TEST_MONGO_URL if both are set). Everything is bounded in
count (MOVES, CONVERSIONS) and in time (DEADLINE_SECONDS). Figures are printed next to baselines
measured in the same run, on the same servers:

- stage moves, each with ``expected_version`` (read, rules, conditional write, one outbox entry
  in one transaction), by REPS concurrent reps on their own opportunities; then the same with
  two reps racing on each opportunity, counting the 409s optimistic versioning gives the loser;
  vs. the HTTP floor (``GET /health/live`` at the same concurrency) and the storage floor (the
  same reads, conditional replace and outbox insert as bare PyMongo transactions);
- ``lead.converted`` handled end to end: CONVERSIONS events published at once, timed until all
  their ``opportunity.created`` events are in Kafka; vs. the bus floor (the same number of
  messages of the same size through a bare topic and back) and the storage floor (the same
  inserts as bare transactions, one per conversion).

    ./crm bench opportunities [--moves 600] [--reps 8] [--conversions 300]
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import tempfile
import time
import uuid
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import httpx
from aiokafka import AIOKafkaProducer
from crm_contracts import catalog
from crm_contracts.events.leads import LeadConverted
from crm_localinfra.testing import read_topic, running_services, service_env
from crm_opportunities.bootstrap import OpportunitiesSettings
from crm_runtime.events import encode, make_event
from crm_runtime.mongo import in_transaction
from harness import BenchInfra, percentile, run_bounded
from pymongo import AsyncMongoClient
from pymongo.asynchronous.client_session import AsyncClientSession

REP = {"id": "bench-rep"}
DEADLINE_SECONDS = 600  # the whole run gives up after this
# A walk through the open stages and back, so every move is legal and none closes the deal.
WALK = ["qualification", "proposal", "negotiation", "proposal", "qualification", "prospecting"]


def rate(
    name: str, count: int, seconds: float, unit: str, samples: list[float] | None = None, note: str = ""
) -> str:
    line = f"  {name:<52} {count / seconds:8.0f} {unit:<10} ({count} in {seconds:.2f} s"
    if samples:
        line += f"; p50 {statistics.median(samples):.1f} ms, p95 {percentile(samples, 95):.1f} ms"
    return line + (f"; {note}" if note else "") + ")"


async def in_parallel(
    workers: int, work: Callable[[int], Awaitable[list[float]]]
) -> tuple[float, list[float]]:
    """Run ``work(worker)`` for each worker at once; the wall time and all latency samples."""
    started = time.perf_counter()
    results = await asyncio.gather(*(work(worker) for worker in range(workers)))
    return time.perf_counter() - started, [sample for samples in results for sample in samples]


async def moves_over_http(http: httpx.AsyncClient, base: str, moves: int, reps: int) -> list[str]:
    opportunities_per_rep = 3
    for n in range(reps * opportunities_per_rep):
        response = await http.post(
            f"{base}/opportunities",
            json={
                "id": f"opp-m{n}",
                "name": f"Deal {n}",
                "account_id": "acc-bench",
                "amount": "1000",
                "by": REP,
            },
        )
        assert response.status_code == 201, response.text

    async def rep_walks(rep: int) -> list[float]:
        """One rep moves its own opportunities in turn, each move at the version it last saw."""
        versions = {f"opp-m{rep * opportunities_per_rep + k}": 1 for k in range(opportunities_per_rep)}
        samples = []
        for step in range(moves // reps):
            opportunity_id = list(versions)[step % opportunities_per_rep]
            stage = WALK[(versions[opportunity_id] - 1) % len(WALK)]
            started = time.perf_counter()
            response = await http.post(
                f"{base}/opportunities/{opportunity_id}/stage",
                json={"stage_id": stage, "expected_version": versions[opportunity_id], "by": REP},
            )
            samples.append((time.perf_counter() - started) * 1000)
            assert response.status_code == 200, response.text
            versions[opportunity_id] = response.json()["version"]
        return samples

    done = moves // reps * reps
    seconds, samples = await in_parallel(reps, rep_walks)
    lines = [rate(f"stage moves, {reps} reps on their own deals", done, seconds, "moves/s", samples)]

    # Two reps per deal: each reads the version, then moves; the slower one gets a 409.
    conflicts = 0

    async def racing_rep(rep: int) -> list[float]:
        nonlocal conflicts
        opportunity_id = f"opp-m{(rep // 2) * opportunities_per_rep}"
        samples = []
        for _ in range(moves // reps // 2):
            version = (await http.get(f"{base}/opportunities/{opportunity_id}")).json()["version"]
            started = time.perf_counter()
            response = await http.post(
                f"{base}/opportunities/{opportunity_id}/stage",
                json={"stage_id": WALK[(version - 1) % len(WALK)], "expected_version": version, "by": REP},
            )
            samples.append((time.perf_counter() - started) * 1000)
            assert response.status_code in (200, 409), response.text
            conflicts += response.status_code == 409
        return samples

    seconds, samples = await in_parallel(reps, racing_rep)
    attempts = len(samples)
    lines.append(
        rate(
            f"stage moves, 2 reps racing on each of {reps // 2} deals",
            attempts - conflicts,
            seconds,
            "moves/s",
            samples,
            note=f"{conflicts} of {attempts} got 409",
        )
    )

    async def health(_: int) -> list[float]:
        samples = []
        for _ in range(moves // reps):
            started = time.perf_counter()
            assert (await http.get(f"{base}/health/live")).status_code == 200
            samples.append((time.perf_counter() - started) * 1000)
        return samples

    seconds, samples = await in_parallel(reps, health)
    lines.append(
        rate(f"baseline: GET /health/live, {reps} clients", len(samples), seconds, "requests/s", samples)
    )
    return lines


def outbox_entry(payload: bytes) -> dict[str, Any]:
    """An outbox document as the runtime writes it (the relay has long deleted the real ones)."""
    return {
        "topic": "bench",
        "key": "bench",
        "event_id": uuid.uuid4().hex,
        "payload": payload,
        "created_at": time.time(),
    }


async def storage_floor_of_moves(
    mongo: AsyncMongoClient[dict[str, Any]], database: str, payload: bytes, moves: int, reps: int
) -> str:
    """The storage work of a move without the service: read the opportunity, its pipeline and
    account, replace it at the version read, insert an outbox entry; one transaction each."""
    db = mongo[database]
    template = await db.opportunities.find_one({"_id": "opp-m0"})
    assert template is not None
    await db.scratch_opportunities.insert_many(
        [{**template, "_id": f"raw-{rep}", "version": 1} for rep in range(reps)]
    )

    async def rep_writes(rep: int) -> list[float]:
        async def move(session: AsyncClientSession) -> None:
            doc = await db.scratch_opportunities.find_one({"_id": f"raw-{rep}"}, session=session)
            assert doc is not None
            await db.pipelines.find_one({"_id": "default"}, session=session)
            await db.accounts.find_one({"_id": "acc-bench"}, session=session)
            result = await db.scratch_opportunities.replace_one(
                {"_id": doc["_id"], "version": doc["version"]},
                {**doc, "version": doc["version"] + 1},
                session=session,
            )
            assert result.matched_count == 1
            await db.scratch_outbox.insert_one(outbox_entry(payload), session=session)

        samples = []
        for _ in range(moves // reps):
            started = time.perf_counter()
            await in_transaction(mongo, move)  # as the service does: snapshot, retried on conflict
            samples.append((time.perf_counter() - started) * 1000)
        return samples

    seconds, samples = await in_parallel(reps, rep_writes)
    return rate(
        f"baseline: same storage work, bare PyMongo, {reps} writers", len(samples), seconds, "txn/s", samples
    )


def conversion(run_id: str, n: int) -> LeadConverted:
    return LeadConverted.model_validate(
        {
            "lead_id": f"lead-{run_id}-{n}",
            "account": {
                "account_id": f"acc-{run_id}-{n}",
                "is_new": True,
                "name": f"Company {n}",
                "domain": f"company{n}-{run_id}.example",
            },
            "contact": {"contact_id": f"con-{run_id}-{n}", "is_new": True, "last_name": f"Buyer {n}"},
            "opportunity": {"opportunity_id": f"opp-{run_id}-{n}", "name": f"Deal {n}", "amount": "2500.00"},
            "lead_source": "web",
            "converted_at": "2026-11-20T10:00:00Z",
            "converted_by": REP,
        }
    )


async def conversions_end_to_end(settings: OpportunitiesSettings, count: int) -> list[str]:
    bootstrap = settings.kafka_bootstrap_servers
    run_id = uuid.uuid4().hex[:6]
    messages = [
        (
            converted.lead_id.encode(),
            encode(
                make_event(
                    catalog.LEAD_CONVERTED, converted, source="/bench", subject=converted.lead_id, version=3
                )
            ),
        )
        for converted in (conversion(run_id, n) for n in range(count))
    ]
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, enable_idempotence=True, acks="all")
    await producer.start()
    try:
        started = time.perf_counter()
        sent = [
            await producer.send(settings.topic(catalog.LEAD_CONVERTED.topic), value, key=key)
            for key, value in messages
        ]
        await asyncio.gather(*sent)
        created = await read_topic(
            bootstrap,
            settings.topic(catalog.OPPORTUNITY_CREATED.topic),
            until=lambda records: (
                sum(r.key is not None and run_id.encode() in r.key for r in records) >= count
            ),
            timeout=DEADLINE_SECONDS / 2,
        )
        seconds = time.perf_counter() - started
        assert sum(r.key is not None and run_id.encode() in r.key for r in created) == count

        # Bus floor: the same messages through a bare topic and read back.
        scratch = settings.topic(f"bench.scratch.{run_id}")
        started = time.perf_counter()
        sent = [await producer.send(scratch, value, key=key) for key, value in messages]
        await asyncio.gather(*sent)
        await read_topic(bootstrap, scratch, until=lambda records: len(records) >= count, timeout=120)
        bus_seconds = time.perf_counter() - started
    finally:
        await producer.stop()
    size = sum(len(value) for _, value in messages) // count
    return [
        rate(
            "lead.converted -> records -> opportunity.created",
            count,
            seconds,
            "leads/s",
            note="each: account, contact, opportunity, 3 events",
        ),
        rate(f"baseline: same {size}-byte messages through Kafka and back", count, bus_seconds, "msgs/s"),
    ]


async def storage_floor_of_conversions(
    mongo: AsyncMongoClient[dict[str, Any]], database: str, payload: bytes, count: int
) -> str:
    """A conversion's storage work without the service: inbox entry, domain claim, account,
    contact and opportunity, three outbox entries; one transaction each, one after another as a
    consumer applies them."""
    db = mongo[database]
    samples = {
        name: await db[name].find_one() or {} for name in ("accounts", "contacts", "opportunities", "inbox")
    }

    def conversion_of(n: int) -> Callable[[AsyncClientSession], Awaitable[None]]:
        async def convert(session: AsyncClientSession) -> None:
            await db.floor_inbox.insert_one({**samples["inbox"], "_id": f"conv-{n}"}, session=session)
            await db.floor_domains.insert_one(
                {"_id": f"conv-{n}.example", "account_id": f"conv-{n}"}, session=session
            )
            for name in ("accounts", "contacts", "opportunities"):
                await db[f"floor_{name}"].find_one({"_id": f"conv-{n}"}, session=session)
                await db[f"floor_{name}"].insert_one({**samples[name], "_id": f"conv-{n}"}, session=session)
            for _ in range(3):
                await db.floor_outbox.insert_one(outbox_entry(payload), session=session)

        return convert

    started = time.perf_counter()
    for n in range(count):
        await in_transaction(mongo, conversion_of(n))
    seconds = time.perf_counter() - started
    return rate("baseline: same storage work, bare PyMongo, sequential", count, seconds, "txn/s")


async def first_event(settings: OpportunitiesSettings, topic: str) -> bytes:
    """A real event of the topic, so the baselines write outbox entries of the real size."""
    [record, *_] = await read_topic(
        settings.kafka_bootstrap_servers, settings.topic(topic), until=lambda records: len(records) >= 1
    )
    return record.value


async def run(kafka: str, mongo_url: str, moves: int, reps: int, conversions: int) -> None:
    infra = BenchInfra(kafka, mongo_url)
    isolation = f"b{uuid.uuid4().hex[:8]}."
    settings = OpportunitiesSettings(**service_env(infra, "opportunities", isolation=isolation))
    mongo: AsyncMongoClient[dict[str, Any]] = AsyncMongoClient(mongo_url, tz_aware=True)
    with tempfile.TemporaryDirectory(prefix="crm-bench-opportunities-logs-") as logs:
        async with (
            running_services(infra, ["opportunities"], log_dir=Path(logs), isolation=isolation) as services,
            httpx.AsyncClient(timeout=30, limits=httpx.Limits(max_connections=reps * 2)) as http,
        ):
            base = services["opportunities"].base_url
            account = await http.post(f"{base}/accounts", json={"id": "acc-bench", "name": "Bench Ltd"})
            assert account.status_code == 201, account.text
            move_lines = await moves_over_http(http, base, moves, reps)
            payload = await first_event(settings, catalog.OPPORTUNITY_STAGE_CHANGED.topic)
            move_lines.append(
                await storage_floor_of_moves(mongo, settings.database_name, payload, moves, reps)
            )
            conversion_lines = await conversions_end_to_end(settings, conversions)
            payload = await first_event(settings, catalog.OPPORTUNITY_CREATED.topic)
            conversion_lines.append(
                await storage_floor_of_conversions(mongo, settings.database_name, payload, conversions)
            )
    await mongo.drop_database(settings.database_name)
    await mongo.close()
    print("opportunities service as a real process; SecantusDB and Kafka on loopback")
    print(f"stage moves over HTTP with expected_version ({moves} per scenario):")
    print("\n".join(move_lines))
    print(f"converted leads end to end ({conversions} lead.converted events published at once):")
    print("\n".join(conversion_lines))


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--moves", type=int, default=600, help="stage moves per scenario (at most 5000)")
    parser.add_argument("--reps", type=int, default=8, help="concurrent reps, even (at most 32)")
    parser.add_argument("--conversions", type=int, default=300, help="lead.converted events (at most 3000)")
    args = parser.parse_args()
    moves, conversions = min(args.moves, 5000), min(args.conversions, 3000)
    reps = max(2, min(args.reps, 32) // 2 * 2)

    async def work(infra: BenchInfra, _: Path) -> None:
        await run(infra.kafka_bootstrap, infra.mongo_url, moves, reps, conversions)

    run_bounded("opportunities", work, deadline_seconds=DEADLINE_SECONDS)


if __name__ == "__main__":
    main()
