"""Money never overflows reporting's counters: any amounts the contracts accept (up to
9,999,999,999,999,999.99), in any number and at any probability, add up exactly in every money
view, equal to Python's Decimal sums of the same amounts.

The counters go the way the service stores them: each event's differences as delta documents
through BSON (which carries int64 at most), added up per merge and written as ``$inc`` of int64
fields (which MongoDB refuses to overflow) - here onto documents in memory, checked like the
database checks; and, with fewer examples, through the real merger into SecantusDB."""

from __future__ import annotations

import asyncio
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import date
from decimal import Decimal, localcontext
from typing import Any

import bson
import pytest
from crm_contracts.envelope import CloudEvent
from crm_contracts.events.common import MONEY_MAX
from crm_contracts.events.leads import LeadSource
from crm_contracts.events.opportunities import ForecastCategory, StageKind
from crm_localinfra.testing import isolation_key
from crm_reporting import views
from crm_reporting.aggregates import CounterKey, Tally, flatten
from crm_reporting.deltas import INT64_MAX, INT64_MIN, DeltaSum, delta_documents, increments
from crm_reporting.memory import MemoryFactStore, MemoryViews
from crm_reporting.projection import project_many
from crm_reporting.repository import Generation, GenerationSource, ReportingRepository
from crm_runtime.mongo import Document, in_transaction
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from pymongo import AsyncMongoClient
from pymongo.asynchronous.client_session import AsyncClientSession
from reporting_events import START, Deal, Stage, at, campaign_created, days

HUGE = Decimal("5000000000000000.00")


@dataclass(frozen=True)
class Sale:
    amount: Decimal
    probability: int
    won: bool


def stage(probability: int) -> Stage:
    return Stage(
        f"open-{probability}",
        f"Open at {probability} %",
        StageKind.OPEN,
        probability,
        ForecastCategory.PIPELINE,
        0,
    )


def events_of(sales: list[Sale]) -> list[CloudEvent[Any]]:
    """Each sale is an opportunity created on 2 March 2026 in an open stage of its probability;
    the won ones close the next day. All count in the same campaign, source and owner."""
    events: list[CloudEvent[Any]] = [campaign_created("fair", "Fair")]
    for number, sale in enumerate(sales):
        deal = Deal(f"o{number}", amount=str(sale.amount), campaign="fair", source=LeadSource.WEB)
        events.append(deal.created_event(stage(sale.probability)))
        if sale.won:
            events += deal.close(2, at(days(1)), stage(sale.probability), won=True)
    return events


money = st.one_of(
    st.sampled_from([MONEY_MAX, HUGE, Decimal("0.01"), Decimal("0.00")]),
    st.decimals(min_value=0, max_value=MONEY_MAX, places=2),
)
sales = st.builds(Sale, money, st.integers(0, 100), st.booleans())


# -- what the views must say: Decimal sums of the amounts ---------------------------------------
def weighted(sale: Sale) -> Decimal:
    return sale.amount * sale.probability / 100


def expected(sales: list[Sale]) -> dict[str, Any]:
    with localcontext() as exact:
        exact.prec = 60
        open_ = [s for s in sales if not s.won]
        won = [s for s in sales if s.won]
        by_stage: dict[str, list[Sale]] = {}
        for sale in open_:
            by_stage.setdefault(stage(sale.probability).stage_id, []).append(sale)
        pipeline = {
            stage_id: (len(group), sum(s.amount for s in group), sum(weighted(s) for s in group))
            for stage_id, group in by_stage.items()
        }
        forecast = {}
        if open_:
            forecast[("2026-06", "pipeline")] = (
                len(open_),
                sum(s.amount for s in open_),
                sum(weighted(s) for s in open_),
            )
        if won:
            total = sum(s.amount for s in won)
            forecast[("2026-03", "closed")] = (len(won), total, total)
        won_revenue = sum((s.amount for s in won), Decimal("0"))
        history = {
            ("2026-03-02", stage_id): (len(g), sum(s.amount for s in g), sum(weighted(s) for s in g))
            for stage_id, g in _by_stage(sales).items()
        } | {("2026-03-03", stage_id): figures for stage_id, figures in pipeline.items()}
        return {
            "pipeline": pipeline,
            "forecast": forecast,
            "won": (len(won), won_revenue),
            "history": history,
        }


def _by_stage(sales: Iterable[Sale]) -> dict[str, list[Sale]]:
    grouped: dict[str, list[Sale]] = {}
    for sale in sales:
        grouped.setdefault(stage(sale.probability).stage_id, []).append(sale)
    return grouped


async def shown(source: views.ViewSource) -> dict[str, Any]:
    """The same figures as every money view shows them."""
    pipeline = await views.pipeline_rows(source, views.PipelineQuery(), START)
    forecast = await views.forecast_rows(source, views.ForecastQuery())
    [win_loss] = await views.win_loss_rows(source, views.WinLossQuery(currency="EUR"))
    sources = await views.lead_source_rows(source, views.LeadSourceQuery(currency="EUR"))
    [campaign] = await views.campaign_roi_rows(source, views.CampaignRoiQuery())
    history = await views.history_rows(
        source, views.PipelineHistoryQuery.model_validate({"from": date(2026, 3, 2), "to": date(2026, 3, 4)})
    )
    [web] = [row for row in sources if row.lead_source == "web"]
    assert win_loss.won_revenue == web.won_revenue == campaign.won_revenue
    return {
        "pipeline": {r.stage_id: (r.count, r.amount, r.weighted_amount) for r in pipeline},
        "forecast": {
            (r.close_month, r.forecast_category.value): (r.count, r.amount, r.weighted_amount)
            for r in forecast
        },
        "won": (win_loss.won, win_loss.won_revenue),
        "history": {
            (r.day.isoformat(), r.stage_id): (r.count, r.amount, r.weighted_amount)
            for r in history
            if r.count
        },
    }


# -- the counters as the merger stores them, in memory ------------------------------------------
@dataclass
class LoggedStore(MemoryFactStore):
    """The in-memory fold, also keeping each event's delta documents as BSON stores them."""

    deltas: list[Document] = field(default_factory=list)

    def apply(self, tally: Tally) -> None:
        super().apply(tally)
        # bson.encode refuses integers beyond int64, as inserting the delta would.
        self.deltas += [bson.decode(bson.encode(d)) for d in delta_documents(tally, {})]


def stored_counters(deltas: list[Document], per_merge: int) -> dict[tuple[str, str], dict[str, int]]:
    """The deltas merged ``per_merge`` at a time into int64 fields, with ``$inc``'s checks."""
    documents: dict[tuple[str, str], dict[str, int]] = {}
    for start in range(0, len(deltas), per_merge):
        total = DeltaSum()
        for delta in deltas[start : start + per_merge]:
            total.add(delta)
        for key, fields in total.counts.items():
            held = documents.setdefault(key, {})
            for path, value in bson.decode(bson.encode(increments(fields))).items():
                result = held.get(path, 0) + value
                if not INT64_MIN <= result <= INT64_MAX:
                    raise OverflowError(f"$inc of {path} in {key} passes int64")  # MongoDB refuses it
                held[path] = result
    return documents


def mirror(store: MemoryFactStore, documents: dict[tuple[str, str], dict[str, int]]) -> MemoryViews:
    """Views over the stored counter documents (high parts and all) and the store's facts."""
    counts: dict[CounterKey, Any] = {
        CounterKey.of_doc_id(view, doc_id): f for (view, doc_id), f in documents.items()
    }
    return MemoryViews(MemoryFactStore(campaigns=store.campaigns, names=store.names, counts=counts))


@settings(
    max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large]
)
@given(sales=st.lists(sales, min_size=1, max_size=300), per_merge=st.integers(1, 600))
@example(sales=[Sale(HUGE, 10, False), Sale(HUGE, 10, False)], per_merge=500)
@example(sales=[Sale(MONEY_MAX, 100, False)], per_merge=1)
@example(sales=[Sale(MONEY_MAX, 100, p % 2 == 0) for p in range(300)], per_merge=600)
def test_any_accepted_amounts_add_up_exactly_in_every_money_view(sales: list[Sale], per_merge: int) -> None:
    store = LoggedStore()
    store.fold(events_of(sales))
    stored = asyncio.run(shown(mirror(store, stored_counters(store.deltas, per_merge))))
    assert stored == expected(sales)
    assert asyncio.run(shown(MemoryViews(store))) == stored


# -- through the real merger into SecantusDB ----------------------------------------------------
async def fold_and_merge(
    client: AsyncMongoClient[Document], generation: Generation, events: list[CloudEvent[Any]], per_fold: int
) -> None:
    """Events folded ``per_fold`` per transaction, as the consumer does, merged as they come."""
    for start in range(0, len(events), per_fold):
        batch = events[start : start + per_fold]

        async def work(session: AsyncClientSession, batch: list[CloudEvent[Any]] = batch) -> None:
            store = generation.facts(session)
            await project_many(batch, store)
            await store.flush(events=len(batch))

        await in_transaction(client, work)
        if start // per_fold % 2:
            await generation.merge_all(client)
    await generation.merge_all(client)


@pytest.mark.integration
@settings(
    max_examples=4, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large]
)
@given(sales=st.lists(sales, min_size=1, max_size=24), per_fold=st.integers(1, 60))
@example(sales=[Sale(HUGE, 10, False), Sale(HUGE, 10, False)], per_fold=1)
@example(sales=[Sale(MONEY_MAX, 100, n % 3 == 0) for n in range(20)], per_fold=60)
def test_the_merger_stores_any_accepted_amounts_exactly(infra: Any, sales: list[Sale], per_fold: int) -> None:
    async def check() -> None:
        client: AsyncMongoClient[Document] = AsyncMongoClient(infra.mongo_url, tz_aware=True)
        database = f"{infra.database_prefix}{isolation_key().replace('.', '_')}reporting_money"
        try:
            generation = ReportingRepository(client, client[database]).generation(1)
            events = events_of(sales)
            await fold_and_merge(client, generation, events, per_fold)
            assert await generation.pending() == 0
            assert await shown(GenerationSource(generation)) == expected(sales)
            reference = MemoryFactStore().fold(events)
            for view in {key.view for key in reference.counts}:
                stored = await generation.all_counters(view)
                assert {doc_id: _numbers(flatten(doc)) for doc_id, doc in stored.items()} == {
                    key.doc_id: _numbers(fields)
                    for key, fields in reference.counts.items()
                    if key.view == view
                }, view
        finally:
            await client.drop_database(database)
            await client.close()

    asyncio.run(check())


def _numbers(fields: dict[str, Any]) -> dict[str, Any]:
    return {path: value for path, value in fields.items() if value and not path.startswith("k.")}
