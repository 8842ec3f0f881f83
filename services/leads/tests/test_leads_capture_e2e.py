"""End to end: the leads service as a real process consumes 1,000 ``lead.captured`` events of
which a fifth are resends (the same event again, or a new event id for a known capture key,
some with newer data) and some are invalid; the stored leads, the dead letters and the events
it publishes (counted on the topics) are exactly what they must be."""

from __future__ import annotations

import random
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest
from aiokafka import AIOKafkaProducer
from crm_contracts import catalog
from crm_contracts.events.leads import LeadCaptured
from crm_leads.domain import lead_id_for
from crm_localinfra.testing import (
    RunningService,
    eventually,
    isolation_key,
    read_topic,
    running_services,
    service_env,
    topic_size,
)
from crm_runtime.dead_letters import H_ERROR
from crm_runtime.events import encode, make_event
from pymongo import AsyncMongoClient

pytestmark = [pytest.mark.integration, pytest.mark.e2e]

TOTAL = 1000
LEADS = 760
SAME_EVENT_AGAIN = 120  # the very same message again
SAME_KEY_SAME_DATA = 40  # a new event id, nothing new in it
SAME_KEY_NEWER_DATA = 40  # a new event id carrying a newer capture
INVALID = TOTAL - LEADS - SAME_EVENT_AGAIN - SAME_KEY_SAME_DATA - SAME_KEY_NEWER_DATA


@dataclass(frozen=True)
class Message:
    key: bytes
    value: bytes


def capture(n: int, *, newer: bool = False) -> LeadCaptured:
    return LeadCaptured.model_validate(
        {
            "source_system": "webforms",
            "external_id": f"form-{n}",
            "person": {
                "first_name": f"Person{n}",
                "email": f"person{n}@company{n}.example",
                "job_title": "Head of Operations" if newer else "Analyst",
            },
            "company": {"name": f"Company {n}", "size": 10 + n},
            "lead_source": "web",
            "captured_at": "2026-10-02T10:00:00Z" if newer else "2026-10-01T10:00:00Z",
        }
    )


def envelope(data: LeadCaptured, event_id: str | None = None) -> bytes:
    event = make_event(
        catalog.LEAD_CAPTURED, data, source="/webforms", subject=data.external_id, event_id=event_id
    )
    return encode(event)


def invalid(n: int) -> tuple[bytes, str]:
    """A message that must be dead-lettered, and the text its dead letter must name."""
    good = orjson.loads(envelope(capture(LEADS + n)))
    kind = n % 3
    if kind == 0:
        return b'{"specversion": "1.0", "id": ' + str(n).encode(), "not JSON"
    if kind == 1:  # (captured_at may be left out since issue 18; the capture key may not)
        del good["data"]["external_id"]
        return orjson.dumps(good), "data.external_id: Field required"
    good["data"]["company"]["size"] = "a few hundred"
    return orjson.dumps(good), "data.company.size"


@dataclass
class Scenario:
    messages: list[Message]
    updated_keys: set[str]  # capture keys whose newer capture is consumed after the older one
    dead_letter_reasons: list[str]


def scenario(seed: int = 4) -> Scenario:
    rng = random.Random(seed)
    originals = [Message(f"form-{n}".encode(), envelope(capture(n), str(uuid.uuid4()))) for n in range(LEADS)]
    resent = [rng.choice(originals) for _ in range(SAME_EVENT_AGAIN)]
    renamed = [
        Message(f"form-{n}".encode(), envelope(capture(n)))
        for n in rng.sample(range(LEADS), SAME_KEY_SAME_DATA)
    ]
    newer_keys = rng.sample(range(LEADS), SAME_KEY_NEWER_DATA)
    newer = [Message(f"form-{n}".encode(), envelope(capture(n, newer=True))) for n in newer_keys]
    bad = [invalid(n) for n in range(INVALID)]
    messages = originals + resent + renamed + newer + [Message(b"bad", value) for value, _ in bad]
    rng.shuffle(messages)
    assert len(messages) == TOTAL
    # One key, one partition: a newer capture updates its lead only if an older one came first.
    newer_values = {message.value for message in newer}
    seen: dict[bytes, bool] = {}  # capture key -> holds the newer capture
    updated: set[str] = set()
    for message in messages:
        if message.key == b"bad":
            continue
        is_newer = message.value in newer_values
        if message.key in seen and is_newer and not seen[message.key]:
            updated.add(message.key.decode())
        seen[message.key] = seen.get(message.key, False) or is_newer
    return Scenario(messages, updated, [reason for _, reason in bad])


@dataclass
class Running:
    infra: Any
    isolation: str
    service: RunningService
    http: httpx.AsyncClient
    mongo: AsyncMongoClient[dict[str, Any]]

    def topic(self, name: str) -> str:
        return str(service_env(self.infra, "leads", isolation=self.isolation)["topic_prefix"]) + name

    @property
    def db(self) -> Any:
        return self.mongo[service_env(self.infra, "leads", isolation=self.isolation)["mongo_database"]]

    async def topic_size(self, name: str) -> int:
        return await topic_size(self.infra.kafka_bootstrap, self.topic(name))

    async def metric(self, name: str) -> float:
        text = (await self.http.get(self.service.base_url + "/metrics")).text
        # Summed over the labels besides the topic (the dead letters' source, for one).
        return sum(
            float(line.split()[-1])
            for line in text.splitlines()
            if line.startswith(name + "{") and 'topic="lead.captured"' in line
        )


@pytest.fixture(scope="module")
async def running(infra: Any, tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Running]:
    isolation = isolation_key()
    log_dir: Path = tmp_path_factory.mktemp("leads-e2e")
    async with running_services(infra, ["leads"], log_dir=log_dir, isolation=isolation) as services:
        mongo: AsyncMongoClient[dict[str, Any]] = AsyncMongoClient(infra.mongo_url, tz_aware=True)
        async with httpx.AsyncClient(timeout=30) as http:
            yield Running(infra, isolation, services["leads"], http, mongo)
        await mongo.close()


async def test_a_thousand_captures_with_resends_and_bad_ones_yield_exactly_the_right_leads_and_events(
    running: Running,
) -> None:
    plan = scenario()
    producer = AIOKafkaProducer(
        bootstrap_servers=running.infra.kafka_bootstrap, enable_idempotence=True, acks="all"
    )
    await producer.start()
    try:
        sent = [
            await producer.send(running.topic("lead.captured"), m.value, key=m.key) for m in plan.messages
        ]
        for delivery in sent:
            await delivery
    finally:
        await producer.stop()

    async def all_consumed() -> bool:
        consumed = [
            await running.metric(f"crm_events_{kind}_total")
            for kind in ("processed", "duplicate", "dead_lettered")
        ]
        return sum(consumed) == TOTAL

    await eventually(all_consumed, timeout=150, interval=1.0)

    async def outbox_drained() -> bool:
        return bool(await running.db.outbox.count_documents({}) == 0)

    await eventually(outbox_drained, timeout=60)

    # Exactly one lead per capture key, each with its latest capture.
    stored = {doc["external_id"]: doc for doc in await running.db.leads.find().to_list()}
    assert len(stored) == LEADS
    assert {doc["_id"] for doc in stored.values()} == {
        lead_id_for("webforms", f"form-{n}") for n in range(LEADS)
    }
    newer = {key for key, doc in stored.items() if doc["person"]["job_title"] == "Head of Operations"}
    assert len(newer) == SAME_KEY_NEWER_DATA
    assert {key for key, doc in stored.items() if doc["version"] == 2} == plan.updated_keys
    assert all(doc["possible_duplicates"] == [] for doc in stored.values())

    # Resends were absorbed: by the inbox (same event id) or by the capture key (new id).
    assert await running.metric("crm_events_duplicate_total") == SAME_EVENT_AGAIN
    assert await running.metric("crm_events_dead_lettered_total") == INVALID
    assert await running.topic_size("lead.created") == LEADS
    assert await running.topic_size("lead.updated") == len(plan.updated_keys)
    for quiet in ("lead.qualified", "lead.merged", "lead.converted"):
        assert await running.topic_size(quiet) == 0

    created = await read_topic(
        running.infra.kafka_bootstrap,
        running.topic("lead.created"),
        until=lambda r: len(r) >= LEADS,
        timeout=60,
    )
    assert len({record.json()["subject"] for record in created}) == LEADS
    assert await running.topic_size("lead.captured.dlq") == INVALID
    parked = await read_topic(
        running.infra.kafka_bootstrap,
        running.topic("lead.captured.dlq"),
        until=lambda r: len(r) >= INVALID,
        timeout=30,
    )
    reasons = sorted(record.headers[H_ERROR].decode() for record in parked)
    for expected in set(plan.dead_letter_reasons):
        assert sum(expected in reason for reason in reasons) == plan.dead_letter_reasons.count(expected), (
            expected
        )
