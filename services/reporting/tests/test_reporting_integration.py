"""The reporting service on real Kafka and the MongoDB-compatible server: events of three leads
and three opportunities, published out of order and with duplicates, become the funnel and the
pipeline served as JSON and CSV."""

from __future__ import annotations

import asyncio
import csv
import io
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import httpx
import pytest
from crm_contracts import catalog
from crm_contracts.envelope import CloudEvent
from crm_contracts.events.campaigns import CampaignCreated
from crm_contracts.events.leads import LeadConverted, LeadCreated, LeadQualified, LeadRating
from crm_contracts.events.opportunities import OpportunityClosed, OpportunityCreated, OpportunityStageChanged
from crm_localinfra.testing import eventually, isolation_key, publish_raw, service_client, service_env
from crm_reporting.bootstrap import ReportingSettings, create_app
from crm_reporting.domain import FunnelDimension, FunnelQuery, PeriodBasis, count_funnel
from crm_reporting.memory import MemoryFactStore
from crm_reporting.projection import project
from crm_reporting.repository import ReportingRepository
from crm_runtime import make_event
from crm_runtime.events import encode
from crm_runtime.mongo import in_transaction
from pymongo import AsyncMongoClient
from pymongo.asynchronous.client_session import AsyncClientSession

pytestmark = pytest.mark.integration

READ_TOKEN = "bi-tool-token"
BY = {"id": "rep-1"}


def march(day: int, hour: int = 9) -> datetime:
    return datetime(2026, 3, day, hour, 0, 0, 250000, tzinfo=UTC)


def lead_created(lead_id: str, day: int, source: str, campaign: str | None) -> CloudEvent[Any]:
    data = LeadCreated.model_validate(
        {
            "lead": {
                "lead_id": lead_id,
                "status": "new",
                "source_system": "webforms",
                "external_id": f"ext-{lead_id}",
                "person": {"first_name": "Ada"},
                "company": {"name": "Engines"},
                "lead_source": source,
                "origin": "api",
                "campaign_id": campaign,
                "captured_at": march(day),
            }
        }
    )
    return make_event(
        catalog.LEAD_CREATED, data, source="/crm/leads", subject=lead_id, version=1, time=march(day)
    )


def lead_qualified(lead_id: str, version: int, day: int, rating: str, source: str) -> CloudEvent[Any]:
    data = LeadQualified.model_validate(
        {
            "lead_id": lead_id,
            "rating": rating,
            "lead_source": source,
            "qualified_at": march(day),
            "qualified_by": BY,
        }
    )
    return make_event(
        catalog.LEAD_QUALIFIED, data, source="/crm/leads", subject=lead_id, version=version, time=march(day)
    )


def lead_converted(
    lead_id: str, version: int, day: int, opportunity_id: str, source: str, campaign: str | None
) -> CloudEvent[Any]:
    data = LeadConverted.model_validate(
        {
            "lead_id": lead_id,
            "account": {"account_id": f"acc-{lead_id}", "is_new": True},
            "contact": {"contact_id": f"con-{lead_id}", "is_new": True},
            "opportunity": {"opportunity_id": opportunity_id, "name": "Deal"},
            "lead_source": source,
            "campaign_id": campaign,
            "converted_at": march(day),
            "converted_by": BY,
        }
    )
    return make_event(
        catalog.LEAD_CONVERTED, data, source="/crm/leads", subject=lead_id, version=version, time=march(day)
    )


STAGES = {
    "prospecting": ("Prospecting", "open", 10),
    "proposal": ("Proposal", "open", 50),
    "closed-won": ("Closed Won", "closed_won", 100),
}


def figures(
    opportunity_id: str, stage: str, amount: str, created_day: int, *, lead_id: str | None, **extra: Any
) -> dict[str, Any]:
    name, kind, probability = STAGES[stage]
    return {
        "opportunity_id": opportunity_id,
        "name": "Deal",
        "account_id": "acc-1",
        "owner_id": "rep-1",
        "pipeline_id": "default",
        "stage_id": stage,
        "stage_name": name,
        "stage_kind": kind,
        "probability": probability,
        "forecast_category": "pipeline",
        "amount": amount,
        "currency": "EUR",
        "lead_id": lead_id,
        "created_at": march(created_day),
        **extra,
    }


def opportunity_created(opportunity_id: str, day: int, amount: str, **extra: Any) -> CloudEvent[Any]:
    data = OpportunityCreated.model_validate(
        {"opportunity": figures(opportunity_id, "prospecting", amount, day, **extra), "created_by": BY}
    )
    return make_event(
        catalog.OPPORTUNITY_CREATED,
        data,
        source="/crm/opps",
        subject=opportunity_id,
        version=1,
        time=march(day),
    )


def stage_changed(
    opportunity_id: str,
    version: int,
    day: int,
    stage: str,
    amount: str,
    created_day: int,
    lead_id: str | None,
) -> CloudEvent[Any]:
    now = figures(opportunity_id, stage, amount, created_day, lead_id=lead_id)
    data = OpportunityStageChanged.model_validate(
        {
            "opportunity_id": opportunity_id,
            "pipeline_id": "default",
            "previous_stage_id": "prospecting",
            "previous_stage_name": "Prospecting",
            "stage_id": stage,
            "stage_name": now["stage_name"],
            "stage_kind": now["stage_kind"],
            "probability": now["probability"],
            "forecast_category": "pipeline",
            "amount": amount,
            "currency": "EUR",
            "changed_at": march(day),
            "changed_by": BY,
            "opportunity": now,
        }
    )
    return make_event(
        catalog.OPPORTUNITY_STAGE_CHANGED,
        data,
        source="/crm/opps",
        subject=opportunity_id,
        version=version,
        time=march(day),
    )


def opportunity_won(
    opportunity_id: str, version: int, day: int, amount: str, created_day: int
) -> CloudEvent[Any]:
    data = OpportunityClosed.model_validate(
        {
            "opportunity_id": opportunity_id,
            "won": True,
            "amount": amount,
            "currency": "EUR",
            "closed_at": march(day),
            "closed_by": BY,
            "opportunity": figures(opportunity_id, "closed-won", amount, created_day, lead_id=None),
        }
    )
    return make_event(
        catalog.OPPORTUNITY_CLOSED,
        data,
        source="/crm/opps",
        subject=opportunity_id,
        version=version,
        time=march(day),
    )


def campaign_created(campaign_id: str, name: str, day: int) -> CloudEvent[Any]:
    data = CampaignCreated.model_validate(
        {
            "campaign": {
                "campaign_id": campaign_id,
                "name": name,
                "type": "webinar",
                "purpose": "lead_generation",
                "status": "active",
            },
            "created_at": march(day),
            "created_by": BY,
        }
    )
    return make_event(
        catalog.CAMPAIGN_CREATED,
        data,
        source="/crm/campaigns",
        subject=campaign_id,
        version=1,
        time=march(day),
    )


# Lead A: web, spring campaign, hot; converted into O1 (open, Proposal, 12500.50 at 50 %).
# Lead B: event, no campaign, cold; not converted.
# Lead C: web, spring campaign, converted without qualification into O2, which was won; O2's
#         figures do not name the lead, only lead.converted links them.
# O3: no lead, pipeline "enterprise", owner rep-2, Prospecting, 999.99 at 10 %.
A_CONVERTED = lead_converted("lead-a", 3, 3, "opp-1", "web", "spring")
O1_PROPOSAL = stage_changed("opp-1", 2, 4, "proposal", "12500.50", 3, "lead-a")
B_QUALIFIED = lead_qualified("lead-b", 2, 6, "cold", "event")
O2_WON = opportunity_won("opp-2", 3, 20, "3000.00", 11)
PUBLISHED_ORDER: list[tuple[CloudEvent[Any], str]] = [
    (A_CONVERTED, "lead.converted"),  # before the lead exists
    (O1_PROPOSAL, "opportunity.stage_changed"),  # before the opportunity exists
    (O2_WON, "opportunity.closed"),
    (lead_created("lead-a", 1, "web", "spring"), "lead.created"),
    (opportunity_created("opp-1", 3, "12500.50", lead_id="lead-a"), "opportunity.created"),
    (B_QUALIFIED, "lead.qualified"),
    (B_QUALIFIED, "lead.qualified"),  # a redelivery
    (lead_created("lead-b", 5, "event", None), "lead.created"),
    (lead_qualified("lead-a", 2, 2, "hot", "web"), "lead.qualified"),
    (lead_converted("lead-c", 2, 11, "opp-2", "web", "spring"), "lead.converted"),
    (opportunity_created("opp-2", 11, "3000.00", lead_id=None), "opportunity.created"),
    (stage_changed("opp-2", 2, 20, "closed-won", "3000.00", 11, None), "opportunity.stage_changed"),
    (lead_created("lead-c", 10, "web", "spring"), "lead.created"),
    (
        opportunity_created("opp-3", 12, "999.99", lead_id=None, pipeline_id="enterprise", owner_id="rep-2"),
        "opportunity.created",
    ),
    (campaign_created("spring", "Spring fair", 1), "campaign.created"),
    (A_CONVERTED, "lead.converted"),  # duplicates after the fact
    (O1_PROPOSAL, "opportunity.stage_changed"),
    (O2_WON, "opportunity.closed"),
]
NEWEST = "2026-03-20T09:00:00.250000Z"


@dataclass
class Reporting:
    http: httpx.AsyncClient
    settings: ReportingSettings
    repo: ReportingRepository

    async def get(self, path: str, **params: Any) -> httpx.Response:
        return await self.http.get(path, params=params, headers={"Authorization": f"Bearer {READ_TOKEN}"})

    async def report(self, path: str, **params: Any) -> dict[str, Any]:
        response = await self.get(path, **params)
        assert response.status_code == 200, response.text
        body: dict[str, Any] = response.json()
        return body


@pytest.fixture(scope="module")
async def reporting(infra: Any) -> AsyncIterator[Reporting]:
    """One reporting service fed the whole story once; the tests read its views."""
    env = service_env(infra, "reporting", isolation=isolation_key())
    settings = ReportingSettings(**env, api_tokens=f"{READ_TOKEN}:read")
    mongo: AsyncMongoClient[dict[str, Any]] = AsyncMongoClient(infra.mongo_url, tz_aware=True)
    repo = ReportingRepository(mongo[settings.database_name])
    async with service_client(create_app(settings)) as http:
        for event, topic in PUBLISHED_ORDER:
            assert event.subject is not None
            await publish_raw(
                infra.kafka_bootstrap, settings.topic(topic), encode(event), key=event.subject.encode()
            )
        service = Reporting(http, settings, repo)

        async def caught_up() -> bool:
            # Every published message applied or recognised as a duplicate: the views are final.
            metrics = (await http.get("/metrics")).text
            handled = sum(
                float(line.rsplit(" ", 1)[1])
                for line in metrics.splitlines()
                if line.startswith(("crm_events_processed_total{", "crm_events_duplicate_total{"))
            )
            return handled == len(PUBLISHED_ORDER)

        await eventually(caught_up, timeout=90)
        yield service
    await mongo.close()


def funnel_numbers(row: dict[str, Any]) -> tuple[Any, ...]:
    return tuple(row[k] for k in ("group", "captured", "qualified", "converted", "opportunities", "won"))


async def test_the_funnel_counts_every_lead_once_despite_disorder_and_duplicates(
    reporting: Reporting,
) -> None:
    report = await reporting.report("/reports/funnel")
    assert report["as_of"] == NEWEST
    assert report["group_by"] is None
    assert report["filters"] == {
        "lead_source": None,
        "campaign_id": None,
        "rating": None,
        "from": None,
        "to": None,
        "basis": "activity",
        "group_by": None,
    }
    [row] = report["rows"]
    assert funnel_numbers(row) == (None, 3, 3, 2, 2, 1)
    assert (row["qualified_rate"], row["converted_rate"], row["opportunity_rate"]) == (
        "1.0000",
        "0.6667",
        "1.0000",
    )
    assert (row["won_rate"], row["overall_rate"]) == ("0.5000", "0.3333")


async def test_the_funnel_groups_by_source_and_by_campaign_with_its_name(reporting: Reporting) -> None:
    by_source = await reporting.report("/reports/funnel", group_by="lead_source")
    assert [funnel_numbers(r) for r in by_source["rows"]] == [
        ("event", 1, 1, 0, 0, 0),
        ("web", 2, 2, 2, 2, 1),
    ]
    by_campaign = await reporting.report("/reports/funnel", group_by="campaign_id")
    assert [(*funnel_numbers(r), r["group_name"]) for r in by_campaign["rows"]] == [
        ("spring", 2, 2, 2, 2, 1, "Spring fair"),
        (None, 1, 1, 0, 0, 0, None),
    ]


async def test_the_funnel_filters_by_rating_campaign_and_source(reporting: Reporting) -> None:
    hot = await reporting.report("/reports/funnel", rating="hot")
    assert funnel_numbers(hot["rows"][0]) == (None, 1, 1, 1, 1, 0)
    assert hot["filters"]["rating"] == "hot"
    spring_web = await reporting.report("/reports/funnel", campaign_id="spring", lead_source="web")
    assert funnel_numbers(spring_web["rows"][0]) == (None, 2, 2, 2, 2, 1)
    nothing = await reporting.report("/reports/funnel", lead_source="partner")
    assert funnel_numbers(nothing["rows"][0]) == (None, 0, 0, 0, 0, 0)
    assert nothing["rows"][0]["qualified_rate"] is None


async def test_the_funnel_period_uses_when_things_happened(reporting: Reporting) -> None:
    # 5-12 March: B captured and qualified, C captured and converted (so qualified), O2 created.
    activity = await reporting.report(
        "/reports/funnel", **{"from": "2026-03-05T00:00:00Z", "to": "2026-03-12T00:00:00Z"}
    )
    assert funnel_numbers(activity["rows"][0]) == (None, 2, 2, 1, 1, 0)
    assert activity["filters"]["from"] == "2026-03-05T00:00:00Z"
    # Leads captured 1-5 March (only A), followed to every later step.
    cohort = await reporting.report(
        "/reports/funnel", basis="cohort", **{"from": "2026-03-01T00:00:00Z", "to": "2026-03-05T00:00:00Z"}
    )
    assert funnel_numbers(cohort["rows"][0]) == (None, 1, 1, 1, 1, 0)


async def test_the_pipeline_sums_open_opportunities_with_exact_weighted_amounts(reporting: Reporting) -> None:
    report = await reporting.report("/reports/pipeline")
    assert report["as_of"] == NEWEST
    assert report["filters"] == {"pipeline_id": None, "owner_id": None}
    assert report["rows"] == [
        {
            "pipeline_id": "default",
            "stage_id": "proposal",
            "stage_name": "Proposal",
            "currency": "EUR",
            "count": 1,
            "amount": "12500.50",
            "weighted_amount": "6250.2500",
        },
        {
            "pipeline_id": "enterprise",
            "stage_id": "prospecting",
            "stage_name": "Prospecting",
            "currency": "EUR",
            "count": 1,
            "amount": "999.99",
            "weighted_amount": "99.9990",
        },
    ]
    enterprise = await reporting.report("/reports/pipeline", pipeline_id="enterprise")
    assert [r["stage_id"] for r in enterprise["rows"]] == ["prospecting"]
    rep_1 = await reporting.report("/reports/pipeline", owner_id="rep-1")
    assert [r["pipeline_id"] for r in rep_1["rows"]] == ["default"]


async def test_views_are_served_as_csv_with_a_header_row(reporting: Reporting) -> None:
    response = await reporting.get("/reports/funnel", group_by="lead_source", format="csv")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/csv")
    assert response.headers["x-report-as-of"] == NEWEST
    assert list(csv.reader(io.StringIO(response.text))) == [
        [
            "as_of",
            "group_by",
            "group",
            "group_name",
            "captured",
            "qualified",
            "converted",
            "opportunities",
            "won",
            "qualified_rate",
            "converted_rate",
            "opportunity_rate",
            "won_rate",
            "overall_rate",
        ],
        [NEWEST, "lead_source", "event", "", "1", "1", "0", "0", "0", "1.0000", "0.0000", "", "", "0.0000"],
        [
            NEWEST,
            "lead_source",
            "web",
            "",
            "2",
            "2",
            "2",
            "2",
            "1",
            "1.0000",
            "1.0000",
            "1.0000",
            "0.5000",
            "0.5000",
        ],
    ]
    by_accept = await reporting.http.get(
        "/reports/pipeline", headers={"Accept": "text/csv", "Authorization": f"Bearer {READ_TOKEN}"}
    )
    assert by_accept.headers["content-type"].startswith("text/csv")
    assert by_accept.text.splitlines() == [
        "as_of,pipeline_id,stage_id,stage_name,currency,count,amount,weighted_amount",
        f"{NEWEST},default,proposal,Proposal,EUR,1,12500.50,6250.2500",
        f"{NEWEST},enterprise,prospecting,Prospecting,EUR,1,999.99,99.9990",
    ]


async def test_stored_facts_equal_the_pure_fold_of_the_same_events(reporting: Reporting) -> None:
    expected = MemoryFactStore().fold(event for event, _ in PUBLISHED_ORDER)
    stored_leads = {fact.lead_id: fact async for fact in reporting.repo.all_leads()}
    stored_opportunities = {fact.opportunity_id: fact async for fact in reporting.repo.all_opportunities()}
    assert stored_leads == expected.leads
    assert stored_opportunities == expected.opportunities


async def test_the_database_aggregation_agrees_with_the_funnel_definition(reporting: Reporting) -> None:
    leads = [fact async for fact in reporting.repo.all_leads()]
    queries = [
        FunnelQuery(),
        FunnelQuery(group_by=FunnelDimension.RATING),
        FunnelQuery(rating=LeadRating.COLD, group_by=FunnelDimension.LEAD_SOURCE),
        FunnelQuery(period_from=march(3), period_to=march(20, 10), group_by=FunnelDimension.CAMPAIGN),
        FunnelQuery(period_from=march(2), basis=PeriodBasis.COHORT),
        FunnelQuery(period_to=march(4)),
        # B is qualified exactly at the (exclusive) end; A was captured before the start.
        FunnelQuery(period_from=march(2), period_to=march(6), group_by=FunnelDimension.LEAD_SOURCE),
    ]
    for query in queries:
        assert await reporting.repo.funnel_counts(query) == count_funnel(leads, query), query


async def test_concurrent_transactions_folding_the_same_facts_converge(infra: Any) -> None:
    """All events at once, each in its own transaction, as concurrent consumers would: write
    conflicts make the losers retry, so no fact is left stale."""
    client: AsyncMongoClient[dict[str, Any]] = AsyncMongoClient(infra.mongo_url, tz_aware=True)
    database = f"{infra.database_prefix}{isolation_key().replace('.', '_')}reporting_concurrency"
    repo = ReportingRepository(client[database])
    try:

        async def fold(event: CloudEvent[Any]) -> None:
            async def work(session: AsyncClientSession) -> None:
                await project(event, repo.facts(session))

            await in_transaction(client, work)

        await asyncio.gather(*(fold(event) for event, _ in PUBLISHED_ORDER))
        expected = MemoryFactStore().fold(event for event, _ in PUBLISHED_ORDER)
        assert {fact.lead_id: fact async for fact in repo.all_leads()} == expected.leads
        stored = {fact.opportunity_id: fact async for fact in repo.all_opportunities()}
        assert stored == expected.opportunities
    finally:
        await client.drop_database(database)
        await client.close()


async def test_views_need_a_read_token(reporting: Reporting) -> None:
    for path in ("/reports/funnel", "/reports/pipeline"):
        assert (await reporting.http.get(path)).status_code == 401
        bad = await reporting.http.get(path, headers={"Authorization": "Bearer wrong"})
        assert bad.status_code == 401


@pytest.mark.parametrize(
    ("params", "field"),
    [
        ({"campaign_id": "$gt"}, "campaign_id"),
        ({"lead_source": "carrier-pigeon"}, "lead_source"),
        ({"from": "2026-03-01T00:00:00"}, "from"),
        ({"from": "2026-03-05T00:00:00Z", "to": "2026-03-01T00:00:00Z"}, "to"),
        ({"group_by": "owner_password"}, "group_by"),
        ({"format": "xlsx"}, "format"),
    ],
)
async def test_bad_filters_get_a_422_naming_the_field(
    reporting: Reporting, params: dict[str, str], field: str
) -> None:
    response = await reporting.get("/reports/funnel", **params)
    assert response.status_code == 422, response.text
    assert [problem["field"] for problem in response.json()["fields"]] == [field]


async def test_a_bad_pipeline_filter_gets_a_422_naming_the_field(reporting: Reporting) -> None:
    response = await reporting.get("/reports/pipeline", owner_id="../etc")
    assert response.status_code == 422
    assert [problem["field"] for problem in response.json()["fields"]] == ["owner_id"]


async def test_every_view_says_how_far_behind_the_topics_it_is(reporting: Reporting) -> None:
    async def lag_measured_and_caught_up() -> bool:
        funnel = await reporting.get("/reports/funnel")
        pipeline = await reporting.get("/reports/pipeline", format="csv")
        return bool(
            funnel.json()["consumer_lag"] == 0
            and funnel.headers["X-Consumer-Lag"] == "0"
            and pipeline.headers["X-Consumer-Lag"] == "0"
        )

    await eventually(lag_measured_and_caught_up, timeout=30)
