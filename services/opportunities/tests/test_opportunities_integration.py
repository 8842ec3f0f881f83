"""The opportunities service on real Kafka and the MongoDB-compatible server: conversion from
``lead.converted`` (duplicates, matching by domain, dead letters), pipelines, stage moves and
closing over HTTP, the case, and optimistic versioning."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote

import httpx
import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from crm_contracts import catalog
from crm_contracts.events.leads import LeadConverted
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
from crm_opportunities.bootstrap import OpportunitiesSettings, create_app
from crm_opportunities.domain import DEFAULT_LOSS_REASONS
from crm_opportunities.imports import imported_id
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
    # The id the lead brought still finds the company it was matched to, also in list filters.
    assert (await service.http.get("/accounts/acc-3")).json()["id"] == "acc-known"
    by_alias = (await service.http.get("/opportunities", params={"account_id": "acc-3"})).json()
    assert [o["id"] for o in by_alias["items"]] == ["opp-3"]
    contacts = (await service.http.get("/contacts", params={"account_id": "acc-3"})).json()
    assert [c["id"] for c in contacts["items"]] == ["con-3"]
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
    # Since issue 18 an id is any printable text: an operator written into one is text compared
    # for equality (it matches nothing); one that starts with $ is still refused.
    smuggled = await service.http.get("/opportunities", params={"account_id": '{"$ne": null}'})
    assert smuggled.status_code == 200 and smuggled.json()["items"] == []
    operator = await service.http.get("/opportunities", params={"account_id": "$ne"})
    assert operator.status_code == 422 and operator.json()["fields"][0]["field"] == "account_id"
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


async def import_job(
    service: Service, kind: str, body: bytes, system: str, content_type: str = "text/csv"
) -> tuple[dict[str, Any], dict[int, dict[str, str]]]:
    """An import job through HTTP, to its end: the job and its rejections by row."""
    location = await started_import(
        service.http, f"/imports/{kind}", body, content_type, source_system=system
    )
    job = await import_ended(service.http, location)
    return job, {int(r["row"]): r for r in await import_rejections(service.http, job)}


async def test_a_bulk_import_reports_each_row_and_a_second_run_changes_nothing(service: Service) -> None:
    job, rejected = await import_job(service, "accounts", ACCOUNTS_CSV, "legacy")
    assert (job["state"], job["applied"], job["rejected"]) == ("done", 2, 1)
    assert list(rejected) == [2] and rejected[2]["column"] == "employees"
    a1 = (await service.http.get(f"/accounts/{imported_id('account', 'legacy', 'A-1')}")).json()
    a3 = (await service.http.get(f"/accounts/{imported_id('account', 'legacy', 'A-3')}")).json()
    assert a3["id"] == a1["id"]  # same domain: the same company

    # Its opportunities part is in test_opportunity_import_jobs (the import job).
    assert await service.count("accounts") == 1
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


# -- accounts, contacts, sales teams, pipelines -----------------------------------------------
def event_data(records: list[Record], subject: str) -> list[dict[str, Any]]:
    return [r.json()["data"] for r in records if r.json()["subject"] == subject]


async def test_accounts_and_contacts_are_edited_with_versions_events_and_a_loop_free_hierarchy(
    service: Service,
) -> None:
    for body in (
        {"id": "acc-group", "name": "Engines Group"},
        {"id": "acc-sub", "name": "Engines UK", "parent_account_id": "acc-group"},
        {"id": "acc-other", "name": "Gears", "domain": "gears.example"},
    ):
        assert (await service.http.post("/accounts", json=body)).status_code == 201

    loop = await service.http.patch("/accounts/acc-group", json={"parent_account_id": "acc-sub", "by": REP})
    assert loop.status_code == 409 and loop.json()["fields"][0]["field"] == "parent_account_id"
    edited = await service.http.patch(
        "/accounts/acc-sub",
        json={
            "industry": "Manufacturing",
            "tier": "A",
            "name": "Engines UK Ltd",
            "by": REP,
            "expected_version": 1,
        },
    )
    assert edited.status_code == 200, edited.text
    assert (edited.json()["version"], edited.json()["tier"], edited.json()["updated_by"]) == (2, "A", REP)
    stale = await service.http.patch(
        "/accounts/acc-sub", json={"employees": 5, "by": REP, "expected_version": 1}
    )
    assert stale.status_code == 409 and stale.json()["fields"][0]["field"] == "expected_version"
    cleared = await service.http.patch("/accounts/acc-sub", json={"name": None, "by": REP})
    assert cleared.status_code == 422 and cleared.json()["fields"][0]["field"] == "name"

    # A domain belongs to one account; giving it up frees it for another.
    taken = await service.http.patch("/accounts/acc-sub", json={"domain": "gears.example", "by": REP})
    assert taken.status_code == 409 and taken.json()["fields"][0]["field"] == "domain"
    site = await service.http.patch(
        "/accounts/acc-other", json={"website": "https://www.gears.example", "by": REP}
    )
    assert (site.json()["domain"], site.json()["version"]) == ("gears.example", 2)
    # The domain was the website's, so a new website takes the domain along.
    renamed = await service.http.patch(
        "/accounts/acc-other", json={"website": "https://gears-group.example", "by": REP}
    )
    assert (renamed.json()["domain"], renamed.json()["version"]) == ("gears-group.example", 3)
    freed = await service.http.patch("/accounts/acc-sub", json={"domain": "gears.example", "by": REP})
    assert freed.status_code == 200 and freed.json()["domain"] == "gears.example"
    subsidiaries = (await service.http.get("/accounts", params={"parent_account_id": "acc-group"})).json()
    assert [a["id"] for a in subsidiaries["items"]] == ["acc-sub"]

    contact = await service.http.post(
        "/contacts", json={"id": "con-e", "account_id": "acc-sub", "last_name": "Lovelace"}
    )
    assert contact.status_code == 201
    promoted = await service.http.patch(
        "/contacts/con-e",
        json={
            "role": "economic buyer",
            "decision_maker": True,
            "influencer": True,
            "account_id": "acc-group",
            "email": "Ada@Engines.example",
            "by": REP,
            "expected_version": 1,
        },
    )
    assert promoted.status_code == 200, promoted.text
    assert (promoted.json()["email"], promoted.json()["version"]) == ("ada@engines.example", 2)
    nameless = await service.http.patch("/contacts/con-e", json={"last_name": None, "email": None, "by": REP})
    assert nameless.status_code == 422 and nameless.json()["fields"][0]["field"] == "email"
    unknown = await service.http.patch("/contacts/con-e", json={"account_id": "nobody", "by": REP})
    assert unknown.status_code == 422 and unknown.json()["fields"][0]["field"] == "account_id"
    deciders = (await service.http.get("/contacts", params={"influencer": True})).json()
    assert [c["id"] for c in deciders["items"]] == ["con-e"]

    updates = await service.events("account.updated", until=lambda rs: len(rs) >= 4)
    assert [(r.json()["subject"], r.json()["sequence"]) for r in updates] == [
        ("acc-sub", "2"),
        ("acc-other", "2"),
        ("acc-other", "3"),
        ("acc-sub", "3"),
    ]
    first = updates[0].json()["data"]
    assert first["changed_fields"] == ["industry", "name", "tier"]
    assert (first["parent_account_id"], first["industry"]) == ("acc-group", "Manufacturing")
    [contact_update] = await service.events("contact.updated", until=lambda rs: len(rs) >= 1)
    data = contact_update.json()["data"]
    assert data["changed_fields"] == ["account_id", "decision_maker", "email", "influencer", "role"]
    assert (data["role"], data["decision_maker"], data["influencer"]) == ("economic buyer", True, True)


async def test_a_won_deal_makes_the_prospect_a_customer_and_figures_carry_what_reporting_breaks_down_by(
    service: Service,
) -> None:
    team = await service.http.post("/sales-teams", json={"id": "team-dach", "name": "DACH", "region": "DACH"})
    assert team.status_code == 201, team.text
    account = await service.http.post("/accounts", json={"id": "acc-w", "name": "Watt", "industry": "Energy"})
    assert account.json()["type"] == "prospect"
    await service.http.post("/products", json={"id": "prod-a", "name": "Turbine", "list_price": "1000"})
    await service.http.post("/products", json={"id": "prod-b", "name": "Service", "list_price": "100"})
    no_team = await service.http.post(
        "/opportunities", json={"name": "X", "account_id": "acc-w", "sales_team_id": "team-none", "by": REP}
    )
    assert no_team.status_code == 422 and no_team.json()["fields"][0]["field"] == "sales_team_id"
    for opportunity_id in ("opp-w1", "opp-w2"):
        opened = await service.http.post(
            "/opportunities",
            json={
                "id": opportunity_id,
                "name": "Wind",
                "account_id": "acc-w",
                "sales_team_id": "team-dach",
                "by": REP,
            },
        )
        assert opened.status_code == 201, opened.text
    items = [{"product_id": "prod-a", "quantity": "2"}, {"product_id": "prod-b", "quantity": "1"}]
    priced = await service.http.put("/opportunities/opp-w1/line-items", json={"items": items, "by": REP})
    assert priced.json()["amount"] == "2100.00"
    refused = await service.http.delete("/sales-teams/team-dach")
    assert refused.status_code == 409 and "works 2 opportunities" in refused.json()["message"]
    region = await service.http.patch(
        "/sales-teams/team-dach", json={"region": "DACH+CH", "expected_version": 1}
    )
    assert region.status_code == 200 and region.json()["version"] == 2

    assert (await move(service, "opp-w1", stage_id="closed_won")).status_code == 200
    assert (await move(service, "opp-w2", stage_id="closed_won")).status_code == 200
    customer = (await service.http.get("/accounts/acc-w")).json()
    assert (customer["type"], customer["version"]) == ("customer", 2)
    [became_customer] = await service.events("account.updated", until=lambda rs: len(rs) >= 1)
    assert became_customer.json()["data"]["changed_fields"] == ["type"]
    assert became_customer.json()["sequence"] == "2"

    won = await service.events("opportunity.closed", until=lambda rs: len(rs) >= 2)
    [figures] = [d["opportunity"] for d in event_data(won, "opp-w1")]
    assert (figures["stage_order"], figures["sales_team_id"], figures["sales_region"]) == (
        4,
        "team-dach",
        "DACH+CH",
    )
    assert (figures["account_industry"], figures["product_ids"]) == ("Energy", ["prod-a", "prod-b"])
    case = (await service.http.get("/opportunities/opp-w1/case")).json()
    assert case["sales_team"]["region"] == "DACH+CH"
    by_team = (await service.http.get("/opportunities", params={"sales_team_id": "team-dach"})).json()
    assert [o["id"] for o in by_team["items"]] == ["opp-w1", "opp-w2"]

    # A team no opportunity names can go.
    await service.http.post("/sales-teams", json={"id": "team-idle", "name": "Idle", "region": "Nordics"})
    assert (
        await service.http.delete("/sales-teams/team-idle", params={"expected_version": 2})
    ).status_code == 409
    assert (
        await service.http.delete("/sales-teams/team-idle", params={"expected_version": 1})
    ).status_code == 204
    assert (await service.http.get("/sales-teams/team-idle")).status_code == 404
    listed = (await service.http.get("/sales-teams", params={"region": "DACH+CH"})).json()
    assert [t["id"] for t in listed["items"]] == ["team-dach"]


async def test_pipelines_are_published_in_order_and_an_opportunity_moves_between_them(
    service: Service,
) -> None:
    [seeded] = await service.events("pipeline.created", until=lambda rs: len(rs) >= 1)
    data = seeded.json()["data"]
    assert seeded.json()["subject"] == "default" and data["loss_reasons"] == list(DEFAULT_LOSS_REASONS)
    assert [(s["stage_id"], s["position"]) for s in data["stages"]][:2] == [
        ("prospecting", 0),
        ("qualification", 1),
    ]

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
        "/pipelines", json={"id": "renewals", "name": "Renewals", "stages": stages}
    )
    assert created.status_code == 201
    talks = {"id": "talks", "name": "Talks", "probability": 40, "forecast_category": "pipeline"}
    revised = await service.http.put(
        "/pipelines/renewals", json={"name": "Renewals", "stages": [talks, *stages], "expected_version": 1}
    )
    assert revised.status_code == 200
    [updated] = await service.events("pipeline.updated", until=lambda rs: len(rs) >= 1)
    assert updated.json()["sequence"] == "2"
    assert [s["stage_id"] for s in updated.json()["data"]["stages"]] == [
        "talks",
        "notice",
        "signed",
        "churned",
    ]

    await open_opportunity(service, 9)
    assert (await move(service, "opp-h9", stage_id="proposal")).status_code == 200

    async def to_pipeline(**body: Any) -> httpx.Response:
        return await service.http.post("/opportunities/opp-h9/pipeline", json={"by": REP, **body})

    unmapped = await to_pipeline(pipeline_id="renewals")
    assert unmapped.status_code == 422 and unmapped.json()["fields"][0]["field"] == "stage_id"
    closed = await to_pipeline(pipeline_id="renewals", stage_id="signed")
    assert closed.status_code == 422 and closed.json()["fields"][0]["field"] == "stage_id"
    assert (await to_pipeline(pipeline_id="default", stage_id="negotiation")).status_code == 409
    assert (await to_pipeline(pipeline_id="nope", stage_id="talks")).status_code == 422
    moved = await to_pipeline(pipeline_id="renewals", stage_id="notice", expected_version=2)
    assert moved.status_code == 200, moved.text
    body = moved.json()
    assert (body["pipeline_id"], body["stage_id"], body["probability"], body["version"]) == (
        "renewals",
        "notice",
        60,
        3,
    )
    assert [(v["pipeline_id"], v["stage_id"]) for v in body["stage_history"]] == [
        ("default", "prospecting"),
        ("default", "proposal"),
        ("renewals", "notice"),
    ]
    changes = await service.events("opportunity.stage_changed", until=lambda rs: len(rs) >= 2)
    change = changes[1].json()["data"]
    assert (change["previous_pipeline_id"], change["pipeline_id"], change["previous_stage_id"]) == (
        "default",
        "renewals",
        "proposal",
    )
    assert change["opportunity"]["stage_order"] == 1
    listed = (await service.http.get("/opportunities", params={"pipeline_id": "renewals"})).json()
    assert [o["id"] for o in listed["items"]] == ["opp-h9"]


async def test_imports_upsert_accounts_and_contacts(
    service: Service,
) -> None:
    accounts = b"external_id,name,industry,domain\nA-1,Analytical Engines,Computing,engines-imp.example\n"
    first, _ = await import_job(service, "accounts", accounts, "old")
    assert (first["applied"], first["rejected"]) == (1, 0)
    account_id = imported_id("account", "old", "A-1")
    changed = accounts.replace(b"Computing", b"Machinery")
    again, _ = await import_job(service, "accounts", changed, "old")
    assert (again["applied"], again["rejected"]) == (1, 0)
    [updated] = await service.events("account.updated", until=lambda rs: len(rs) >= 1)
    assert (updated.json()["subject"], updated.json()["data"]["changed_fields"]) == (account_id, ["industry"])

    assert (
        await service.http.post("/contacts", json={"id": "con-known", "email": "grace@navy.example"})
    ).status_code == 201
    contacts = (
        b"external_id,first_name,last_name,email,role,decision_maker,account_external_id\n"
        b"C-1,Ada,Lovelace,ada@engines-imp.example,economic buyer,true,A-1\n"
        b"C-2,Grace,Hopper,Grace@Navy.example,,,\n"
        b"C-3,,,,champion,,A-1\n"
        b"C-4,Charles,Babbage,,,,A-404\n"
    )
    imported, rejected = await import_job(service, "contacts", contacts, "old")
    assert (imported["applied"], imported["rejected"]) == (2, 2)
    assert sorted(rejected) == [3, 4] and rejected[4]["column"] == "account_external_id"
    # C-2 matched the contact already having its email: no second one
    assert (await service.http.get(f"/contacts/{imported_id('contact', 'old', 'C-2')}")).status_code == 404
    assert await service.count("contacts", {"email": "grace@navy.example"}) == 1
    ada_id = imported_id("contact", "old", "C-1")
    ada = (await service.http.get(f"/contacts/{ada_id}")).json()
    assert (ada["account_id"], ada["role"], ada["decision_maker"]) == (account_id, "economic buyer", True)
    rerun, _ = await import_job(service, "contacts", contacts.replace(b"economic buyer", b"champion"), "old")
    assert (rerun["applied"], rerun["rejected"]) == (2, 2)
    [contact_updated] = await service.events("contact.updated", until=lambda rs: len(rs) >= 1)
    assert (contact_updated.json()["subject"], contact_updated.json()["data"]["changed_fields"]) == (
        ada_id,
        ["role"],
    )
    assert await service.count("contacts", {"email": "grace@navy.example"}) == 1

    # Opportunities replayed through their history: test_opportunity_import_jobs.


# -- end to end: duplicated, out-of-order conversions racing with stage moves ------------------
async def topic_size(service: Service, topic: str) -> int:
    """How many records the topic holds (0 if nobody ever published to it): with the outbox
    drained, this is exactly what the service emitted, however a reader batches them."""
    bootstrap = service.settings.kafka_bootstrap_servers
    name = service.settings.topic(topic)
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap)
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap)
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


@dataclass
class Rep:
    """A sales rep working one opportunity over HTTP, deciding each move on the version read."""

    service: Service
    opportunity_id: str
    version: int = 1
    moves: int = 0

    async def move(self, path: str = "stage", **body: Any) -> httpx.Response:
        response = await self.service.http.post(
            f"/opportunities/{self.opportunity_id}/{path}",
            json={"by": REP, "expected_version": self.version, **body},
        )
        if response.status_code == 200:
            self.version = response.json()["version"]
            self.moves += 1
        return response


async def test_end_to_end_duplicate_late_conversions_racing_with_moves_yield_exact_records_and_events(
    service: Service,
) -> None:
    conversions = {
        11: conversion(11),
        # Another id for the same company (same domain): one account, whichever arrives first.
        12: conversion(
            12,
            account={
                "account_id": "acc-12",
                "is_new": True,
                "name": "Engines 11 Ltd",
                "domain": "engines11.example",
            },
        ),
        13: conversion(13),
        # The leads service matched this lead to acc-13; it may arrive before acc-13's own conversion.
        14: conversion(14, account={"account_id": "acc-13", "is_new": False, "domain": "engines13.example"}),
        15: conversion(15, account={"account_id": "acc-15", "is_new": True, "name": "No Domain Co"}),
        16: conversion(16, opportunity=None),
        17: conversion(17),
        18: conversion(18),
    }
    published = 0

    async def publish(n: int, event_id: str) -> None:
        nonlocal published
        await service.publish_conversion(conversions[n], event_id=event_id)
        published += 1

    async def all_consumed() -> bool:
        seen = service.consumed("processed", "lead.converted") + service.consumed(
            "duplicate", "lead.converted"
        )
        return seen == published

    # Out of order (14 before 13, 12 before 11), a redelivery (same event id) and a re-send.
    for n, event_id in (
        (14, "e14"),
        (12, "e12"),
        (11, "e11"),
        (11, "e11"),
        (13, "e13"),
        (15, "e15"),
        (16, "e16"),
    ):
        await publish(n, event_id)
    for n, event_id in ((17, "e17"), (18, "e18"), (13, "e13-resent")):
        await publish(n, event_id)
    await eventually(all_consumed, timeout=60)

    # Reps move opportunities while every conversion arrives again, late, twice.
    async def late_duplicates() -> None:
        for n in conversions:
            await publish(n, f"e{n}-late")
            await publish(n, f"e{n}")

    reps = {n: Rep(service, f"opp-{n}") for n in (11, 12, 13, 14, 15, 17)}

    async def work_the_pipeline() -> list[httpx.Response]:
        # Two reps decide on the same version of opp-11: exactly one of them wins.
        racing = await asyncio.gather(
            service.http.post(
                "/opportunities/opp-11/stage",
                json={"by": REP, "stage_id": "qualification", "expected_version": 1},
            ),
            service.http.post(
                "/opportunities/opp-11/stage", json={"by": REP, "stage_id": "proposal", "expected_version": 1}
            ),
        )
        assert sorted(r.status_code for r in racing) == [200, 409], [r.text for r in racing]
        reps[11].version, reps[11].moves = 2, 1
        return [
            *racing,
            await reps[11].move(stage_id="closed_won"),
            await reps[12].move(stage_id="negotiation"),
            await reps[12].move(stage_id="closed_won"),
            await reps[13].move(stage_id="proposal"),
            await reps[13].move(stage_id="closed_lost", loss_reason="competitor"),
            await reps[14].move(stage_id="negotiation"),
            await reps[15].move(stage_id="closed_won"),
            await reps[17].move(stage_id="qualification"),
            await reps[17].move(stage_id="closed_lost", loss_reason="price"),
            await reps[17].move("reopen"),
        ]

    responses, _ = await asyncio.gather(work_the_pipeline(), late_duplicates())
    assert [r.status_code for r in responses[2:]] == [200] * 10, [
        r.text for r in responses if r.status_code != 200
    ]
    await eventually(all_consumed, timeout=60)
    await eventually(_outbox_drained(service.runtime), timeout=30)
    assert service.consumed("dead_lettered", "lead.converted") == 0

    # Records: one account per company, every contact and opportunity once.
    merged = (await service.http.get("/accounts/acc-12")).json()["id"]
    assert merged == (await service.http.get("/accounts/acc-11")).json()["id"]
    accounts = {merged, "acc-13", "acc-15", "acc-16", "acc-17", "acc-18"}
    assert await service.count("accounts") == len(accounts)
    assert {
        a["_id"] for a in await service.mongo[service.settings.database_name].accounts.find().to_list()
    } == accounts
    assert await service.count("contacts") == 8 and await service.count("opportunities") == 7
    for n, account_id in ((11, merged), (12, merged), (13, "acc-13"), (14, "acc-13"), (18, "acc-18")):
        opportunity = (await service.http.get(f"/opportunities/opp-{n}")).json()
        assert opportunity["account_id"] == account_id, n
        assert (await service.http.get(f"/contacts/con-{n}")).json()["account_id"] == account_id, n
    for n, rep in reps.items():
        opportunity = (await service.http.get(f"/opportunities/opp-{n}")).json()
        assert (opportunity["version"], len(opportunity["stage_history"])) == (
            1 + rep.moves,
            1 + rep.moves,
        ), n
    types = {a["id"]: a["type"] for a in (await service.http.get("/accounts")).json()["items"]}
    assert types == {merged: "customer", "acc-15": "customer"} | {
        a: "prospect" for a in accounts - {merged, "acc-15"}
    }

    # Events: exactly one per change, counted on the topics.
    moves = sum(rep.moves for rep in reps.values())
    expected = {
        "account.created": len(accounts),
        "contact.created": 8,
        "opportunity.created": 7,
        "opportunity.stage_changed": moves,
        "opportunity.closed": 5,  # opp-11, 12, 15 won; 13, 17 lost
        "account.updated": 2,  # two prospects became customers, each once
        "opportunity.updated": 0,
        "pipeline.created": 1,
    }
    sizes = {topic: await topic_size(service, topic) for topic in expected}
    assert sizes == expected
    created = await service.events("opportunity.created", until=lambda rs: len(rs) >= 7)
    assert sorted(subjects(created)) == [f"opp-{n}" for n in (11, 12, 13, 14, 15, 17, 18)]
    assert {r.json()["sequence"] for r in created} == {"1"}
    changes = await service.events("opportunity.stage_changed", until=lambda rs: len(rs) >= moves)
    for n, rep in reps.items():
        sequences = [r.json()["sequence"] for r in changes if r.json()["subject"] == f"opp-{n}"]
        assert sequences == [str(v) for v in range(2, 2 + rep.moves)], n


async def test_operators_smuggled_in_filter_strings_match_nothing(service: Service) -> None:
    # A query string arrives as text and is compared for equality: a Mongo operator written into
    # it is a region nobody has, never an operator that would widen the filter to every record.
    for team, region in (("team-dach", "DACH"), ("team-nordics", "Nordics")):
        created = await service.http.post("/sales-teams", json={"id": team, "name": team, "region": region})
        assert created.status_code == 201, created.text
    for smuggled in ('{"$ne": null}', '{"$gt": ""}', "$ne", "$where", ".*", '{"$regex": "."}'):
        listed = await service.http.get("/sales-teams", params={"region": smuggled})
        assert listed.status_code == 200, listed.text
        assert listed.json()["items"] == [], smuggled
    matched = (await service.http.get("/sales-teams", params={"region": "DACH"})).json()["items"]
    assert [team["id"] for team in matched] == ["team-dach"]


# -- lookups by another CRM's own ids (issue 18) ----------------------------------------------
async def _import(service: Service, kind: str, system: str, csv_body: bytes) -> None:
    """An import job of ``csv_body`` to its end, every row applied."""
    job, rejected = await import_job(service, kind, csv_body, system)
    assert (job["state"], rejected) == ("done", {}), (job, rejected)


async def _looked_up(service: Service, path: str, system: str, external_id: str) -> list[dict[str, Any]]:
    answer = await service.http.get(path, params={"external_system": system, "external_id": external_id})
    assert answer.status_code == 200, answer.text
    items: list[dict[str, Any]] = answer.json()["items"]
    return items


async def test_imported_records_are_found_by_the_exporting_systems_own_ids(service: Service) -> None:
    # Two CRMs both call their first account "A 1": two accounts, each found by its own system.
    await _import(service, "accounts", "crm-north", b"external_id,name\nA 1,North Ltd\n")
    await _import(service, "accounts", "crm-south", b"external_id,name\nA 1,South Ltd\n")
    south = imported_id("account", "crm-south", "A 1")
    assert imported_id("account", "crm-north", "A 1") != south
    assert [a["name"] for a in await _looked_up(service, "/accounts", "crm-north", "A 1")] == ["North Ltd"]
    assert [a["name"] for a in await _looked_up(service, "/accounts", "crm-south", "A 1")] == ["South Ltd"]
    assert await _looked_up(service, "/accounts", "crm-west", "A 1") == []

    # Matched on import to records already here: the lookup answers those records.
    known_account = await service.http.post(
        "/accounts", json={"id": "acc-known", "name": "Known", "domain": "known.example"}
    )
    assert known_account.status_code == 201, known_account.text
    known_contact = await service.http.post(
        "/contacts", json={"id": "con-known", "email": "kim@known.example"}
    )
    assert known_contact.status_code == 201, known_contact.text
    await _import(service, "accounts", "crm-north", b"external_id,name,domain\nA-2,Known Co,known.example\n")
    await _import(
        service,
        "contacts",
        "crm-north",
        b"external_id,first_name,email,account_external_id\nC-9,Kim,Kim@known.example,A 1\n",
    )
    # Matched, not created: the derived ids are no records of their own.
    assert (await service.http.get(f"/accounts/{imported_id('account', 'crm-north', 'A-2')}")).json()[
        "id"
    ] == "acc-known"
    assert [a["id"] for a in await _looked_up(service, "/accounts", "crm-north", "A-2")] == ["acc-known"]
    assert [c["id"] for c in await _looked_up(service, "/contacts", "crm-north", "C-9")] == ["con-known"]
    assert await _looked_up(service, "/contacts", "crm-south", "C-9") == []

    await _import(
        service, "opportunities", "crm-south", b"external_id,name,account_external_id\nO-1,Big deal,A 1\n"
    )
    [found] = await _looked_up(service, "/opportunities", "crm-south", "O-1")
    assert (found["id"], found["account_id"]) == (imported_id("opportunity", "crm-south", "O-1"), south)
    assert await _looked_up(service, "/opportunities", "crm-north", "O-1") == []


async def test_a_lookup_needs_both_the_system_and_its_id(service: Service) -> None:
    for path in ("/accounts", "/contacts", "/opportunities"):
        for given, missing in (
            ({"external_id": "A-1"}, "external_system"),
            ({"external_system": "crm"}, "external_id"),
        ):
            answer = await service.http.get(path, params=given)
            assert answer.status_code == 422, (path, answer.text)
            assert [f["field"] for f in answer.json()["fields"]] == [missing], (path, answer.text)


async def test_ids_from_another_crm_with_spaces_work_in_bodies_paths_and_filters(service: Service) -> None:
    # Names another CRM uses as ids, taken as they are: spaces, accents, dots, ampersands.
    product, team, owner = "Widget Pro 2", "Team Nord & Ost", "Rita Rep"
    made = await service.http.post(
        "/products", json={"id": product, "name": "Widget", "list_price": "100.00"}
    )
    assert made.status_code == 201, made.text
    made = await service.http.post(
        "/sales-teams", json={"id": team, "name": "Nord-Ost", "region": "DACH", "manager_id": "Jörg M."}
    )
    assert made.status_code == 201, made.text
    made = await service.http.post(
        "/accounts", json={"id": "Müller Holding GmbH", "name": "Müller", "owner_id": owner}
    )
    assert made.status_code == 201, made.text
    deal = await service.http.post(
        "/opportunities",
        json={
            "id": "Deal 2026 Q1",
            "name": "Widgets",
            "account_id": "Müller Holding GmbH",
            "owner_id": owner,
            "sales_team_id": team,
            "by": REP,
        },
    )
    assert deal.status_code == 201, deal.text
    path = "/opportunities/" + quote(deal.json()["id"], safe="")
    lines = await service.http.put(
        f"{path}/line-items", json={"items": [{"product_id": product, "quantity": "3"}], "by": REP}
    )
    assert lines.status_code == 200, lines.text
    assert lines.json()["amount"] == "300.00"

    assert (await service.http.get("/products/" + quote(product, safe=""))).json()["id"] == product
    assert (await service.http.get("/sales-teams/" + quote(team, safe=""))).json()["manager_id"] == "Jörg M."
    by_owner = (await service.http.get("/opportunities", params={"owner_id": owner})).json()["items"]
    by_team = (await service.http.get("/opportunities", params={"sales_team_id": team})).json()["items"]
    assert [o["id"] for o in by_owner] == [o["id"] for o in by_team] == ["Deal 2026 Q1"]
    [created] = await service.events("opportunity.created", until=lambda rs: len(rs) >= 1)
    assert (created.json()["data"]["opportunity"]["owner_id"], created.key) == (owner, b"Deal 2026 Q1")


# -- what a conversion carries: website, consent, UTM -----------------------------------------
CARRIED = {
    "utm": {"source": "google", "medium": "cpc", "campaign": "autumn", "term": "crm", "content": "ad-2"},
    "captured_at": "2026-11-01T08:00:00Z",
}


def carrying(n: int, **overrides: Any) -> LeadConverted:
    base = conversion(n).model_dump(mode="json")
    base["account"]["website"] = f"https://www.engines{n}.example/about"
    base["contact"]["consent"] = {"do_not_email": True, "do_not_call": False}
    return LeadConverted.model_validate({**base, **CARRIED, **overrides})


async def test_a_conversion_carries_website_consent_and_utm_to_new_records(service: Service) -> None:
    await service.publish_conversion(carrying(41))

    async def opportunity_stored() -> bool:
        return (await service.http.get("/opportunities/opp-41")).status_code == 200

    await eventually(opportunity_stored)
    account = (await service.http.get("/accounts/acc-41")).json()
    assert (account["website"], account["domain"]) == (
        "https://www.engines41.example/about",
        "engines41.example",
    )
    contact = (await service.http.get("/contacts/con-41")).json()
    assert contact["consent"] == {
        "do_not_email": True,
        "do_not_call": False,
        "recorded_at": "2026-11-01T08:00:00Z",
        "source": "lead conversion lead-41",
    }
    opportunity = (await service.http.get("/opportunities/opp-41")).json()
    assert opportunity["utm"] == CARRIED["utm"]
    assert (opportunity["lead_source"], opportunity["campaign_id"]) == ("web", "cmp-autumn")
    # Other services hear of the consent with the contact.
    records = await service.events("contact.created", until=lambda rs: "con-41" in subjects(rs))
    [created] = [r.json()["data"] for r in records if r.json()["subject"] == "con-41"]
    assert created["consent"] == contact["consent"]


async def test_a_conversion_fills_only_the_blanks_of_matched_records(service: Service) -> None:
    blank = await service.http.post(
        "/accounts", json={"id": "acc-blank", "name": "Engines", "domain": "engines42.example"}
    )
    assert blank.status_code == 201, blank.text
    curated = await service.http.post(
        "/accounts", json={"id": "acc-curated", "name": "Gears", "website": "https://gears.example/de"}
    )
    assert curated.status_code == 201, curated.text
    said_later = await service.http.post(
        "/contacts",
        json={"id": "con-said", "email": "said@engines42.example", "consent": {"do_not_email": False}},
    )
    assert said_later.status_code == 201, said_later.text
    assert said_later.json()["consent"]["source"] == "api"
    silent = await service.http.post("/contacts", json={"id": "con-silent", "email": "silent@gears.example"})
    assert silent.status_code == 201 and silent.json()["consent"] is None

    # Matched by domain: the blank website is filled; the contact's newer consent stays.
    first = carrying(
        42, contact={"contact_id": "con-said", "is_new": False, "consent": {"do_not_email": True}}
    )
    # Matched by id: the account keeps its own website; the contact without consent takes the lead's.
    second = carrying(
        43,
        account={"account_id": "acc-curated", "is_new": False, "website": "https://old.gears.example"},
        contact={"contact_id": "con-silent", "is_new": False, "consent": {"do_not_call": True}},
    )
    await service.publish_conversion(first)
    await service.publish_conversion(second)

    async def both_stored() -> bool:
        found = [(await service.http.get(f"/opportunities/opp-{n}")).status_code for n in (42, 43)]
        return found == [200, 200]

    await eventually(both_stored)
    assert (await service.http.get("/accounts/acc-blank")).json()[
        "website"
    ] == "https://www.engines42.example/about"
    assert (await service.http.get("/accounts/acc-curated")).json()["website"] == "https://gears.example/de"
    kept = (await service.http.get("/contacts/con-said")).json()["consent"]
    assert (kept["do_not_email"], kept["source"]) == (False, "api")
    taken = (await service.http.get("/contacts/con-silent")).json()["consent"]
    assert (taken["do_not_call"], taken["source"], taken["recorded_at"]) == (
        True,
        "lead conversion lead-43",
        "2026-11-01T08:00:00Z",
    )
    # Each fill is an update other services hear of.
    accounts = await service.events("account.updated", until=lambda rs: "acc-blank" in subjects(rs))
    assert [r.json()["data"]["changed_fields"] for r in accounts if r.json()["subject"] == "acc-blank"] == [
        ["website"]
    ]
    contacts = await service.events("contact.updated", until=lambda rs: "con-silent" in subjects(rs))
    assert "con-said" not in subjects(contacts)


async def test_consent_is_set_over_http_and_in_a_contacts_import(service: Service) -> None:
    created = await service.http.post("/contacts", json={"id": "con-http", "email": "http@engines.example"})
    assert created.status_code == 201 and created.json()["consent"] is None
    patched = await service.http.patch(
        "/contacts/con-http", json={"consent": {"do_not_call": True}, "by": REP}
    )
    assert patched.status_code == 200, patched.text
    consent = (await service.http.get("/contacts/con-http")).json()["consent"]
    assert (consent["do_not_email"], consent["do_not_call"], consent["source"]) == (False, True, "api")
    cleared = await service.http.patch("/contacts/con-http", json={"consent": None, "by": REP})
    assert cleared.status_code == 422 and cleared.json()["fields"][0]["field"] == "consent"

    body = b"""external_id,email,do_not_email,do_not_call
C-1,one@import.example,true,
C-2,two@import.example,,
C-3,three@import.example,maybe,false
"""
    _, rejected = await import_job(service, "contacts", body, "legacy")
    assert set(rejected) == {3} and rejected[3]["column"] == "do_not_email", rejected
    one = (await service.http.get(f"/contacts/{imported_id('contact', 'legacy', 'C-1')}")).json()["consent"]
    assert (one["do_not_email"], one["do_not_call"], one["source"]) == (True, False, "import legacy")
    two = (await service.http.get(f"/contacts/{imported_id('contact', 'legacy', 'C-2')}")).json()
    assert two["consent"] is None
