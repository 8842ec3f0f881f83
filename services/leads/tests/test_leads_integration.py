"""The leads service on real Kafka and the MongoDB-compatible server: capture over HTTP and from
``lead.captured``, duplicates, dead letters, qualification and conversion, bad input."""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import httpx
import pytest
from crm_contracts import catalog
from crm_contracts.events.leads import LeadCaptured, lead_captured_example
from crm_leads.bootstrap import LeadsSettings, create_app
from crm_localinfra.testing import (
    Record,
    eventually,
    isolation_key,
    publish_raw,
    read_topic,
    service_client,
    service_env,
)
from crm_runtime.dead_letters import H_ERROR, H_OFFSET, H_TOPIC
from crm_runtime.events import encode, make_event
from pymongo import AsyncMongoClient

pytestmark = pytest.mark.integration


@dataclass
class Leads:
    http: httpx.AsyncClient
    settings: LeadsSettings
    mongo: AsyncMongoClient[dict[str, Any]]

    def topic(self, name: str) -> str:
        return self.settings.topic(name)

    async def stored(self, query: dict[str, Any] | None = None) -> list[dict[str, Any]]:
        db = self.mongo[self.settings.database_name]
        return await db.leads.find(query or {}).to_list()

    async def events(self, spec_topic: str, count: int, seconds: float = 30) -> list[Record]:
        bootstrap = self.settings.kafka_bootstrap_servers
        return await read_topic(
            bootstrap, self.topic(spec_topic), until=lambda records: len(records) >= count, timeout=seconds
        )


@pytest.fixture
async def leads(infra: Any) -> AsyncIterator[Leads]:
    settings = LeadsSettings(**service_env(infra, "leads", isolation=isolation_key()))
    mongo: AsyncMongoClient[dict[str, Any]] = AsyncMongoClient(infra.mongo_url, tz_aware=True)
    async with service_client(create_app(settings)) as http:
        yield Leads(http, settings, mongo)
    await mongo.close()


def captured_event(event_id: str | None = None, **overrides: Any) -> bytes:
    data = LeadCaptured.model_validate(lead_captured_example() | overrides)
    return encode(
        make_event(
            catalog.LEAD_CAPTURED, data, source="/webforms", subject=data.external_id, event_id=event_id
        )
    )


async def test_a_lead_created_over_http_is_stored_and_announced(leads: Leads) -> None:
    response = await leads.http.post("/leads", json=lead_captured_example() | {"source_system": "crm-api"})
    assert response.status_code == 201, response.text
    lead = response.json()
    assert lead["status"] == "new" and lead["company_domain"] == "engines.example"
    stored = await leads.stored()
    assert [doc["_id"] for doc in stored] == [lead["id"]]
    [record] = await leads.events("lead.created", 1)
    event = record.json()
    assert record.key == lead["id"].encode()
    assert event["type"] == catalog.LEAD_CREATED.type and event["subject"] == lead["id"]
    assert event["sequence"] == "1" and event["data"]["lead"]["person"]["email"] == "ada@engines.example"


async def test_the_same_lead_captured_twice_creates_one_lead(leads: Leads) -> None:
    bootstrap = leads.settings.kafka_bootstrap_servers
    topic = leads.topic("lead.captured")
    same = captured_event(event_id="evt-1")
    await publish_raw(bootstrap, topic, same, key=b"form-981")
    await publish_raw(bootstrap, topic, same, key=b"form-981")
    # A resend with a new event id but the same capture key is the same lead too.
    await publish_raw(bootstrap, topic, captured_event(event_id="evt-2"), key=b"form-981")
    await publish_raw(bootstrap, topic, captured_event(external_id="form-982"), key=b"form-982")

    async def two_leads() -> bool:
        return len(await leads.stored()) == 2

    await eventually(two_leads)
    created = await leads.events("lead.created", 2)
    assert sorted(r.json()["data"]["lead"]["external_id"] for r in created) == ["form-981", "form-982"]
    page = (await leads.http.get("/leads")).json()
    assert len(page["items"]) == 2


async def test_malformed_captures_are_dead_lettered_and_consumption_goes_on(leads: Leads) -> None:
    bootstrap = leads.settings.kafka_bootstrap_servers
    topic = leads.topic("lead.captured")
    await publish_raw(bootstrap, topic, b"{not json", key=b"k")
    missing = captured_event()
    broken = missing.replace(b'"captured_at"', b'"captured_when"')
    await publish_raw(bootstrap, topic, broken, key=b"k")
    await publish_raw(bootstrap, topic, captured_event(external_id="after-the-bad-ones"), key=b"k")

    async def valid_one_stored() -> bool:
        return len(await leads.stored({"external_id": "after-the-bad-ones"})) == 1

    await eventually(valid_one_stored)
    parked = await leads.events("lead.captured.dlq", 2)
    errors = [r.headers[H_ERROR].decode() for r in parked]
    assert "not JSON" in errors[0]
    assert "data.captured_at: Field required" in errors[1]
    assert "data.captured_when: Extra inputs are not permitted" in errors[1]
    assert {r.headers[H_TOPIC].decode() for r in parked} == {topic}
    assert [r.value for r in parked] == [b"{not json", broken]
    assert sorted(int(r.headers[H_OFFSET]) for r in parked) == sorted(
        {int(r.headers[H_OFFSET]) for r in parked}
    )


async def test_qualify_and_convert_emit_events_and_converting_twice_is_refused(leads: Leads) -> None:
    lead = (await leads.http.post("/leads", json=lead_captured_example() | {"campaign_id": "camp-7"})).json()
    rep = {"id": "rep-1", "name": "Rita Rep"}
    qualified = await leads.http.post(f"/leads/{lead['id']}/qualify", json={"rating": "hot", "by": rep})
    assert qualified.status_code == 200 and qualified.json()["status"] == "qualified"
    body = {"by": rep, "opportunity": {"name": "Engines deal", "amount": "12000.00", "currency": "EUR"}}
    converted = await leads.http.post(f"/leads/{lead['id']}/convert", json=body)
    assert converted.status_code == 200, converted.text
    conversion = converted.json()["conversion"]
    again = await leads.http.post(f"/leads/{lead['id']}/convert", json=body)
    assert again.status_code == 409 and again.json()["error"] == "already_converted"

    [record] = await leads.events("lead.converted", 1)
    event = record.json()
    assert event["sequence"] == "3"
    data = event["data"]
    assert data["account"]["account_id"] == conversion["account_id"]
    assert data["contact"]["contact_id"] == conversion["contact_id"]
    assert data["opportunity"]["opportunity_id"] == conversion["opportunity_id"]
    assert data["opportunity"]["amount"] == "12000.00"
    assert (data["lead_source"], data["campaign_id"]) == ("web", "camp-7")
    [qualified_event] = await leads.events("lead.qualified", 1)
    assert qualified_event.json()["data"]["rating"] == "hot"


@pytest.mark.parametrize(
    ("payload", "status", "field"),
    [
        ({"person": {"email": 42}}, 422, "person.email"),
        ({"campaign_id": {"$ne": None}}, 422, "campaign_id"),
        ({"campaign_id": "$where"}, 422, "campaign_id"),
        ({"lead_source": "carrier-pigeon"}, 422, "lead_source"),
        ({"unexpected": 1}, 422, "unexpected"),
        ({"custom": {"$set": 1}}, 422, "custom"),
    ],
)
async def test_bad_input_is_refused_naming_the_field_and_nothing_is_stored(
    leads: Leads, payload: dict[str, Any], status: int, field: str
) -> None:
    response = await leads.http.post("/leads", json=lead_captured_example() | payload)
    assert response.status_code == status, response.text
    problem = response.json()
    assert any(f["field"].startswith(field) for f in problem["fields"]), problem
    assert await leads.stored() == []


async def test_malformed_json_and_oversized_bodies_are_refused(leads: Leads) -> None:
    malformed = await leads.http.post(
        "/leads", content=b'{"person": ', headers={"content-type": "application/json"}
    )
    assert malformed.status_code == 400 and malformed.json()["error"] == "malformed_json"
    huge = b'{"custom": {"x": "' + b"a" * 2_000_000 + b'"}}'
    oversized = await leads.http.post("/leads", content=huge, headers={"content-type": "application/json"})
    assert oversized.status_code == 413 and oversized.json()["error"] == "payload_too_large"
    assert await leads.stored() == []


async def test_illegal_transition_names_the_status(leads: Leads) -> None:
    lead = (await leads.http.post("/leads", json=lead_captured_example())).json()
    rep = {"id": "rep-1"}
    await leads.http.post(f"/leads/{lead['id']}/disqualify", json={"reason": "no budget", "by": rep})
    convert = await leads.http.post(
        f"/leads/{lead['id']}/convert", json={"by": rep, "allow_unqualified": True}
    )
    assert convert.status_code == 409
    assert convert.json()["fields"][0]["field"] == "status"
    missing = await leads.http.get("/leads/does-not-exist")
    assert missing.status_code == 404


async def test_metrics_expose_consumer_lag_outbox_and_event_counters(leads: Leads) -> None:
    bootstrap = leads.settings.kafka_bootstrap_servers
    await publish_raw(bootstrap, leads.topic("lead.captured"), captured_event(), key=b"k")

    async def lag_reported() -> bool:
        text = (await leads.http.get("/metrics")).text
        return (
            'crm_consumer_lag{topic="lead.captured"} 0.0' in text
            and 'crm_events_processed_total{topic="lead.captured"} 1.0' in text
        )

    await eventually(lag_reported, timeout=30)
    text = (await leads.http.get("/metrics")).text
    assert "crm_outbox_published_total" in text and "process_cpu_seconds_total" in text
    live = await leads.http.get("/health/live")
    ready = await leads.http.get("/health/ready")
    assert live.status_code == 200
    assert ready.status_code == 200 and ready.json()["checks"] == {"mongodb": "ok", "kafka": "ok"}
