"""Rebuild on real Kafka and the database: a service consumes the story live; the rebuild
command replays the topics into a new generation and swaps it in; every view answers exactly
as before, the counters and facts are the same, the old generation is gone, and the live
consumer goes on writing into the new one."""

from __future__ import annotations

from typing import Any

import httpx
import pytest
from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient, RecordsToDelete
from crm_localinfra.testing import eventually, isolation_key, publish_raw, service_client, service_env
from crm_reporting.aggregates import COUNTER_VIEWS
from crm_reporting.bootstrap import ReportingSettings, create_app
from crm_reporting.rebuild import EventsMissing, rebuild
from crm_reporting.repository import Generation, ReportingRepository
from crm_runtime.mongo import Document
from pymongo import AsyncMongoClient
from reporting_events import Lead, at, days
from reporting_queries import HTTP_REQUESTS
from reporting_story import STORY, publish, settled

pytestmark = pytest.mark.integration

# Depends on the clock, not on the events.
VOLATILE = {"consumer_lag", "average_age_days"}


def stable(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: stable(v) for k, v in value.items() if k not in VOLATILE}
    if isinstance(value, list):
        return [stable(v) for v in value]
    return value


async def answers(http: httpx.AsyncClient) -> list[Any]:
    bodies = []
    for path, params in HTTP_REQUESTS:
        response = await http.get(path, params=params)
        assert response.status_code == 200, (path, params, response.text)
        bodies.append(stable(response.json()))
    return bodies


async def contents(generation: Generation) -> dict[str, Any]:
    stored: dict[str, Any] = {view: await generation.all_counters(view) for view in COUNTER_VIEWS}
    stored["leads"] = await generation.all_leads()
    stored["opportunities"] = await generation.all_opportunities()
    stored["as_of"] = await generation.as_of()
    return stored


async def test_a_rebuild_from_the_topics_equals_what_live_consumption_built(infra: Any) -> None:
    env = service_env(infra, "reporting", isolation=isolation_key())
    settings = ReportingSettings(**env)
    mongo: AsyncMongoClient[Document] = AsyncMongoClient(infra.mongo_url, tz_aware=True)
    repo = ReportingRepository(mongo, mongo[settings.database_name])
    try:
        async with service_client(create_app(settings)) as http:
            await publish(infra.kafka_bootstrap, settings, STORY)
            # A message no projection can read: dead-lettered live, skipped by the rebuild.
            await publish_raw(infra.kafka_bootstrap, settings.topic("lead.created"), b"not json", key=b"x")
            await settled(http, repo, len(STORY))
            live = await repo.live()
            before, stored_before = await answers(http), await contents(live)
            assert any(body["rows"] for body in before)

            result = await rebuild(settings, batch=7)

            assert (result.previous, result.generation) == (live.number, live.number + 1)
            assert (result.replayed + result.caught_up, result.skipped_invalid) == (len(STORY), 1)
            assert (await repo.live()).number == result.generation
            assert await answers(http) == before
            assert await contents(await repo.live()) == stored_before
            assert await repo.generation_numbers() == [result.generation]

            # Live consumption goes on, into the new generation.
            late = Lead("lead-late", captured=at(days(25)))
            await publish(infra.kafka_bootstrap, settings, [late.created()])
            await settled(http, repo, len(STORY) + 1)

            async def counted() -> bool:
                body = (await http.get("/reports/funnel", params={"from": "2026-01-01"})).json()
                return bool(body["rows"][0]["captured"] == 4)

            await eventually(counted, timeout=30)
    finally:
        await mongo.close()


async def test_a_rebuild_refuses_when_retention_already_deleted_events(infra: Any) -> None:
    settings = ReportingSettings(**service_env(infra, "reporting", isolation=isolation_key()))
    mongo: AsyncMongoClient[Document] = AsyncMongoClient(infra.mongo_url, tz_aware=True)
    repo = ReportingRepository(mongo, mongo[settings.database_name])
    admin = AIOKafkaAdminClient(bootstrap_servers=infra.kafka_bootstrap)
    await admin.start()
    try:
        async with service_client(create_app(settings)) as http:
            await publish(infra.kafka_bootstrap, settings, STORY)
            await settled(http, repo, len(STORY))
            live = await repo.live()
            # What a short retention would have done: the oldest events of one topic are gone.
            topic = settings.topic("lead.created")
            ends = await read_ends(infra.kafka_bootstrap, topic)
            deleted = {p: end for p, end in ends.items() if end > 0}
            assert deleted, "the story publishes lead.created events"
            await admin.delete_records(
                {TopicPartition(topic, p): RecordsToDelete(end) for p, end in deleted.items()}
            )

            with pytest.raises(EventsMissing) as refused:
                await rebuild(settings)

            assert refused.value.missing == {"lead.created": deleted}
            assert f"lead.created[{min(deleted)}]: {deleted[min(deleted)]}" in str(refused.value)
            assert "--accept-missing-events" in str(refused.value)
            # Nothing was touched: the live views stay, no new generation was started.
            assert await repo.generation_numbers() == [live.number]
            assert (await repo.live()).number == live.number

            result = await rebuild(settings, accept_missing_events=True)

            assert result.missing_events == {"lead.created": deleted}
            assert result.replayed + result.caught_up == len(STORY) - sum(deleted.values())
            assert (await repo.live()).number == live.number + 1
    finally:
        await admin.close()
        await mongo.drop_database(settings.database_name)
        await mongo.close()


async def read_ends(bootstrap: str, topic: str) -> dict[int, int]:
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False)
    await consumer.start()
    try:
        consumer._client.add_topic(topic)  # aiokafka has no public per-topic metadata request
        await consumer._client.force_metadata_update()
        partitions = [TopicPartition(topic, p) for p in sorted(consumer.partitions_for_topic(topic) or ())]
        return {tp.partition: end for tp, end in (await consumer.end_offsets(partitions)).items()}
    finally:
        await consumer.stop()
