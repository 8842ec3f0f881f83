"""A fetched batch of events is folded set-based: the database commands it sends do not grow
with its events (one ``$in`` read per collection, one write per collection), and what it
stores (facts, memberships, counters once merged) equals folding the same events one at a
time, each in its own transaction, in any order and with duplicates."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import pytest
from crm_contracts.envelope import CloudEvent
from crm_contracts.events.leads import LeadRating
from crm_localinfra.testing import TRANSACTION_ENDS, CommandCounter, isolation_key, service_env
from crm_reporting.aggregates import COUNTER_VIEWS
from crm_reporting.bootstrap import ReportingSettings
from crm_reporting.projection import project_many
from crm_reporting.repository import Generation, ReportingRepository
from crm_runtime.mongo import Document, in_transaction
from pymongo import AsyncMongoClient
from reporting_events import PROPOSAL, PROSPECTING, Deal, Lead, at, cost_recorded, days, member_added
from reporting_story import STORY

pytestmark = pytest.mark.integration


@dataclass
class Store:
    client: AsyncMongoClient[Document]
    repo: ReportingRepository
    counter: CommandCounter

    async def fold(self, generation: Generation, events: list[CloudEvent[Any]]) -> list[str]:
        """``events`` folded as one batch in one transaction, as the consumer's batch handler
        does; the commands it sent."""

        async def work(session: Any) -> None:
            self.counter.commands.clear()
            store = generation.facts(session)
            await project_many(events, store)
            await store.flush(events=len(events))

        await in_transaction(self.client, work)
        return list(self.counter.commands)


@pytest.fixture
async def store(infra: Any) -> AsyncIterator[Store]:
    settings = ReportingSettings(**service_env(infra, "reporting", isolation=isolation_key()))
    counter = CommandCounter(ignore=TRANSACTION_ENDS)
    client: AsyncMongoClient[Document] = AsyncMongoClient(
        settings.mongo_url.get_secret_value(), tz_aware=True, w="majority", event_listeners=[counter]
    )
    name = f"{settings.database_name}_{uuid.uuid4().hex[:8]}"
    try:
        yield Store(client, ReportingRepository(client, client[name]), counter)
    finally:
        await client.drop_database(name)
        await client.close()


async def contents(generation: Generation) -> dict[str, Any]:
    stored: dict[str, Any] = {view: await generation.all_counters(view) for view in COUNTER_VIEWS}
    stored["leads"] = await generation.all_leads()
    stored["opportunities"] = await generation.all_opportunities()
    stored["campaigns"] = sorted(await generation.campaign_facts(None), key=lambda c: c.campaign_id)
    stored["members"] = await generation.members.find({}, sort=[("_id", 1)]).to_list()
    stored["as_of"] = await generation.as_of()
    return stored


async def test_a_batch_stores_what_folding_its_events_one_at_a_time_stores(store: Store) -> None:
    batched, single = store.repo.generation(1), store.repo.generation(2)
    # Reordered and redelivered in the batch (the story has out-of-order events and
    # duplicates of its own); one event per transaction in the story's order.
    await store.fold(batched, [*reversed(STORY), *STORY])
    for event in STORY:
        await store.fold(single, [event])
    await batched.merge_all(store.client)
    await single.merge_all(store.client)

    expected = await contents(single)
    assert expected["leads"] and expected["opportunities"] and expected["members"]
    assert any(expected[view] for view in COUNTER_VIEWS)
    assert await contents(batched) == expected
    # Redelivering the whole batch changes nothing.
    await store.fold(batched, STORY)
    await batched.merge_all(store.client)
    assert await contents(batched) == expected


def lead(n: int, prefix: str = "lead") -> Lead:
    return Lead(f"{prefix}-{n}", captured=at(days(n % 20)), campaign="spring", owner=f"rep-{n % 3}")


def leads_and_conversions(count: int) -> list[CloudEvent[Any]]:
    """Per deal, its lead converted into it, and another lead."""
    events: list[CloudEvent[Any]] = []
    for n in range(count):
        events += [lead(n).created(), lead(n).converted(2, at(days(n % 20 + 1)), f"opp-{n}")]
        events.append(lead(n, "other").created())
    return events


def deal_events(count: int) -> list[CloudEvent[Any]]:
    """Four events per deal: its creation (not naming its lead: only the stored conversion
    links them, so its lead is found through the stored facts), a stage change, another
    lead's qualification and that lead's campaign membership."""
    events: list[CloudEvent[Any]] = []
    for n in range(count):
        deal = Deal(f"opp-{n}", created=at(days(n % 20 + 1)), amount=f"{1000 + n}.00", products=("p1", "p2"))
        events += [
            deal.created_event(),
            deal.moved(2, at(days(n % 20 + 2)), PROSPECTING, PROPOSAL),
            lead(n, "other").qualified(2, at(days(n % 20 + 3)), LeadRating.HOT),
            member_added("spring", f"other-{n}", at(days(n % 20))),
        ]
    return events


async def test_a_batch_sends_as_many_commands_for_40_events_as_for_4(store: Store) -> None:
    sent: dict[int, list[str]] = {}
    for deals in (1, 10):
        generation = store.repo.generation(deals)
        await store.fold(
            generation,
            [*leads_and_conversions(deals), cost_recorded("spring", 1, at(0), "e1", "10.00", "10.00")],
        )
        sent[deals] = await store.fold(generation, deal_events(deals))
        await generation.merge_all(store.client)
        assert len(await generation.all_opportunities()) == deals
        converted = [fact for fact in await generation.all_leads() if fact.lead_id.startswith("lead-")]
        assert len(converted) == deals
        # The deals' creation reached their leads' funnel facts through the stored link.
        assert all(fact.funnel.opportunity is not None for fact in converted), converted
        assert await generation.members.count_documents({}) == deals

    assert len(sent[1]) == len(sent[10]), sent
