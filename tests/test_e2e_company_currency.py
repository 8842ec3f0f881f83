"""An organisation working in US dollars, across all four services as real processes over HTTP
and real Kafka: each is started with CRM_COMPANY_CURRENCY=USD, nothing names a currency, and
the campaign, the product, the opportunities (opened, converted from a lead, imported) and
reporting's money views are all in USD (a view says which currency it used). The same story
checks over HTTP that each rate name of the reports has one meaning: the funnel's
qualified_to_converted_rate (converted / qualified) and the lead-source and campaign-ROI
lead_conversion_rate (converted / leads) differ, and the old converted_rate stays as their
deprecated alias, in JSON and CSV."""

from __future__ import annotations

import csv
import io
import json
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from crm_contracts.events.leads import lead_captured_example
from crm_localinfra.testing import RunningService, eventually, isolation_key, running_services
from crm_opportunities.imports import imported_id

pytestmark = [pytest.mark.integration, pytest.mark.e2e]

REP = {"id": "rep-1", "name": "Rita Rep"}
CAMPAIGN = "usd-webinar"


@dataclass
class Suite:
    services: dict[str, RunningService]
    http: httpx.AsyncClient

    async def ok(self, method: str, service: str, path: str, **kwargs: Any) -> Any:
        response = await self.http.request(method, self.services[service].base_url + path, **kwargs)
        answered = f"{method} {path}: {response.status_code} {response.text}"
        assert response.status_code in (200, 201, 202), answered
        return response.json()

    async def csv(self, path: str, **params: str) -> list[dict[str, str]]:
        response = await self.http.get(
            self.services["reporting"].base_url + path, params={**params, "format": "csv"}
        )
        assert response.status_code == 200, response.text
        return list(csv.DictReader(io.StringIO(response.text)))


@dataclass
class Story:
    """What the USD organisation did, as the services answered it."""

    campaign: dict[str, Any]
    product: dict[str, Any]
    converted_opportunity: dict[str, Any]
    direct_opportunity: dict[str, Any]


@pytest.fixture(scope="module")
async def suite(infra: Any, tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Suite]:
    log_dir: Path = tmp_path_factory.mktemp("company-currency-logs")
    names = ["leads", "opportunities", "campaigns", "reporting"]
    async with running_services(
        infra,
        names,
        log_dir=log_dir,
        isolation=isolation_key(),
        extra_env={"CRM_COMPANY_CURRENCY": "USD"},
    ) as services:
        async with httpx.AsyncClient(timeout=30) as http:
            yield Suite(services, http)


def web_lead(n: int) -> dict[str, Any]:
    return lead_captured_example() | {
        "external_id": f"usd-{n}",
        "campaign_id": CAMPAIGN,
        "person": {"first_name": f"Lead{n}", "last_name": "Buyer", "email": f"buyer{n}@co{n}.example"},
        "company": {"name": f"Company {n}", "website": f"https://co{n}.example"},
    }


@pytest.fixture(scope="module")
async def story(suite: Suite) -> Story:
    """Three web leads of a campaign, two qualified, one converted into an opportunity; a
    second opportunity opened directly with a catalogue product; both won. No currency named."""
    campaign = await suite.ok(
        "POST",
        "campaigns",
        "/campaigns",
        json={"campaign_id": CAMPAIGN, "name": "Webinar", "type": "webinar", "by": REP},
    )
    leads = [await suite.ok("POST", "leads", "/leads", json=web_lead(n)) for n in range(3)]
    for lead in leads[:2]:
        await suite.ok("POST", "leads", f"/leads/{lead['id']}/qualify", json={"rating": "hot", "by": REP})
    converted = await suite.ok(
        "POST",
        "leads",
        f"/leads/{leads[0]['id']}/convert",
        json={"by": REP, "opportunity": {"name": "Co 0: rollout", "amount": "20000.00"}},
    )
    opportunity_id = converted["conversion"]["opportunity_id"]

    async def opportunity_opened() -> Any:
        response = await suite.http.get(
            suite.services["opportunities"].base_url + f"/opportunities/{opportunity_id}"
        )
        return response.json() if response.status_code == 200 else None

    converted_opportunity = await eventually(opportunity_opened, timeout=60)
    product = await suite.ok(
        "POST", "opportunities", "/products", json={"name": "Seat", "list_price": "500.00"}
    )
    direct = await suite.ok(
        "POST",
        "opportunities",
        "/opportunities",
        json={
            "name": "Co 0: seats",
            "account_id": converted["conversion"]["account_id"],
            "amount": "5000.00",
            "by": REP,
        },
    )
    for won in (opportunity_id, direct["id"]):
        await suite.ok(
            "POST", "opportunities", f"/opportunities/{won}/stage", json={"stage_id": "closed_won", "by": REP}
        )
    return Story(campaign, product, converted_opportunity, direct)


async def test_records_that_name_no_currency_get_the_company_currency_in_every_service(story: Story) -> None:
    assert story.campaign["currency"] == "USD"
    assert story.product["currency"] == "USD"
    assert story.converted_opportunity["currency"] == "USD"  # from the lead's conversion
    assert story.direct_opportunity["currency"] == "USD"


async def test_an_imported_opportunity_row_without_a_currency_is_in_the_company_currency(
    suite: Suite, story: Story
) -> None:
    row = {
        "external_id": "legacy-1",
        "name": "Migrated deal",
        "account_id": story.direct_opportunity["account_id"],
        "amount": "700.00",
    }
    job = await suite.ok(
        "POST",
        "opportunities",
        "/imports/opportunities",
        params={"source_system": "legacy"},
        content=json.dumps(row).encode(),
        headers={"content-type": "application/x-ndjson"},
    )

    async def applied() -> bool:
        state = await suite.ok("GET", "opportunities", f"/imports/{job['id']}")
        assert state["state"] in ("queued", "running", "done"), state
        return bool(state["state"] == "done" and state["applied"] == 1)

    await eventually(applied, timeout=120)
    imported = {"id": imported_id("opportunity", "legacy", "legacy-1")}
    opportunity = await suite.ok("GET", "opportunities", f"/opportunities/{imported['id']}")
    assert (opportunity["currency"], opportunity["amount"]) == ("USD", "700.00")


async def test_a_usd_organisation_sees_its_won_deals_in_win_loss_without_naming_a_currency(
    suite: Suite, story: Story
) -> None:
    async def both_wins_reported() -> Any:
        report = await suite.ok("GET", "reporting", "/reports/win-loss")
        return report if report["rows"] and report["rows"][0]["won"] == 2 else None

    report = await eventually(both_wins_reported, timeout=60)
    assert report["filters"]["currency"] == "USD"  # the view says which currency it used
    [row] = report["rows"]
    assert (row["currency"], row["won_revenue"], row["average_deal_size"]) == ("USD", "25000.00", "12500.00")
    assert row["won_revenue_in_other_currencies"] == {}
    [csv_row] = await suite.csv("/reports/win-loss")
    assert (csv_row["currency"], csv_row["won_revenue"]) == ("USD", "25000.00")
    # Another currency is still a request away, and then the USD revenue is listed apart.
    euros = await suite.ok("GET", "reporting", "/reports/win-loss", params={"currency": "EUR"})
    assert euros["filters"]["currency"] == "EUR"
    assert (euros["rows"][0]["won_revenue"], euros["rows"][0]["won_revenue_in_other_currencies"]) == (
        "0.00",
        {"USD": "25000.00"},
    )

    async def web_source_won() -> Any:
        report = await suite.ok("GET", "reporting", "/reports/lead-sources")
        rows = [r for r in report["rows"] if r["lead_source"] == "web"]
        return report if rows and rows[0]["won"] == 1 else None

    sources = await eventually(web_source_won, timeout=60)
    assert sources["filters"]["currency"] == "USD"
    [web] = [r for r in sources["rows"] if r["lead_source"] == "web"]
    assert (web["currency"], web["won_revenue"]) == ("USD", "20000.00")

    async def campaign_won_revenue() -> Any:
        report = await suite.ok("GET", "reporting", "/reports/campaign-roi", params={"campaign_id": CAMPAIGN})
        return report["rows"][0] if report["rows"] and report["rows"][0]["won_opportunities"] == 1 else None

    roi = await eventually(campaign_won_revenue, timeout=60)
    assert (roi["currency"], roi["won_revenue"], roi["won_revenue_in_other_currencies"]) == (
        "USD",
        "20000.00",
        {},
    )


async def test_each_rate_name_has_one_meaning_in_the_reports_over_http(suite: Suite, story: Story) -> None:
    async def funnel_converted() -> Any:
        report = await suite.ok("GET", "reporting", "/reports/funnel")
        return report["rows"][0] if report["rows"][0]["converted"] == 1 else None

    funnel = await eventually(funnel_converted, timeout=60)
    assert (funnel["captured"], funnel["qualified"], funnel["converted"]) == (3, 2, 1)
    assert funnel["qualified_to_converted_rate"] == funnel["converted_rate"] == "0.5000"  # 1 / 2

    async def web_source_converted() -> Any:
        report = await suite.ok("GET", "reporting", "/reports/lead-sources")
        rows = [r for r in report["rows"] if r["lead_source"] == "web" and r["converted"] == 1]
        return rows[0] if rows else None

    web = await eventually(web_source_converted, timeout=60)
    assert (web["leads"], web["qualified"], web["converted"]) == (3, 2, 1)
    assert web["lead_conversion_rate"] == web["converted_rate"] == "0.3333"  # 1 / 3
    assert web["qualified_rate"] == "0.6667"

    async def campaign_converted() -> Any:
        report = await suite.ok("GET", "reporting", "/reports/campaign-roi", params={"campaign_id": CAMPAIGN})
        return report["rows"][0] if report["rows"] and report["rows"][0]["converted_leads"] == 1 else None

    roi = await eventually(campaign_converted, timeout=60)
    assert (roi["leads"], roi["lead_conversion_rate"], roi["conversion_rate"]) == (3, "0.3333", "33.33")

    [funnel_csv] = await suite.csv("/reports/funnel")
    assert funnel_csv["qualified_to_converted_rate"] == funnel_csv["converted_rate"] == "0.5000"
    [web_csv] = [r for r in await suite.csv("/reports/lead-sources") if r["lead_source"] == "web"]
    assert web_csv["lead_conversion_rate"] == web_csv["converted_rate"] == "0.3333"
