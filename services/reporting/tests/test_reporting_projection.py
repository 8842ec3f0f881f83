"""The projection folds events into facts idempotently and order-independently: unit cases
for the orders that matter, and a hypothesis test that shuffles and duplicates generated event
streams and compares the facts (and the views) with those of the in-order stream and with a
straightforward recomputation from the scenario."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal
from typing import Any, TypeVar

from crm_contracts import catalog
from crm_contracts.envelope import CloudEvent
from crm_contracts.events.campaigns import (
    CampaignCreated,
    CampaignPurpose,
    CampaignSnapshot,
    CampaignStatus,
    CampaignType,
)
from crm_contracts.events.common import Actor
from crm_contracts.events.leads import (
    Company,
    ConvertedAccount,
    ConvertedContact,
    ConvertedOpportunity,
    LeadConverted,
    LeadCreated,
    LeadDisqualified,
    LeadOrigin,
    LeadQualified,
    LeadRating,
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
    OpportunityStageChanged,
    OpportunityUpdated,
    StageKind,
)
from crm_reporting.domain import (
    FunnelCounts,
    FunnelQuery,
    PipelineCell,
    PipelineKey,
    PipelineQuery,
    count_funnel,
    sum_pipeline,
    weighted_amount,
)
from crm_reporting.memory import MemoryFactStore
from crm_runtime import make_event
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

T = TypeVar("T")
BY = Actor(id="rep-1")
START = datetime(2026, 3, 2, 9, 0, 0, 123456, tzinfo=UTC)


def fold(events: Iterable[CloudEvent[Any]], store: MemoryFactStore | None = None) -> MemoryFactStore:
    return (store or MemoryFactStore()).fold(events)


def state(store: MemoryFactStore) -> tuple[dict[str, Any], ...]:
    return (store.leads, store.opportunities, store.campaigns)


# -- event builders ---------------------------------------------------------------------------
def at(minutes: int) -> datetime:
    return START + timedelta(minutes=minutes)


def snapshot(lead_id: str, status: LeadStatus, minute: int, **changes: Any) -> LeadSnapshot:
    values: dict[str, Any] = {
        "lead_id": lead_id,
        "status": status,
        "source_system": "webforms",
        "external_id": f"ext-{lead_id}",
        "person": Person(first_name="Ada"),
        "company": Company(name="Engines"),
        "lead_source": LeadSource.WEB,
        "origin": LeadOrigin.API,
        "captured_at": at(minute),
    }
    values.update(changes)
    return LeadSnapshot(**values)


def lead_created(lead_id: str, minute: int, **changes: Any) -> CloudEvent[LeadCreated]:
    data = LeadCreated(lead=snapshot(lead_id, LeadStatus.NEW, minute, **changes))
    return make_event(
        catalog.LEAD_CREATED, data, source="/crm/leads", subject=lead_id, version=1, time=at(minute)
    )


def lead_updated(lead_id: str, version: int, minute: int, **changes: Any) -> CloudEvent[LeadUpdated]:
    status = changes.pop("status", LeadStatus.WORKING)
    data = LeadUpdated(lead=snapshot(lead_id, status, 0, **changes), changed_fields=sorted(changes))
    return make_event(
        catalog.LEAD_UPDATED, data, source="/crm/leads", subject=lead_id, version=version, time=at(minute)
    )


def lead_qualified(
    lead_id: str, version: int, minute: int, rating: LeadRating = LeadRating.HOT, **extra: Any
) -> CloudEvent[LeadQualified]:
    values: dict[str, Any] = {"lead_source": LeadSource.WEB, "campaign_id": None, **extra}
    data = LeadQualified(lead_id=lead_id, rating=rating, qualified_at=at(minute), qualified_by=BY, **values)
    return make_event(
        catalog.LEAD_QUALIFIED, data, source="/crm/leads", subject=lead_id, version=version, time=at(minute)
    )


def lead_disqualified(lead_id: str, version: int, minute: int, **extra: Any) -> CloudEvent[LeadDisqualified]:
    values: dict[str, Any] = {"lead_source": LeadSource.WEB, "campaign_id": None, **extra}
    data = LeadDisqualified(
        lead_id=lead_id, reason="no budget", disqualified_at=at(minute), disqualified_by=BY, **values
    )
    return make_event(
        catalog.LEAD_DISQUALIFIED,
        data,
        source="/crm/leads",
        subject=lead_id,
        version=version,
        time=at(minute),
    )


def lead_converted(
    lead_id: str, version: int, minute: int, opportunity_id: str | None, **extra: Any
) -> CloudEvent[LeadConverted]:
    values: dict[str, Any] = {"lead_source": LeadSource.WEB, "campaign_id": None, **extra}
    data = LeadConverted(
        lead_id=lead_id,
        account=ConvertedAccount(account_id=f"acc-{lead_id}", is_new=True),
        contact=ConvertedContact(contact_id=f"con-{lead_id}", is_new=True),
        opportunity=ConvertedOpportunity(opportunity_id=opportunity_id, name="Deal")
        if opportunity_id
        else None,
        converted_at=at(minute),
        converted_by=BY,
        **values,
    )
    return make_event(
        catalog.LEAD_CONVERTED, data, source="/crm/leads", subject=lead_id, version=version, time=at(minute)
    )


@dataclass(frozen=True)
class Stage:
    stage_id: str
    name: str
    kind: StageKind
    probability: int


PROSPECTING = Stage("prospecting", "Prospecting", StageKind.OPEN, 10)
PROPOSAL = Stage("proposal", "Proposal", StageKind.OPEN, 50)
NEGOTIATION = Stage("negotiation", "Negotiation", StageKind.OPEN, 80)
WON = Stage("closed-won", "Closed Won", StageKind.CLOSED_WON, 100)
LOST = Stage("closed-lost", "Closed Lost", StageKind.CLOSED_LOST, 0)


def figures(
    opportunity_id: str, stage: Stage, amount: str, lead_id: str | None, created_minute: int, **extra: Any
) -> OpportunityFigures:
    return OpportunityFigures(
        opportunity_id=opportunity_id,
        name="Deal",
        account_id="acc-1",
        owner_id="rep-1",
        pipeline_id="default",
        stage_id=stage.stage_id,
        stage_name=stage.name,
        stage_kind=stage.kind,
        probability=stage.probability,
        forecast_category=ForecastCategory.PIPELINE,
        amount=Decimal(amount),
        currency="EUR",
        expected_close_date=date(2026, 6, 30),
        lead_id=lead_id,
        created_at=at(created_minute),
        **extra,
    )


def opportunity_created(
    opportunity_id: str, minute: int, amount: str = "1000.00", lead_id: str | None = None
) -> CloudEvent[OpportunityCreated]:
    data = OpportunityCreated(
        opportunity=figures(opportunity_id, PROSPECTING, amount, lead_id, minute), created_by=BY
    )
    return make_event(
        catalog.OPPORTUNITY_CREATED,
        data,
        source="/crm/opps",
        subject=opportunity_id,
        version=1,
        time=at(minute),
    )


def opportunity_updated(
    opportunity_id: str,
    version: int,
    minute: int,
    stage: Stage,
    amount: str,
    lead_id: str | None,
    created: int,
) -> CloudEvent[OpportunityUpdated]:
    data = OpportunityUpdated(
        opportunity=figures(opportunity_id, stage, amount, lead_id, created),
        changed_fields=["amount"],
        updated_at=at(minute),
        updated_by=BY,
    )
    return make_event(
        catalog.OPPORTUNITY_UPDATED,
        data,
        source="/crm/opps",
        subject=opportunity_id,
        version=version,
        time=at(minute),
    )


def stage_changed(
    opportunity_id: str,
    version: int,
    minute: int,
    previous: Stage,
    stage: Stage,
    amount: str = "1000.00",
    lead_id: str | None = None,
    created: int = 0,
) -> CloudEvent[OpportunityStageChanged]:
    data = OpportunityStageChanged(
        opportunity_id=opportunity_id,
        pipeline_id="default",
        previous_stage_id=previous.stage_id,
        previous_stage_name=previous.name,
        stage_id=stage.stage_id,
        stage_name=stage.name,
        stage_kind=stage.kind,
        probability=stage.probability,
        forecast_category=ForecastCategory.PIPELINE,
        amount=Decimal(amount),
        currency="EUR",
        changed_at=at(minute),
        changed_by=BY,
        opportunity=figures(opportunity_id, stage, amount, lead_id, created),
    )
    return make_event(
        catalog.OPPORTUNITY_STAGE_CHANGED,
        data,
        source="/crm/opps",
        subject=opportunity_id,
        version=version,
        time=at(minute),
    )


def opportunity_closed(
    opportunity_id: str,
    version: int,
    minute: int,
    won: bool,
    amount: str = "1000.00",
    lead_id: str | None = None,
    created: int = 0,
) -> CloudEvent[OpportunityClosed]:
    stage = WON if won else LOST
    data = OpportunityClosed(
        opportunity_id=opportunity_id,
        won=won,
        amount=Decimal(amount),
        currency="EUR",
        loss_reason=None if won else "price",
        closed_at=at(minute),
        closed_by=BY,
        opportunity=figures(opportunity_id, stage, amount, lead_id, created),
    )
    return make_event(
        catalog.OPPORTUNITY_CLOSED,
        data,
        source="/crm/opps",
        subject=opportunity_id,
        version=version,
        time=at(minute),
    )


def campaign_created(campaign_id: str, name: str, minute: int) -> CloudEvent[CampaignCreated]:
    data = CampaignCreated(
        campaign=CampaignSnapshot(
            campaign_id=campaign_id,
            name=name,
            type=CampaignType.WEBINAR,
            purpose=CampaignPurpose.LEAD_GENERATION,
            status=CampaignStatus.ACTIVE,
        ),
        created_at=at(minute),
        created_by=BY,
    )
    return make_event(
        catalog.CAMPAIGN_CREATED,
        data,
        source="/crm/campaigns",
        subject=campaign_id,
        version=1,
        time=at(minute),
    )


def funnel(store: MemoryFactStore, query: FunnelQuery | None = None) -> FunnelCounts:
    return count_funnel(store.leads.values(), query or FunnelQuery()).get(None, FunnelCounts())


# -- unit cases -------------------------------------------------------------------------------
def test_a_conversion_arriving_before_the_creation_counts_once_the_lead_is_created() -> None:
    converted = lead_converted("l1", 3, 30, None)
    store = fold([converted])
    assert funnel(store) == FunnelCounts(captured=0, qualified=1, converted=1)
    fold([lead_created("l1", 0), lead_qualified("l1", 2, 10)], store)
    assert funnel(store) == FunnelCounts(captured=1, qualified=1, converted=1)
    assert store.leads["l1"].status == LeadStatus.CONVERTED  # the creation is older: status stays


def test_a_stage_change_arriving_before_the_creation_is_not_lost() -> None:
    store = fold([stage_changed("o1", 2, 20, PROSPECTING, PROPOSAL, amount="500.00", created=10)])
    fold([opportunity_created("o1", 10)], store)
    fact = store.opportunities["o1"]
    assert (fact.stage_id, fact.amount, fact.probability) == ("proposal", Decimal("500.00"), 50)
    assert fact.created_at == at(10).replace(microsecond=123000)
    assert fact.weighted_amount == Decimal("250.0000")


def test_a_duplicate_event_writes_nothing() -> None:
    events: list[CloudEvent[Any]] = [lead_created("l1", 0), opportunity_created("o1", 5, lead_id="l1")]
    store = fold(events)
    writes = store.writes
    before = state(store)
    fold(events, store)
    assert store.writes == writes
    assert state(store) == before


def test_an_older_version_never_overwrites_a_newer_one() -> None:
    newer = lead_updated("l1", 3, 20, lead_source=LeadSource.EVENT, campaign_id="fair")
    store = fold([newer, lead_created("l1", 0, lead_source=LeadSource.WEB)])
    assert store.leads["l1"].lead_source == LeadSource.EVENT
    assert store.leads["l1"].campaign_id == "fair"
    assert store.leads["l1"].status == LeadStatus.WORKING


def test_the_first_qualification_dates_the_step_and_the_newest_rating_wins() -> None:
    events: list[CloudEvent[Any]] = [
        lead_created("l1", 0),
        lead_qualified("l1", 2, 10, LeadRating.COLD),
        lead_disqualified("l1", 3, 20),
        lead_qualified("l1", 4, 30, LeadRating.HOT),
    ]
    store = fold(reversed(events))
    fact = store.leads["l1"]
    assert fact.funnel.qualified == at(10).replace(microsecond=123000)
    assert fact.rating == LeadRating.HOT and fact.status == LeadStatus.QUALIFIED


def test_an_opportunity_linked_only_by_the_conversion_counts_for_its_lead_in_either_order() -> None:
    events: list[CloudEvent[Any]] = [
        lead_created("l1", 0),
        lead_converted("l1", 2, 10, "o1"),
        opportunity_created("o1", 11, lead_id=None),
        opportunity_closed("o1", 2, 40, won=True),
    ]
    for order in (events, list(reversed(events))):
        store = fold(order)
        assert funnel(store) == FunnelCounts(1, 1, 1, 1, 1)
        assert store.opportunities["o1"].converted_from_lead_id == "l1"


def test_moving_back_to_an_open_stage_reopens_a_won_opportunity() -> None:
    events: list[CloudEvent[Any]] = [
        lead_created("l1", 0),
        lead_converted("l1", 2, 5, "o1"),
        opportunity_created("o1", 6, lead_id="l1"),
        stage_changed("o1", 2, 10, PROSPECTING, WON, lead_id="l1", created=6),
        opportunity_closed("o1", 2, 10, won=True, lead_id="l1", created=6),
        stage_changed("o1", 3, 20, WON, NEGOTIATION, lead_id="l1", created=6),
    ]
    store = fold(reversed(events))
    assert funnel(store).won == 0 and funnel(store).opportunity == 1
    assert store.opportunities["o1"].is_open
    cells = sum_pipeline(store.opportunities.values(), PipelineQuery())
    assert cells[("default", "negotiation", "EUR")].weighted_amount == Decimal("800.0000")


def test_won_by_stage_change_and_closing_event_counts_once() -> None:
    events: list[CloudEvent[Any]] = [
        lead_created("l1", 0),
        lead_converted("l1", 2, 5, "o1"),
        opportunity_created("o1", 6, lead_id="l1"),
        stage_changed("o1", 2, 10, PROSPECTING, WON, lead_id="l1", created=6),
        opportunity_closed("o1", 3, 10, won=True, lead_id="l1", created=6),
    ]
    store = fold(events)
    assert funnel(store) == FunnelCounts(1, 1, 1, 1, 1)
    assert sum_pipeline(store.opportunities.values(), PipelineQuery()) == {}


def test_as_of_is_the_newest_event_time_folded_into_the_fact() -> None:
    store = fold([lead_qualified("l1", 2, 50), lead_created("l1", 0)])
    assert store.leads["l1"].as_of == at(50).replace(microsecond=123000)


def test_a_campaign_keeps_its_name_for_the_funnel_groups() -> None:
    store = fold([campaign_created("spring", "Spring fair", 0)])
    assert store.campaigns["spring"].name == "Spring fair"


# -- convergence under shuffling and duplication ---------------------------------------------
@dataclass
class Scenario:
    events: list[CloudEvent[Any]]
    expected_funnel: FunnelCounts
    expected_pipeline: dict[PipelineKey, PipelineCell]


OPEN_STAGES = (PROSPECTING, PROPOSAL, NEGOTIATION)
AMOUNTS = ("0.10", "99.99", "1000.00", "12500.50", "333.33")


@st.composite
def opportunity_story(
    draw: st.DrawFn, opportunity_id: str, lead_id: str | None, link_in_figures: bool, start: int
) -> tuple[list[CloudEvent[Any]], Stage, str]:
    """An opportunity's events from creation to its last stage; returns them, the final
    stage and the final amount."""
    carried = lead_id if link_in_figures else None
    amount = draw(st.sampled_from(AMOUNTS))
    events: list[CloudEvent[Any]] = [opportunity_created(opportunity_id, start, amount, carried)]
    stage, version, minute = PROSPECTING, 1, start
    for step in draw(st.lists(st.sampled_from(["move", "amount"]), max_size=3)):
        version, minute = version + 1, minute + 7
        if step == "move":
            target = draw(st.sampled_from([s for s in OPEN_STAGES if s != stage]))
            events.append(
                stage_changed(opportunity_id, version, minute, stage, target, amount, carried, start)
            )
            stage = target
        else:
            amount = draw(st.sampled_from(AMOUNTS))
            events.append(opportunity_updated(opportunity_id, version, minute, stage, amount, carried, start))
    ending = draw(st.sampled_from(["open", "won", "lost"]))
    if ending != "open":
        target = WON if ending == "won" else LOST
        version, minute = version + 1, minute + 7
        events.append(stage_changed(opportunity_id, version, minute, stage, target, amount, carried, start))
        # The closing event may share the stage change's version or follow it.
        version += draw(st.sampled_from([0, 1]))
        events.append(
            opportunity_closed(opportunity_id, version, minute, ending == "won", amount, carried, start)
        )
        stage = target
    return events, stage, amount


@st.composite
def scenarios(draw: st.DrawFn) -> Scenario:
    events: list[CloudEvent[Any]] = [campaign_created("spring", "Spring fair", 0)]
    expected = FunnelCounts()
    final_opportunities: list[tuple[Stage, str]] = []
    for index in range(draw(st.integers(min_value=1, max_value=3))):
        lead_id, start = f"lead-{index}", index * 1000
        source = draw(st.sampled_from([LeadSource.WEB, LeadSource.EVENT]))
        campaign = draw(st.sampled_from(["spring", None]))
        marks = {"lead_source": source, "campaign_id": campaign}
        events.append(lead_created(lead_id, start, **marks))
        version, minute, qualified = 1, start, False
        for action in draw(st.lists(st.sampled_from(["update", "qualify", "disqualify"]), max_size=3)):
            version, minute = version + 1, minute + 5
            if action == "update":
                events.append(lead_updated(lead_id, version, minute, captured_at=at(start), **marks))
            elif action == "qualify":
                rating = draw(st.sampled_from(list(LeadRating)))
                events.append(lead_qualified(lead_id, version, minute, rating, **marks))
                qualified = True
            else:
                events.append(lead_disqualified(lead_id, version, minute, **marks))
        outcome = draw(st.sampled_from(["none", "converted", "converted_with_opportunity"]))
        reached = FunnelCounts(captured=1, qualified=int(qualified))
        if outcome != "none":
            opportunity_id = f"opp-{index}" if outcome == "converted_with_opportunity" else None
            version, minute = version + 1, minute + 5
            events.append(lead_converted(lead_id, version, minute, opportunity_id, **marks))
            reached = FunnelCounts(1, 1, 1)
            if opportunity_id is not None:
                link = draw(st.booleans())
                story, stage, amount = draw(opportunity_story(opportunity_id, lead_id, link, minute + 1))
                events.extend(story)
                final_opportunities.append((stage, amount))
                reached = FunnelCounts(1, 1, 1, 1, int(stage == WON))
        expected = expected + reached
    if draw(st.booleans()):  # an opportunity that did not come from a lead
        story, stage, amount = draw(opportunity_story("opp-direct", None, False, 50))
        events.extend(story)
        final_opportunities.append((stage, amount))
    pipeline: dict[PipelineKey, PipelineCell] = {}
    for stage, amount in final_opportunities:
        if stage.kind != StageKind.OPEN:
            continue
        key = ("default", stage.stage_id, "EUR")
        held = pipeline.get(key, PipelineCell(stage.name, 0, Decimal(0), Decimal(0)))
        pipeline[key] = PipelineCell(
            stage.name,
            held.count + 1,
            held.amount + Decimal(amount),
            held.weighted_amount + weighted_amount(Decimal(amount), stage.probability),
        )
    return Scenario(events, expected, pipeline)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(scenario=scenarios(), data=st.data())
def test_shuffled_and_duplicated_streams_converge_to_the_in_order_facts(
    scenario: Scenario, data: st.DataObject
) -> None:
    in_order = fold(scenario.events)
    duplicates = data.draw(st.lists(st.sampled_from(scenario.events), max_size=len(scenario.events)))
    shuffled = data.draw(st.permutations(scenario.events + duplicates))
    assert state(fold(shuffled)) == state(in_order)

    # And the views equal a straightforward recomputation from the scenario.
    assert funnel(in_order) == scenario.expected_funnel
    assert sum_pipeline(in_order.opportunities.values(), PipelineQuery()) == scenario.expected_pipeline
    newest = max(event.time for event in scenario.events).replace(microsecond=123000)
    assert (
        max(fact.as_of for fact in [*in_order.leads.values(), *in_order.opportunities.values()] if fact.as_of)
        == newest
    )
