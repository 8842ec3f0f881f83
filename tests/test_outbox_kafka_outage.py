"""Publishing survives a Kafka outage: with the broker stopped an HTTP write still succeeds,
the service stays ready (degraded), and the write's event reaches Kafka once the broker is
back, once, with nothing lost."""

from __future__ import annotations

from typing import Any

import pytest
from crm_contracts.events.leads import lead_captured_example
from crm_leads.bootstrap import LeadsSettings, create_app
from crm_localinfra.testing import eventually, isolation_key, read_topic, service_client, service_env
from pymongo import AsyncMongoClient

pytestmark = pytest.mark.integration


def distinct_lead(external_id: str) -> dict[str, Any]:
    """A lead sharing no email, phone or domain with the other, so exactly one event each."""
    return lead_captured_example() | {
        "external_id": external_id,
        "person": {"first_name": "Ada", "email": f"ada@{external_id}.example"},
        "company": {"name": external_id, "website": f"https://{external_id}.example"},
    }


async def test_an_http_write_during_a_kafka_outage_is_published_after_it(disposable_infra: Any) -> None:
    infra = disposable_infra  # this test stops its broker: never the shared one
    settings = LeadsSettings(**service_env(infra, "leads", isolation=isolation_key()))
    topic = settings.topic("lead.created")
    mongo: AsyncMongoClient[dict[str, Any]] = AsyncMongoClient(infra.mongo_url)
    outbox = mongo[settings.database_name].outbox
    try:
        async with service_client(create_app(settings)) as http:
            before = await http.post("/leads", json=distinct_lead("before"))
            assert before.status_code == 201
            await read_topic(infra.kafka_bootstrap, topic, until=lambda r: len(r) == 1)

            await infra.astop_kafka()
            try:
                during = await http.post("/leads", json=distinct_lead("during"))
                assert during.status_code == 201, during.text
                assert await outbox.count_documents({}) == 1  # parked, not lost
                # The pod stays in its Service (reads and writes work), marked degraded.
                ready = await http.get("/health/ready")
                assert ready.status_code == 200, ready.text
                report = ready.json()
                assert (report["status"], report["checks"]) == (
                    "degraded",
                    {"mongodb": "ok", "kafka": "failing"},
                )
                metrics = (await http.get("/metrics")).text
                assert 'crm_readiness_check_passing{check="kafka",required="false"} 0.0' in metrics
                assert (await http.get(during.headers["location"])).status_code == 200
            finally:
                await infra.astart_kafka()

            async def outbox_drained() -> bool:
                return await outbox.count_documents({}) == 0

            await eventually(outbox_drained, timeout=120)
            records = await read_topic(infra.kafka_bootstrap, topic, until=lambda r: len(r) >= 2, timeout=60)
            external_ids = [r.json()["data"]["lead"]["external_id"] for r in records]
            assert external_ids == ["before", "during"], external_ids
            event_ids = [r.json()["id"] for r in records]
            assert len(set(event_ids)) == len(event_ids)
    finally:
        await mongo.close()
