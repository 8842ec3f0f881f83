"""The campaigns service against real Kafka and a real MongoDB-compatible server: campaigns over
HTTP with their ``campaign.created`` event, refused input, the cost ledger, and membership,
touches and attribution from lead and opportunity events that arrive duplicated and out of
order."""

from __future__ import annotations

import json
import re
import uuid
from collections import Counter
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

import httpx
import pytest
from crm_campaigns.bootstrap import CampaignsSettings, create_app
from crm_contracts import catalog
from crm_contracts.catalog import EventSpec
from crm_contracts.events.common import Actor
from crm_contracts.events.leads import (
    Company,
    ConvertedAccount,
    ConvertedContact,
    ConvertedOpportunity,
    LeadConverted,
    LeadCreated,
    LeadMerged,
    LeadOrigin,
    LeadSnapshot,
    LeadSource,
    LeadStatus,
    LeadUpdated,
    Person,
)
from crm_contracts.events.opportunities import (
    ForecastCategory,
    OpportunityClosed,
    OpportunityCreated,
    OpportunityFigures,
    StageKind,
)
from crm_localinfra.testing import (
    eventually,
    isolation_key,
    publish_raw,
    read_topic,
    service_client,
    service_env,
)
from crm_runtime import ServiceRuntime
from crm_runtime.events import decode, encode, make_event

pytestmark = pytest.mark.integration

CAPTURED = datetime(2026, 11, 2, 9, 30, tzinfo=UTC)
REP = {"id": "rep-7", "name": "Grace"}


@dataclass
class Service:
    http: httpx.AsyncClient
    settings: CampaignsSettings
    bootstrap: str

    def topic(self, name: str) -> str:
        return self.settings.topic(name)

    async def publish(self, spec: EventSpec[Any], event: Any) -> None:
        await publish_raw(self.bootstrap, self.topic(spec.topic), encode(event), key=event.subject.encode())

    async def publish_applied(self, spec: EventSpec[Any], event: Any) -> None:
        """Publish one event and wait until the service has consumed it."""

        async def consumed() -> float:
            return await self.metric("crm_events_processed", spec.topic) + await self.metric(
                "crm_events_duplicate", spec.topic
            )

        before = await consumed()
        await self.publish(spec, event)

        async def one_more() -> bool:
            return await consumed() == before + 1

        await eventually(one_more, timeout=60)

    async def applied(self, processed: dict[str, int], duplicates: dict[str, int] | None = None) -> None:
        """Wait until the service has consumed exactly this many events per topic."""
        wanted = [("crm_events_processed", topic, n) for topic, n in processed.items()] + [
            ("crm_events_duplicate", topic, n) for topic, n in (duplicates or {}).items()
        ]

        async def reached() -> bool:
            counts = [(name, topic, await self.metric(name, topic)) for name, topic, _ in wanted]
            assert all(seen <= n for (_, _, seen), (_, _, n) in zip(counts, wanted, strict=True)), counts
            return counts == wanted

        await eventually(reached, timeout=60)

    async def metric(self, name: str, topic: str) -> float:
        text = (await self.http.get("/metrics")).text
        found = re.search(rf'^{name}_total\{{topic="{re.escape(topic)}"\}} (\S+)$', text, re.M)
        return float(found.group(1)) if found else 0.0


@asynccontextmanager
async def running_service(infra: Any) -> AsyncIterator[Service]:
    """The service on its own topics and database; on exit, every committed event was published."""
    settings = CampaignsSettings(**service_env(infra, "campaigns", isolation=isolation_key()))
    app = create_app(settings)
    async with service_client(app) as http:
        yield Service(http, settings, infra.kafka_bootstrap)

        runtime: ServiceRuntime = app.state.runtime

        async def outbox_drained() -> bool:
            return await runtime.outbox.pending() == 0

        await eventually(outbox_drained, timeout=30)


@pytest.fixture(scope="module")
async def shared(infra: Any) -> AsyncIterator[Service]:
    """One service for the HTTP tests of this module: each works on campaigns of its own."""
    async with running_service(infra) as service:
        yield service


@pytest.fixture
async def fresh(infra: Any) -> AsyncIterator[Service]:
    """A service of its own, for tests that count everything it consumed."""
    async with running_service(infra) as service:
        yield service


def new_campaign(**overrides: Any) -> dict[str, Any]:
    body: dict[str, Any] = {
        "name": "Autumn webinar series",
        "type": "webinar",
        "purpose": "lead_generation",
        "start_date": "2026-10-01",
        "end_date": "2026-11-30",
        "owner_id": "rep-7",
        "budgeted_cost": "12000.00",
        "expected_revenue": "90000.00",
        "expected_response": "2.50",
        "currency": "EUR",
        "by": REP,
    }
    body.update(overrides)
    return body


def lead_snapshot(lead_id: str, campaign_id: str | None, captured_at: datetime = CAPTURED) -> LeadSnapshot:
    return LeadSnapshot(
        lead_id=lead_id,
        status=LeadStatus.NEW,
        source_system="webforms",
        external_id=f"form-{lead_id}",
        person=Person(first_name="Ada", email=f"{lead_id}@engines.example"),
        company=Company(name="Analytical Engines"),
        lead_source=LeadSource.WEB,
        origin=LeadOrigin.LANDING_PAGE_FORM,
        campaign_id=campaign_id,
        captured_at=captured_at,
    )


def lead_created(lead_id: str, campaign_id: str | None, captured_at: datetime = CAPTURED) -> Any:
    lead = lead_snapshot(lead_id, campaign_id, captured_at)
    return make_event(
        catalog.LEAD_CREATED, LeadCreated(lead=lead), source="/crm/leads", subject=lead_id, version=1
    )


def lead_updated(lead_id: str, campaign_id: str | None, captured_at: datetime, version: int) -> Any:
    """The lead re-captured (through ``campaign_id``) at ``captured_at``."""
    data = LeadUpdated(
        lead=lead_snapshot(lead_id, campaign_id, captured_at), changed_fields=["campaign_id", "captured_at"]
    )
    return make_event(catalog.LEAD_UPDATED, data, source="/crm/leads", subject=lead_id, version=version)


def lead_converted(
    lead_id: str,
    campaign_id: str | None,
    opportunity_id: str | None = None,
    captured_at: datetime = CAPTURED,
    amount: str = "10000.00",
) -> Any:
    opportunity = (
        ConvertedOpportunity(opportunity_id=opportunity_id, name="Engines deal", amount=Decimal(amount))
        if opportunity_id
        else None
    )
    data = LeadConverted(
        lead_id=lead_id,
        account=ConvertedAccount(account_id=f"acc-{lead_id}", is_new=True, name="Analytical Engines"),
        contact=ConvertedContact(contact_id=f"con-{lead_id}", is_new=True, first_name="Ada"),
        opportunity=opportunity,
        lead_source=LeadSource.WEB,
        campaign_id=campaign_id,
        converted_at=datetime(2026, 11, 10, tzinfo=UTC),
        converted_by=Actor(id="rep-7"),
        captured_at=captured_at,
    )
    return make_event(catalog.LEAD_CONVERTED, data, source="/crm/leads", subject=lead_id, version=3)


def opportunity(
    opportunity_id: str, *, campaign_id: str | None, lead_id: str | None, amount: str = "10000.00"
) -> OpportunityFigures:
    return OpportunityFigures(
        opportunity_id=opportunity_id,
        name="Engines deal",
        account_id="acc-1",
        pipeline_id="default",
        stage_id="prospecting",
        stage_name="Prospecting",
        stage_kind=StageKind.OPEN,
        probability=10,
        forecast_category=ForecastCategory.PIPELINE,
        amount=Decimal(amount),
        currency="EUR",
        lead_id=lead_id,
        campaign_id=campaign_id,
        created_at=CAPTURED,
    )


def opportunity_closed(figures: OpportunityFigures, *, won: bool, amount: str, version: int) -> Any:
    data = OpportunityClosed(
        opportunity_id=figures.opportunity_id,
        won=won,
        amount=Decimal(amount),
        currency="EUR",
        loss_reason=None if won else "price",
        closed_at=datetime(2026, 12, 1, tzinfo=UTC),
        closed_by=Actor(id="rep-7"),
        opportunity=figures,
    )
    return make_event(
        catalog.OPPORTUNITY_CLOSED,
        data,
        source="/crm/opportunities",
        subject=figures.opportunity_id,
        version=version,
    )


async def test_creating_a_campaign_stores_it_and_emits_campaign_created(shared: Service) -> None:
    created = await shared.http.post("/campaigns", json=new_campaign())
    assert created.status_code == 201, created.text
    body = created.json()
    campaign_id = body["id"]
    assert body["status"] == "planned" and body["version"] == 1
    assert Decimal(body["budgeted_cost"]) == Decimal("12000.00") and Decimal(body["actual_cost"]) == 0

    stored = await shared.http.get(f"/campaigns/{campaign_id}")
    assert stored.status_code == 200
    assert stored.json() == body

    records = await read_topic(
        shared.bootstrap,
        shared.topic(catalog.CAMPAIGN_CREATED.topic),
        until=lambda rs: any(r.key == campaign_id.encode() for r in rs),
    )
    (record,) = [r for r in records if r.key == campaign_id.encode()]
    envelope = record.json()
    assert envelope["specversion"] == "1.0"
    assert envelope["type"] == catalog.CAMPAIGN_CREATED.type == "com.crmsuite.campaign.created.v1"
    assert envelope["dataschema"] == catalog.CAMPAIGN_CREATED.dataschema
    assert envelope["source"] == "/crm/campaigns"
    assert envelope["subject"] == campaign_id
    assert envelope["datacontenttype"] == "application/json"
    assert (envelope["sequence"], envelope["sequencetype"]) == ("1", "Integer")
    assert record.headers["ce_id"].decode() == envelope["id"]
    event = decode(catalog.CAMPAIGN_CREATED, record.value)
    snapshot = event.data.campaign
    assert (snapshot.campaign_id, snapshot.name, snapshot.status.value) == (
        campaign_id,
        "Autumn webinar series",
        "planned",
    )
    assert snapshot.expected_response == Decimal("2.50") and event.data.created_by.id == "rep-7"


async def test_a_chosen_campaign_id_is_taken_once(shared: Service) -> None:
    chosen = f"spring-fair-{uuid.uuid4().hex[:8]}"
    assert (await shared.http.post("/campaigns", json=new_campaign(campaign_id=chosen))).status_code == 201
    again = await shared.http.post("/campaigns", json=new_campaign(campaign_id=chosen, name="Other"))
    assert again.status_code == 409 and again.json()["fields"][0]["field"] == "campaign_id"
    assert (await shared.http.get(f"/campaigns/{chosen}")).json()["name"] == "Autumn webinar series"


async def test_status_changes_follow_the_lifecycle_and_stale_versions_are_refused(shared: Service) -> None:
    campaign_id = (await shared.http.post("/campaigns", json=new_campaign())).json()["id"]
    status_url = f"/campaigns/{campaign_id}/status"

    refused = await shared.http.post(status_url, json={"status": "completed", "by": REP})
    assert refused.status_code == 409
    assert refused.json()["error"] == "illegal_transition"
    assert [f["field"] for f in refused.json()["fields"]] == ["status"]
    assert "planned campaign cannot become completed" in refused.json()["message"]

    moved = await shared.http.post(status_url, json={"status": "active", "expected_version": 1, "by": REP})
    assert moved.status_code == 200, moved.text
    assert (moved.json()["status"], moved.json()["version"]) == ("active", 2)

    stale = await shared.http.post(status_url, json={"status": "completed", "expected_version": 1, "by": REP})
    assert stale.status_code == 409
    assert [f["field"] for f in stale.json()["fields"]] == ["expected_version"]

    stored = (await shared.http.get(f"/campaigns/{campaign_id}")).json()
    assert (stored["status"], stored["version"]) == ("active", 2)
    assert [(h["from_status"], h["to_status"]) for h in stored["status_history"]] == [
        (None, "planned"),
        ("planned", "active"),
    ]
    missing = await shared.http.post(
        "/campaigns/no-such-campaign/status", json={"status": "active", "by": REP}
    )
    assert missing.status_code == 404


async def test_revising_a_campaign_checks_version_dates_and_hierarchy(shared: Service) -> None:
    parent = (await shared.http.post("/campaigns", json=new_campaign(name="Brand year"))).json()["id"]
    child_body = new_campaign(name="Spring push", parent_campaign_id=parent)
    child = (await shared.http.post("/campaigns", json=child_body)).json()["id"]

    revised = await shared.http.patch(
        f"/campaigns/{parent}",
        json={"end_date": "2026-12-31", "owner_id": None, "expected_version": 1, "by": REP},
    )
    assert revised.status_code == 200, revised.text
    assert (revised.json()["version"], revised.json()["end_date"], revised.json()["owner_id"]) == (
        2,
        "2026-12-31",
        None,
    )
    stale = await shared.http.patch(
        f"/campaigns/{parent}", json={"name": "X", "expected_version": 1, "by": REP}
    )
    assert stale.status_code == 409 and stale.json()["fields"][0]["field"] == "expected_version"

    for body, field in [
        ({"parent_campaign_id": child, "by": REP}, "parent_campaign_id"),  # would make a cycle
        ({"start_date": "2027-01-01", "by": REP}, "end_date"),
        ({"name": None, "by": REP}, "name"),
        ({"name": "X", "colour": "red", "by": REP}, "colour"),
    ]:
        refused = await shared.http.patch(f"/campaigns/{parent}", json=body)
        assert refused.status_code == 422, (body, refused.text)
        assert [f["field"] for f in refused.json()["fields"]] == [field], refused.json()
    stored = (await shared.http.get(f"/campaigns/{parent}")).json()
    assert (stored["version"], stored["name"], stored["parent_campaign_id"]) == (2, "Brand year", None)
    children = await shared.http.get("/campaigns", params={"parent_campaign_id": parent})
    assert [c["id"] for c in children.json()["items"]] == [child]


@pytest.mark.parametrize(
    ("body", "field"),
    [
        (new_campaign(name=None), "name"),
        ({k: v for k, v in new_campaign().items() if k != "type"}, "type"),
        (new_campaign(type="billboard"), "type"),
        (new_campaign(budgeted_cost="-5"), "budgeted_cost"),
        (new_campaign(currency="euro"), "currency"),
        (new_campaign(expected_response="120"), "expected_response"),
        (new_campaign(campaign_id={"$gt": ""}), "campaign_id"),
        (new_campaign(discount="10%"), "discount"),
        (new_campaign(start_date="2026-10-01", end_date="2026-09-01"), "end_date"),
        (new_campaign(parent_campaign_id="not-there"), "parent_campaign_id"),
    ],
)
async def test_malformed_campaigns_are_refused_naming_the_field_and_nothing_is_stored(
    shared: Service, body: dict[str, Any], field: str
) -> None:
    before = await all_campaign_ids(shared)
    refused = await shared.http.post("/campaigns", json=body)
    assert refused.status_code == 422, refused.text
    assert field in [f["field"] for f in refused.json()["fields"]], refused.json()
    assert await all_campaign_ids(shared) == before


async def test_ids_in_paths_and_queries_are_validated(shared: Service) -> None:
    assert (await shared.http.get("/campaigns/$where")).status_code == 422
    bad_filter = await shared.http.get("/campaigns", params={"status": "paused"})
    assert bad_filter.status_code == 422 and bad_filter.json()["fields"][0]["field"] == "status"


async def test_the_cost_ledger_sums_entries_accepts_retries_and_refuses_other_currencies(
    shared: Service,
) -> None:
    campaign_id = (await shared.http.post("/campaigns", json=new_campaign())).json()["id"]
    costs = f"/campaigns/{campaign_id}/costs"
    invoice = {
        "entry_id": "inv-981",
        "amount": "1500.00",
        "currency": "EUR",
        "incurred_on": "2026-10-03",
        "by": REP,
    }

    first = await shared.http.post(costs, json=invoice)
    assert first.status_code == 201, first.text
    retried = await shared.http.post(costs, json=invoice)
    assert retried.status_code == 200 and retried.json()["version"] == 2
    credit = {**invoice, "entry_id": "cn-12", "amount": "-250.00", "note": "venue refund"}
    assert (await shared.http.post(costs, json=credit)).status_code == 201

    other_currency = await shared.http.post(costs, json={**invoice, "entry_id": "inv-982", "currency": "USD"})
    assert other_currency.status_code == 422
    assert [f["field"] for f in other_currency.json()["fields"]] == ["currency"]
    changed = await shared.http.post(costs, json={**invoice, "amount": "1600.00"})
    assert changed.status_code == 409 and changed.json()["fields"][0]["field"] == "entry_id"

    ledger = (await shared.http.get(costs)).json()
    assert Decimal(ledger["actual_cost"]) == Decimal("1250.00")
    assert [e["entry_id"] for e in ledger["entries"]] == ["inv-981", "cn-12"]
    stored = (await shared.http.get(f"/campaigns/{campaign_id}")).json()
    assert (stored["version"], stored["cost_entry_count"], Decimal(stored["actual_cost"])) == (
        3,
        2,
        Decimal("1250.00"),
    )


async def test_campaigns_are_listed_with_filters_and_cursor_pages(shared: Service) -> None:
    rep1, rep2 = f"rep-{uuid.uuid4().hex[:8]}", f"rep-{uuid.uuid4().hex[:8]}"
    ids = []
    for kind, owner in [("webinar", rep1), ("email", rep1), ("webinar", rep2), ("webinar", rep1)]:
        created = await shared.http.post("/campaigns", json=new_campaign(type=kind, owner_id=owner))
        ids.append(created.json()["id"])
    await shared.http.post(f"/campaigns/{ids[3]}/status", json={"status": "active", "by": REP})

    async def listed(**params: Any) -> list[str]:
        page = await shared.http.get("/campaigns", params=params)
        assert page.status_code == 200, page.text
        return [c["id"] for c in page.json()["items"]]

    assert await listed(type="webinar", owner_id=rep1) == sorted([ids[0], ids[3]])
    assert await listed(status="active", owner_id=rep1) == [ids[3]]
    assert await listed(type="email", owner_id=rep2) == []

    seen: list[str] = []
    cursor = None
    while True:
        params: dict[str, Any] = {"limit": 2, "owner_id": rep1, **({"cursor": cursor} if cursor else {})}
        page = (await shared.http.get("/campaigns", params=params)).json()
        assert len(page["items"]) <= 2
        seen += [c["id"] for c in page["items"]]
        cursor = page["next_cursor"]
        if cursor is None:
            break
    assert seen == sorted([ids[0], ids[1], ids[3]])


async def all_campaign_ids(service: Service) -> list[str]:
    ids: list[str] = []
    cursor = None
    while True:
        params: dict[str, Any] = {"limit": 500, **({"cursor": cursor} if cursor else {})}
        page = (await service.http.get("/campaigns", params=params)).json()
        ids += [c["id"] for c in page["items"]]
        if (cursor := page["next_cursor"]) is None:
            return ids


async def test_leads_join_their_campaign_once_whatever_the_order_and_duplicates(fresh: Service) -> None:
    spring = (await fresh.http.post("/campaigns", json=new_campaign(name="Spring fair"))).json()["id"]
    later = "campaign-created-later"

    duplicated = lead_created("lead-1", spring)
    for event in [
        duplicated,
        lead_created("lead-2", spring),
        lead_converted("lead-1", spring),
        lead_converted("lead-3", spring),  # converted before its lead.created is published
        lead_created("lead-4", later),  # the campaign does not exist yet
        lead_created("lead-5", None),  # no campaign: no membership anywhere
        duplicated,  # redelivered: the same event again
        make_event(  # re-emitted: the same lead, another event id
            catalog.LEAD_CREATED, duplicated.data, source="/crm/leads", subject="lead-1", version=1
        ),
    ]:
        await fresh.publish(
            catalog.LEAD_CREATED if isinstance(event.data, LeadCreated) else catalog.LEAD_CONVERTED, event
        )
    await fresh.applied({"lead.created": 5, "lead.converted": 2}, {"lead.created": 1})

    async def members_of(campaign_id: str, **params: Any) -> list[dict[str, Any]]:
        page = await fresh.http.get(f"/campaigns/{campaign_id}/members", params=params)
        assert page.status_code == 200, page.text
        items: list[dict[str, Any]] = page.json()["items"]
        return items

    early = await members_of(spring)
    assert [(m["member_id"], m["converted"]) for m in early] == [
        ("lead:lead-1", True),
        ("lead:lead-2", False),
        ("lead:lead-3", True),
    ]

    await fresh.publish(catalog.LEAD_CREATED, lead_created("lead-3", spring))
    await fresh.applied({"lead.created": 6, "lead.converted": 2}, {"lead.created": 1})

    members = await members_of(spring)
    assert [(m["member_id"], m["converted"]) for m in members] == [
        ("lead:lead-1", True),
        ("lead:lead-2", False),
        ("lead:lead-3", True),
    ]
    assert members[0]["contact_id"] == "con-lead-1" and members[0]["joined_at"].startswith("2026-11-02")
    assert [m["lead_id"] for m in await members_of(spring, converted="true")] == ["lead-1", "lead-3"]

    assert (await fresh.http.get(f"/campaigns/{later}/members")).status_code == 404
    created_later = await fresh.http.post("/campaigns", json=new_campaign(name="Later", campaign_id=later))
    assert created_later.status_code == 201
    assert [m["lead_id"] for m in await members_of(later)] == ["lead-4"]

    cost = {"amount": "900.00", "currency": "EUR", "incurred_on": "2026-10-03", "by": REP}
    assert (await fresh.http.post(f"/campaigns/{spring}/costs", json=cost)).status_code == 201
    summary = (await fresh.http.get(f"/campaigns/{spring}/summary")).json()
    assert (summary["members"], summary["leads"], summary["converted_leads"]) == (3, 3, 2)
    assert Decimal(summary["actual_cost"]) == Decimal("900.00")
    assert Decimal(summary["cost_per_lead"]) == Decimal("300.00")
    assert Decimal(summary["conversion_rate"]) == Decimal("66.67")

    no_leads = (await fresh.http.post("/campaigns", json=new_campaign(name="Newsletter"))).json()["id"]
    empty = (await fresh.http.get(f"/campaigns/{no_leads}/summary")).json()
    assert (empty["leads"], empty["cost_per_lead"]) == (0, None)


async def test_won_revenue_and_roi_follow_opportunity_outcomes_in_any_order(fresh: Service) -> None:
    fair = (await fresh.http.post("/campaigns", json=new_campaign(name="Trade fair"))).json()["id"]
    cost = {"amount": "8000.00", "currency": "EUR", "incurred_on": "2026-10-03", "by": REP}
    assert (await fresh.http.post(f"/campaigns/{fair}/costs", json=cost)).status_code == 201

    deal_a = opportunity("opp-a", campaign_id=fair, lead_id="lead-a")
    deal_b = opportunity("opp-b", campaign_id=None, lead_id="lead-b")  # attributed only via its lead
    deal_c = opportunity("opp-c", campaign_id=fair, lead_id=None)
    stray = opportunity("opp-x", campaign_id=None, lead_id=None)  # nothing ties it to a campaign
    # First the outcomes, before the conversions that opened the deals.
    for closed in [
        opportunity_closed(deal_a, won=True, amount="12000.00", version=5),
        opportunity_closed(deal_b, won=True, amount="4000.00", version=4),
        opportunity_closed(deal_c, won=False, amount="900.00", version=3),
        opportunity_closed(stray, won=True, amount="777.00", version=2),
    ]:
        await fresh.publish(catalog.OPPORTUNITY_CLOSED, closed)
    await fresh.applied({"opportunity.closed": 4})
    # Then the conversions (they must not reopen the deals), and an older version of a close.
    await fresh.publish(catalog.LEAD_CONVERTED, lead_converted("lead-a", fair, "opp-a"))
    await fresh.publish(catalog.LEAD_CONVERTED, lead_converted("lead-b", fair, "opp-b"))
    await fresh.publish(
        catalog.OPPORTUNITY_CLOSED, opportunity_closed(deal_c, won=True, amount="900.00", version=2)
    )
    await fresh.applied({"lead.converted": 2, "opportunity.closed": 5})

    summary = (await fresh.http.get(f"/campaigns/{fair}/summary")).json()
    assert (summary["opportunities"], summary["won_opportunities"], summary["lost_opportunities"]) == (
        3,
        2,
        1,
    )
    assert Decimal(summary["won_revenue"]) == Decimal("16000.00")
    assert Decimal(summary["actual_cost"]) == Decimal("8000.00")
    assert Decimal(summary["roi"]) == Decimal("1.0000")
    assert (summary["members"], summary["converted_leads"]) == (2, 2)


async def test_a_parents_summary_can_roll_up_its_sub_campaigns(shared: Service) -> None:
    async def plan(name: str, **fields: Any) -> str:
        created = await shared.http.post("/campaigns", json=new_campaign(name=name, **fields))
        assert created.status_code == 201, created.text
        campaign_id: str = created.json()["id"]
        cost = {"amount": "600.00", "currency": fields.get("currency", "EUR"), "incurred_on": "2026-10-03"}
        assert (
            await shared.http.post(f"/campaigns/{campaign_id}/costs", json=cost | {"by": REP})
        ).status_code == 201
        return campaign_id

    year = await plan("Brand year")
    spring = await plan("Spring", parent_campaign_id=year)
    stand = await plan("Fair stand", parent_campaign_id=spring)
    abroad = await plan("US tour", parent_campaign_id=year, currency="USD")
    tag = uuid.uuid4().hex[:8]
    for lead, campaign_id in [("a", year), ("b", spring), ("c", stand), ("d", abroad)]:
        await shared.publish(catalog.LEAD_CREATED, lead_created(f"lead-{tag}-{lead}", campaign_id))
    # lead-a was re-captured at the fair stand later and converted there: in the roll-up it is
    # still one lead, credited to its first touch (the brand year).
    later = datetime(2026, 11, 5, tzinfo=UTC)
    await shared.publish(catalog.LEAD_UPDATED, lead_updated(f"lead-{tag}-a", stand, later, version=2))
    await shared.publish(catalog.LEAD_CONVERTED, lead_converted(f"lead-{tag}-a", stand, captured_at=later))

    async def rolled_up() -> Any:
        page = await shared.http.get(f"/campaigns/{year}/summary", params={"include_sub_campaigns": "true"})
        summary = page.json()
        return summary if summary["converted_leads"] == 1 and summary["leads"] == 3 else None

    summary = await eventually(rolled_up, timeout=60)
    assert sorted(summary["sub_campaigns"]) == sorted([spring, stand])
    assert summary["sub_campaigns_in_other_currencies"] == [abroad]
    assert (summary["members"], summary["leads"], summary["converted_leads"]) == (3, 3, 1)
    assert Decimal(summary["actual_cost"]) == Decimal("1800.00")
    assert Decimal(summary["cost_per_lead"]) == Decimal("600.00")

    own = (await shared.http.get(f"/campaigns/{year}/summary")).json()
    assert (own["sub_campaigns"], own["leads"], own["converted_leads"]) == ([], 1, 1)
    assert Decimal(own["actual_cost"]) == Decimal("600.00")
    # The stand reached two leads but is the first touch of one only.
    at_stand = (await shared.http.get(f"/campaigns/{stand}/summary")).json()
    assert (at_stand["members"], at_stand["responses"], at_stand["leads"]) == (2, 2, 1)


def opportunity_created(figures: OpportunityFigures, *, version: int) -> Any:
    data = OpportunityCreated(opportunity=figures, created_by=Actor(id="rep-7"))
    return make_event(
        catalog.OPPORTUNITY_CREATED,
        data,
        source="/crm/opportunities",
        subject=figures.opportunity_id,
        version=version,
    )


def attribution_story(tag: str) -> list[tuple[EventSpec[Any], Any]]:
    """Three leads and two opportunities touching three campaigns, as the leads and
    opportunities services would publish them (ids prefixed with ``tag``)."""
    day = timedelta(days=1)
    fair, webinar, ads = f"{tag}-fair", f"{tag}-webinar", f"{tag}-ads"
    lead_1, lead_2, lead_3 = f"{tag}-lead-1", f"{tag}-lead-2", f"{tag}-lead-3"
    deal = opportunity(f"{tag}-opp-1", campaign_id=webinar, lead_id=lead_1, amount="5000.00")
    stand_deal = opportunity(f"{tag}-opp-2", campaign_id=fair, lead_id=None)
    return [
        (catalog.LEAD_CREATED, lead_created(lead_1, fair, CAPTURED)),
        # lead-1 is re-captured through the webinar, then changed again without a new capture.
        (catalog.LEAD_UPDATED, lead_updated(lead_1, webinar, CAPTURED + 3 * day, version=2)),
        (catalog.LEAD_UPDATED, lead_updated(lead_1, webinar, CAPTURED + 3 * day, version=3)),
        (
            catalog.LEAD_CONVERTED,
            lead_converted(lead_1, webinar, deal.opportunity_id, CAPTURED + 3 * day, amount="5000.00"),
        ),
        (catalog.LEAD_CREATED, lead_created(lead_2, webinar, CAPTURED)),
        (catalog.LEAD_UPDATED, lead_updated(lead_2, fair, CAPTURED + 6 * day, version=2)),
        (catalog.LEAD_CREATED, lead_created(lead_3, None, CAPTURED)),
        (catalog.LEAD_UPDATED, lead_updated(lead_3, ads, CAPTURED + 3 * day, version=2)),
        (catalog.LEAD_UPDATED, lead_updated(lead_3, None, CAPTURED + 6 * day, version=3)),  # cleared
        (catalog.OPPORTUNITY_CREATED, opportunity_created(deal, version=1)),
        (catalog.OPPORTUNITY_CLOSED, opportunity_closed(deal, won=True, amount="5000.00", version=4)),
        (catalog.OPPORTUNITY_CREATED, opportunity_created(stand_deal, version=1)),
    ]


async def attribution_state(service: Service, tag: str) -> Any:
    """Everything the campaigns service says about one story, with the tag taken out."""
    state: dict[str, Any] = {}
    for name in ("fair", "webinar", "ads"):
        summary = (await service.http.get(f"/campaigns/{tag}-{name}/summary")).json()
        members = (await service.http.get(f"/campaigns/{tag}-{name}/members")).json()["items"]
        state[name] = {
            "summary": {k: v for k, v in summary.items() if k != "campaign_id"},
            "members": [{k: v for k, v in m.items() if k != "version"} for m in members],
        }
    for lead in ("lead-1", "lead-2", "lead-3"):
        state[lead] = (await service.http.get(f"/leads/{tag}-{lead}/touches")).json()
    return json.loads(json.dumps(state).replace(tag, "story"))


async def test_touches_from_lead_events_converge_whatever_the_order_and_duplicates(fresh: Service) -> None:
    async def plan_campaigns(tag: str) -> None:
        for name in ("fair", "webinar", "ads"):
            body = new_campaign(name=name, campaign_id=f"{tag}-{name}")
            assert (await fresh.http.post("/campaigns", json=body)).status_code == 201

    # As published: in order, once.
    await plan_campaigns("in-order")
    in_order = attribution_story("in-order")
    for spec, event in in_order:
        await fresh.publish(spec, event)
    await fresh.applied(dict(Counter(spec.topic for spec, _ in in_order)))
    # The same story backwards, one event applied before the next is sent (so across topics
    # too: the first touch arrives last), then every event again, two of them re-emitted with
    # new ids; the campaigns are created only afterwards.
    shuffled = attribution_story("shuffled")
    for spec, event in reversed(shuffled):
        await fresh.publish_applied(spec, event)
    re_emitted = [
        (
            spec,
            make_event(spec, event.data, source=event.source, subject=event.subject, version=event.version),
        )
        for spec, event in (shuffled[1], shuffled[3])
    ]
    for spec, event in [*re_emitted, *shuffled]:
        await fresh.publish(spec, event)
    await plan_campaigns("shuffled")

    processed = Counter(spec.topic for spec, _ in [*in_order, *shuffled, *re_emitted])
    await fresh.applied(dict(processed), dict(Counter(spec.topic for spec, _ in shuffled)))

    expected = await attribution_state(fresh, "in-order")
    assert await attribution_state(fresh, "shuffled") == expected

    fair, webinar, ads = (expected[name]["summary"] for name in ("fair", "webinar", "ads"))
    # lead-1 came first through the fair: its conversion and won deal are the fair's, although
    # it converted (and its opportunity names) the webinar. lead-2's first touch is the webinar.
    assert (fair["members"], fair["responses"], fair["leads"], fair["converted_leads"]) == (2, 2, 1, 1)
    assert (fair["opportunities"], fair["open_opportunities"], fair["won_opportunities"]) == (2, 1, 1)
    assert Decimal(fair["won_revenue"]) == Decimal("5000.00")
    assert Decimal(fair["response_rate"]) == Decimal("100.00")
    assert (webinar["members"], webinar["leads"], webinar["converted_leads"], webinar["opportunities"]) == (
        2,
        1,
        0,
        0,
    )
    assert (ads["members"], ads["leads"]) == (1, 1)

    fair_members = {m["member_id"]: m for m in expected["fair"]["members"]}
    assert fair_members["lead:story-lead-1"]["first_touch"] is True
    assert fair_members["lead:story-lead-2"]["first_touch"] is False
    assert fair_members["lead:story-lead-2"]["status"] == "responded"

    lead_1 = expected["lead-1"]
    assert (lead_1["first_touch_campaign_id"], lead_1["last_touch_campaign_id"]) == (
        "story-fair",
        "story-webinar",
    )
    assert [(t["campaign_id"], t["first_touched_at"][:10], t["touched_via"]) for t in lead_1["touches"]] == [
        ("story-fair", "2026-11-02", ["lead.created"]),
        ("story-webinar", "2026-11-05", ["lead.converted", "lead.updated"]),
    ]
    # A cleared campaign takes no touch back.
    assert [t["campaign_id"] for t in expected["lead-3"]["touches"]] == ["story-ads"]
    nobody = (await fresh.http.get("/leads/never-touched/touches")).json()
    assert (nobody["touches"], nobody["first_touch_campaign_id"]) == ([], None)


async def test_a_lead_re_captured_through_another_campaign_joins_it_and_keeps_its_first_touch(
    fresh: Service,
) -> None:
    fair = (await fresh.http.post("/campaigns", json=new_campaign(name="Fair"))).json()["id"]
    webinar = (await fresh.http.post("/campaigns", json=new_campaign(name="Webinar"))).json()["id"]
    # Captured at the fair, then invited to the webinar by hand (a lead must be known to be
    # added by hand): the fair stays its first touch.
    await fresh.publish_applied(catalog.LEAD_CREATED, lead_created("lead-9", fair, CAPTURED))
    invited = await fresh.http.post(
        f"/campaigns/{webinar}/members", json={"lead_id": "lead-9", "status": "sent", "by": REP}
    )
    assert invited.status_code == 201 and invited.json()["first_touch"] is False
    # Re-captured through the webinar form: the invited member has now responded.
    later = datetime.now(UTC) + timedelta(minutes=1)
    await fresh.publish(catalog.LEAD_UPDATED, lead_updated("lead-9", webinar, later, version=2))
    await fresh.applied({"lead.created": 1, "lead.updated": 1})

    member = (await fresh.http.get(f"/campaigns/{webinar}/members/lead:lead-9")).json()
    assert (member["status"], member["responded"], member["first_touch"]) == ("responded", True, False)
    assert [h["status"] for h in member["status_history"]] == ["sent", "responded"]
    assert member["touched_via"] == ["api", "lead.updated"]
    touches = (await fresh.http.get("/leads/lead-9/touches")).json()
    assert (touches["first_touch_campaign_id"], touches["last_touch_campaign_id"]) == (fair, webinar)

    [change] = await read_status_changes(fresh, webinar, 1)
    assert (change.previous_status, change.status, change.responded, change.changed_by.id) == (
        "sent",
        "responded",
        True,
        "lead-capture",
    )
    summaries = [(await fresh.http.get(f"/campaigns/{c}/summary")).json() for c in (fair, webinar)]
    assert [(s["members"], s["responses"], s["leads"]) for s in summaries] == [(1, 1, 1), (1, 1, 0)]


async def read_status_changes(service: Service, campaign_id: str, count: int) -> list[Any]:
    spec = catalog.CAMPAIGN_MEMBER_STATUS_CHANGED
    records = await read_topic(
        service.bootstrap,
        service.topic(spec.topic),
        until=lambda rs: sum(r.key == campaign_id.encode() for r in rs) >= count,
    )
    return [decode(spec, r.value).data for r in records if r.key == campaign_id.encode()]


def lead_merged(duplicate_id: str, survivor_id: str) -> Any:
    data = LeadMerged(
        survivor=lead_snapshot(survivor_id, None),
        merged_lead_id=duplicate_id,
        matching_keys=["email"],
        merged_at=datetime(2026, 11, 12, tzinfo=UTC),
        merged_by=Actor(id="rep-7"),
    )
    return make_event(catalog.LEAD_MERGED, data, source="/crm/leads", subject=survivor_id, version=4)


async def test_a_merged_duplicates_campaign_touch_becomes_the_survivors_whether_the_merge_comes_first_or_last(
    fresh: Service,
) -> None:
    """Over Kafka: the duplicate came through the fair (earlier), the survivor through the
    webinar, and the survivor converted. Whether lead.merged arrives after every other event or
    before them, the fair has the survivor as its one lead, credited and converted."""
    fair = (await fresh.http.post("/campaigns", json=new_campaign(name="Fair"))).json()["id"]
    webinar = (await fresh.http.post("/campaigns", json=new_campaign(name="Webinar"))).json()["id"]
    later = CAPTURED + timedelta(days=2)

    def story(pair: str) -> list[tuple[EventSpec[Any], Any]]:
        return [
            (catalog.LEAD_CREATED, lead_created(f"dup-{pair}", fair, CAPTURED)),
            (catalog.LEAD_CREATED, lead_created(f"keep-{pair}", webinar, later)),
            (catalog.LEAD_CONVERTED, lead_converted(f"keep-{pair}", webinar, captured_at=later)),
        ]

    merge_last = [*story("a"), (catalog.LEAD_MERGED, lead_merged("dup-a", "keep-a"))]
    merge_first = [(catalog.LEAD_MERGED, lead_merged("dup-b", "keep-b")), *story("b")]
    for spec, event in merge_last + merge_first:
        await fresh.publish_applied(spec, event)

    for pair in ("a", "b"):
        touches = (await fresh.http.get(f"/leads/keep-{pair}/touches")).json()
        assert (touches["first_touch_campaign_id"], touches["last_touch_campaign_id"]) == (fair, webinar)
        duplicate = (await fresh.http.get(f"/leads/dup-{pair}/touches")).json()
        assert duplicate["touches"] == []  # no separate, never-converted member is left
        member = (await fresh.http.get(f"/campaigns/{fair}/members/lead:keep-{pair}")).json()
        assert (member["converted"], member["first_touch"], member["merged_from"]) == (
            True,
            True,
            [f"dup-{pair}"],
        )
        assert member["joined_at"].startswith("2026-11-02T09:30")
    summaries = [(await fresh.http.get(f"/campaigns/{c}/summary")).json() for c in (fair, webinar)]
    assert [(s["members"], s["leads"], s["converted_leads"]) for s in summaries] == [(2, 2, 2), (2, 0, 0)]
    assert summaries[0]["conversion_rate"] == "100.00"
    # The fair's survivors were added (via the merge when the duplicate's membership moved).
    added = await read_events(fresh, catalog.CAMPAIGN_MEMBER_ADDED, fair, 3)
    assert sorted((e.lead_id, e.added_via) for e in added) == [
        ("dup-a", "lead.created"),
        ("keep-a", "lead.merged"),
        ("keep-b", "lead.merged"),
    ]


async def read_events(service: Service, spec: EventSpec[Any], campaign_id: str, count: int) -> list[Any]:
    records = await read_topic(
        service.bootstrap,
        service.topic(spec.topic),
        until=lambda rs: sum(r.key == campaign_id.encode() for r in rs) >= count,
    )
    return [decode(spec, r.value).data for r in records if r.key == campaign_id.encode()]
