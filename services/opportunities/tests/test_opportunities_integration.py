"""The opportunities service on real Kafka and the MongoDB-compatible server: conversion from
``lead.converted`` (duplicates, matching by domain, dead letters), pipelines, stage moves and
closing over HTTP, the case, and optimistic versioning."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import httpx
import pytest
from crm_contracts import catalog
from crm_contracts.events.leads import LeadConverted
from crm_localinfra.testing import (
    Record,
    eventually,
    isolation_key,
    publish_raw,
    read_topic,
    service_client,
    service_env,
)
from crm_opportunities.bootstrap import OpportunitiesSettings, create_app
from crm_runtime.dead_letters import H_ERROR
from crm_runtime.events import encode, make_event
from pymongo import AsyncMongoClient

pytestmark = pytest.mark.integration

REP = {"id": "rep-7", "name": "Rita Rep"}


@dataclass
class Service:
    http: httpx.AsyncClient
    settings: OpportunitiesSettings
    mongo: AsyncMongoClient[dict[str, Any]]
    runtime: Any

    def consumed(self, metric: str, topic: str) -> float:
        value = self.runtime.registry.get_sample_value(f"crm_events_{metric}_total", {"topic": topic})
        return float(value or 0)

    async def count(self, collection: str, query: dict[str, Any] | None = None) -> int:
        db = self.mongo[self.settings.database_name]
        return await db[collection].count_documents(query or {})

    async def events(self, topic: str, until: Any, seconds: float = 30) -> list[Record]:
        return await read_topic(
            self.settings.kafka_bootstrap_servers, self.settings.topic(topic), until=until, timeout=seconds
        )

    async def publish_conversion(self, converted: LeadConverted, event_id: str | None = None) -> None:
        event = make_event(
            catalog.LEAD_CONVERTED,
            converted,
            source="/crm/leads",
            subject=converted.lead_id,
            version=3,
            time=converted.converted_at,
            event_id=event_id,
        )
        await publish_raw(
            self.settings.kafka_bootstrap_servers,
            self.settings.topic(catalog.LEAD_CONVERTED.topic),
            encode(event),
            key=converted.lead_id.encode(),
        )


@pytest.fixture
async def service(infra: Any) -> AsyncIterator[Service]:
    settings = OpportunitiesSettings(**service_env(infra, "opportunities", isolation=isolation_key()))
    mongo: AsyncMongoClient[dict[str, Any]] = AsyncMongoClient(infra.mongo_url, tz_aware=True)
    app = create_app(settings)
    async with service_client(app) as http:
        yield Service(http, settings, mongo, app.state.runtime)
        # Let the relay finish before shutdown: the runtime stops the producer before the
        # relay, so a non-empty outbox makes the shutdown wait out the relay's timeout.
        await eventually(_outbox_drained(app.state.runtime), timeout=30)
    await mongo.close()


def _outbox_drained(runtime: Any) -> Any:
    async def check() -> bool:
        return bool(await runtime.outbox.pending() == 0)

    return check


def conversion(n: int, **overrides: Any) -> LeadConverted:
    data: dict[str, Any] = {
        "lead_id": f"lead-{n}",
        "account": {
            "account_id": f"acc-{n}",
            "is_new": True,
            "name": f"Engines {n}",
            "domain": f"engines{n}.example",
            "country": "GB",
        },
        "contact": {
            "contact_id": f"con-{n}",
            "is_new": True,
            "first_name": "Ada",
            "last_name": "Lovelace",
            "email": f"ada@engines{n}.example",
        },
        "opportunity": {
            "opportunity_id": f"opp-{n}",
            "name": f"Engines {n} rollout",
            "amount": "12500.00",
            "currency": "GBP",
            "expected_close_date": "2027-03-31",
            "owner_id": "rep-7",
        },
        "lead_source": "web",
        "campaign_id": "cmp-autumn",
        "converted_at": "2026-11-20T10:00:00Z",
        "converted_by": REP,
    }
    data.update(overrides)
    return LeadConverted.model_validate(data)


def subjects(records: list[Record]) -> list[str]:
    return [record.json()["subject"] for record in records]


async def test_a_converted_lead_becomes_account_contact_and_opportunity_exactly_once(
    service: Service,
) -> None:
    first = conversion(1)
    await service.publish_conversion(first, event_id="conv-evt-1")
    await service.publish_conversion(first, event_id="conv-evt-1")  # redelivery of the same event
    await service.publish_conversion(first, event_id="conv-evt-1b")  # another event, same ids
    # Same key, so the same partition: once the sentinel is applied the duplicates were too.
    await service.publish_conversion(conversion(2), event_id="conv-evt-2")

    async def sentinel_applied() -> bool:
        return (await service.http.get("/opportunities/opp-2")).status_code == 200

    await eventually(sentinel_applied)
    # Three deliveries of the first conversion: one applied, one redelivery ignored by the
    # inbox, one other event for the same ids absorbed by the records' ids; none dead-lettered.
    assert service.consumed("processed", "lead.converted") == 3
    assert service.consumed("duplicate", "lead.converted") == 1
    assert service.consumed("dead_lettered", "lead.converted") == 0
    for collection, record_id in (("accounts", "acc-1"), ("contacts", "con-1"), ("opportunities", "opp-1")):
        assert await service.count(collection, {"_id": record_id}) == 1, collection
        assert await service.count(collection) == 2, collection

    opportunity = (await service.http.get("/opportunities/opp-1")).json()
    assert (opportunity["stage_id"], opportunity["probability"], opportunity["forecast_category"]) == (
        "prospecting",
        10,
        "pipeline",
    )
    assert (opportunity["amount"], opportunity["currency"], opportunity["expected_close_date"]) == (
        "12500.00",
        "GBP",
        "2027-03-31",
    )
    assert (opportunity["account_id"], opportunity["primary_contact_id"], opportunity["lead_id"]) == (
        "acc-1",
        "con-1",
        "lead-1",
    )
    assert (opportunity["lead_source"], opportunity["campaign_id"], opportunity["pipeline_id"]) == (
        "web",
        "cmp-autumn",
        "default",
    )
    assert opportunity["created_at"] == "2026-11-20T10:00:00Z" and opportunity["weighted_amount"] == "1250.00"
    contact = (await service.http.get("/contacts/con-1")).json()
    assert (contact["account_id"], contact["originating_lead_id"]) == ("acc-1", "lead-1")

    # The relay publishes in commit order: once the sentinel's events are there, all are.
    for topic, sentinel in (
        ("account.created", "acc-2"),
        ("contact.created", "con-2"),
        ("opportunity.created", "opp-2"),
    ):
        records = await service.events(topic, until=lambda rs, s=sentinel: s in subjects(rs))
        assert sorted(subjects(records)) == [sentinel.replace("2", "1"), sentinel], topic
        assert all(r.json()["sequence"] == "1" for r in records), topic
    [created] = [
        r.json()
        for r in await service.events("opportunity.created", until=lambda rs: "opp-1" in subjects(rs))
        if r.json()["subject"] == "opp-1"
    ]
    assert created["data"]["opportunity"]["stage_id"] == "prospecting"
    assert created["data"]["opportunity"]["campaign_id"] == "cmp-autumn"


async def test_a_conversion_with_a_known_domain_links_to_the_existing_account(service: Service) -> None:
    response = await service.http.post(
        "/accounts",
        json={"id": "acc-known", "name": "Engines Ltd", "website": "https://www.Engines3.example/"},
    )
    assert response.status_code == 201, response.text
    assert response.json()["domain"] == "engines3.example"
    await service.publish_conversion(conversion(3))

    async def opportunity_stored() -> bool:
        return (await service.http.get("/opportunities/opp-3")).status_code == 200

    await eventually(opportunity_stored)
    assert await service.count("accounts") == 1
    assert (await service.http.get("/opportunities/opp-3")).json()["account_id"] == "acc-known"
    assert (await service.http.get("/contacts/con-3")).json()["account_id"] == "acc-known"
    # The id the lead brought still finds the company it was matched to.
    assert (await service.http.get("/accounts/acc-3")).json()["id"] == "acc-known"
    # Creating a second account for the same company over HTTP is refused.
    again = await service.http.post("/accounts", json={"name": "Engines again", "domain": "engines3.example"})
    assert again.status_code == 409 and again.json()["fields"][0]["field"] == "domain"


async def test_a_conversion_into_an_unknown_pipeline_is_dead_lettered_whole(service: Service) -> None:
    broken = conversion(4, opportunity={"opportunity_id": "opp-4", "name": "X", "pipeline_id": "nope"})
    await service.publish_conversion(broken)
    await service.publish_conversion(conversion(5))

    async def next_one_applied() -> bool:
        return (await service.http.get("/opportunities/opp-5")).status_code == 200

    await eventually(next_one_applied)
    [parked] = await service.events("lead.converted.dlq", until=lambda rs: len(rs) >= 1)
    assert "pipeline_id" in parked.headers[H_ERROR].decode()
    # Nothing of the failed conversion was half-written.
    assert await service.count("accounts", {"_id": "acc-4"}) == 0
    assert await service.count("contacts", {"_id": "con-4"}) == 0


async def open_opportunity(service: Service, n: int) -> dict[str, Any]:
    account = await service.http.post("/accounts", json={"id": f"acc-h{n}", "name": f"Account {n}"})
    assert account.status_code == 201, account.text
    response = await service.http.post(
        "/opportunities",
        json={"id": f"opp-h{n}", "name": f"Deal {n}", "account_id": f"acc-h{n}", "amount": "5000", "by": REP},
    )
    assert response.status_code == 201, response.text
    return dict(response.json())


async def move(service: Service, opportunity_id: str, **body: Any) -> httpx.Response:
    return await service.http.post(f"/opportunities/{opportunity_id}/stage", json={"by": REP, **body})


async def test_stage_moves_over_http_emit_stage_changed_and_closing_needs_a_reason(service: Service) -> None:
    await open_opportunity(service, 1)
    moved = await move(service, "opp-h1", stage_id="proposal", expected_version=1)
    assert moved.status_code == 200, moved.text
    assert (moved.json()["stage_id"], moved.json()["probability"], moved.json()["version"]) == (
        "proposal",
        50,
        2,
    )

    no_reason = await move(service, "opp-h1", stage_id="closed_lost")
    assert no_reason.status_code == 422
    assert no_reason.json()["fields"][0]["field"] == "loss_reason"
    assert (await service.http.get("/opportunities/opp-h1")).json()["version"] == 2

    lost = await move(service, "opp-h1", stage_id="closed_lost", loss_reason="competitor")
    assert lost.status_code == 200, lost.text
    assert (lost.json()["status"], lost.json()["closed_at"] is not None) == ("lost", True)

    changes = await service.events("opportunity.stage_changed", until=lambda rs: len(rs) >= 2)
    proposal, closed_lost = (r.json() for r in changes)
    assert (proposal["sequence"], proposal["subject"]) == ("2", "opp-h1")
    data = proposal["data"]
    assert (data["previous_stage_id"], data["stage_id"], data["probability"]) == (
        "prospecting",
        "proposal",
        50,
    )
    assert (data["forecast_category"], data["amount"], data["pipeline_id"]) == (
        "best_case",
        "5000.00",
        "default",
    )
    assert data["changed_by"] == REP and data["opportunity"]["stage_name"] == "Proposal"
    assert data["previous_stage_kind"] == "open"
    assert closed_lost["data"]["stage_kind"] == "closed_lost" and closed_lost["sequence"] == "3"
    [closed] = await service.events("opportunity.closed", until=lambda rs: len(rs) >= 1)
    assert (closed.json()["data"]["won"], closed.json()["data"]["loss_reason"]) == (False, "competitor")

    # A closed opportunity moves only through an explicit reopen.
    assert (await move(service, "opp-h1", stage_id="negotiation")).status_code == 409
    case = (await service.http.get("/opportunities/opp-h1/case")).json()
    assert (case["outcome"], case["loss_reason"], case["account"]["id"]) == ("lost", "competitor", "acc-h1")
    assert [v["stage_id"] for v in case["stage_history"]] == ["prospecting", "proposal", "closed_lost"]
    reopened = await service.http.post("/opportunities/opp-h1/reopen", json={"by": REP})
    assert reopened.status_code == 200, reopened.text
    assert (reopened.json()["stage_id"], reopened.json()["status"]) == ("proposal", "open")
    assert (await service.http.get("/opportunities/opp-h1/case")).status_code == 409
    changes = await service.events("opportunity.stage_changed", until=lambda rs: len(rs) >= 3)
    reopening = changes[2].json()["data"]
    assert (reopening["previous_stage_kind"], reopening["stage_id"]) == ("closed_lost", "proposal")


async def test_a_stale_or_concurrent_update_gets_409(service: Service) -> None:
    await open_opportunity(service, 2)
    assert (await move(service, "opp-h2", stage_id="qualification", expected_version=1)).status_code == 200
    stale = await move(service, "opp-h2", stage_id="proposal", expected_version=1)
    assert stale.status_code == 409 and stale.json()["fields"][0]["field"] == "expected_version"
    stale_patch = await service.http.patch(
        "/opportunities/opp-h2", json={"amount": "1.00", "by": REP, "expected_version": 1}
    )
    assert stale_patch.status_code == 409

    # Two reps decide on version 2 at the same moment: exactly one wins.
    racing = await asyncio.gather(
        move(service, "opp-h2", stage_id="proposal", expected_version=2),
        move(service, "opp-h2", stage_id="negotiation", expected_version=2),
    )
    assert sorted(r.status_code for r in racing) == [200, 409], [r.text for r in racing]
    final = (await service.http.get("/opportunities/opp-h2")).json()
    assert final["version"] == 3 and len(final["stage_history"]) == 3


async def test_changing_figures_emits_updated_with_the_changed_fields(service: Service) -> None:
    await open_opportunity(service, 3)
    patched = await service.http.patch(
        "/opportunities/opp-h3",
        json={"amount": "7500.50", "expected_close_date": "2027-02-28", "name": "Deal 3", "by": REP},
    )
    assert patched.status_code == 200, patched.text
    assert (patched.json()["amount"], patched.json()["version"]) == ("7500.50", 2)
    [updated] = await service.events("opportunity.updated", until=lambda rs: len(rs) >= 1)
    data = updated.json()["data"]
    assert data["changed_fields"] == ["amount", "expected_close_date"]
    assert data["opportunity"]["amount"] == "7500.50" and updated.json()["sequence"] == "2"
    cleared = await service.http.patch("/opportunities/opp-h3", json={"name": None, "by": REP})
    assert cleared.status_code == 422 and cleared.json()["fields"][0]["field"] == "name"


async def test_custom_pipelines_and_bad_input(service: Service) -> None:
    listed = (await service.http.get("/pipelines")).json()
    assert [p["id"] for p in listed] == ["default"]
    stages = [
        {"id": "notice", "name": "Renewal notice", "probability": 60, "forecast_category": "best_case"},
        {
            "id": "signed",
            "name": "Signed",
            "kind": "closed_won",
            "probability": 100,
            "forecast_category": "closed",
        },
        {
            "id": "churned",
            "name": "Churned",
            "kind": "closed_lost",
            "probability": 0,
            "forecast_category": "omitted",
        },
    ]
    created = await service.http.post(
        "/pipelines", json={"id": "renewals", "name": "Renewals", "stages": stages, "loss_reasons": ["moved"]}
    )
    assert created.status_code == 201, created.text
    assert (await service.http.get("/pipelines/renewals")).json()["loss_reasons"] == ["moved"]
    unusable = await service.http.post("/pipelines", json={"name": "Bad", "stages": stages[1:] + stages[:1]})
    assert unusable.status_code == 422 and "first stage must be open" in unusable.text

    await open_opportunity(service, 4)
    renewal = await service.http.post(
        "/opportunities",
        json={"name": "Renewal", "account_id": "acc-h4", "pipeline_id": "renewals", "by": REP},
    )
    assert renewal.status_code == 201 and renewal.json()["probability"] == 60
    lost = await move(service, renewal.json()["id"], stage_id="churned", loss_reason="price")
    assert lost.status_code == 422 and lost.json()["fields"][0]["field"] == "loss_reason"

    listed_open = (
        await service.http.get("/opportunities", params={"pipeline_id": "renewals", "status": "open"})
    ).json()
    assert [o["id"] for o in listed_open["items"]] == [renewal.json()["id"]]
    unknown_account = await service.http.post(
        "/opportunities", json={"name": "X", "account_id": "nobody", "by": REP}
    )
    assert unknown_account.status_code == 422 and unknown_account.json()["fields"][0]["field"] == "account_id"
    smuggled = await service.http.get("/opportunities", params={"account_id": '{"$ne": null}'})
    assert smuggled.status_code == 422 and smuggled.json()["fields"][0]["field"] == "account_id"
    assert (await service.http.get("/opportunities/opp-none")).status_code == 404


async def test_line_items_from_the_catalogue_set_the_amount(service: Service) -> None:
    await open_opportunity(service, 5)
    licence = await service.http.post(
        "/products", json={"id": "prod-licence", "sku": "LIC-1", "name": "Licence", "list_price": "1200"}
    )
    assert licence.status_code == 201, licence.text
    dollars = await service.http.post(
        "/products", json={"id": "prod-usd", "name": "US", "list_price": "1", "currency": "USD"}
    )
    assert dollars.status_code == 201
    body = {"items": [{"product_id": "prod-licence", "quantity": "2", "discount_percent": "25"}], "by": REP}
    priced = await service.http.put("/opportunities/opp-h5/line-items", json=body)
    assert priced.status_code == 200, priced.text
    assert (priced.json()["amount"], priced.json()["line_items"][0]["total"]) == ("1800.00", "1800.00")
    [updated] = await service.events("opportunity.updated", until=lambda rs: len(rs) >= 1)
    assert updated.json()["data"]["changed_fields"] == ["amount", "line_items"]
    assert updated.json()["data"]["opportunity"]["amount"] == "1800.00"
    wrong_currency = await service.http.put(
        "/opportunities/opp-h5/line-items",
        json={"items": [{"product_id": "prod-usd", "quantity": "1"}], "by": REP},
    )
    assert wrong_currency.status_code == 422
    assert wrong_currency.json()["fields"][0]["field"] == "items.0.product_id"
    missing = await service.http.put("/opportunities/opp-none/line-items", json={"items": [], "by": REP})
    assert missing.status_code == 404
    retired = await service.http.patch("/products/prod-licence", json={"active": False, "list_price": "1500"})
    assert retired.status_code == 200 and retired.json()["version"] == 2
    kept = (await service.http.get("/opportunities/opp-h5")).json()
    assert kept["line_items"][0]["unit_price"] == "1200.00" and kept["amount"] == "1800.00"
    again = await service.http.put("/opportunities/opp-h5/line-items", json=body)
    assert again.status_code == 422 and "no longer sold" in again.json()["message"]


async def test_editing_a_pipeline_never_strands_its_open_opportunities(service: Service) -> None:
    await open_opportunity(service, 6)
    assert (await move(service, "opp-h6", stage_id="proposal")).status_code == 200
    default = (await service.http.get("/pipelines/default")).json()
    without = [s for s in default["stages"] if s["id"] != "proposal"]
    refused = await service.http.put("/pipelines/default", json={"name": "Sales", "stages": without})
    assert refused.status_code == 409 and refused.json()["fields"][0]["field"] == "stages"
    assert "holds 1 open opportunities" in refused.json()["message"]

    lighter = [s for s in default["stages"] if s["id"] != "qualification"]
    revised = await service.http.put(
        "/pipelines/default", json={"name": "Sales", "stages": lighter, "expected_version": 1}
    )
    assert revised.status_code == 200, revised.text
    assert revised.json()["version"] == 2 and "qualification" not in [
        s["id"] for s in revised.json()["stages"]
    ]
    stale = await service.http.put(
        "/pipelines/default", json={"name": "X", "stages": lighter, "expected_version": 1}
    )
    assert stale.status_code == 409 and stale.json()["fields"][0]["field"] == "expected_version"
    assert (
        await service.http.put("/pipelines/none", json={"name": "X", "stages": lighter})
    ).status_code == 404
    opportunity = (await service.http.get("/opportunities/opp-h6")).json()
    assert (opportunity["stage_id"], opportunity["probability"]) == ("proposal", 50)


ACCOUNTS_CSV = b"""external_id,name,type,website,country,employees
A-1,Analytical Engines,customer,https://engines-import.example,GB,120
A-2,Difference Gears,prospect,,DE,not-a-number
A-3,Engines again,customer,engines-import.example,GB,
"""


async def test_a_bulk_import_reports_each_row_and_a_second_run_changes_nothing(service: Service) -> None:
    csv_headers = {"content-type": "text/csv"}
    first = await service.http.post(
        "/imports/accounts?source_system=legacy", content=ACCOUNTS_CSV, headers=csv_headers
    )
    assert first.status_code == 200, first.text
    rows = first.json()["rows"]
    assert [r["status"] for r in rows] == ["created", "failed", "matched"]
    assert rows[1]["problems"][0]["field"] == "employees"
    assert rows[2]["id"] == rows[0]["id"]  # same domain: the same company

    legacy = {"account_external_id": "A-1"}
    records: list[dict[str, Any]] = [
        {"external_id": "O-1", "name": "Won in 2025", "stage_id": "closed_won", "amount": "4000"}
        | {"created_at": "2025-01-10T09:00:00Z", "closed_at": "2025-03-01T17:00:00Z"},
        {"external_id": "O-2", "name": "Open one", "stage_id": "negotiation", "amount": "900"}
        | {"created_at": "2025-06-01T09:00:00Z"},
        {"external_id": "O-3", "name": "Lost, no reason", "stage_id": "closed_lost"},
    ]
    lines = [json.dumps(legacy | record).encode() for record in records]
    lines.append(
        json.dumps({"external_id": "O-4", "name": "Nobody", "account_external_id": "A-404"}).encode()
    )
    opportunities = b"\n".join(lines)
    ndjson = {"content-type": "application/x-ndjson"}
    imported = await service.http.post(
        "/imports/opportunities?source_system=legacy", content=opportunities, headers=ndjson
    )
    assert imported.status_code == 200, imported.text
    report = imported.json()
    assert report["counts"] == {"created": 2, "failed": 2}
    assert [p["field"] for r in report["rows"][2:] for p in r["problems"]] == [
        "loss_reason",
        "account_external_id",
    ]
    won = (await service.http.get(f"/opportunities/{report['rows'][0]['id']}")).json()
    assert (won["status"], won["created_at"], won["closed_at"]) == (
        "won",
        "2025-01-10T09:00:00Z",
        "2025-03-01T17:00:00Z",
    )
    [closed] = await service.events("opportunity.closed", until=lambda rs: len(rs) >= 1)
    assert (closed.json()["time"], closed.json()["data"]["won"]) == ("2025-03-01T17:00:00Z", True)

    again = await service.http.post(
        "/imports/opportunities?source_system=legacy", content=opportunities, headers=ndjson
    )
    assert [r["status"] for r in again.json()["rows"]][:2] == ["unchanged", "unchanged"]
    moved = opportunities.split(b"\n")[1].replace(b'"negotiation"', b'"proposal"').replace(b'"900"', b'"950"')
    update = await service.http.post(
        "/imports/opportunities?source_system=legacy", content=moved, headers=ndjson
    )
    [row] = update.json()["rows"]
    assert (row["status"], row["changed_fields"]) == ("updated", ["amount", "stage_id"])
    assert await service.count("opportunities") == 2 and await service.count("accounts") == 1
    wrong_type = await service.http.post(
        "/imports/accounts?source_system=legacy", content=b"{}", headers={"content-type": "application/xml"}
    )
    assert wrong_type.status_code == 415


async def test_a_late_duplicate_conversion_leaves_a_moved_opportunity_alone_and_the_case_holds_it_all(
    service: Service,
) -> None:
    converted = conversion(7)
    await service.publish_conversion(converted, event_id="conv-7")

    async def opportunity_stored() -> bool:
        return (await service.http.get("/opportunities/opp-7")).status_code == 200

    await eventually(opportunity_stored)
    champion = await service.http.post(
        "/contacts", json={"id": "con-7b", "account_id": "acc-7", "last_name": "Babbage", "influencer": True}
    )
    assert champion.status_code == 201, champion.text
    roles = [{"contact_id": "con-7", "role": "economic buyer"}, {"contact_id": "con-7b", "role": "champion"}]
    patched = await service.http.patch("/opportunities/opp-7", json={"contact_roles": roles, "by": REP})
    assert patched.status_code == 200, patched.text
    assert (await move(service, "opp-7", stage_id="negotiation")).status_code == 200
    assert (await move(service, "opp-7", stage_id="closed_won")).status_code == 200

    # The same conversion again, once redelivered and once re-sent under a new event id.
    await service.publish_conversion(converted, event_id="conv-7")
    await service.publish_conversion(converted, event_id="conv-7-resent")
    await service.publish_conversion(conversion(8), event_id="conv-8")

    async def sentinel_applied() -> bool:
        return (await service.http.get("/opportunities/opp-8")).status_code == 200

    await eventually(sentinel_applied)
    opportunity = (await service.http.get("/opportunities/opp-7")).json()
    assert (opportunity["status"], opportunity["stage_id"], opportunity["version"]) == (
        "won",
        "closed_won",
        4,
    )
    created = await service.events("opportunity.created", until=lambda rs: "opp-8" in subjects(rs))
    assert sorted(subjects(created)) == ["opp-7", "opp-8"]

    case = (await service.http.get("/opportunities/opp-7/case")).json()
    assert (case["outcome"], case["lead_id"], case["campaign_id"], case["lead_source"]) == (
        "won",
        "lead-7",
        "cmp-autumn",
        "web",
    )
    assert [c["id"] for c in case["contacts"]] == ["con-7", "con-7b"]
    assert [r["role"] for r in case["contact_roles"]] == ["economic buyer", "champion"]
    assert [v["stage_id"] for v in case["stage_history"]] == ["prospecting", "negotiation", "closed_won"]
    assert case["account"]["name"] == "Engines 7" and case["closed_by"] == REP
