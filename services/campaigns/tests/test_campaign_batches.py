"""Set-based consumer batches: a fetched batch of lead and opportunity events, applied by the
consumer in one transaction (one ``$in`` read per collection, one bulk write per collection, one
outbox write), ends in exactly the memberships, first-touch marks, conversions, known leads,
opportunities and outbox events that applying the same deliveries one at a time gives, with
redeliveries, reordering, touches at sub-millisecond times and events for one lead in one batch;
and a batch costs the same few round trips however many events it holds."""

from __future__ import annotations

import itertools
import json
import re
import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

import pytest
from crm_campaigns import use_cases
from crm_campaigns.bootstrap import CampaignsSettings, create_app
from crm_campaigns.handlers import register_handlers
from crm_campaigns.repository import MemberRepository, OpportunityRepository
from crm_contracts import catalog
from crm_contracts.catalog import EventSpec
from crm_contracts.envelope import CloudEvent
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
    CommandCounter,
    Outgoing,
    eventually,
    isolation_key,
    publish_all,
    service_client,
    service_env,
    topic_size,
)
from crm_runtime import EventConsumer, ServiceRuntime, make_event
from crm_runtime.consumer import Delivery
from crm_runtime.events import encode
from crm_runtime.mongo import Document
from crm_runtime.outbox import Outbox
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from prometheus_client import CollectorRegistry
from pydantic import BaseModel
from pymongo import AsyncMongoClient

pytestmark = pytest.mark.integration

NOW = datetime(2026, 11, 20, 12, 0, tzinfo=UTC)
COLLECTIONS = ("members", "lead_conversions", "opportunities", "known_leads", "lead_merges")
TIMES = [
    "2026-11-01T10:00:00Z",
    "2026-11-01T10:00:00.000400Z",
    "2026-11-01T10:00:00.000900Z",
    "2026-10-03T08:00:00Z",
]
lead_ids = st.sampled_from(["lead-0", "lead-1"])
campaign_ids = st.sampled_from([None, "fair", "webinar"])
times = st.sampled_from(TIMES).map(datetime.fromisoformat)


def snapshot(lead_id: str, campaign_id: str | None, captured_at: datetime) -> LeadSnapshot:
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


def figures(
    opportunity_id: str, campaign_id: str | None, lead_id: str | None, kind: StageKind
) -> OpportunityFigures:
    return OpportunityFigures(
        opportunity_id=opportunity_id,
        name="Engines deal",
        account_id="acc-1",
        pipeline_id="default",
        stage_id="prospecting",
        stage_name="Prospecting",
        stage_kind=kind,
        probability=10,
        forecast_category=ForecastCategory.PIPELINE,
        amount=Decimal("100.00"),
        currency="EUR",
        lead_id=lead_id,
        campaign_id=campaign_id,
        created_at=NOW,
    )


created = st.builds(
    lambda lead, campaign, at: make_event(
        catalog.LEAD_CREATED,
        LeadCreated(lead=snapshot(lead, campaign, at)),
        source="/crm/leads",
        subject=lead,
        version=1,
    ),
    lead_ids,
    campaign_ids,
    times,
)
updated = st.builds(
    lambda lead, campaign, at, version: make_event(
        catalog.LEAD_UPDATED,
        LeadUpdated(lead=snapshot(lead, campaign, at), changed_fields=["campaign_id"]),
        source="/crm/leads",
        subject=lead,
        version=version,
    ),
    lead_ids,
    campaign_ids,
    times,
    st.integers(2, 4),
)
converted = st.builds(
    lambda lead, campaign, opportunity, at: make_event(
        catalog.LEAD_CONVERTED,
        LeadConverted(
            lead_id=lead,
            account=ConvertedAccount(account_id=f"acc-{lead}", is_new=True, name="Engines"),
            contact=ConvertedContact(contact_id=f"con-{lead}", is_new=True, first_name="Ada"),
            opportunity=None
            if opportunity is None
            else ConvertedOpportunity(opportunity_id=opportunity, name="Deal", amount=Decimal("100.00")),
            lead_source=LeadSource.WEB,
            campaign_id=campaign,
            converted_at=NOW,
            converted_by=Actor(id="rep-7"),
            captured_at=at,
        ),
        source="/crm/leads",
        subject=lead,
        version=5,
    ),
    lead_ids,
    campaign_ids,
    st.sampled_from([None, "opp-0", "opp-1"]),
    st.one_of(st.none(), times),
)
opportunity_ids = st.sampled_from(["opp-0", "opp-1", "opp-2"])
opened = st.builds(
    lambda opportunity, campaign, lead, kind, version: make_event(
        catalog.OPPORTUNITY_CREATED,
        OpportunityCreated(
            opportunity=figures(opportunity, campaign, lead, kind), created_by=Actor(id="rep-7")
        ),
        source="/crm/opportunities",
        subject=opportunity,
        version=version,
    ),
    opportunity_ids,
    campaign_ids,
    st.one_of(st.none(), lead_ids),
    st.sampled_from(list(StageKind)),
    st.integers(1, 3),
)
closed = st.builds(
    lambda opportunity, campaign, lead, won, version: make_event(
        catalog.OPPORTUNITY_CLOSED,
        OpportunityClosed(
            opportunity_id=opportunity,
            won=won,
            amount=Decimal("120.00"),
            currency="EUR",
            loss_reason=None if won else "price",
            closed_at=NOW,
            closed_by=Actor(id="rep-7"),
            opportunity=figures(opportunity, campaign, lead, StageKind.OPEN),
        ),
        source="/crm/opportunities",
        subject=opportunity,
        version=version,
    ),
    opportunity_ids,
    campaign_ids,
    st.one_of(st.none(), lead_ids),
    st.booleans(),
    st.integers(2, 5),
)


def merge(duplicate: str, survivor: str, version: int = 6) -> CloudEvent[Any]:
    return make_event(
        catalog.LEAD_MERGED,
        LeadMerged(
            survivor=snapshot(survivor, None, NOW),
            merged_lead_id=duplicate,
            matching_keys=["email"],
            merged_at=NOW,
            merged_by=Actor(id="rep-7"),
        ),
        source="/crm/leads",
        subject=survivor,
        version=version,
    )


# lead-0 merged into lead-1 (the leads service never merges the other way round as well).
merged = st.just(merge("lead-0", "lead-1"))
events = st.one_of(created, updated, converted, opened, closed, merged)


@st.composite
def batches(draw: st.DrawFn) -> tuple[list[CloudEvent[Any]], list[list[CloudEvent[Any]]]]:
    earlier = draw(st.lists(events, max_size=4))
    stream = draw(st.lists(events, min_size=2, max_size=14))
    resent = draw(
        st.lists(st.sampled_from(stream + earlier) if earlier else st.sampled_from(stream), max_size=3)
    )
    delivery = draw(st.permutations(stream + resent))
    cuts = sorted(draw(st.sets(st.integers(1, len(delivery) - 1), max_size=2)))
    bounds = [0, *cuts, len(delivery)]
    return earlier, [delivery[a:b] for a, b in itertools.pairwise(bounds)]


@dataclass
class _Record:
    headers: tuple[tuple[str, bytes], ...] = ()
    offset: int = 0


@dataclass
class Store:
    client: AsyncMongoClient[Document]
    db: Any
    consumer: EventConsumer

    async def deliver(self, batch: list[CloudEvent[Any]]) -> None:
        """As the consumer applies one fetched batch (a batch of good events never fails)."""
        await self.consumer.apply_batch(
            [Delivery(self.consumer.routes[_topic(event)], event, _Record()) for event in batch]
        )

    async def state(self) -> dict[str, list[Document]]:
        return {name: await self.db[name].find(sort=[("_id", 1)]).to_list() for name in COLLECTIONS}

    async def events(self) -> list[tuple[str, str, Any]]:
        entries = await self.db.outbox.find(sort=[("_id", 1)]).to_list()
        return [(e["topic"], e["key"], {**json.loads(e["payload"]), "id": None}) for e in entries]


SPECS: dict[type[BaseModel], EventSpec[Any]] = {
    LeadCreated: catalog.LEAD_CREATED,
    LeadUpdated: catalog.LEAD_UPDATED,
    LeadConverted: catalog.LEAD_CONVERTED,
    LeadMerged: catalog.LEAD_MERGED,
    OpportunityCreated: catalog.OPPORTUNITY_CREATED,
    OpportunityClosed: catalog.OPPORTUNITY_CLOSED,
}


def _topic(event: CloudEvent[Any]) -> str:
    return SPECS[type(event.data)].topic


@pytest.fixture(scope="module")
async def runtime(infra: Any) -> AsyncIterator[ServiceRuntime]:
    service = ServiceRuntime(CampaignsSettings(**service_env(infra, "campaigns", isolation=isolation_key())))
    yield service
    await service.client.close()


@pytest.fixture(autouse=True)
def frozen_clock(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    monkeypatch.setattr(use_cases, "utcnow", lambda: NOW)
    yield


async def new_store(service: ServiceRuntime, client: AsyncMongoClient[Document] | None = None) -> Store:
    client = client or service.client
    db = client[f"{service.settings.database_name}_{uuid.uuid4().hex[:8]}"]
    members, opportunities = MemberRepository(db), OpportunityRepository(db)
    await members.ensure_indexes()
    await opportunities.ensure_indexes()
    outbox = Outbox(db, service.settings)
    consumer = EventConsumer(service.broker, client, db, outbox, service.settings, CollectorRegistry())
    register_handlers(consumer, members, opportunities)
    return Store(client, db, consumer)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(case=batches())
async def test_a_batch_of_lead_and_opportunity_events_ends_as_the_same_events_applied_one_at_a_time(
    runtime: ServiceRuntime, case: tuple[list[CloudEvent[Any]], list[list[CloudEvent[Any]]]]
) -> None:
    earlier, delivery = case
    batched, one_by_one = await new_store(runtime), await new_store(runtime)
    try:
        for store in (batched, one_by_one):
            for event in earlier:
                await store.deliver([event])
        for batch in delivery:
            await batched.deliver(batch)
            for event in batch:
                await one_by_one.deliver([event])
        assert await batched.state() == await one_by_one.state()
        assert await batched.events() == await one_by_one.events()
    finally:
        for store in (batched, one_by_one):
            await store.client.drop_database(store.db.name)


DUPLICATE, SURVIVOR = "lead-dup", "lead-keep"


def _merge_story() -> list[CloudEvent[Any]]:
    """A duplicate captured through the fair and re-captured through the webinar, its survivor
    captured later through the webinar and converted, an opportunity of the duplicate, and the
    merge; the survivor is merged again into a third lead, as a later clean-up would."""
    at = [datetime.fromisoformat(t) for t in TIMES]
    dup_opportunity = figures("opp-dup", None, DUPLICATE, StageKind.OPEN)
    return [
        make_event(
            catalog.LEAD_CREATED,
            LeadCreated(lead=snapshot(DUPLICATE, "fair", at[3])),
            source="/crm/leads",
            subject=DUPLICATE,
            version=1,
        ),
        make_event(
            catalog.LEAD_UPDATED,
            LeadUpdated(lead=snapshot(DUPLICATE, "webinar", at[1]), changed_fields=["campaign_id"]),
            source="/crm/leads",
            subject=DUPLICATE,
            version=2,
        ),
        make_event(
            catalog.LEAD_CREATED,
            LeadCreated(lead=snapshot(SURVIVOR, "webinar", at[0])),
            source="/crm/leads",
            subject=SURVIVOR,
            version=1,
        ),
        make_event(
            catalog.LEAD_CONVERTED,
            LeadConverted(
                lead_id=SURVIVOR,
                account=ConvertedAccount(account_id="acc-keep", is_new=True, name="Engines"),
                contact=ConvertedContact(contact_id="con-keep", is_new=True, first_name="Ada"),
                opportunity=None,
                lead_source=LeadSource.WEB,
                campaign_id="webinar",
                converted_at=NOW,
                converted_by=Actor(id="rep-7"),
                captured_at=at[0],
            ),
            source="/crm/leads",
            subject=SURVIVOR,
            version=5,
        ),
        make_event(
            catalog.OPPORTUNITY_CREATED,
            OpportunityCreated(opportunity=dup_opportunity, created_by=Actor(id="rep-7")),
            source="/crm/opportunities",
            subject="opp-dup",
            version=1,
        ),
        merge(DUPLICATE, SURVIVOR),
    ]


async def _folded_state(store: Store) -> dict[str, list[Document]]:
    """The stored state without what depends on the order of arrival alone (versions)."""
    state = await store.state()
    state["members"] = [{k: v for k, v in m.items() if k != "version"} for m in state["members"]]
    return state


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(order=st.permutations(range(6)), cut=st.integers(1, 5), batched=st.booleans())
async def test_a_merge_folds_the_duplicates_memberships_into_the_survivor_whatever_the_order(
    runtime: ServiceRuntime, order: list[int], cut: int, batched: bool
) -> None:
    story = _merge_story()
    canonical, shuffled = await new_store(runtime), await new_store(runtime)
    try:
        for event in story:
            await canonical.deliver([event])
        delivery = [story[i] for i in order]
        if batched:
            await shuffled.deliver(delivery[:cut])
            await shuffled.deliver(delivery[cut:] + delivery[:1])  # and one redelivery
        else:
            for event in delivery:
                await shuffled.deliver([event])
        assert await _folded_state(shuffled) == await _folded_state(canonical)

        members = {(m["campaign_id"], m["lead_id"]): m for m in (await canonical.state())["members"]}
        assert sorted(members) == [("fair", SURVIVOR), ("webinar", SURVIVOR)]  # no duplicate left
        fair, webinar = members[("fair", SURVIVOR)], members[("webinar", SURVIVOR)]
        # The duplicate's fair capture (3 October) is the earliest touch: the survivor's first.
        assert (fair["first_touch"], webinar["first_touch"]) == (True, False)
        assert fair["joined_at"] == datetime.fromisoformat(TIMES[3])
        # The webinar reached both; the earliest touch of either stays, the survivor counts once.
        assert webinar["joined_at"] == datetime.fromisoformat(TIMES[0])
        assert webinar["touched_via"] == ["lead.converted", "lead.created", "lead.updated"]
        assert (fair["merged_from"], webinar["merged_from"]) == ([DUPLICATE], [DUPLICATE])
        assert (fair["converted"], webinar["converted"]) == (True, True)  # the survivor's conversion
        [opportunity] = (await canonical.state())["opportunities"]
        assert (opportunity["lead_id"], opportunity["campaign_id"]) == (SURVIVOR, "fair")
    finally:
        for store in (canonical, shuffled):
            await store.client.drop_database(store.db.name)


async def test_a_survivor_merged_again_passes_everything_on_along_the_chain(runtime: ServiceRuntime) -> None:
    # A converted lead is never merged away, so this story has no conversion.
    story = [e for e in _merge_story() if not isinstance(e.data, LeadConverted)]
    final = "lead-final"
    again = merge(SURVIVOR, final, version=9)
    early, late = await new_store(runtime), await new_store(runtime)
    try:
        for event in [*story, again]:
            await early.deliver([event])
        # The second merge first: the first one then folds straight into the final survivor.
        await late.deliver([again, *reversed(story)])
        assert await _folded_state(late) == await _folded_state(early)
        members = (await early.state())["members"]
        assert sorted((m["campaign_id"], m["lead_id"]) for m in members) == [
            ("fair", final),
            ("webinar", final),
        ]
        assert all(sorted(m["merged_from"]) == [DUPLICATE, SURVIVOR] for m in members)
    finally:
        for store in (early, late):
            await store.client.drop_database(store.db.name)


def _batch_of(size: int, tag: str) -> list[CloudEvent[Any]]:
    at = datetime(2026, 11, 1, 10, 0, tzinfo=UTC)
    batch: list[CloudEvent[Any]] = []
    for n in range(size):
        lead = f"{tag}-lead-{n}"
        batch.append(
            make_event(
                catalog.LEAD_CREATED,
                LeadCreated(lead=snapshot(lead, "fair", at)),
                source="/crm/leads",
                subject=lead,
            )
        )
        opportunity = figures(f"{tag}-opp-{n}", None, lead, StageKind.OPEN)
        batch.append(
            make_event(
                catalog.OPPORTUNITY_CREATED,
                OpportunityCreated(opportunity=opportunity, created_by=Actor(id="rep-7")),
                source="/crm/opportunities",
                subject=opportunity.opportunity_id,
                version=1,
            )
        )
    return batch


async def test_a_batch_costs_the_same_round_trips_whatever_its_size(runtime: ServiceRuntime) -> None:
    commands = CommandCounter()
    client: AsyncMongoClient[Document] = AsyncMongoClient(
        runtime.settings.mongo_url.get_secret_value(), event_listeners=[commands], tz_aware=True
    )
    store = await new_store(runtime, client)
    try:
        counts = []
        for size in (3, 60):
            commands.commands.clear()
            await store.deliver(_batch_of(size, f"n{size}"))
            counts.append(
                len([n for n in commands.commands if n not in ("commitTransaction", "endSessions")])
            )
        assert counts[0] == counts[1], commands.commands
    finally:
        await client.drop_database(store.db.name)
        await client.close()


async def test_events_fetched_together_from_the_broker_are_applied_as_batches_once_each(infra: Any) -> None:
    """Through real Kafka: captures published at once (each twice, the second a redelivery)
    are fetched in batches of many, and every lead joins its campaign once, announced once."""
    settings = CampaignsSettings(**service_env(infra, "campaigns", isolation=isolation_key()))
    app = create_app(settings)
    at = datetime(2026, 11, 1, 10, 0, tzinfo=UTC)
    captures = [
        make_event(
            catalog.LEAD_CREATED,
            LeadCreated(lead=snapshot(f"lead-{n}", f"campaign-{n % 3}", at)),
            source="/crm/leads",
            subject=f"lead-{n}",
            version=1,
        )
        for n in range(60)
    ]
    async with service_client(app) as http:

        async def metric(name: str, labels: str = "") -> float:
            text = (await http.get("/metrics")).text
            found = re.search(rf"^{re.escape(name)}{re.escape(labels)} (\S+)$", text, re.M)
            return float(found.group(1)) if found else 0.0

        for n in range(3):
            body = {
                "campaign_id": f"campaign-{n}",
                "name": f"Fair {n}",
                "type": "webinar",
                "by": {"id": "rep-7"},
            }
            assert (await http.post("/campaigns", json=body)).status_code == 201
        topic = f'{{topic="{catalog.LEAD_CREATED.topic}"}}'
        await publish_all(
            infra.kafka_bootstrap,
            settings.topic(catalog.LEAD_CREATED.topic),
            [Outgoing(encode(event), key=str(event.subject).encode()) for event in captures + captures],
        )

        async def consumed() -> bool:
            return (
                await metric("crm_events_processed_total", topic) == 60
                and await metric("crm_events_duplicate_total", topic) == 60
            )

        await eventually(consumed, timeout=120)
        batches = await metric("crm_consumer_batch_events_count")
        assert batches < 120 and await metric("crm_consumer_batch_events_bucket", '{le="1.0"}') < batches
        for n in range(3):
            listed = (await http.get(f"/campaigns/campaign-{n}/members", params={"limit": 100})).json()
            assert len(listed["items"]) == 20, listed
        runtime: ServiceRuntime = app.state.runtime

        async def drained() -> bool:
            return await runtime.outbox.pending() == 0

        await eventually(drained, timeout=60)
        added = await topic_size(infra.kafka_bootstrap, settings.topic(catalog.CAMPAIGN_MEMBER_ADDED.topic))
        assert added == 60
