"""Leads: ``lead.captured`` events captured per second end to end, and the leads service's CPU
seconds per 1,000 leads.

Runs the leads service as a real process (``python -m crm_leads`` under uvicorn on a loopback
port, as ``./crm up`` does) on its own Kafka and SecantusDB, started on free loopback ports in
a temporary directory and stopped by pid at the end (or on CRM_TEST_KAFKA_BOOTSTRAP and
CRM_TEST_MONGO_URL if both are set). COUNT events, each a new lead, are published at once; the
clock runs from the first publish until every lead is stored and every ``lead.created`` is on
its topic. CPU is read from /proc/<pid>/stat (utime + stime) before and after. Bounded in count
(at most 20,000) and time (DEADLINE_SECONDS).

Baselines, measured in the same run on the same servers:
- Kafka: the same number of messages of the same size produced to a bare topic and read back;
- SecantusDB: the stored lead documents written with ``insert_many`` (the bulk floor), and a
  capture's storage work (inbox check, rules, lead, duplicate-key lookup, lead insert, outbox
  and inbox inserts) as bare PyMongo transactions, one after another as the consumer runs them.

    ./crm bench capture [--count 5000]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

from aiokafka import AIOKafkaProducer
from crm_contracts import catalog
from crm_contracts.events.leads import LeadCaptured
from crm_leads.bootstrap import LeadsSettings
from crm_localinfra.testing import read_topic, running_services, service_env, topic_size
from crm_runtime.events import encode, make_event
from crm_runtime.mongo import in_transaction
from harness import BenchInfra, cpu_seconds, produce_and_consume, run_bounded
from pymongo import AsyncMongoClient
from pymongo.asynchronous.client_session import AsyncClientSession

DEADLINE_SECONDS = 900  # the whole run gives up after this
MAX_COUNT = 20_000
STORAGE_FLOOR_MAX = 1000  # bare transactions are sequential and slow: a sample is enough


def rate(name: str, count: int, seconds: float, unit: str, note: str = "") -> str:
    line = f"  {name:<60} {count / seconds:8.0f} {unit:<8} ({count} in {seconds:.2f} s"
    return line + (f"; {note}" if note else "") + ")"


def capture(run_id: str, n: int) -> LeadCaptured:
    """A realistic web-form lead, each a different person at a different company."""
    return LeadCaptured.model_validate(
        {
            "source_system": "webforms",
            "external_id": f"{run_id}-{n}",
            "person": {
                "first_name": f"Person{n}",
                "last_name": "Bench",
                "email": f"person{n}@company{n}-{run_id}.example",
                "phone": f"+44 20 {7000_0000 + n}",
                "job_title": ("Head of Operations", "Analyst", "CTO", "Office Manager")[n % 4],
            },
            "company": {
                "name": f"Company {n}",
                "website": f"https://company{n}-{run_id}.example",
                "industry": ("Software", "Retail", "Logistics")[n % 3],
                "size": 10 + n % 2000,
                "country": ("DE", "GB", "HU", "FR")[n % 4],
            },
            "lead_source": "web",
            "origin": "landing_page_form",
            "campaign_id": "spring-webinar",
            "utm": {"source": "newsletter", "medium": "email", "campaign": "spring"},
            "engagement": {"visits": n % 12, "page_views": n % 30, "time_on_site_seconds": n % 900},
            "captured_at": "2026-11-20T10:00:00Z",
        }
    )


async def captured_end_to_end(
    settings: LeadsSettings, mongo: AsyncMongoClient[dict[str, Any]], pid: int, count: int
) -> tuple[list[str], list[tuple[bytes, bytes]]]:
    run_id = uuid.uuid4().hex[:6]
    messages = [
        (
            lead.external_id.encode(),
            encode(make_event(catalog.LEAD_CAPTURED, lead, source="/bench", subject=lead.external_id)),
        )
        for lead in (capture(run_id, n) for n in range(count))
    ]
    bootstrap = settings.kafka_bootstrap_servers
    created_topic = settings.topic(catalog.LEAD_CREATED.topic)
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, enable_idempotence=True, acks="all")
    await producer.start()
    try:
        operations_before = await opcounters(mongo)
        cpu_before = cpu_seconds(pid)
        started = time.perf_counter()
        sent = [
            await producer.send(settings.topic(catalog.LEAD_CAPTURED.topic), value, key=key)
            for key, value in messages
        ]
        await asyncio.gather(*sent)
        published = time.perf_counter() - started
        # Every lead.created comes from the outbox after its lead committed: all on the topic
        # means all stored, which is checked below.
        while await topic_size(bootstrap, created_topic) < count:
            if time.perf_counter() - started > DEADLINE_SECONDS / 2:
                raise TimeoutError("the leads did not all arrive in time")
            await asyncio.sleep(0.2)
        seconds = time.perf_counter() - started
        cpu = cpu_seconds(pid) - cpu_before
        operations_after = await opcounters(mongo)
    finally:
        await producer.stop()
    stored = await mongo[settings.database_name].leads.count_documents({})
    assert stored == count, f"{stored} leads stored, expected {count}"
    lines = [
        rate(
            "lead.captured -> lead stored -> lead.created on the topic",
            count,
            seconds,
            "leads/s",
            note=f"published in {published:.2f} s",
        ),
        f"  {'leads service CPU per 1,000 leads':<60} {cpu / count * 1000:8.2f} s        "
        f"({cpu:.2f} s user+system for {count}; {cpu / seconds:.0%} of one core)",
        per_lead_operations(operations_before, operations_after, count),
    ]
    return lines, messages


async def opcounters(mongo: AsyncMongoClient[dict[str, Any]]) -> dict[str, int]:
    status = await mongo.admin.command("serverStatus")
    return {name: int(value) for name, value in status.get("opcounters", {}).items()}


def per_lead_operations(before: dict[str, int], after: dict[str, int], count: int) -> str:
    """Database commands the service issued per lead (the server counts all clients: nothing
    else talks to it during the run)."""
    spent = {name: (after.get(name, 0) - before.get(name, 0)) / count for name in after}
    detail = ", ".join(f"{name} {value:.1f}" for name, value in spent.items() if value >= 0.05)
    return f"  {'database operations per lead':<60} {sum(spent.values()):8.1f}          ({detail})"


async def kafka_floor(bootstrap: str, messages: list[tuple[bytes, bytes]]) -> str:
    """The same messages through a bare topic and read back."""
    seconds = await produce_and_consume(bootstrap, messages)
    size = sum(len(value) for _, value in messages) // len(messages)
    return rate(
        f"baseline: same {size}-byte messages produced to Kafka and read back",
        len(messages),
        seconds,
        "msgs/s",
    )


async def storage_floors(
    mongo: AsyncMongoClient[dict[str, Any]], database: str, outbox_payload: bytes
) -> list[str]:
    db = mongo[database]
    leads = await db.leads.find().to_list()
    count = len(leads)
    copies = [{**lead, "_id": f"raw-{n}"} for n, lead in enumerate(leads)]
    started = time.perf_counter()
    for offset in range(0, count, 1000):
        await db.scratch_leads.insert_many(copies[offset : offset + 1000], ordered=False)
    bulk_seconds = time.perf_counter() - started

    sample = min(count, STORAGE_FLOOR_MAX)

    def capture_work(n: int) -> Any:
        lead = {**leads[n], "_id": f"txn-{n}"}

        async def work(session: AsyncClientSession) -> None:
            await db.scratch_inbox.find_one({"_id": f"txn-{n}"}, {"_id": 1}, session=session)
            await db.scratch_txn_leads.find_one({"_id": lead["_id"]}, session=session)
            for key in ({"email_normalised": lead["email_normalised"]}, {"phone_key": lead["phone_key"]}):
                await db.scratch_txn_leads.find(key, session=session).to_list()
            await db.scratch_txn_leads.find(
                {"company_domain": lead["company_domain"], "name_key": lead["name_key"]}, session=session
            ).to_list()
            await db.scratch_txn_leads.insert_one(lead, session=session)
            await db.scratch_outbox.insert_one(
                {"topic": "bench", "key": lead["_id"], "event_id": lead["_id"], "payload": outbox_payload},
                session=session,
            )
            await db.scratch_inbox.insert_one(
                {"_id": f"txn-{n}", "processed_at": time.time()}, session=session
            )

        return work

    await db.scratch_txn_leads.create_index("email_normalised")
    await db.scratch_txn_leads.create_index("phone_key")
    await db.scratch_txn_leads.create_index([("company_domain", 1), ("name_key", 1)])
    started = time.perf_counter()
    for n in range(sample):
        await in_transaction(mongo, capture_work(n))
    txn_seconds = time.perf_counter() - started
    return [
        rate("baseline: the stored lead documents, SecantusDB insert_many", count, bulk_seconds, "docs/s"),
        rate(
            "baseline: a capture's storage work as bare transactions, sequential",
            sample,
            txn_seconds,
            "txn/s",
            note="8 operations and a commit each, as the consumer does",
        ),
    ]


async def run(kafka: str, mongo_url: str, count: int, mongo_pid: int | None) -> None:
    infra = BenchInfra(kafka, mongo_url)
    isolation = f"b{uuid.uuid4().hex[:8]}."
    settings = LeadsSettings(**service_env(infra, "leads", isolation=isolation))
    mongo: AsyncMongoClient[dict[str, Any]] = AsyncMongoClient(mongo_url, tz_aware=True)
    try:
        with tempfile.TemporaryDirectory(prefix="crm-bench-capture-logs-") as logs:
            async with running_services(
                infra, ["leads"], log_dir=Path(logs), isolation=isolation
            ) as services:
                pid = services["leads"].pid
                mongo_cpu_before = cpu_seconds(mongo_pid) if mongo_pid else None
                service_lines, messages = await captured_end_to_end(settings, mongo, pid, count)
                if mongo_pid and mongo_cpu_before is not None:
                    mongo_cpu = cpu_seconds(mongo_pid) - mongo_cpu_before
                    service_lines.append(
                        f"  {'SecantusDB server CPU per 1,000 leads (same interval)':<60} "
                        f"{mongo_cpu / count * 1000:8.2f} s"
                    )
        [created, *_] = await read_topic(
            kafka, settings.topic(catalog.LEAD_CREATED.topic), until=lambda records: len(records) >= 1
        )
        floor_lines = [await kafka_floor(kafka, messages)]
        floor_lines += await storage_floors(mongo, settings.database_name, created.value)
    finally:
        await mongo.drop_database(settings.database_name)
        await mongo.close()
    print(f"leads service as a real process; SecantusDB and Kafka on loopback; {os.cpu_count()} cores")
    print(f"{count} lead.captured events published at once, each a new lead:")
    print("\n".join(service_lines))
    print("baselines on the same servers:")
    print("\n".join(floor_lines))


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--count", type=int, default=5000, help=f"lead.captured events (at most {MAX_COUNT})")
    args = parser.parse_args()
    count = max(1, min(args.count, MAX_COUNT))

    async def work(infra: BenchInfra, _: Path) -> None:
        await run(infra.kafka_bootstrap, infra.mongo_url, count, infra.mongo_pid)

    run_bounded("capture", work, deadline_seconds=DEADLINE_SECONDS)


if __name__ == "__main__":
    main()
