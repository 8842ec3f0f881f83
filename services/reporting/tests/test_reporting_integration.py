"""The reporting service on real Kafka and the MongoDB-compatible server: a story of leads,
opportunities and a campaign (some of it imported with 2019/2020 dates), published out of
order and with duplicates, becomes facts, counters and views served as JSON and CSV; stored
facts and counters equal the in-memory fold of the same events, and every view read from the
database equals the same view computed in memory."""

from __future__ import annotations

import asyncio
import csv
import io
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import httpx
import pytest
from crm_contracts.envelope import CloudEvent
from crm_localinfra.testing import eventually, isolation_key, service_client, service_env
from crm_reporting.aggregates import COUNTER_VIEWS, nest
from crm_reporting.bootstrap import ReportingSettings, create_app
from crm_reporting.memory import MemoryFactStore, MemoryViews
from crm_reporting.projection import project, project_many
from crm_reporting.repository import Generation, GenerationSource, ReportingRepository
from crm_runtime.mongo import Document, in_transaction
from pymongo import AsyncMongoClient
from pymongo.asynchronous.client_session import AsyncClientSession
from reporting_queries import QUERIES
from reporting_story import NEWEST, STORY, publish, settled

pytestmark = pytest.mark.integration

READ_TOKEN = "bi-tool-token"


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

    async def live(self) -> Generation:
        return await self.repo.live()


@pytest.fixture(scope="module")
async def reporting(infra: Any) -> AsyncIterator[Reporting]:
    """One reporting service fed the whole story once; the tests read its views."""
    env = service_env(infra, "reporting", isolation=isolation_key())
    settings = ReportingSettings(**env, api_tokens=f"{READ_TOKEN}:read")
    mongo: AsyncMongoClient[Document] = AsyncMongoClient(infra.mongo_url, tz_aware=True)
    repo = ReportingRepository(mongo, mongo[settings.database_name])
    async with service_client(create_app(settings)) as http:
        await publish(infra.kafka_bootstrap, settings, STORY)
        service = Reporting(http, settings, repo)
        await settled(http, repo, len(STORY))
        yield service
    await mongo.close()


def funnel_numbers(row: dict[str, Any]) -> tuple[Any, ...]:
    return tuple(row[k] for k in ("group", "captured", "qualified", "converted", "opportunities", "won"))


async def test_the_funnel_counts_every_lead_once_despite_disorder_and_duplicates(
    reporting: Reporting,
) -> None:
    report = await reporting.report("/reports/funnel", **{"from": "2026-01-01"})
    assert report["as_of"] == NEWEST
    assert report["filters"]["from"] == "2026-01-01" and report["filters"]["basis"] == "activity"
    [row] = report["rows"]
    assert funnel_numbers(row) == (None, 3, 3, 2, 2, 1)
    assert (row["qualified_rate"], row["converted_rate"], row["won_rate"], row["overall_rate"]) == (
        "1.0000",
        "0.6667",
        "0.5000",
        "0.3333",
    )
    by_campaign = await reporting.report("/reports/funnel", group_by="campaign_id", **{"from": "2026-01-01"})
    assert [(*funnel_numbers(r), r["group_name"]) for r in by_campaign["rows"]] == [
        ("spring", 2, 2, 2, 2, 1, "Spring fair"),
        (None, 1, 1, 0, 0, 0, None),
    ]


async def test_a_historical_import_lands_in_its_own_periods(reporting: Reporting) -> None:
    by_year = await reporting.report("/reports/funnel", period="year")
    assert [(r["period"], *funnel_numbers(r)[1:]) for r in by_year["rows"]] == [
        ("2019-01-01", 1, 1, 1, 1, 0),
        ("2020-01-01", 0, 0, 0, 0, 1),
        ("2026-01-01", 3, 3, 2, 2, 1),
    ]
    history = await reporting.report(
        "/reports/pipeline-history", period="month", **{"from": "2019-12-01", "to": "2020-04-01"}
    )
    assert [(r["day"], r["stage_id"], r["count"], r["weighted_amount"]) for r in history["rows"]] == [
        ("2019-12-31", "prospecting", 1, "80.0000"),
        ("2020-01-31", "negotiation", 1, "640.0000"),
        ("2020-02-29", "negotiation", 1, "640.0000"),
    ]


async def test_the_pipeline_sums_open_opportunities_with_exact_weighted_amounts(reporting: Reporting) -> None:
    report = await reporting.report("/reports/pipeline")
    assert report["as_of"] == NEWEST
    assert [
        (
            r["pipeline_id"],
            r["stage_id"],
            r["stage_name"],
            r["currency"],
            r["count"],
            r["amount"],
            r["weighted_amount"],
        )
        for r in report["rows"]
    ] == [
        ("default", "proposal", "Proposal", "EUR", 1, "12500.50", "6250.2500"),
        ("enterprise", "prospecting", "Prospecting", "EUR", 1, "999.99", "99.9990"),
    ]
    north = await reporting.report("/reports/pipeline", group_by="sales_team", product_id="p1")
    assert [(r["sales_team_id"], r["count"]) for r in north["rows"]] == [("north", 1)]


async def test_campaign_roi_and_win_loss_from_the_stored_counters(reporting: Reporting) -> None:
    [spring] = (await reporting.report("/reports/campaign-roi"))["rows"]
    assert (spring["members"], spring["leads"], spring["converted_leads"], spring["opportunities"]) == (
        2,
        2,
        2,
        2,
    )
    assert (spring["actual_cost"], spring["won_revenue"], spring["cost_per_lead"], spring["roi"]) == (
        "1500.00",
        "3000.00",
        "750.00",
        "1.0000",
    )
    reasons = await reporting.report("/reports/win-loss", group_by="loss_reason", **{"from": "2026-01-01"})
    assert [(r["group"], r["won"], r["lost"]) for r in reasons["rows"]] == [("price", 0, 1), (None, 1, 0)]


async def test_views_are_served_as_csv_with_a_header_row(reporting: Reporting) -> None:
    response = await reporting.get(
        "/reports/funnel", group_by="lead_source", format="csv", **{"from": "2026-01-01"}
    )
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/csv")
    assert response.headers["x-report-as-of"] == NEWEST
    table = list(csv.reader(io.StringIO(response.text)))
    assert table[0][:5] == ["as_of", "group_by", "group", "group_name", "period"]
    assert [row[:5] + row[5:10] for row in table[1:]] == [
        [NEWEST, "lead_source", "event", "", "", "1", "1", "0", "0", "0"],
        [NEWEST, "lead_source", "web", "", "", "2", "2", "2", "2", "1"],
    ]
    by_accept = await reporting.http.get(
        "/reports/pipeline", headers={"Accept": "text/csv", "Authorization": f"Bearer {READ_TOKEN}"}
    )
    lines = by_accept.text.splitlines()
    assert lines[0].startswith("as_of,pipeline_id,stage_id,stage_name,owner_id,") and len(lines) == 3


async def test_stored_facts_and_counters_equal_the_fold_of_the_same_events(reporting: Reporting) -> None:
    expected = MemoryFactStore().fold(STORY)
    live = await reporting.live()
    assert {f.lead_id: f for f in await live.all_leads()} == expected.leads
    assert {f.opportunity_id: f for f in await live.all_opportunities()} == expected.opportunities
    for view in COUNTER_VIEWS:
        stored = await live.all_counters(view)
        assert stored == memory_counters(expected, view), view


def memory_counters(store: MemoryFactStore, view: str) -> dict[str, Document]:
    documents: dict[str, Document] = {}
    for key in {*store.counts, *store.names}:
        if key.view == view:
            measures = nest({**store.counts.get(key, {}), **store.names.get(key, {})})
            documents[key.doc_id] = {"_id": key.doc_id, "k": key.labels(), **measures}
    return documents


async def test_every_view_read_from_the_database_equals_the_view_in_memory(reporting: Reporting) -> None:
    stored = GenerationSource(await reporting.live())
    memory = MemoryViews(MemoryFactStore().fold(STORY))
    for view, _, query in QUERIES:
        assert await view(stored, query) == await view(memory, query), query


async def test_concurrent_transactions_folding_the_same_facts_converge(infra: Any) -> None:
    """All events at once, each in its own transaction, as concurrent consumers would: write
    conflicts make the losers retry, so no fact and no counter is left stale."""
    client: AsyncMongoClient[Document] = AsyncMongoClient(infra.mongo_url, tz_aware=True)
    database = f"{infra.database_prefix}{isolation_key().replace('.', '_')}reporting_concurrency"
    generation = ReportingRepository(client, client[database]).generation(1)
    try:

        async def fold(event: CloudEvent[Any]) -> None:
            async def work(session: AsyncClientSession) -> None:
                store = generation.facts(session)
                await project(event, store)
                await store.flush(events=1)

            await in_transaction(client, work)

        await asyncio.gather(*(fold(event) for event in STORY))
        await generation.merge_all(client)
        expected = MemoryFactStore().fold(STORY)
        assert {f.lead_id: f for f in await generation.all_leads()} == expected.leads
        assert {f.opportunity_id: f for f in await generation.all_opportunities()} == expected.opportunities
        for view in COUNTER_VIEWS:
            assert await generation.all_counters(view) == memory_counters(expected, view), view
    finally:
        await client.drop_database(database)
        await client.close()


async def test_pending_counts_events_folded_but_not_merged(infra: Any) -> None:
    """The lag every view reports includes events whose differences wait for the merger:
    counted per event, however many events one delta holds."""
    client: AsyncMongoClient[Document] = AsyncMongoClient(infra.mongo_url, tz_aware=True)
    database = f"{infra.database_prefix}{isolation_key().replace('.', '_')}reporting_pending"
    generation = ReportingRepository(client, client[database]).generation(1)
    try:
        halves = [STORY[: len(STORY) // 2], STORY[len(STORY) // 2 :]]
        for events in halves:

            async def work(session: AsyncClientSession, events: list[CloudEvent[Any]] = events) -> None:
                store = generation.facts(session)
                await project_many(events, store)
                await store.flush(events=len(events))

            await in_transaction(client, work)
        assert await generation.pending() == len(STORY)
        assert (await generation.merge(client, batch=1)).deltas == 1
        assert await generation.pending() == len(halves[1])
        await generation.merge_all(client)
        assert await generation.pending() == 0
    finally:
        await client.drop_database(database)
        await client.close()


async def test_views_need_a_read_token(reporting: Reporting) -> None:
    for path in ("/reports/funnel", "/reports/campaign-roi", "/reports/pipeline-history?from=2026-03-01"):
        assert (await reporting.http.get(path)).status_code == 401
        bad = await reporting.http.get(path, headers={"Authorization": "Bearer wrong"})
        assert bad.status_code == 401


@pytest.mark.parametrize(
    ("path", "params", "field"),
    [
        ("/reports/funnel", {"campaign_id": "$gt"}, "campaign_id"),
        ("/reports/funnel", {"lead_source": "carrier-pigeon"}, "lead_source"),
        ("/reports/funnel", {"from": "2026-03-01T10:00:00"}, "from"),
        ("/reports/funnel", {"from": "2026-03-05", "to": "2026-03-01"}, "to"),
        ("/reports/funnel", {"group_by": "owner_password"}, "group_by"),
        ("/reports/funnel", {"group_by": "rating", "owner_id": "rep-1", "campaign_id": "spring"}, "group_by"),
        ("/reports/funnel", {"period": "day"}, "from"),
        ("/reports/funnel", {"format": "xlsx"}, "format"),
        ("/reports/pipeline", {"owner_id": "../etc"}, "owner_id"),
        ("/reports/win-loss", {"currency": "euro"}, "currency"),
        ("/reports/stage-velocity", {"from": "2026-03-02", "to": "2026-04-01"}, "from"),
        ("/reports/pipeline-history", {}, "from"),
        ("/reports/campaign-roi", {"status": "sleeping"}, "status"),
    ],
)
async def test_bad_filters_get_a_422_naming_the_field(
    reporting: Reporting, path: str, params: dict[str, str], field: str
) -> None:
    response = await reporting.get(path, **params)
    assert response.status_code == 422, response.text
    assert [problem["field"] for problem in response.json()["fields"]] == [field]


async def test_every_view_says_how_far_behind_the_topics_it_is(reporting: Reporting) -> None:
    async def lag_measured_and_caught_up() -> bool:
        funnel = await reporting.get("/reports/funnel")
        roi = await reporting.get("/reports/campaign-roi", format="csv")
        return bool(
            funnel.json()["consumer_lag"] == 0
            and funnel.headers["X-Consumer-Lag"] == "0"
            and roi.headers["X-Consumer-Lag"] == "0"
            and roi.headers["X-Report-As-Of"] == NEWEST
        )

    await eventually(lag_measured_and_caught_up, timeout=30)
