"""Set-based conversions: a fetched batch of ``lead.converted`` events, applied by the consumer
in one transaction (one ``$in`` read per collection, one insert per collection, one outbox
write), ends in exactly the accounts, domain claims, contacts, opportunities and outbox events
that applying the same deliveries one at a time gives: redeliveries, conversions naming the
same account or a known company domain under another id, and a conversion into an unknown
pipeline (which fails the batch, so its events are applied one at a time and only it fails)."""

from __future__ import annotations

import itertools
import json
import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import pytest
from crm_contracts import catalog
from crm_contracts.envelope import CloudEvent
from crm_contracts.events.leads import LeadConverted
from crm_localinfra.testing import isolation_key, service_env
from crm_opportunities import use_cases
from crm_opportunities.bootstrap import OpportunitiesSettings
from crm_opportunities.handlers import register_handlers
from crm_opportunities.repository import Repositories
from crm_opportunities.use_cases import Policy, seed_default_pipeline
from crm_runtime import EventConsumer, ServiceRuntime, make_event
from crm_runtime.consumer import Delivery
from crm_runtime.mongo import Document, in_transaction
from crm_runtime.outbox import Outbox
from crm_runtime.unit_of_work import UnitOfWork
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from prometheus_client import CollectorRegistry
from pymongo import AsyncMongoClient

pytestmark = pytest.mark.integration

NOW = datetime(2026, 11, 20, 12, 0, tzinfo=UTC)
COLLECTIONS = ("accounts", "account_domains", "contacts", "opportunities")
REP = {"id": "rep-7", "name": "Grace"}

conversions = st.builds(
    lambda lead, account, domain, contact, opportunity, pipeline, at: LeadConverted.model_validate(
        {
            "lead_id": f"lead-{lead}",
            "account": {
                "account_id": f"acc-{account}",
                "is_new": True,
                "name": f"Co {account}",
                "domain": domain,
            },
            "contact": {"contact_id": f"con-{contact}", "is_new": True, "last_name": "Lovelace"},
            "opportunity": None
            if opportunity is None
            else {
                "opportunity_id": f"opp-{opportunity}",
                "name": f"Deal {opportunity}",
                "pipeline_id": pipeline,
            },
            "lead_source": "web",
            "converted_at": at,
            "converted_by": REP,
        }
    ),
    st.integers(0, 5),
    st.integers(0, 4),
    st.sampled_from([None, "engines.example", "acme.io", "www.acme.io"]),
    st.integers(0, 4),
    st.one_of(st.none(), st.integers(0, 4)),
    st.sampled_from([None] * 7 + ["no-such-pipeline"]),
    st.sampled_from(["2026-11-01T10:00:00Z", "2026-11-02T10:00:00.000500Z"]),
)


def converted_event(converted: LeadConverted) -> CloudEvent[LeadConverted]:
    return make_event(catalog.LEAD_CONVERTED, converted, source="/crm/leads", subject=converted.lead_id)


@st.composite
def batches(draw: st.DrawFn) -> tuple[list[LeadConverted], list[list[CloudEvent[LeadConverted]]]]:
    stored = draw(st.lists(conversions, max_size=3))
    stream = [converted_event(c) for c in draw(st.lists(conversions, min_size=2, max_size=12))]
    resent = draw(st.lists(st.sampled_from(stream), max_size=3))
    delivery = draw(st.permutations(stream + resent))
    cuts = sorted(draw(st.sets(st.integers(1, len(delivery) - 1), max_size=2)))
    bounds = [0, *cuts, len(delivery)]
    return stored, [delivery[a:b] for a, b in itertools.pairwise(bounds)]


def _into_unknown_pipeline(converted: LeadConverted) -> bool:
    return converted.opportunity is not None and converted.opportunity.pipeline_id == "no-such-pipeline"


@dataclass
class _Record:
    headers: tuple[tuple[str, bytes], ...] = ()
    offset: int = 0


@dataclass
class Records:
    client: AsyncMongoClient[Document]
    db: Any
    consumer: EventConsumer

    async def deliver(self, events: list[CloudEvent[Any]]) -> None:
        """As the consumer: the batch, or (when it fails) its events one at a time, a failing
        one left out (the consumer dead-letters it). Only a batch holding a conversion into an
        unknown pipeline may fail."""
        route = self.consumer.routes[catalog.LEAD_CONVERTED.topic]
        try:
            await self.consumer.apply_batch([Delivery(route, event, _Record()) for event in events])
            return
        except Exception:
            if len(events) == 1:
                return
            if not any(_into_unknown_pipeline(event.data) for event in events):
                raise  # a batch of good conversions must not need the one-at-a-time path
        for event in events:
            await self.deliver([event])

    async def state(self) -> dict[str, list[Document]]:
        return {name: await self.db[name].find(sort=[("_id", 1)]).to_list() for name in COLLECTIONS}

    async def events(self) -> list[tuple[str, str, Any]]:
        entries = await self.db.outbox.find(sort=[("_id", 1)]).to_list()
        return [(e["topic"], e["key"], {**json.loads(e["payload"]), "id": None}) for e in entries]


@pytest.fixture(scope="module")
async def runtime(infra: Any) -> AsyncIterator[ServiceRuntime]:
    service = ServiceRuntime(
        OpportunitiesSettings(**service_env(infra, "opportunities", isolation=isolation_key()))
    )
    yield service
    await service.client.close()


@pytest.fixture(autouse=True)
def frozen_clock(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    monkeypatch.setattr(use_cases, "utcnow", lambda: NOW)
    yield


async def new_records(service: ServiceRuntime) -> Records:
    db = service.client[f"{service.settings.database_name}_{uuid.uuid4().hex[:8]}"]
    repos = Repositories.of(db)
    await repos.ensure_indexes()
    outbox = Outbox(db, service.settings)
    await in_transaction(
        service.client,
        lambda s: seed_default_pipeline(repos, UnitOfWork(s, outbox), Policy(company_currency="EUR")),
    )
    consumer = EventConsumer(
        service.broker, service.client, db, outbox, service.settings, CollectorRegistry()
    )
    register_handlers(consumer, repos)
    return Records(service.client, db, consumer)


@settings(max_examples=20, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(case=batches())
async def test_a_batch_of_conversions_ends_as_the_same_conversions_applied_one_at_a_time(
    runtime: ServiceRuntime, case: tuple[list[LeadConverted], list[list[CloudEvent[LeadConverted]]]]
) -> None:
    stored, delivery = case
    batched, one_by_one = await new_records(runtime), await new_records(runtime)
    try:
        for records in (batched, one_by_one):
            for converted in stored:
                await records.deliver([converted_event(converted)])
        for batch in delivery:
            await batched.deliver(batch)
            for event in batch:
                await one_by_one.deliver([event])
        assert await batched.state() == await one_by_one.state()
        assert await batched.events() == await one_by_one.events()
    finally:
        for records in (batched, one_by_one):
            await records.client.drop_database(records.db.name)
