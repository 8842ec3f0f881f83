"""Lead to cash across all four services, each a real process, over HTTP and real Kafka.

A campaign is created; a rep enters a lead over HTTP and a partner portal publishes another to
``lead.captured``; the first is qualified and converted with an opportunity; opportunities
creates the account, contact and opportunity; the opportunity moves stage and is won; the
stored documents, the events read back from the topics, reporting's funnel and pipeline and the
campaign's summary all tell the same story."""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass
from decimal import Decimal
from pathlib import Path
from typing import Any

import httpx
import pytest
from crm_contracts import catalog
from crm_contracts.events.leads import LeadCaptured, lead_captured_example
from crm_localinfra.testing import (
    RunningService,
    eventually,
    isolation_key,
    publish_raw,
    read_topic,
    running_services,
    service_env,
)
from crm_runtime.events import encode, make_event
from pymongo import AsyncMongoClient

pytestmark = [pytest.mark.integration, pytest.mark.e2e]

REP = {"id": "rep-1", "name": "Rita Rep"}


@dataclass
class Suite:
    infra: Any
    isolation: str
    services: dict[str, RunningService]
    http: httpx.AsyncClient
    mongo: AsyncMongoClient[dict[str, Any]]

    def url(self, service: str, path: str) -> str:
        return self.services[service].base_url + path

    def topic(self, name: str) -> str:
        return str(service_env(self.infra, "any", isolation=self.isolation)["topic_prefix"]) + name

    def db(self, service: str) -> Any:
        return self.mongo[service_env(self.infra, service, isolation=self.isolation)["mongo_database"]]

    async def ok(self, method: str, service: str, path: str, **kwargs: Any) -> Any:
        response = await self.http.request(method, self.url(service, path), **kwargs)
        assert response.status_code in (200, 201), f"{method} {path}: {response.status_code} {response.text}"
        return response.json()

    async def events(self, name: str, count: int) -> list[dict[str, Any]]:
        records = await read_topic(
            self.infra.kafka_bootstrap, self.topic(name), until=lambda r: len(r) >= count, timeout=60
        )
        return [record.json() for record in records]


@pytest.fixture(scope="module")
async def suite(infra: Any, tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Suite]:
    isolation = isolation_key()
    log_dir: Path = tmp_path_factory.mktemp("e2e-logs")
    names = ["leads", "opportunities", "campaigns", "reporting"]
    async with running_services(infra, names, log_dir=log_dir, isolation=isolation) as services:
        mongo: AsyncMongoClient[dict[str, Any]] = AsyncMongoClient(infra.mongo_url, tz_aware=True)
        async with httpx.AsyncClient(timeout=30) as http:
            yield Suite(infra, isolation, services, http, mongo)
        await mongo.close()


async def test_lead_to_cash_through_every_service(suite: Suite) -> None:
    # Marketing plans a campaign.
    campaign = await suite.ok(
        "POST",
        "campaigns",
        "/campaigns",
        json={
            "campaign_id": "spring-fair",
            "name": "Spring fair",
            "type": "event",
            "purpose": "lead_generation",
            "by": REP,
        },
    )
    assert campaign["id"] == "spring-fair"
    await suite.ok(
        "POST",
        "campaigns",
        "/campaigns/spring-fair/costs",
        json={
            "entry_id": "inv-1",
            "amount": "4000.00",
            "currency": "EUR",
            "incurred_on": "2026-11-01",
            "by": REP,
        },
    )

    # A rep enters a lead over HTTP; a partner portal publishes another to lead.captured.
    web_lead = await suite.ok(
        "POST",
        "leads",
        "/leads",
        json=lead_captured_example() | {"external_id": "web-1", "campaign_id": "spring-fair"},
    )
    partner = LeadCaptured.model_validate(
        lead_captured_example()
        | {
            "source_system": "partner-portal",
            "external_id": "p-7",
            "lead_source": "partner",
            "person": {"first_name": "Grace", "last_name": "Hopper", "email": "grace@navy.example"},
        }
    )
    partner_event = make_event(catalog.LEAD_CAPTURED, partner, source="/partner-portal", subject="p-7")
    await publish_raw(
        suite.infra.kafka_bootstrap, suite.topic("lead.captured"), encode(partner_event), b"p-7"
    )

    async def both_leads_stored() -> bool:
        return await suite.db("leads").leads.count_documents({}) == 2

    await eventually(both_leads_stored, timeout=60)
    listed = await suite.ok("GET", "leads", "/leads", params={"lead_source": "partner"})
    assert [lead["external_id"] for lead in listed["items"]] == ["p-7"]

    # The rep qualifies and converts the web lead with an opportunity.
    lead_id = web_lead["id"]
    await suite.ok("POST", "leads", f"/leads/{lead_id}/qualify", json={"rating": "hot", "by": REP})
    converted = await suite.ok(
        "POST",
        "leads",
        f"/leads/{lead_id}/convert",
        json={
            "by": REP,
            "opportunity": {
                "name": "Engines: 40 looms",
                "amount": "20000.00",
                "currency": "EUR",
                "expected_close_date": "2026-12-15",
            },
        },
    )
    conversion = converted["conversion"]
    opportunity_id = conversion["opportunity_id"]

    # Opportunities creates the account, contact and opportunity from lead.converted.
    async def opportunity_exists() -> Any:
        response = await suite.http.get(suite.url("opportunities", f"/opportunities/{opportunity_id}"))
        return response.json() if response.status_code == 200 else None

    opportunity = await eventually(opportunity_exists, timeout=60)
    assert opportunity["stage_id"] == "prospecting" and opportunity["probability"] == 10
    assert Decimal(opportunity["amount"]) == Decimal("20000.00")
    assert (opportunity["lead_id"], opportunity["campaign_id"]) == (lead_id, "spring-fair")
    account = await suite.ok("GET", "opportunities", f"/accounts/{conversion['account_id']}")
    assert account["domain"] == "engines.example"
    contact = await suite.ok("GET", "opportunities", f"/contacts/{conversion['contact_id']}")
    assert contact["account_id"] == conversion["account_id"]

    # The rep moves it to Proposal: reporting's pipeline shows it weighted at 50 %.
    moved = await suite.ok(
        "POST",
        "opportunities",
        f"/opportunities/{opportunity_id}/stage",
        json={"stage_id": "proposal", "by": REP},
    )
    assert moved["stage_id"] == "proposal"

    async def pipeline_shows_proposal() -> Any:
        report = await suite.ok("GET", "reporting", "/reports/pipeline")
        rows = [r for r in report["rows"] if r["stage_id"] == "proposal"]
        return report if rows and rows[0]["count"] == 1 else None

    pipeline = await eventually(pipeline_shows_proposal, timeout=60)
    [row] = pipeline["rows"]
    assert (row["pipeline_id"], row["currency"], row["count"]) == ("default", "EUR", 1)
    assert (Decimal(row["amount"]), Decimal(row["weighted_amount"])) == (
        Decimal("20000.00"),
        Decimal("10000.00"),
    )
    assert pipeline["as_of"] is not None

    # An admin renames the stage: reporting follows the pipeline's definition.
    definition = await suite.ok("GET", "opportunities", "/pipelines/default")
    stages = [
        {key: stage[key] for key in ("id", "name", "kind", "probability", "forecast_category")}
        | ({"name": "Solution proposed"} if stage["id"] == "proposal" else {})
        for stage in definition["stages"]
    ]
    await suite.ok(
        "PUT",
        "opportunities",
        "/pipelines/default",
        json={
            "name": definition["name"],
            "stages": stages,
            "loss_reasons": definition["loss_reasons"],
            "expected_version": definition["version"],
        },
    )

    async def stage_renamed() -> Any:
        report = await suite.ok("GET", "reporting", "/reports/pipeline")
        names = [r["stage_name"] for r in report["rows"] if r["stage_id"] == "proposal"]
        return names == ["Solution proposed"] or None

    await eventually(stage_renamed, timeout=60)

    # Won: the funnel is complete and the pipeline is empty.
    await suite.ok(
        "POST",
        "opportunities",
        f"/opportunities/{opportunity_id}/stage",
        json={"stage_id": "closed_won", "by": REP},
    )

    async def funnel_complete() -> Any:
        report = await suite.ok("GET", "reporting", "/reports/funnel")
        return report if report["rows"] and report["rows"][0]["won"] == 1 else None

    funnel = await eventually(funnel_complete, timeout=60)
    [step] = funnel["rows"]
    assert (step["captured"], step["qualified"], step["converted"], step["opportunities"], step["won"]) == (
        2,
        1,
        1,
        1,
        1,
    )
    assert step["overall_rate"] == "0.5000"
    by_source = await suite.ok("GET", "reporting", "/reports/funnel", params={"group_by": "lead_source"})
    assert {r["group"]: r["captured"] for r in by_source["rows"]} == {"web": 1, "partner": 1}
    assert (await suite.ok("GET", "reporting", "/reports/pipeline"))["rows"] == []
    csv = await suite.http.get(suite.url("reporting", "/reports/funnel"), params={"format": "csv"})
    assert csv.headers["content-type"].startswith("text/csv") and csv.text.splitlines()[0].startswith(
        "as_of,"
    )

    # The campaign knows its member, the conversion and the won revenue.
    async def campaign_counts_the_win() -> Any:
        summary = await suite.ok("GET", "campaigns", "/campaigns/spring-fair/summary")
        return summary if summary["won_opportunities"] == 1 else None

    summary = await eventually(campaign_counts_the_win, timeout=60)
    assert (summary["members"], summary["leads"], summary["converted_leads"]) == (1, 1, 1)
    assert Decimal(summary["won_revenue"]) == Decimal("20000.00")
    assert (Decimal(summary["actual_cost"]), Decimal(summary["roi"])) == (Decimal("4000.00"), Decimal("4"))

    # Reporting's campaign ROI tells the same numbers as the campaign's own summary.
    shared = (
        "members",
        "leads",
        "converted_leads",
        "opportunities",
        "won_opportunities",
        "lost_opportunities",
    )
    money = ("won_revenue", "actual_cost", "cost_per_lead", "roi")

    async def roi_matches_the_summary() -> Any:
        report = await suite.ok(
            "GET", "reporting", "/reports/campaign-roi", params={"campaign_id": "spring-fair"}
        )
        rows = report["rows"]
        if not rows or any(rows[0][key] != summary[key] for key in shared):
            return None
        return rows[0] if all(Decimal(rows[0][k]) == Decimal(summary[k]) for k in money) else None

    roi_row = await eventually(roi_matches_the_summary, timeout=60)
    assert roi_row["name"] == "Spring fair"

    # The events, read back from the topics, carry the same ids and figures.
    created = await suite.events("lead.created", 2)
    assert sorted(e["data"]["lead"]["external_id"] for e in created) == ["p-7", "web-1"]
    [lead_converted] = await suite.events("lead.converted", 1)
    data = lead_converted["data"]
    assert (data["account"]["account_id"], data["contact"]["contact_id"]) == (
        conversion["account_id"],
        conversion["contact_id"],
    )
    assert (data["lead_source"], data["campaign_id"]) == ("web", "spring-fair")
    changes = await suite.events("opportunity.stage_changed", 2)
    assert [(c["data"]["previous_stage_id"], c["data"]["stage_id"]) for c in changes] == [
        ("prospecting", "proposal"),
        ("proposal", "closed_won"),
    ]
    assert [c["data"]["probability"] for c in changes] == [50, 100]
    assert all(c["subject"] == opportunity_id for c in changes)
    assert int(changes[1]["sequence"]) > int(changes[0]["sequence"])
    [closed] = await suite.events("opportunity.closed", 1)
    assert closed["data"]["won"] is True and closed["data"]["amount"] == "20000.00"
    assert len(await suite.events("account.created", 1)) == 1
    assert len(await suite.events("contact.created", 1)) == 1
    assert len(await suite.events("opportunity.created", 1)) == 1
    [campaign_created] = await suite.events("campaign.created", 1)
    assert campaign_created["subject"] == "spring-fair"

    # And the stored records agree.
    stored_opportunity = await suite.db("opportunities").opportunities.find_one({"_id": opportunity_id})
    assert stored_opportunity is not None and stored_opportunity["stage_id"] == "closed_won"
    stored_lead = await suite.db("leads").leads.find_one({"_id": lead_id})
    assert stored_lead is not None and stored_lead["status"] == "converted"
