"""The leads service on real Kafka and the MongoDB-compatible server: capture over HTTP and from
``lead.captured`` through one path, bulk import, de-duplication and merge, lifecycle, scoring
rules, search and paging, qualification and conversion, bad input."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import httpx
import orjson
import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from crm_contracts import catalog
from crm_contracts.events.leads import (
    IDENTIFYING_FIELDS,
    LeadCaptured,
    lead_captured_example,
    lead_captured_key,
)
from crm_leads.bootstrap import LeadsSettings, create_app
from crm_leads.domain import lead_id_for
from crm_localinfra.testing import (
    Record,
    eventually,
    import_ended,
    import_rejections,
    isolation_key,
    publish_raw,
    read_topic,
    service_client,
    service_env,
    started_import,
)
from crm_runtime.dead_letters import H_ERROR, H_OFFSET, H_TOPIC
from crm_runtime.events import encode, make_event
from pymongo import AsyncMongoClient

pytestmark = pytest.mark.integration

REP = {"id": "rep-1", "name": "Rita Rep"}
WRITE_TOKEN, READ_TOKEN, ADMIN_TOKEN = "test-writer", "test-reader", "test-admin"


@dataclass
class Leads:
    http: httpx.AsyncClient
    settings: LeadsSettings
    mongo: AsyncMongoClient[dict[str, Any]]
    runtime: Any

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

    async def publish(self, value: bytes, key: bytes | None) -> None:
        await publish_raw(self.settings.kafka_bootstrap_servers, self.topic("lead.captured"), value, key=key)

    async def drained(self) -> None:
        async def empty() -> bool:
            return bool(await self.runtime.outbox.pending() == 0)

        await eventually(empty, timeout=30)

    async def topic_size(self, topic: str) -> int:
        """How many records the topic holds; with the outbox drained, exactly what was emitted."""
        await self.drained()
        bootstrap, name = self.settings.kafka_bootstrap_servers, self.topic(topic)
        consumer, producer = (
            AIOKafkaConsumer(bootstrap_servers=bootstrap),
            AIOKafkaProducer(bootstrap_servers=bootstrap),
        )
        await consumer.start()
        await producer.start()
        try:
            if name not in await consumer.topics():
                return 0
            partitions = [TopicPartition(name, p) for p in await producer.partitions_for(name)]
            return sum((await consumer.end_offsets(partitions)).values())
        finally:
            await producer.stop()
            await consumer.stop()

    async def capture(self, **overrides: Any) -> dict[str, Any]:
        response = await self.http.post("/leads/capture", json=lead_captured_example() | overrides)
        assert response.status_code in (200, 201), response.text
        body: dict[str, Any] = response.json()
        return body


async def _start(infra: Any, **extra: Any) -> AsyncIterator[Leads]:
    settings = LeadsSettings(**service_env(infra, "leads", isolation=isolation_key()), **extra)
    mongo: AsyncMongoClient[dict[str, Any]] = AsyncMongoClient(infra.mongo_url, tz_aware=True)
    app = create_app(settings)
    async with service_client(app) as http:
        leads = Leads(http, settings, mongo, app.state.runtime)
        yield leads
        await leads.drained()
    await mongo.close()


@pytest.fixture
async def leads(infra: Any) -> AsyncIterator[Leads]:
    async for service in _start(infra):
        yield service


def captured_event(event_id: str | None = None, **overrides: Any) -> bytes:
    data = LeadCaptured.model_validate(lead_captured_example() | overrides)
    return encode(
        make_event(
            catalog.LEAD_CAPTURED, data, source="/webforms", subject=data.external_id, event_id=event_id
        )
    )


# -- capture ---------------------------------------------------------------------------------------
async def test_a_lead_created_over_http_is_stored_and_announced(leads: Leads) -> None:
    response = await leads.http.post("/leads", json=lead_captured_example() | {"source_system": "crm-api"})
    assert response.status_code == 201, response.text
    assert response.headers["capture-outcome"] == "created"
    lead = response.json()
    assert lead["status"] == "new" and lead["company_domain"] == "engines.example"
    assert lead["score"] == 10 and lead["rating"] == "cold"  # business email, by the default rules
    assert [c["rule_id"] for c in lead["score_explanation"]] == ["business_email"]
    stored = await leads.stored()
    assert [doc["_id"] for doc in stored] == [lead["id"]]
    [record] = await leads.events("lead.created", 1)
    event = record.json()
    assert record.key == lead["id"].encode()
    assert event["type"] == catalog.LEAD_CREATED.type and event["subject"] == lead["id"]
    assert event["sequence"] == "1" and event["data"]["lead"]["person"]["email"] == "ada@engines.example"
    again = await leads.http.post("/leads", json=lead_captured_example() | {"source_system": "crm-api"})
    assert again.status_code == 200 and again.headers["capture-outcome"] == "unchanged"


async def test_http_and_kafka_captures_share_one_path_one_lead_and_one_created_event(leads: Leads) -> None:
    # The same capture key arrives over Kafka (twice, same event id; then a new event id) and
    # over both HTTP endpoints: one lead, one lead.created, and one update for the newer data.
    same = captured_event(event_id="evt-1")
    await leads.publish(same, key=b"form-981")
    await leads.publish(same, key=b"form-981")
    await leads.publish(captured_event(event_id="evt-2"), key=b"form-981")
    other_person = {"first_name": "Bob", "email": "bob@acme.example"}
    await leads.publish(captured_event(external_id="form-982", person=other_person), key=b"form-982")

    async def two_leads() -> bool:
        return len(await leads.stored()) == 2

    await eventually(two_leads)
    exact = await leads.http.post("/leads/capture", json=lead_captured_example())
    assert exact.status_code == 200 and exact.headers["capture-outcome"] == "unchanged"
    assert exact.json()["id"] == lead_id_for("webforms", "form-981")
    newer = lead_captured_example() | {
        "person": {"first_name": "Ada", "email": "ada@engines.example", "job_title": "CTO"},
        "captured_at": "2026-11-03T09:30:00Z",
    }
    updated = await leads.http.post("/leads", json=newer)
    assert updated.status_code == 200 and updated.headers["capture-outcome"] == "updated"
    assert updated.json()["person"]["job_title"] == "CTO" and updated.json()["version"] == 2

    assert await leads.topic_size("lead.created") == 2
    assert await leads.topic_size("lead.updated") == 1
    [update] = await leads.events("lead.updated", 1)
    assert update.json()["data"]["changed_fields"] == [
        "captured_at",
        "person",
        "rating",
        "score",
        "score_explanation",
    ]
    page = (await leads.http.get("/leads")).json()
    assert len(page["items"]) == 2


async def test_malformed_captures_are_dead_lettered_and_consumption_goes_on(leads: Leads) -> None:
    await leads.publish(b"{not json", key=b"k")
    broken = captured_event().replace(b'"captured_at"', b'"captured_when"')
    await leads.publish(broken, key=b"k")
    await leads.publish(captured_event(external_id="after-the-bad-ones"), key=b"k")

    async def valid_one_stored() -> bool:
        return len(await leads.stored({"external_id": "after-the-bad-ones"})) == 1

    await eventually(valid_one_stored)
    parked = await leads.events("lead.captured.dlq", 2)
    errors = [r.headers[H_ERROR].decode() for r in parked]
    assert "not JSON" in errors[0]
    # captured_at is optional since issue 18: only the unknown field is wrong.
    assert "data.captured_when: Extra inputs are not permitted" in errors[1]
    assert {r.headers[H_TOPIC].decode() for r in parked} == {leads.topic("lead.captured")}
    assert [r.value for r in parked] == [b"{not json", broken]
    assert len({int(r.headers[H_OFFSET]) for r in parked}) == 2


def raw_captured_event(**changes: Any) -> bytes:
    """A lead.captured envelope whose data gets ``changes`` without passing the model, as an
    outside publisher could send it."""
    envelope = orjson.loads(captured_event(external_id=f"raw-{uuid.uuid4().hex[:8]}"))
    envelope["data"] |= changes
    return orjson.dumps(envelope)


async def test_captures_without_identity_with_number_times_or_control_characters_are_dead_lettered(
    leads: Leads,
) -> None:
    await leads.publish(raw_captured_event(person={"job_title": "CTO"}, company={"size": 40}), key=b"k")
    await leads.publish(raw_captured_event(captured_at=1700000000), key=b"k")
    await leads.publish(raw_captured_event(person={"first_name": "Ada\x00"}), key=b"k")
    await leads.publish(captured_event(external_id="after-the-bad-ones"), key=b"k")

    async def valid_one_stored() -> bool:
        return len(await leads.stored({"external_id": "after-the-bad-ones"})) == 1

    await eventually(valid_one_stored)
    parked = await leads.events("lead.captured.dlq", 3)
    unidentified, numeric, control = [r.headers[H_ERROR].decode() for r in parked]
    for field in IDENTIFYING_FIELDS:
        assert f"data.{field}: a lead needs a name, an e-mail, a phone or a company name" in unidentified
    assert "data.captured_at: must be an ISO 8601 date-time with a time zone" in numeric
    assert "data.person.first_name: must not contain control characters (found U+0000)" in control
    assert len(await leads.stored()) == 1
    assert await leads.topic_size("lead.created") == 1


async def test_capture_needs_the_write_scope(infra: Any) -> None:
    async for leads in _start(infra, api_tokens=f"{WRITE_TOKEN}:write,{READ_TOKEN}:read"):
        body = lead_captured_example()
        anonymous = await leads.http.post("/leads/capture", json=body)
        reader = await leads.http.post(
            "/leads/capture", json=body, headers={"Authorization": f"Bearer {READ_TOKEN}"}
        )
        assert (anonymous.status_code, reader.status_code) == (401, 403)
        for path in ("/leads", "/imports/leads"):
            assert (await leads.http.post(path, json=body)).status_code == 401
        writer = await leads.http.post(
            "/leads/capture", json=body, headers={"Authorization": f"Bearer {WRITE_TOKEN}"}
        )
        assert writer.status_code == 201
        listed = await leads.http.get("/leads", headers={"Authorization": f"Bearer {READ_TOKEN}"})
        assert listed.status_code == 200 and len(listed.json()["items"]) == 1


@pytest.mark.parametrize(
    ("payload", "status", "field"),
    [
        ({"person": {"email": 42}}, 422, "person.email"),
        ({"campaign_id": {"$ne": None}}, 422, "campaign_id"),
        ({"campaign_id": "$where"}, 422, "campaign_id"),
        ({"lead_source": "carrier-pigeon"}, 422, "lead_source"),
        ({"unexpected": 1}, 422, "unexpected"),
        ({"custom": {"$set": 1}}, 422, "custom"),
        ({"captured_at": 1700000000}, 422, "captured_at"),
        ({"person": {"first_name": "Ada\x00", "email": "ada@engines.example"}}, 422, "person.first_name"),
        ({"person": {"job_title": "CTO"}, "company": {}}, 422, "person.first_name"),
    ],
)
async def test_bad_input_is_refused_naming_the_field_and_nothing_is_stored(
    leads: Leads, payload: dict[str, Any], status: int, field: str
) -> None:
    for path in ("/leads", "/leads/capture"):
        response = await leads.http.post(path, json=lead_captured_example() | payload)
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


# -- bulk import -----------------------------------------------------------------------------------
NDJSON = b"\n".join(
    [
        b'{"external_id": "r1", "captured_at": "2024-05-01T08:00:00Z", "person": {"email": "r1@acme.io"},'
        b' "company": {"size": 500}}',
        b"",
        b'{"external_id": "r2", "captured_at": "2024-05-02T08:00:00Z", "person": {"email": "not-an-email"}}',
        b"[1, 2]",
        b'{"external_id": "r3", "person": {"email": "r3@acme.io"}}',
        b'{"external_id": "r4", "captured_at": "2024-05-04T08:00:00Z", "lead_source": "event",'
        b' "source_system": "tradeshow", "company": {"name": "Tradeshow Ltd"}}',
    ]
)
CSV = (
    b"external_id,captured_at,person.first_name,person.email,company.name,company.size,consent.do_not_call,custom.booth\n"
    b"c1,2023-01-15T09:00:00+01:00,Ada,ada@engines.example,Engines,120,true,B12\n"
    b"c2,2023-01-16T09:00:00Z,Bob,,Acme,many,,\n"
    b'"c3",2023-01-17T09:00:00Z,"Carol, Jr.",carol@acme.io,"Acme, Inc.",,,\n'
)


async def run_import(
    leads: Leads, body: bytes, content_type: str, query: str = ""
) -> tuple[dict[str, Any], dict[int, list[dict[str, str]]]]:
    """The import job once it has ended, and its rejections by row."""
    location = await started_import(leads.http, f"/imports/leads{query}", body, content_type)
    job = await import_ended(leads.http, location)
    by_row: dict[int, list[dict[str, str]]] = {}
    for line in await import_rejections(leads.http, job):
        by_row.setdefault(int(line["row"]), []).append(line)
    return job, by_row


async def test_an_ndjson_import_reports_each_row_and_keeps_historical_times(leads: Leads) -> None:
    job, rejected = await run_import(leads, NDJSON, "application/x-ndjson")
    assert job["state"] == "done" and job["object"] == "leads" and job["format"] == "ndjson"
    # r3 has no captured_at: since issue 18 it is captured at the upload's receipt, not refused.
    assert (job["file_rows"], job["processed"], job["applied"], job["rejected"]) == (5, 5, 3, 2)
    assert sorted(rejected) == [3, 4]  # line numbers; the blank line 2 is not a row
    assert rejected[3][0]["column"] == "person.email" and rejected[3][0]["external_id"] == "r2"
    assert rejected[3][0]["value"] == "not-an-email"
    assert [(r["column"], r["reason"]) for r in rejected[4]] == [("(row)", "not a JSON object")]
    r1 = (await leads.http.get(f"/leads/{lead_id_for('list-import', 'r1')}")).json()
    assert r1["captured_at"] == "2024-05-01T08:00:00Z" and r1["origin"] == "import"
    assert r1["lead_source"] == "list_import"
    r3 = (await leads.http.get(f"/leads/{lead_id_for('list-import', 'r3')}")).json()
    assert (r3["captured_at"], r3["captured_at_source"]) == (job["created_at"], "received")
    assert (await leads.http.get(f"/leads/{lead_id_for('tradeshow', 'r4')}")).status_code == 200
    assert await leads.topic_size("lead.created") == 3
    created = await leads.events("lead.created", 3)
    times = {r.json()["data"]["lead"]["external_id"]: r.json()["time"] for r in created}
    assert times["r1"].startswith("2024-05-01")  # the event keeps the historical time

    # Imported again (a later receipt): r3 brings nothing new, so it keeps its first time.
    again, rejected_again = await run_import(leads, NDJSON, "application/x-ndjson")
    assert (again["applied"], again["rejected"], sorted(rejected_again)) == (3, 2, [3, 4])
    assert await leads.topic_size("lead.created") == 3 and await leads.topic_size("lead.updated") == 0
    assert len(await leads.stored()) == 3
    assert (await leads.http.get(f"/leads/{r3['id']}")).json()["captured_at"] == r3["captured_at"]


async def test_a_csv_import_nests_dotted_columns_and_rejects_bad_rows_alone(leads: Leads) -> None:
    job, rejected = await run_import(leads, CSV, "text/csv; charset=utf-8", "?source_system=crm-export")
    counts = (job["state"], job["source_system"], job["applied"], job["rejected"])
    assert counts == ("done", "crm-export", 2, 1)
    [problem] = rejected[2]
    assert (problem["column"], problem["value"], problem["external_id"]) == ("company.size", "many", "c2")
    ada = (await leads.http.get(f"/leads/{lead_id_for('crm-export', 'c1')}")).json()
    assert ada["person"]["email"] == "ada@engines.example" and ada["company"]["size"] == 120
    assert ada["consent"]["do_not_call"] is True and ada["custom"] == {"booth": "B12"}
    assert ada["captured_at"] == "2023-01-15T08:00:00Z"
    carol = (await leads.http.get(f"/leads/{lead_id_for('crm-export', 'c3')}")).json()
    assert (carol["person"]["first_name"], carol["company"]["name"]) == ("Carol, Jr.", "Acme, Inc.")
    assert len(await leads.stored()) == 2


async def test_an_unreadable_upload_is_refused_whole(leads: Leads) -> None:
    unknown = await leads.http.post(
        "/imports/leads", content=b"external_id,person.mail\nx,y\n", headers={"content-type": "text/csv"}
    )
    assert unknown.status_code == 422 and unknown.json()["fields"][0]["field"] == "person.mail"
    wrong_type = await leads.http.post(
        "/imports/leads", content=b"{}", headers={"content-type": "text/plain"}
    )
    assert wrong_type.status_code == 415
    not_utf8 = await leads.http.post(
        "/imports/leads",
        content=b'{"external_id": "x"}\n\xff\xfe\n',
        headers={"content-type": "application/x-ndjson"},
    )
    assert not_utf8.status_code == 422 and "not UTF-8" in not_utf8.json()["message"]
    assert await leads.stored() == []
    db = leads.mongo[leads.settings.database_name]
    assert await db.import_chunks.count_documents({}) == 0 and (await leads.http.get("/imports")).json() == []


# -- de-duplication and merge ----------------------------------------------------------------------
async def test_a_matching_lead_is_linked_not_merged_and_both_sides_show_it(leads: Leads) -> None:
    first = await leads.capture(
        external_id="a",
        person={"first_name": "Ada", "email": "ada@engines.example"},
        captured_at="2026-11-01T00:00:00Z",
    )
    second = await leads.capture(
        source_system="chat",
        external_id="b",
        person={"first_name": "Ada", "email": "ADA+chat@Engines.example", "phone": "+44 20 7946 0000"},
        captured_at="2026-11-02T00:00:00Z",
    )
    third = await leads.capture(external_id="c", person={"phone": "020 7946 0000"}, company={})
    unrelated = await leads.capture(external_id="d", person={"email": "bob@engines.example"})
    assert second["duplicate_of"] == [first["id"]]
    assert [(link["lead_id"], link["keys"]) for link in second["possible_duplicates"]] == [
        (first["id"], ["email", "company_domain+name"])
    ]
    assert len(await leads.stored()) == 4  # linked, not merged

    duplicates = (await leads.http.get(f"/leads/{first['id']}/duplicates")).json()
    assert [(d["lead_id"], d["keys"], d["captured_before"]) for d in duplicates["duplicates"]] == [
        (second["id"], ["email", "company_domain+name"], False)
    ]
    of_second = (await leads.http.get(f"/leads/{second['id']}/duplicates")).json()
    assert {d["lead_id"]: d["keys"] for d in of_second["duplicates"]} == {
        first["id"]: ["email", "company_domain+name"],
        third["id"]: ["phone"],
    }
    assert (await leads.http.get(f"/leads/{unrelated['id']}/duplicates")).json()["duplicates"] == []
    # The earlier lead learnt of its duplicates through lead.updated.
    updates = [r.json()["data"] for r in await leads.events("lead.updated", 2)]
    assert {u["lead"]["lead_id"] for u in updates} == {first["id"], second["id"]}
    assert all("possible_duplicates" in u["changed_fields"] for u in updates)


async def test_merge_combines_two_leads_and_later_captures_of_the_merged_key_reach_the_survivor(
    leads: Leads,
) -> None:
    survivor = await leads.capture(
        external_id="s", person={"first_name": "Ada", "email": "ada@engines.example"}, lead_source="web"
    )
    await leads.http.post(f"/leads/{survivor['id']}/status", json={"status": "working", "by": REP})
    duplicate = await leads.capture(
        source_system="events",
        external_id="d",
        person={
            "first_name": "Ada",
            "last_name": "Lovelace",
            "email": "ada@engines.example",
            "job_title": "CTO",
        },
        company={"name": "Engines", "size": 300},
        captured_at="2026-11-01T09:00:00Z",
    )
    merged = await leads.http.post(
        f"/leads/{survivor['id']}/merge", json={"duplicate_id": duplicate["id"], "by": REP}
    )
    assert merged.status_code == 200, merged.text
    lead = merged.json()
    assert (lead["person"]["last_name"], lead["person"]["job_title"], lead["company"]["size"]) == (
        "Lovelace",
        "CTO",
        300,
    )
    assert lead["status"] == "working" and lead["merged_from"] == [duplicate["id"]]
    assert lead["possible_duplicates"] == [] and lead["score"] > survivor["score"]
    assert {entry.get("lead_id") for entry in lead["history"]} == {None, duplicate["id"]}
    gone = (await leads.http.get(f"/leads/{duplicate['id']}")).json()
    assert (gone["status"], gone["merged_into"]) == ("merged", survivor["id"])
    listed = (await leads.http.get("/leads")).json()["items"]
    assert [item["id"] for item in listed] == [survivor["id"]]  # merged leads are left out

    [event] = await leads.events("lead.merged", 1)
    data = event.json()["data"]
    assert event.key == survivor["id"].encode() and event.json()["sequence"] == str(lead["version"])
    assert (data["merged_lead_id"], data["matching_keys"]) == (duplicate["id"], ["email"])
    assert "person.job_title" in data["taken_fields"]

    again = await leads.http.post(
        f"/leads/{survivor['id']}/merge", json={"duplicate_id": duplicate["id"], "by": REP}
    )
    assert again.status_code == 409 and again.json()["fields"][0]["field"] == "duplicate_id"
    missing = await leads.http.post(
        f"/leads/{survivor['id']}/merge", json={"duplicate_id": "nope", "by": REP}
    )
    assert missing.status_code == 404 and missing.json()["fields"][0]["field"] == "duplicate_id"

    # The events system sends its lead again with a new phone: the survivor gets it.
    resent = await leads.http.post(
        "/leads/capture",
        json=lead_captured_example()
        | {
            "source_system": "events",
            "external_id": "d",
            "person": {"email": "ada@engines.example", "phone": "+44 20 7946 0000"},
            "captured_at": "2026-12-01T09:00:00Z",
        },
    )
    assert resent.status_code == 200 and resent.json()["id"] == survivor["id"]
    assert resent.json()["person"]["phone"] == "+44 20 7946 0000"
    assert resent.json()["person"]["job_title"] == "CTO"  # empty values never erase
    assert await leads.topic_size("lead.created") == 2


# -- lifecycle, rating, qualification, conversion ------------------------------------------------
async def test_reps_work_and_nurture_leads_and_illegal_transitions_name_the_status(leads: Leads) -> None:
    lead = await leads.capture()
    working = await leads.http.post(
        f"/leads/{lead['id']}/status", json={"status": "working", "by": REP, "note": "called"}
    )
    assert working.status_code == 200 and working.json()["status"] == "working"
    entry = working.json()["history"][-1]
    assert (entry["by"], entry["to_status"], entry["detail"]) == ("rep-1", "working", "called") and entry[
        "at"
    ]
    not_direct = await leads.http.post(f"/leads/{lead['id']}/status", json={"status": "qualified", "by": REP})
    assert not_direct.status_code == 422 and not_direct.json()["fields"][0]["field"] == "status"
    await leads.http.post(f"/leads/{lead['id']}/disqualify", json={"reason": "no budget", "by": REP})
    convert = await leads.http.post(
        f"/leads/{lead['id']}/convert", json={"by": REP, "allow_unqualified": True}
    )
    assert convert.status_code == 409 and convert.json()["fields"][0]["field"] == "status"
    assert (await leads.http.get("/leads/does-not-exist")).status_code == 404
    [update] = await leads.events("lead.updated", 1)
    assert update.json()["data"]["lead"]["status"] == "working"
    [disqualified] = await leads.events("lead.disqualified", 1)
    assert disqualified.json()["data"]["reason"] == "no budget"


async def test_qualify_and_convert_emit_events_and_converting_twice_is_refused(leads: Leads) -> None:
    lead = await leads.capture(campaign_id="camp-7")
    qualified = await leads.http.post(f"/leads/{lead['id']}/qualify", json={"rating": "hot", "by": REP})
    assert qualified.status_code == 200 and qualified.json()["status"] == "qualified"
    assert qualified.json()["manual_rating"]["rating"] == "hot" and qualified.json()["score_rating"] == "cold"
    body = {"by": REP, "opportunity": {"name": "Engines deal", "amount": "12000.00", "currency": "EUR"}}
    converted = await leads.http.post(f"/leads/{lead['id']}/convert", json=body)
    assert converted.status_code == 200, converted.text
    conversion = converted.json()["conversion"]
    again = await leads.http.post(f"/leads/{lead['id']}/convert", json=body)
    assert again.status_code == 409 and again.json()["error"] == "already_converted"

    [record] = await leads.events("lead.converted", 1)
    event = record.json()
    assert event["sequence"] == str(converted.json()["version"])
    data = event["data"]
    assert data["account"]["account_id"] == conversion["account_id"]
    assert data["contact"]["contact_id"] == conversion["contact_id"]
    assert data["opportunity"]["opportunity_id"] == conversion["opportunity_id"]
    assert data["opportunity"]["amount"] == "12000.00"
    assert (data["lead_source"], data["campaign_id"]) == ("web", "camp-7")
    [qualified_event] = await leads.events("lead.qualified", 1)
    assert qualified_event.json()["data"]["rating"] == "hot"


# -- scoring rules ---------------------------------------------------------------------------------
async def test_changing_the_scoring_rules_needs_the_admin_scope(infra: Any) -> None:
    tokens = f"{WRITE_TOKEN}:write,{READ_TOKEN}:read,{ADMIN_TOKEN}:admin"
    async for leads in _start(infra, api_tokens=tokens):

        def bearer(token: str) -> dict[str, str]:
            return {"Authorization": f"Bearer {token}"}

        current = (await leads.http.get("/scoring-rules", headers=bearer(READ_TOKEN))).json()
        change = {
            "rules": current["rules"],
            "thresholds": {"hot": 70, "warm": 40},
            "expected_version": current["version"],
            "by": {"id": "ops-1"},
        }
        writer = await leads.http.put("/scoring-rules", json=change, headers=bearer(WRITE_TOKEN))
        assert writer.status_code == 403 and "admin" in writer.json()["message"]
        assert (
            await leads.http.post("/scoring-rules/rescore", headers=bearer(WRITE_TOKEN))
        ).status_code == 403
        unchanged = (await leads.http.get("/scoring-rules", headers=bearer(WRITE_TOKEN))).json()
        assert unchanged["version"] == current["version"]
        admin = await leads.http.put("/scoring-rules", json=change, headers=bearer(ADMIN_TOKEN))
        assert admin.status_code == 200, admin.text
        assert admin.json()["thresholds"] == {"hot": 70, "warm": 40}
        # An admin token does the day-to-day work too.
        captured = await leads.http.post(
            "/leads/capture", json=lead_captured_example(), headers=bearer(ADMIN_TOKEN)
        )
        assert captured.status_code == 201


async def test_scoring_rules_are_configured_as_data_and_rescoring_keeps_a_reps_rating(leads: Leads) -> None:
    defaults = (await leads.http.get("/scoring-rules")).json()
    assert defaults["version"] == 0 and defaults["thresholds"] == {"hot": 60, "warm": 30}
    big = await leads.capture(external_id="big", person={"email": "a@big.example"}, company={"size": 5000})
    small = await leads.capture(external_id="small", person={"email": "b@small.example"}, company={"size": 5})
    rated = await leads.capture(
        external_id="rated", person={"email": "c@rated.example"}, company={"size": 5000}
    )
    await leads.http.post(f"/leads/{rated['id']}/rating", json={"rating": "cold", "by": REP})

    bad = await leads.http.put(
        "/scoring-rules",
        json={
            "rules": [
                {
                    "id": "x",
                    "description": "d",
                    "category": "fit",
                    "field": "company.size",
                    "operator": "$gt",
                    "value": 1,
                    "points": 5,
                }
            ],
            "thresholds": {"hot": 50, "warm": 20},
            "by": {"id": "admin"},
        },
    )
    assert bad.status_code == 422 and bad.json()["fields"][0]["field"].startswith("rules.0.operator")
    rules = {
        "rules": [
            {
                "id": "enterprise",
                "description": "1000+ employees",
                "category": "fit",
                "field": "company.size",
                "operator": "gte",
                "value": 1000,
                "points": 70,
            }
        ],
        "thresholds": {"hot": 60, "warm": 30},
        "by": {"id": "admin"},
        "expected_version": 0,
    }
    saved = await leads.http.put("/scoring-rules", json=rules)
    assert saved.status_code == 200 and saved.json()["version"] == 1
    stale = await leads.http.put("/scoring-rules", json=rules)
    assert stale.status_code == 409 and stale.json()["fields"][0]["field"] == "expected_version"

    started = await leads.http.post("/scoring-rules/rescore")  # a background job now
    assert started.status_code == 202, started.text

    async def rescored() -> bool:
        job = (await leads.http.get(started.headers["location"])).json()
        assert job["state"] in ("queued", "running", "done"), job
        return bool(job["state"] == "done")

    await eventually(rescored)
    after = {lead["id"]: lead for lead in (await leads.http.get("/leads?limit=10")).json()["items"]}
    assert (after[big["id"]]["score"], after[big["id"]]["rating"]) == (70, "hot")
    assert after[big["id"]]["score_explanation"] == [
        {"rule_id": "enterprise", "description": "1000+ employees", "category": "fit", "points": 70}
    ]
    assert (after[small["id"]]["score"], after[small["id"]]["rating"]) == (0, "cold")
    assert (after[rated["id"]]["score_rating"], after[rated["id"]]["rating"]) == ("hot", "cold")
    assert {lead["scoring_rules_version"] for lead in after.values()} == {1}
    fresh = await leads.capture(
        external_id="fresh", person={"email": "d@fresh.example"}, company={"size": 2000}
    )
    assert fresh["score"] == 70 and fresh["scoring_rules_version"] == 1


# -- search, filters, sorting, paging --------------------------------------------------------------
async def test_search_filters_and_cursor_paging_in_any_sort(leads: Leads) -> None:
    people = [
        ("José", "Müller", "jose@acme.io", "Acme", 500, "2026-01-05T00:00:00Z", "web"),
        ("Ada", "Lovelace", "ada@engines.example", "Analytical Engines", 50, "2026-01-01T00:00:00Z", "web"),
        ("Bob", "Builder", "bob@builders.example", "Builders", 5000, "2026-01-03T00:00:00Z", "event"),
        ("Carol", "Acme-Smith", "carol@gmail.com", None, None, "2026-01-02T00:00:00Z", "web"),
        ("Dan", "Dot", "dan@d.example", "D.*", 10, "2026-01-04T00:00:00Z", "partner"),
    ]
    for n, (first, last, email, company, size, at, source) in enumerate(people):
        await leads.capture(
            external_id=f"p{n}",
            person={"first_name": first, "last_name": last, "email": email},
            company={"name": company, "size": size},
            captured_at=at,
            lead_source=source,
        )

    async def names(**params: Any) -> list[str]:
        response = await leads.http.get("/leads", params=params)
        assert response.status_code == 200, response.text
        return [item["person"]["first_name"] for item in response.json()["items"]]

    assert await names(q="acme") == ["José", "Carol"]  # company name, last name; newest first
    assert await names(q="MULLER jo") == ["José"]  # case and accents folded, every word a prefix
    assert await names(q="engines.example") == ["Ada"]
    assert await names(q="a.a") == []  # regex characters are literal text ("ada" is no match)
    assert await names(q="d.*") == ["Dan"]
    assert await names(lead_source="web", sort="captured_at") == ["Ada", "Carol", "José"]
    assert await names(captured_from="2026-01-02T00:00:00Z", captured_to="2026-01-04T00:00:00Z") == [
        "Bob",
        "Carol",
    ]
    assert await names(rating="hot") == []

    for sort in ("score", "-score", "captured_at", "-captured_at", "updated_at"):
        everything = await names(sort=sort, limit=50)
        paged: list[str] = []
        cursor = None
        while True:
            params: dict[str, Any] = {"sort": sort, "limit": 2} | ({"cursor": cursor} if cursor else {})
            page = (await leads.http.get("/leads", params=params)).json()
            paged += [item["person"]["first_name"] for item in page["items"]]
            cursor = page["next_cursor"]
            if cursor is None:
                break
        assert paged == everything and len(paged) == 5, sort
    scores = [
        item["score"] for item in (await leads.http.get("/leads", params={"sort": "-score"})).json()["items"]
    ]
    assert scores == sorted(scores, reverse=True)

    first_page = (await leads.http.get("/leads", params={"sort": "score", "limit": 2})).json()
    wrong_sort = await leads.http.get(
        "/leads", params={"sort": "-captured_at", "cursor": first_page["next_cursor"]}
    )
    assert wrong_sort.status_code == 422 and wrong_sort.json()["fields"][0]["field"] == "cursor"
    for bad in (
        {"cursor": "$where"},
        {"q": "a b c d e f"},
        {"q": ".*"},
        {"sort": "password"},
        {"status": "lost"},
    ):
        response = await leads.http.get("/leads", params=bad)
        assert response.status_code == 422, bad


async def test_metrics_expose_consumer_lag_outbox_and_event_counters(leads: Leads) -> None:
    await leads.publish(captured_event(), key=b"k")

    async def lag_reported() -> bool:
        text = (await leads.http.get("/metrics")).text
        return (
            f'crm_consumer_lag{{consumergroup="{leads.settings.group_id}",topic="lead.captured"}} 0.0' in text
            and 'crm_events_processed_total{topic="lead.captured"} 1.0' in text
        )

    await eventually(lag_reported, timeout=30)
    text = (await leads.http.get("/metrics")).text
    assert "crm_outbox_published_total" in text and "process_cpu_seconds_total" in text
    live = await leads.http.get("/health/live")
    ready = await leads.http.get("/health/ready")
    assert live.status_code == 200
    assert ready.status_code == 200 and ready.json()["checks"] == {"mongodb": "ok", "kafka": "ok"}


# -- issue 18: what an outside publisher needs ------------------------------------------------
async def _by_capture_key(leads: Leads, system: str, external_id: str) -> list[dict[str, Any]]:
    answer = await leads.http.get("/leads", params={"external_system": system, "external_id": external_id})
    assert answer.status_code == 200, answer.text
    items: list[dict[str, Any]] = answer.json()["items"]
    return items


async def test_a_publisher_finds_its_lead_by_its_own_system_and_id(leads: Leads) -> None:
    # Two publishers reuse the id "42": over Kafka each captures its own lead, and each finds
    # its own over HTTP by (system, id) without reading lead.created.
    for system, name in (("webforms", "Ada"), ("adplatform", "Bob")):
        event = captured_event(source_system=system, external_id="42", person={"first_name": name})
        await leads.publish(event, key=f"{system}:42".encode())

    async def both() -> bool:
        return len(await leads.stored({"external_id": "42"})) == 2

    await eventually(both)
    [ada] = await _by_capture_key(leads, "webforms", "42")
    [bob] = await _by_capture_key(leads, "adplatform", "42")
    assert (ada["id"], ada["person"]["first_name"]) == (lead_id_for("webforms", "42"), "Ada")
    assert (bob["id"], bob["person"]["first_name"]) == (lead_id_for("adplatform", "42"), "Bob")
    assert await _by_capture_key(leads, "webforms", "43") == []

    # A lead merged into another still answers its key, pointing at the survivor.
    merged = await leads.http.post(f"/leads/{bob['id']}/merge", json={"duplicate_id": ada["id"], "by": REP})
    assert merged.status_code == 200, merged.text
    [gone] = await _by_capture_key(leads, "webforms", "42")
    assert (gone["status"], gone["merged_into"]) == ("merged", bob["id"])


async def test_a_lead_lookup_needs_both_the_system_and_its_id(leads: Leads) -> None:
    for given, missing in (
        ({"external_id": "42"}, "external_system"),
        ({"external_system": "webforms"}, "external_id"),
    ):
        answer = await leads.http.get("/leads", params=given)
        assert answer.status_code == 422, answer.text
        assert [f["field"] for f in answer.json()["fields"]] == [missing]
        assert missing in answer.json()["message"]


def _timeless(external_id: str, first_name: str) -> dict[str, Any]:
    """A capture without captured_at (an export that has no timestamps)."""
    payload = lead_captured_example() | {"external_id": external_id, "person": {"first_name": first_name}}
    del payload["captured_at"]
    return payload


async def test_a_capture_without_captured_at_takes_the_event_time_and_says_so(leads: Leads) -> None:
    event_time = datetime(2026, 5, 4, 8, 15, tzinfo=UTC)
    timeless = LeadCaptured.model_validate(_timeless("no-time", "Tim"))
    event = make_event(
        catalog.LEAD_CAPTURED, timeless, source="/webforms", subject="no-time", time=event_time
    )
    await leads.publish(encode(event), key=b"webforms:no-time")
    timed = captured_event(external_id="timed", person={"first_name": "Tina"})
    await leads.publish(timed, key=b"webforms:timed")

    [created, created_too] = await leads.events("lead.created", 2)
    by_id = {
        r.json()["data"]["lead"]["external_id"]: r.json()["data"]["lead"] for r in (created, created_too)
    }
    assert (by_id["no-time"]["captured_at"], by_id["no-time"]["captured_at_source"]) == (
        "2026-05-04T08:15:00Z",
        "event_time",
    )
    assert (by_id["timed"]["captured_at"], by_id["timed"]["captured_at_source"]) == (
        lead_captured_example()["captured_at"],
        "payload",
    )
    [lead] = await _by_capture_key(leads, "webforms", "no-time")
    assert (lead["captured_at"], lead["captured_at_source"]) == ("2026-05-04T08:15:00Z", "event_time")


async def test_an_http_capture_without_captured_at_takes_the_time_of_receipt(leads: Leads) -> None:
    before = datetime.now(UTC).replace(microsecond=0)
    answer = await leads.http.post("/leads/capture", json=_timeless("http-no-time", "Hal"))
    assert answer.status_code == 201, answer.text
    lead = answer.json()
    assert lead["captured_at_source"] == "received"
    assert before <= datetime.fromisoformat(lead["captured_at"]) <= datetime.now(UTC)
    entered = await leads.http.post("/leads", json={"person": {"first_name": "Rita"}})
    assert entered.json()["captured_at_source"] == "received", entered.text
    given = await leads.http.post(
        "/leads", json={"person": {"first_name": "Gil"}, "captured_at": "2025-01-01T00:00:00Z"}
    )
    assert (given.json()["captured_at"], given.json()["captured_at_source"]) == (
        "2025-01-01T00:00:00Z",
        "payload",
    )


async def test_captures_keyed_otherwise_or_not_at_all_are_accepted_like_the_documented_key(
    leads: Leads,
) -> None:
    # The documented key, a key of the publisher's own making, and a null key: three leads, and
    # a resend of the first under a null key is still the same capture (the key is never read).
    keyed = {
        "documented": lead_captured_key("webforms", "documented"),
        "own-key": b"partition-me-anyhow",
        "no-key": None,
    }
    for external_id, key in keyed.items():
        await leads.publish(
            captured_event(external_id=external_id, person={"first_name": external_id}), key=key
        )
    newer = lead_captured_example()["person"] | {"first_name": "documented", "job_title": "CTO"}
    resend = captured_event(external_id="documented", person=newer, captured_at="2026-12-01T00:00:00Z")
    await leads.publish(resend, key=None)

    async def all_applied() -> bool:
        stored = {
            doc["external_id"]: doc for doc in await leads.stored({"external_id": {"$in": list(keyed)}})
        }
        return len(stored) == 3 and stored["documented"]["person"].get("job_title") == "CTO"

    await eventually(all_applied)
    assert await leads.topic_size("lead.created") == 3
    assert await leads.topic_size("lead.captured.dlq") == 0


async def test_owner_and_campaign_ids_from_another_system_keep_their_spaces_operators_are_dead_lettered(
    leads: Leads,
) -> None:
    owner, campaign = "Rita Rep", "Spring Fair 2026 · Hall B"
    await leads.publish(
        captured_event(external_id="spaced", owner_id=owner, campaign_id=campaign), key=b"webforms:spaced"
    )
    operator = raw_captured_event(owner_id="$ne")
    await leads.publish(operator, key=b"webforms:operator")

    async def stored() -> list[dict[str, Any]]:
        answer = await leads.http.get("/leads", params={"owner_id": owner, "campaign_id": campaign})
        items: list[dict[str, Any]] = answer.json()["items"]
        return items

    [lead] = await eventually(stored)
    assert (lead["external_id"], lead["owner_id"], lead["campaign_id"]) == ("spaced", owner, campaign)
    [parked] = await leads.events("lead.captured.dlq", 1)
    assert "data.owner_id: an id must not start with $" in parked.headers[H_ERROR].decode()
