"""The runtime on the real broker and database: events written in one transaction are
published in order and a transaction that fails publishes nothing; the consumer applies a
fetched batch in one transaction, each new event once, and isolates the bad ones."""

from __future__ import annotations

from typing import Any

import pytest
from crm_contracts import catalog
from crm_contracts.envelope import CloudEvent
from crm_contracts.events.leads import LeadCaptured, lead_captured_example
from crm_localinfra.testing import (
    Outgoing,
    eventually,
    isolation_key,
    publish_all,
    read_topic,
    sample_sum,
    service_client,
    service_env,
)
from crm_runtime import PermanentEventError, ServiceRuntime, ServiceSettings, UnitOfWork, make_event
from crm_runtime.dead_letters import H_ERROR, dlq_topic
from crm_runtime.events import encode
from crm_runtime.topics import ensure_topics

pytestmark = pytest.mark.integration


def captured(n: int) -> Any:
    data = LeadCaptured.model_validate(lead_captured_example() | {"external_id": f"bulk-{n}"})
    return make_event(catalog.LEAD_CAPTURED, data, source="/probe", subject="same-aggregate", version=n)


async def test_bulk_emitted_events_are_published_in_order_and_failed_ones_never(infra: Any) -> None:
    settings = ServiceSettings(service_name="probe", **service_env(infra, "probe", isolation=isolation_key()))
    runtime = ServiceRuntime(settings)
    app = runtime.create_app(title="probe", description="runtime probe")

    async def bulk(uow: UnitOfWork) -> None:
        await uow.emit_many([(catalog.LEAD_CAPTURED, captured(n)) for n in range(1, 51)])

    async def failing(uow: UnitOfWork) -> None:
        await uow.emit(catalog.LEAD_CAPTURED, captured(99))
        raise RuntimeError("the business rule said no")

    async with service_client(app):
        with pytest.raises(RuntimeError):
            await runtime.transaction(failing)
        await runtime.transaction(bulk)
        records = await read_topic(
            infra.kafka_bootstrap, settings.topic("lead.captured"), until=lambda r: len(r) >= 50
        )

        async def drained() -> bool:
            # Deleted once Kafka acknowledged them, which can be just after a reader sees them.
            return await runtime.outbox.pending() == 0

        await eventually(drained)
    versions = [int(r.json()["sequence"]) for r in records]
    assert versions == list(range(1, 51))  # one key, one partition: insertion order kept, 99 never sent


async def test_a_fetched_batch_applies_each_new_event_once_and_isolates_bad_ones(infra: Any) -> None:
    settings = ServiceSettings(service_name="probe", **service_env(infra, "probe", isolation=isolation_key()))
    runtime = ServiceRuntime(settings)
    applied = runtime.db["applied"]

    async def on_captured(event: CloudEvent[LeadCaptured], uow: UnitOfWork) -> None:
        if event.data.external_id == "poison":
            raise PermanentEventError("external_id: 'poison' is refused")
        # A unique _id: applying an event twice would fail the test's transaction.
        await applied.insert_one({"_id": event.data.external_id}, session=uow.session)

    runtime.consumer.subscribe(catalog.LEAD_CAPTURED, on_captured)
    app = runtime.create_app(title="probe", description="runtime probe")
    topic = "lead.captured"
    await ensure_topics(settings, [topic, dlq_topic(topic)])
    events = [captured(n) for n in range(1, 121)]
    poison = captured(500).model_copy(
        update={"data": events[0].data.model_copy(update={"external_id": "poison"})}
    )
    # Everything is on the topic before the consumer starts, so its fetches come back full:
    # originals, a message that is not JSON, a refused event, then 30 of the originals again.
    values = [encode(e) for e in events[:60]] + [b"{not json", encode(poison)]
    values += [encode(e) for e in events[60:]] + [encode(e) for e in events[:30]]
    await publish_all(
        infra.kafka_bootstrap, settings.topic(topic), [Outgoing(v, b"one-partition") for v in values]
    )

    def sample(name: str) -> float:
        return sample_sum(runtime.registry, name, topic=topic)

    async with service_client(app):

        async def consumed() -> bool:
            done = sample("crm_events_processed_total") + sample("crm_events_duplicate_total")
            return done >= 150 and sample("crm_events_dead_lettered_total") >= 2

        await eventually(consumed, timeout=60)
        assert sample("crm_events_processed_total") == 120
        assert sample("crm_events_duplicate_total") == 30
        assert sample("crm_events_dead_lettered_total") == 2
        assert await applied.count_documents({}) == 120
        assert await runtime.db["inbox"].count_documents({}) == 120
        batches = runtime.registry.get_sample_value("crm_consumer_batch_events_count") or 0.0
        assert 0 < batches < 150 / 2  # batched: many events per transaction
        dead = await read_topic(
            infra.kafka_bootstrap, settings.topic(dlq_topic(topic)), until=lambda r: len(r) >= 2
        )
    reasons = sorted(r.headers[H_ERROR].decode() for r in dead)
    assert any("not JSON" in reason for reason in reasons)
    assert any("poison" in reason for reason in reasons)
