"""The merger is never held up by one delta (real SecantusDB): a delta it cannot apply is set
aside with its reason while the deltas after it are merged; the pending figure, the metrics and
the readiness detail say so; after a fix, the set-aside delta is retried and merged."""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import httpx
import pytest
from crm_contracts.envelope import CloudEvent
from crm_localinfra.testing import eventually, isolation_key
from crm_reporting import set_aside
from crm_reporting.aggregates import COUNTER_VIEWS, FUNNEL, HIGH_BASE, CounterKey, nest
from crm_reporting.bootstrap import ReportingSettings, create_app
from crm_reporting.memory import MemoryFactStore
from crm_reporting.merger import Merger
from crm_reporting.projection import project_many
from crm_reporting.repository import Generation, ReportingRepository
from crm_runtime.mongo import Document, in_transaction
from prometheus_client import CollectorRegistry
from pymongo import AsyncMongoClient
from pymongo.asynchronous.client_session import AsyncClientSession
from reporting_story import STORY

# A counter document whose field is not a number (damaged by hand, say): ``$inc`` on it fails
# however often it is tried, which is what a delta the merger cannot apply looks like.
DAMAGED = CounterKey(FUNNEL, ("lead_source",), ("carrier-pigeon",), "all")
HALF = len(STORY) // 2


@dataclass
class Setup:
    settings: ReportingSettings
    client: AsyncMongoClient[Document]
    repo: ReportingRepository
    generation: Generation
    registry: CollectorRegistry
    merger: Merger

    def metric(self, name: str, **labels: str) -> float:
        return float(self.registry.get_sample_value(name, labels) or 0)


@pytest.fixture
async def setup(infra: Any) -> AsyncIterator[Setup]:
    client: AsyncMongoClient[Document] = AsyncMongoClient(infra.mongo_url, tz_aware=True)
    database = f"{infra.database_prefix}{isolation_key().replace('.', '_')}reporting_merger"
    settings = ReportingSettings(mongo_url=infra.mongo_url, mongo_database=database)
    repo = ReportingRepository(client, client[database])
    await repo.setup()
    registry = CollectorRegistry()
    merger = Merger(repo, registry, gather_seconds=0.05, idle_seconds=0.05)
    try:
        yield Setup(settings, client, repo, await repo.live(), registry, merger)
    finally:
        await merger.stop()
        await client.drop_database(database)
        await client.close()


async def fold(setup: Setup, events: list[CloudEvent[Any]]) -> None:
    async def work(session: AsyncClientSession) -> None:
        store = setup.generation.facts(session)
        await project_many(events, store)
        await store.flush(events=len(events))

    await in_transaction(setup.client, work)


@pytest.mark.integration
async def test_a_delta_that_cannot_be_applied_is_set_aside_and_merging_goes_on(setup: Setup) -> None:
    g = setup.generation
    await g.counters[FUNNEL].insert_one({"_id": DAMAGED.doc_id, "k": DAMAGED.labels(), "t": {"a": "text"}})
    await fold(setup, STORY[:HALF])
    bad = await g.deltas.insert_one(
        {"counts": [[FUNNEL, DAMAGED.doc_id, [["t.a", 1]]]], "names": [], "events": 1}
    )
    await g.freshness.insert_one({"_id": "event_totals:folded:test", "kind": "event_totals", "folded": 1})
    await fold(setup, STORY[HALF:])
    assert await g.pending() == len(STORY) + 1

    setup.merger.start()

    async def merged_around_it() -> bool:
        return await g.pending() == 0 and await g.deltas.count_documents({}) == 0

    await eventually(merged_around_it, timeout=60)
    expected = MemoryFactStore().fold(STORY)
    for view in COUNTER_VIEWS:
        stored = await g.all_counters(view)
        stored.pop(DAMAGED.doc_id, None)
        assert {doc_id: _measures(doc) for doc_id, doc in stored.items()} == _memory(expected, view), view

    [held] = await set_aside.run(setup.settings, "list", [])  # what the CLI prints
    assert held["id"] == str(bad.inserted_id) and held["events"] == 1 and held["generation"] == 1
    assert held["error"] == "BulkWriteError" and "$inc" in held["reason"]
    raw = await g.set_aside_deltas.find_one({"_id": bad.inserted_id})
    assert raw is not None and raw["delta"]["counts"] == [[FUNNEL, DAMAGED.doc_id, [["t.a", 1]]]]
    assert setup.metric("crm_reporting_deltas_set_aside_total") == 1
    assert setup.metric("crm_reporting_set_aside_deltas") == 1
    # The batch holding it failed, then it alone: two permanent failures, nothing transient.
    assert setup.metric("crm_reporting_merge_failures_total", kind="permanent") == 2
    assert setup.metric("crm_reporting_merge_failures_total", kind="transient") == 0
    assert setup.metric("crm_reporting_last_merge_timestamp_seconds") > 0
    assert setup.metric("crm_reporting_pending_events") == 0
    health = await setup.merger.health()
    assert (health["status"], health["set_aside_deltas"], health["pending_events"]) == (
        "deltas_set_aside",
        1,
        0,
    )
    assert health["last_merge"] is not None and "failing_since" not in health

    # The damage is repaired; the delta set aside goes back and is merged like any other.
    await g.counters[FUNNEL].update_one({"_id": DAMAGED.doc_id}, {"$set": {"t.a": 0}})
    assert await set_aside.run(setup.settings, "retry", [held["id"]]) == [{"retried": 1, "generation": 1}]

    async def retried_and_merged() -> bool:
        document = await g.counters[FUNNEL].find_one({"_id": DAMAGED.doc_id})
        return bool(
            document
            and document["t"]["a"] == 1
            and await g.pending() == 0
            and setup.metric("crm_reporting_set_aside_deltas") == 0
            and (await setup.merger.health())["status"] == "ok"
        )

    await eventually(retried_and_merged, timeout=60)
    assert await g.set_aside_list() == []
    assert setup.metric("crm_reporting_deltas_set_aside_total") == 1


@pytest.mark.integration
async def test_a_batch_that_fails_only_together_is_merged_one_delta_at_a_time(setup: Setup) -> None:
    """Two deltas fine alone whose sum cannot be written in one update (its high part passes
    int64, though the counter's final value fits): nothing is set aside, each is merged alone."""
    g = setup.generation
    key = CounterKey(FUNNEL, (), (), "all")
    await g.counters[FUNNEL].insert_one({"_id": key.doc_id, "k": key.labels(), "t": {"x~hi": -(2**62)}})
    for _ in range(2):
        delta = {
            "counts": [[FUNNEL, key.doc_id, [["t.x", str(2**62 * HIGH_BASE)]]]],
            "names": [],
            "events": 0,
            "keys": 1,  # sized as delta_documents sizes them, so the merger takes both together
        }
        await g.deltas.insert_one(delta)
    assert (await setup.merger.step(g)).deltas == 0  # the batch failed
    failing = await setup.merger.health()
    assert (failing["status"], failing["last_error"]) == ("failing", "OverflowError") and failing[
        "failing_since"
    ]
    assert (await setup.merger.step(g)).deltas == 1
    assert (await setup.merger.health())["status"] == "ok"
    assert (await setup.merger.step(g)).deltas == 1
    assert await g.oldest_delta() is None and await g.set_aside_list() == []
    document = await g.counters[FUNNEL].find_one({"_id": key.doc_id})
    assert document is not None and document["t"] == {"x~hi": 2**62}
    assert setup.metric("crm_reporting_merge_failures_total", kind="permanent") == 1
    assert setup.metric("crm_reporting_deltas_set_aside_total") == 0


async def test_readiness_shows_the_merger_without_depending_on_it() -> None:
    """The detail is informational: readiness is the database's and Kafka's (not started here)."""
    app = create_app(ReportingSettings())
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://service") as http:
        body = (await http.get("/health/ready")).json()
    assert set(body["checks"]) == {"mongodb", "kafka"}
    assert body["details"]["merger"]["status"] == "ok"
    assert body["details"]["merger"]["set_aside_deltas"] == 0


def _measures(document: Document) -> Document:
    return {name: value for name, value in document.items() if name not in ("_id", "k")}


def _memory(store: MemoryFactStore, view: str) -> dict[str, Document]:
    return {
        key.doc_id: nest({**store.counts.get(key, {}), **store.names.get(key, {})})
        for key in {*store.counts, *store.names}
        if key.view == view
    }
