"""A campaign from planning to its summary, with the leads and opportunities services running
beside it (in-process, on the same real Kafka and MongoDB-compatible server, each on its own
database): leads captured through the campaign over HTTP, one re-captured through another
campaign, converted, their opportunities won and lost, a member's status changed by hand, and
the campaign's summary, members and touches telling the same story."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import AsyncExitStack
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

import httpx
import pytest
from crm_campaigns.bootstrap import CampaignsSettings
from crm_campaigns.bootstrap import create_app as campaigns_app
from crm_leads.bootstrap import LeadsSettings
from crm_leads.bootstrap import create_app as leads_app
from crm_localinfra.testing import eventually, isolation_key, service_client, service_env
from crm_opportunities.bootstrap import OpportunitiesSettings
from crm_opportunities.bootstrap import create_app as opportunities_app

pytestmark = [pytest.mark.integration, pytest.mark.e2e]

REP = {"id": "rep-7", "name": "Grace"}


@dataclass
class Suite:
    leads: httpx.AsyncClient
    opportunities: httpx.AsyncClient
    campaigns: httpx.AsyncClient


async def ok(client: httpx.AsyncClient, method: str, path: str, **kwargs: Any) -> Any:
    response = await client.request(method, path, **kwargs)
    assert response.status_code in (200, 201), f"{method} {path}: {response.status_code} {response.text}"
    return response.json()


@pytest.fixture(scope="module")
async def suite(infra: Any) -> AsyncIterator[Suite]:
    isolation = isolation_key()  # one topic prefix for the three services, so they talk
    async with AsyncExitStack() as stack:
        leads = await stack.enter_async_context(
            service_client(leads_app(LeadsSettings(**service_env(infra, "leads", isolation=isolation))))
        )
        opportunities = await stack.enter_async_context(
            service_client(
                opportunities_app(
                    OpportunitiesSettings(**service_env(infra, "opportunities", isolation=isolation))
                )
            )
        )
        campaigns = await stack.enter_async_context(
            service_client(
                campaigns_app(CampaignsSettings(**service_env(infra, "campaigns", isolation=isolation)))
            )
        )
        yield Suite(leads, opportunities, campaigns)


def capture(external_id: str, email: str, campaign_id: str, captured_at: str) -> dict[str, Any]:
    return {
        "source_system": "webforms",
        "external_id": external_id,
        "person": {"first_name": external_id.title(), "email": email},
        "company": {"name": f"{external_id.title()} Ltd"},
        "lead_source": "web",
        "campaign_id": campaign_id,
        "captured_at": captured_at,
    }


async def test_a_campaign_from_planning_through_captured_converted_and_won_leads_to_its_summary(
    suite: Suite,
) -> None:
    # Marketing plans a trade fair and a webinar, and books the fair's stand.
    for campaign_id, kind in [("fair-26", "trade_show"), ("webinar-26", "webinar")]:
        await ok(
            suite.campaigns,
            "POST",
            "/campaigns",
            json={
                "campaign_id": campaign_id,
                "name": campaign_id,
                "type": kind,
                "budgeted_cost": "5000.00",
                "by": REP,
            },
        )
    await ok(suite.campaigns, "POST", "/campaigns/fair-26/status", json={"status": "active", "by": REP})
    cost = {
        "entry_id": "inv-1",
        "amount": "2000.00",
        "currency": "EUR",
        "incurred_on": "2026-10-01",
        "by": REP,
    }
    await ok(suite.campaigns, "POST", "/campaigns/fair-26/costs", json=cost)

    # Four visitors leave their details: three at the fair, one on the webinar's form.
    ada = await ok(
        suite.leads,
        "POST",
        "/leads",
        json=capture("ada", "ada@engines.example", "fair-26", "2026-10-02T10:00:00Z"),
    )
    bob = await ok(
        suite.leads,
        "POST",
        "/leads",
        json=capture("bob", "bob@looms.example", "fair-26", "2026-10-02T11:00:00Z"),
    )
    cyd = await ok(
        suite.leads,
        "POST",
        "/leads",
        json=capture("cyd", "cyd@gears.example", "fair-26", "2026-10-02T12:00:00Z"),
    )
    dee = await ok(
        suite.leads,
        "POST",
        "/leads",
        json=capture("dee", "dee@cogs.example", "webinar-26", "2026-10-05T09:00:00Z"),
    )
    # Ada registers for the webinar later: the same capture key, another campaign.
    again = await suite.leads.post(
        "/leads", json=capture("ada", "ada@engines.example", "webinar-26", "2026-10-06T09:00:00Z")
    )
    assert again.status_code == 200, again.text

    # Sales converts Ada and Bob with opportunities; Cyd stays a lead.
    opportunity_ids = {}
    for lead, amount in [(ada, "20000.00"), (bob, "8000.00")]:
        await ok(suite.leads, "POST", f"/leads/{lead['id']}/qualify", json={"rating": "hot", "by": REP})
        converted = await ok(
            suite.leads,
            "POST",
            f"/leads/{lead['id']}/convert",
            json={
                "by": REP,
                "opportunity": {"name": f"Deal {lead['id'][:6]}", "amount": amount, "currency": "EUR"},
            },
        )
        opportunity_ids[lead["id"]] = converted["conversion"]["opportunity_id"]

    async def opened(opportunity_id: str) -> Any:
        response = await suite.opportunities.get(f"/opportunities/{opportunity_id}")
        return response.json() if response.status_code == 200 else None

    ada_deal = await eventually(lambda: opened(opportunity_ids[ada["id"]]), timeout=60)
    # The opportunity names the lead's campaign at conversion; first touch credits the fair.
    assert ada_deal["campaign_id"] == "webinar-26"
    await eventually(lambda: opened(opportunity_ids[bob["id"]]), timeout=60)
    await ok(
        suite.opportunities,
        "POST",
        f"/opportunities/{opportunity_ids[ada['id']]}/stage",
        json={"stage_id": "closed_won", "by": REP},
    )
    await ok(
        suite.opportunities,
        "POST",
        f"/opportunities/{opportunity_ids[bob['id']]}/stage",
        json={"stage_id": "closed_lost", "loss_reason": "price", "by": REP},
    )

    # Dee attended the webinar: marketing records it by hand.
    async def dee_is_a_member() -> bool:
        return (
            await suite.campaigns.get(f"/campaigns/webinar-26/members/lead:{dee['id']}")
        ).status_code == 200

    await eventually(dee_is_a_member, timeout=60)
    attended = await ok(
        suite.campaigns,
        "POST",
        f"/campaigns/webinar-26/members/lead:{dee['id']}/status",
        json={"status": "attended", "by": REP},
    )
    assert [h["status"] for h in attended["status_history"]] == ["responded", "attended"]

    async def fair_closed_both() -> Any:
        summary = await ok(suite.campaigns, "GET", "/campaigns/fair-26/summary")
        return summary if summary["won_opportunities"] == 1 and summary["lost_opportunities"] == 1 else None

    fair = await eventually(fair_closed_both, timeout=90)
    assert (fair["members"], fair["responses"], Decimal(fair["response_rate"])) == (3, 3, Decimal("100.00"))
    assert (fair["leads"], fair["converted_leads"], Decimal(fair["conversion_rate"])) == (
        3,
        2,
        Decimal("66.67"),
    )
    assert (fair["opportunities"], fair["open_opportunities"]) == (2, 0)
    assert Decimal(fair["won_revenue"]) == Decimal("20000.00")
    assert Decimal(fair["actual_cost"]) == Decimal("2000.00")
    assert Decimal(fair["budget_remaining"]) == Decimal("3000.00")
    assert Decimal(fair["cost_per_lead"]) == Decimal("666.67")
    assert Decimal(fair["roi"]) == Decimal("9.0000")  # (20000 - 2000) / 2000

    async def webinar_reached_ada() -> Any:
        summary = await ok(suite.campaigns, "GET", "/campaigns/webinar-26/summary")
        return summary if summary["members"] == 2 else None

    webinar = await eventually(webinar_reached_ada, timeout=60)
    assert (webinar["responses"], webinar["leads"], webinar["converted_leads"]) == (2, 1, 0)
    assert (webinar["opportunities"], Decimal(webinar["won_revenue"]), webinar["roi"]) == (
        0,
        Decimal("0.00"),
        None,
    )

    touches = await ok(suite.campaigns, "GET", f"/leads/{ada['id']}/touches")
    assert (touches["first_touch_campaign_id"], touches["last_touch_campaign_id"]) == (
        "fair-26",
        "webinar-26",
    )
    assert [t["campaign_id"] for t in touches["touches"]] == ["fair-26", "webinar-26"]
    converted = await ok(suite.campaigns, "GET", "/campaigns/fair-26/members", params={"converted": "true"})
    assert sorted(m["lead_id"] for m in converted["items"]) == sorted([ada["id"], bob["id"]])
    assert {m["lead_id"]: m["first_touch"] for m in converted["items"]} == {ada["id"]: True, bob["id"]: True}
    assert cyd["id"] in [
        m["lead_id"] for m in (await ok(suite.campaigns, "GET", "/campaigns/fair-26/members"))["items"]
    ]


async def test_a_duplicate_merged_in_the_leads_service_becomes_its_survivors_campaign_member(
    suite: Suite,
) -> None:
    """The same person came through the expo and, later, the webinar's form as another lead;
    sales merges them and converts the survivor. Campaigns then has one member, the survivor,
    in both campaigns, credited to the expo (its first touch) and converted once."""
    for campaign_id in ("expo-m26", "webinar-m26"):
        body = {"campaign_id": campaign_id, "name": campaign_id, "type": "webinar", "by": REP}
        await ok(suite.campaigns, "POST", "/campaigns", json=body)
    duplicate = await ok(
        suite.leads,
        "POST",
        "/leads",
        json=capture("eve-expo", "eve@orreries.example", "expo-m26", "2026-10-02T10:00:00Z"),
    )
    survivor = await ok(
        suite.leads,
        "POST",
        "/leads",
        json=capture("eve-form", "eve@orreries.example", "webinar-m26", "2026-10-09T10:00:00Z"),
    )

    async def both_members() -> bool:
        expo = await suite.campaigns.get(f"/campaigns/expo-m26/members/lead:{duplicate['id']}")
        webinar = await suite.campaigns.get(f"/campaigns/webinar-m26/members/lead:{survivor['id']}")
        return expo.status_code == webinar.status_code == 200

    await eventually(both_members, timeout=60)
    await ok(
        suite.leads,
        "POST",
        f"/leads/{survivor['id']}/merge",
        json={"duplicate_id": duplicate["id"], "by": REP},
    )
    await ok(suite.leads, "POST", f"/leads/{survivor['id']}/qualify", json={"rating": "hot", "by": REP})
    await ok(suite.leads, "POST", f"/leads/{survivor['id']}/convert", json={"by": REP})

    async def expo_counts_the_survivor() -> Any:
        summary = await ok(suite.campaigns, "GET", "/campaigns/expo-m26/summary")
        return summary if (summary["members"], summary["converted_leads"]) == (1, 1) else None

    expo = await eventually(expo_counts_the_survivor, timeout=90)
    assert (expo["leads"], Decimal(expo["conversion_rate"])) == (1, Decimal("100.00"))
    [member] = (await ok(suite.campaigns, "GET", "/campaigns/expo-m26/members"))["items"]
    assert (member["lead_id"], member["merged_from"], member["first_touch"]) == (
        survivor["id"],
        [duplicate["id"]],
        True,
    )
    webinar = await ok(suite.campaigns, "GET", "/campaigns/webinar-m26/summary")
    assert (webinar["members"], webinar["leads"]) == (1, 0)  # the survivor, credited to the expo
    touches = await ok(suite.campaigns, "GET", f"/leads/{survivor['id']}/touches")
    assert (touches["first_touch_campaign_id"], touches["last_touch_campaign_id"]) == (
        "expo-m26",
        "webinar-m26",
    )

    # The duplicate cannot be added by hand any more: the answer names the survivor.
    refused = await suite.campaigns.post(
        "/campaigns/webinar-m26/members", json={"lead_id": duplicate["id"], "by": REP}
    )
    assert refused.status_code == 422 and refused.json()["fields"][0]["field"] == "lead_id"
    assert survivor["id"] in refused.json()["message"]
