"""Set-based capture: a fetched batch of ``lead.captured`` events, applied by the consumer in
one transaction with a constant number of database round trips, ends in exactly the leads and
the outbox events that applying the same deliveries one at a time gives; duplicates within
the batch included, whichever keys they share, on top of stored (and merged) leads."""

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
from crm_contracts.events.common import Actor
from crm_contracts.events.leads import LeadCaptured
from crm_leads import use_cases
from crm_leads.bootstrap import LeadsSettings
from crm_leads.handlers import register_handlers
from crm_leads.repository import ConcurrentModification, LeadRepository
from crm_leads.use_cases import capture_leads, merge_leads
from crm_localinfra.testing import CommandCounter, isolation_key, service_env
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
KEYS = [f"k{n}" for n in range(6)]
EMAILS = [None, "ada@engines.example", "ADA@engines.example", "bob@acme.io", "carol@gmail.com"]
PHONES = [None, "+44 20 7946 0000", "020 7946 0000", "+36 1 234 5678"]
NAMES = [("Ada", "Lovelace"), ("ada", "LOVELACE"), ("Bob", "Babbage"), (None, None)]
WEBSITES = [None, "https://engines.example", "www.acme.io"]
TIMES = ["2026-11-01T10:00:00Z", "2026-11-02T10:00:00Z", "2026-11-02T10:00:00.000500Z"]


def _capture(
    key: str,
    email: str | None,
    phone: str | None,
    name: tuple[str | None, str | None],
    website: str | None,
    size: int | None,
    at: str,
) -> LeadCaptured:
    first, last = name
    if not (email or phone or first or last):
        last = "Unnamed"  # a capture must name someone (a lead without any identity is refused)
    return LeadCaptured.model_validate(
        {
            "source_system": "webforms",
            "external_id": key,
            "person": {"email": email, "phone": phone, "first_name": first, "last_name": last},
            "company": {"website": website, "size": size},
            "captured_at": at,
        }
    )


captures = st.builds(
    _capture,
    st.sampled_from(KEYS),
    st.sampled_from(EMAILS),
    st.sampled_from(PHONES),
    st.sampled_from(NAMES),
    st.sampled_from(WEBSITES),
    st.sampled_from([None, 20, 500]),
    st.sampled_from(TIMES),
)


def captured_event(captured: LeadCaptured) -> CloudEvent[LeadCaptured]:
    return make_event(catalog.LEAD_CAPTURED, captured, source="/webforms", subject=captured.external_id)


@dataclass(frozen=True)
class Case:
    stored: list[LeadCaptured]  # captured one by one before the batches
    merge: bool  # then the first two stored leads merged
    batches: list[list[CloudEvent[LeadCaptured]]]


@st.composite
def cases(draw: st.DrawFn) -> Case:
    stored = draw(st.lists(captures, max_size=4))
    stream = [captured_event(c) for c in draw(st.lists(captures, min_size=2, max_size=14))]
    resent = draw(st.lists(st.sampled_from(stream), max_size=4))  # same event id again
    renamed = [captured_event(e.data) for e in draw(st.lists(st.sampled_from(stream), max_size=3))]
    delivery = draw(st.permutations(stream + resent + renamed))
    cuts = sorted(draw(st.sets(st.integers(1, len(delivery) - 1), max_size=3)))
    bounds = [0, *cuts, len(delivery)]
    batches = [delivery[a:b] for a, b in itertools.pairwise(bounds)]
    merge = len({c.external_id for c in stored}) >= 2 and draw(st.booleans())
    return Case(stored, merge, batches)


@dataclass
class Leads:
    """One leads database with the service's consumer over it (no broker needed to apply)."""

    client: AsyncMongoClient[Document]
    db: Any
    repo: LeadRepository
    consumer: EventConsumer
    outbox: Outbox

    def unit_of_work(self, session: Any) -> UnitOfWork:
        return UnitOfWork(session, self.outbox)

    async def deliver(self, events: list[CloudEvent[Any]]) -> list[bool]:
        route = self.consumer.routes[catalog.LEAD_CAPTURED.topic]
        return await self.consumer.apply_batch([Delivery(route, event, _Record()) for event in events])

    async def leads(self) -> list[Document]:
        docs: list[Document] = await self.db.leads.find(sort=[("_id", 1)]).to_list()
        return docs

    async def events(self) -> list[tuple[str, str, bytes]]:
        """Topic, key and payload of each event, in order (event ids are random, so left out)."""
        entries = await self.db.outbox.find(sort=[("_id", 1)]).to_list()
        return [(e["topic"], e["key"], _without_id(e["payload"])) for e in entries]


@dataclass
class _Record:
    headers: tuple[tuple[str, bytes], ...] = ()
    offset: int = 0


def _without_id(payload: bytes) -> bytes:
    event = json.loads(payload)
    event.pop("id")
    return json.dumps(event, sort_keys=True).encode()


@pytest.fixture(scope="module")
def counter() -> CommandCounter:
    return CommandCounter()


@pytest.fixture(scope="module")
async def runtime(infra: Any, counter: CommandCounter) -> AsyncIterator[tuple[ServiceRuntime, Any]]:
    settings_ = LeadsSettings(**service_env(infra, "leads", isolation=isolation_key()))
    service = ServiceRuntime(settings_)
    client: AsyncMongoClient[Document] = AsyncMongoClient(
        settings_.mongo_url.get_secret_value(), tz_aware=True, w="majority", event_listeners=[counter]
    )
    yield service, client
    await client.close()
    await service.client.close()


@pytest.fixture(autouse=True)
def frozen_clock(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    # Both paths stamp the same times, so whole documents and event payloads can be compared.
    monkeypatch.setattr(use_cases, "now_ms", lambda: NOW)
    yield


async def new_leads(runtime: tuple[ServiceRuntime, Any]) -> Leads:
    service, client = runtime
    db = client[f"{service.settings.database_name}_{uuid.uuid4().hex[:8]}"]
    repo = LeadRepository(db)
    await repo.ensure_indexes()
    outbox = Outbox(db, service.settings)
    consumer = EventConsumer(service.broker, client, db, outbox, service.settings, CollectorRegistry())
    register_handlers(consumer, repo)
    return Leads(client, db, repo, consumer, outbox)


async def seed(leads: Leads, case: Case) -> None:
    for captured in case.stored:
        await leads.deliver([captured_event(captured)])
    if case.merge:
        docs = await leads.leads()
        survivor, duplicate = docs[0]["_id"], docs[1]["_id"]

        async def merge(session: Any) -> None:
            await merge_leads(leads.repo, leads.unit_of_work(session), survivor, duplicate, Actor(id="rep-1"))

        await in_transaction(leads.client, merge)


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(case=cases())
async def test_a_batch_of_captures_ends_as_the_same_captures_applied_one_at_a_time(
    runtime: tuple[ServiceRuntime, Any], case: Case
) -> None:
    batched, one_by_one = await new_leads(runtime), await new_leads(runtime)
    try:
        for leads in (batched, one_by_one):
            await seed(leads, case)
        batched_new: list[bool] = []
        one_by_one_new: list[bool] = []
        for batch in case.batches:
            batched_new += await batched.deliver(batch)
            for event in batch:
                one_by_one_new += await one_by_one.deliver([event])
        assert batched_new == one_by_one_new
        assert await batched.leads() == await one_by_one.leads()
        assert await batched.events() == await one_by_one.events()
    finally:
        for leads in (batched, one_by_one):
            await leads.client.drop_database(leads.db.name)


async def test_a_batch_of_captures_costs_the_same_round_trips_whatever_its_size(
    runtime: tuple[ServiceRuntime, Any], counter: CommandCounter
) -> None:
    """Reads, writes and commit per batch do not grow with the batch (each capture its own
    lookups and writes would be about 6 commands per event), with duplicates in the batch."""
    leads = await new_leads(runtime)
    costs = []
    try:
        for size in (5, 50):
            batch = [
                captured_event(
                    LeadCaptured.model_validate(
                        {
                            "source_system": "webforms",
                            "external_id": f"{size}-{n}",
                            "person": {"email": f"person{n % 7}@acme.io", "last_name": "Babbage"},
                            "captured_at": TIMES[n % 3],
                        }
                    )
                )
                for n in range(size)
            ]
            counter.commands.clear()
            assert all(await leads.deliver(batch))
            costs.append(len(counter.commands))
        assert costs[0] == costs[1], counter.commands
        stored = await leads.leads()
        assert len(stored) == 55
        assert all(doc["possible_duplicates"] for doc in stored)
    finally:
        await leads.client.drop_database(leads.db.name)


async def test_a_lead_changed_since_the_batch_read_it_fails_the_whole_batch(
    runtime: tuple[ServiceRuntime, Any],
) -> None:
    """The version guard of the bulk write: nothing of the batch is stored, so the consumer
    applies its events one at a time instead."""
    leads = await new_leads(runtime)
    first = LeadCaptured.model_validate(
        {
            "source_system": "webforms",
            "external_id": "a",
            "person": {"email": "ada@engines.example"},
            "captured_at": TIMES[0],
        }
    )
    await leads.deliver([captured_event(first)])
    second = first.model_copy(update={"external_id": "b"})

    async def race(session: Any) -> None:
        uow = leads.unit_of_work(session)

        async def changed_meanwhile(*args: Any, **kwargs: Any) -> None:
            await leads.db.leads.update_one({}, {"$inc": {"version": 1}}, session=session)
            await save(*args, **kwargs)

        save = leads.repo.save_captured
        leads.repo.save_captured = changed_meanwhile  # type: ignore[method-assign]
        try:
            await capture_leads(leads.repo, uow, [(second, "test")])
        finally:
            leads.repo.save_captured = save  # type: ignore[method-assign]

    try:
        with pytest.raises(ConcurrentModification):
            await in_transaction(leads.client, race)
        assert [doc["external_id"] for doc in await leads.leads()] == ["a"]
        assert await leads.db.outbox.count_documents({"key": "b"}) == 0
    finally:
        await leads.client.drop_database(leads.db.name)
