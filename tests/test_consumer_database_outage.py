"""Consumption survives a database outage: events that arrive while MongoDB is down are not
dead-lettered (it is not their fault) and not lost; the batch is rewound and applied, once,
when the database is back."""

from __future__ import annotations

import asyncio
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
    sample_sum,
    service_client,
    service_env,
)
from crm_runtime import ServiceRuntime, ServiceSettings, UnitOfWork, make_event
from crm_runtime.dead_letters import dlq_topic
from crm_runtime.events import encode
from crm_runtime.topics import ensure_topics
from pymongo import AsyncMongoClient

pytestmark = pytest.mark.integration

TOPIC = "lead.captured"


async def publish(bootstrap: str, topic: str, first: int, last: int) -> None:
    messages = []
    for n in range(first, last + 1):
        data = LeadCaptured.model_validate(lead_captured_example() | {"external_id": f"outage-{n}"})
        event = make_event(catalog.LEAD_CAPTURED, data, source="/probe", subject=f"outage-{n}")
        messages.append(Outgoing(encode(event), str(n).encode()))
    await publish_all(bootstrap, topic, messages)


async def test_events_consumed_during_a_database_outage_are_applied_once_it_is_back(
    disposable_infra: Any,
) -> None:
    infra = disposable_infra  # this test stops its database: never the shared one
    settings = ServiceSettings(
        service_name="probe",
        **service_env(infra, "probe", isolation=isolation_key()),
        consumer_max_attempts=2,  # a database outage must not use up the attempts
    )
    runtime = ServiceRuntime(settings)

    async def on_captured(event: CloudEvent[LeadCaptured], uow: UnitOfWork) -> None:
        # A unique _id: applying an event twice would fail its transaction.
        await runtime.db["applied"].insert_one({"_id": event.data.external_id}, session=uow.session)

    runtime.consumer.subscribe(catalog.LEAD_CAPTURED, on_captured)
    app = runtime.create_app(title="probe", description="runtime probe")
    await ensure_topics(settings, [TOPIC, dlq_topic(TOPIC)])
    checker: AsyncMongoClient[dict[str, Any]] = AsyncMongoClient(
        infra.mongo_url, serverSelectionTimeoutMS=2000
    )
    applied = checker[settings.database_name]["applied"]

    def dead_lettered() -> float:
        return sample_sum(runtime.registry, "crm_events_dead_lettered_total", topic=TOPIC)

    try:
        async with service_client(app):
            await publish(infra.kafka_bootstrap, settings.topic(TOPIC), 1, 20)

            async def first_applied() -> bool:
                return await applied.count_documents({}) == 20

            await eventually(first_applied, timeout=60)
            await infra.astop_mongo()
            try:
                await publish(infra.kafka_bootstrap, settings.topic(TOPIC), 21, 60)
                # Long enough for the consumer to fetch them and fail on the database.
                await asyncio.sleep(8)
                assert dead_lettered() == 0
            finally:
                await infra.astart_mongo()

            async def all_applied() -> bool:
                return await applied.count_documents({}) == 60

            await eventually(all_applied, timeout=180)
            assert dead_lettered() == 0
            inbox = checker[settings.database_name]["inbox"]
            assert await inbox.count_documents({}) == 60
    finally:
        await checker.close()
