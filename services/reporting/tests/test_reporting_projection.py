"""The projection folds events into facts and counters idempotently and order-independently:
unit cases for the orders that matter, and hypothesis tests that shuffle and duplicate
generated event streams and compare (1) the facts and counters with those of the in-order
stream, (2) the counters with counters recomputed from the final facts alone, and (3) every
view served from the counters with a straightforward recomputation from the same facts."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from datetime import date, datetime, timedelta
from decimal import Decimal
from typing import Any

from crm_contracts.envelope import CloudEvent
from crm_contracts.events.campaigns import CampaignStatus
from crm_contracts.events.leads import LeadOrigin, LeadRating, LeadSource, LeadStatus, Utm
from crm_reporting.memory import MemoryFactStore, MemoryViews, run_now
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from reporting_events import (
    NEGOTIATION,
    OPEN_STAGES,
    PROPOSAL,
    PROSPECTING,
    WON,
    Deal,
    Lead,
    Stage,
    at,
    campaign_created,
    campaign_status_changed,
    cost_recorded,
    days,
    member_added,
)
from reporting_queries import QUERIES, expected


def fold(events: Iterable[CloudEvent[Any]], store: MemoryFactStore | None = None) -> MemoryFactStore:
    return (store or MemoryFactStore()).fold(events)


def state(store: MemoryFactStore) -> tuple[Any, ...]:
    return (
        store.leads,
        store.opportunities,
        store.campaigns,
        store.members,
        store.counts,
        store.names,
        store.as_of,
    )


def ms(moment: datetime) -> datetime:
    return moment.replace(microsecond=moment.microsecond // 1000 * 1000)


# -- facts: the orders that matter ------------------------------------------------------------
def test_a_conversion_arriving_before_the_creation_counts_once_the_lead_is_created() -> None:
    lead = Lead("l1")
    store = fold([lead.converted(3, at(30), None)])
    assert store.leads["l1"].funnel.captured is None and store.leads["l1"].funnel.converted == at(30)
    fold([lead.created(), lead.qualified(2, at(10))], store)
    assert store.leads["l1"].funnel.captured == at(0)
    assert store.leads["l1"].status == LeadStatus.CONVERTED  # the creation is older: status stays


def test_a_stage_change_arriving_before_the_creation_is_not_lost() -> None:
    deal = Deal("o1", created=at(10), amount="500.00")
    store = fold([deal.moved(2, at(20), PROSPECTING, PROPOSAL)])
    fold([deal.created_event()], store)
    fact = store.opportunities["o1"]
    assert (fact.stage_id, fact.amount, fact.probability) == ("proposal", Decimal("500.00"), 50)
    assert fact.weighted_amount == Decimal("250.0000")
    assert [s.stage_id for s in fact.stays()] == ["prospecting", "proposal"]


def test_a_duplicate_event_writes_nothing() -> None:
    events: list[CloudEvent[Any]] = [
        Lead("l1").created(),
        Deal("o1", created=at(5), lead_id="l1").created_event(),
    ]
    store = fold(events)
    writes, before = store.writes, state(store)
    fold(events, store)
    assert store.writes == writes
    assert state(store) == before


def test_an_older_version_never_overwrites_a_newer_one() -> None:
    newer = Lead("l1", source=LeadSource.EVENT, campaign="fair").updated(3, at(20))
    store = fold([newer, Lead("l1", source=LeadSource.WEB).created()])
    assert (store.leads["l1"].lead_source, store.leads["l1"].campaign_id) == (LeadSource.EVENT, "fair")
    assert store.leads["l1"].status == LeadStatus.WORKING


def test_the_first_qualification_dates_the_step_and_the_newest_rating_wins() -> None:
    lead = Lead("l1")
    events = [
        lead.created(),
        lead.qualified(2, at(10), LeadRating.COLD),
        lead.disqualified(3, at(20)),
        lead.qualified(4, at(30), LeadRating.HOT),
    ]
    fact = fold(reversed(events)).leads["l1"]
    assert fact.funnel.qualified == at(10)
    assert fact.rating == LeadRating.HOT and fact.status == LeadStatus.QUALIFIED


def test_an_opportunity_linked_only_by_the_conversion_takes_its_source_and_campaign() -> None:
    lead = Lead("l1", source=LeadSource.PARTNER, campaign="spring")
    deal = Deal("o1", created=at(11))
    events = [
        lead.created(),
        lead.converted(2, at(10), "o1"),
        deal.created_event(),
        deal.closed(2, at(40), True),
    ]
    for order in (events, list(reversed(events))):
        store = fold(order)
        opportunity = store.opportunities["o1"]
        assert opportunity.converted_from_lead_id == "l1"
        assert (opportunity.attributed_lead_source, opportunity.attributed_campaign_id) == (
            LeadSource.PARTNER,
            "spring",
        )
        assert store.leads["l1"].funnel.won == at(40)


def test_moving_back_to_an_open_stage_reopens_a_won_opportunity() -> None:
    deal = Deal("o1", created=at(6))
    events = [
        deal.created_event(),
        *deal.close(2, at(10), PROSPECTING, True),
        deal.moved(3, at(20), WON, NEGOTIATION),
    ]
    fact = fold(reversed(events)).opportunities["o1"]
    assert fact.is_open and fact.won_at is None
    stays = fact.stays()
    assert [(s.stage_id, s.moved_to) for s in stays] == [
        ("prospecting", "closed_won"),
        ("closed_won", "negotiation"),
        ("negotiation", None),
    ]


def test_the_state_on_a_past_day_is_the_newest_version_that_had_happened_by_then() -> None:
    deal = Deal("o1", created=at(0))
    events = [
        deal.created_event(),
        deal.moved(2, at(days(3)), PROSPECTING, PROPOSAL),
        deal.updated(3, at(days(5)), PROPOSAL, "700.00"),
    ]
    fact = fold(reversed(events)).opportunities["o1"]
    assert fact.state_at(at(days(1))) is not None and fact.state_at(at(days(1))).stage_id == "prospecting"  # type: ignore[union-attr]
    assert fact.state_at(at(days(4))).amount == Decimal("1000.00")  # type: ignore[union-attr]
    assert fact.state_at(at(days(6))).amount == Decimal("700.00")  # type: ignore[union-attr]
    assert fact.state_at(at(-1)) is None


def test_campaign_cost_status_and_members_fold_in_any_order() -> None:
    events: list[CloudEvent[Any]] = [
        campaign_created("spring", "Spring fair", at(0), budget="900.00"),
        cost_recorded("spring", 2, at(10), "e1", "300.00", "300.00"),
        cost_recorded("spring", 3, at(20), "e2", "-50.00", "250.00"),
        campaign_status_changed("spring", 4, at(30), CampaignStatus.ACTIVE, CampaignStatus.COMPLETED),
        member_added("spring", "l1", at(1)),
        member_added("spring", "l1", at(2)),  # the same member again
    ]
    for order in (events, list(reversed(events))):
        store = fold(order)
        fact = store.campaigns["spring"]
        assert (fact.actual_cost, fact.status, fact.budgeted_cost) == (
            Decimal("250.00"),
            CampaignStatus.COMPLETED,
            Decimal("900.00"),
        )
        assert store.members == {("spring", "lead:l1")}


# -- generated streams ------------------------------------------------------------------------
@dataclass
class Scenario:
    events: list[CloudEvent[Any]]


AMOUNTS = ("0.10", "99.99", "1000.00", "12500.50", "333.33")
OWNERS = ("rep-1", "rep-2", None)
PRODUCTS = ((), ("p1",), ("p1", "p2"), ("p2",))


@st.composite
def opportunity_story(draw: st.DrawFn, deal: Deal) -> list[CloudEvent[Any]]:
    """An opportunity from creation through a few moves and updates, maybe closed, maybe
    reopened; times are minutes to weeks apart."""
    events: list[CloudEvent[Any]] = [deal.created_event()]
    stage: Stage = PROSPECTING
    version, minute = 1, (deal.created - at(0)) / timedelta(minutes=1)
    for step in draw(st.lists(st.sampled_from(["move", "amount"]), max_size=3)):
        version += 1
        minute += draw(st.sampled_from([7, 95, days(1), days(9), days(33)]))
        if step == "move":
            target = draw(st.sampled_from([s for s in OPEN_STAGES if s != stage]))
            events.append(deal.moved(version, at(minute), stage, target))
            stage = target
        else:
            events.append(deal.updated(version, at(minute), stage, draw(st.sampled_from(AMOUNTS))))
    ending = draw(st.sampled_from(["open", "won", "lost", "reopened"]))
    if ending != "open":
        version, minute = version + 1, minute + draw(st.sampled_from([30, days(2), days(40)]))
        won = ending in ("won", "reopened")
        events.extend(deal.close(version, at(minute), stage, won, draw(st.sampled_from(["price", "timing"]))))
        if ending == "reopened":
            version, minute = version + 1, minute + days(1)
            events.append(deal.moved(version, at(minute), WON, NEGOTIATION))
    return events


@st.composite
def scenarios(draw: st.DrawFn) -> Scenario:
    events: list[CloudEvent[Any]] = [
        campaign_created("spring", "Spring fair", at(0), budget="2000.00"),
        campaign_created("usd-fair", "US fair", at(0), currency="USD"),
    ]
    if draw(st.booleans()):
        events.append(cost_recorded("spring", 2, at(days(3)), "e1", "400.00", "400.00"))
    for index in range(draw(st.integers(min_value=1, max_value=4))):
        start = draw(st.sampled_from([0, 95, days(13), days(29), days(40), days(300)]))
        lead = Lead(
            f"lead-{index}",
            captured=at(start),
            source=draw(st.sampled_from([LeadSource.WEB, LeadSource.EVENT])),
            origin=draw(st.sampled_from([LeadOrigin.API, LeadOrigin.IMPORT])),
            campaign=draw(st.sampled_from(["spring", "usd-fair", None])),
            owner=draw(st.sampled_from(OWNERS)),
        )
        events.append(lead.created())
        if lead.campaign:
            events.append(member_added(lead.campaign, lead.lead_id, lead.captured))
        version, minute = 1, start
        for action in draw(st.lists(st.sampled_from(["update", "qualify", "disqualify"]), max_size=3)):
            version, minute = version + 1, minute + draw(st.sampled_from([5, days(2), days(20)]))
            if action == "update":
                events.append(lead.updated(version, at(minute)))
            elif action == "qualify":
                events.append(lead.qualified(version, at(minute), draw(st.sampled_from(list(LeadRating)))))
            else:
                events.append(lead.disqualified(version, at(minute)))
        outcome = draw(st.sampled_from(["none", "converted", "opportunity", "merged"]))
        if outcome == "merged" and hasattr(LeadStatus, "MERGED"):
            events.append(lead.updated(version + 1, at(minute + 5), LeadStatus("merged")))
        elif outcome in ("converted", "opportunity"):
            opportunity_id = f"opp-{index}" if outcome == "opportunity" else None
            version, minute = version + 1, minute + draw(st.sampled_from([5, days(3)]))
            events.append(lead.converted(version, at(minute), opportunity_id))
            if opportunity_id is not None:
                deal = Deal(
                    opportunity_id,
                    created=at(minute + 1),
                    amount=draw(st.sampled_from(AMOUNTS)),
                    currency=draw(st.sampled_from(["EUR", "EUR", "USD"])),
                    owner=draw(st.sampled_from(OWNERS)),
                    team=draw(st.sampled_from(["north", None])),
                    region=draw(st.sampled_from(["emea", None])),
                    industry=draw(st.sampled_from(["energy", None])),
                    products=draw(st.sampled_from(PRODUCTS)),
                    lead_id=lead.lead_id if draw(st.booleans()) else None,
                    close_date=draw(st.sampled_from([date(2026, 6, 30), date(2026, 4, 2), None])),
                )
                events.extend(draw(opportunity_story(deal)))
    if draw(st.booleans()):  # an opportunity that did not come from a lead
        deal = Deal(
            "opp-direct", created=at(days(50)), pipeline="enterprise", campaign="spring", products=("p1",)
        )
        events.extend(draw(opportunity_story(deal)))
    return Scenario(events)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(scenario=scenarios(), data=st.data())
def test_shuffled_and_duplicated_streams_converge_to_the_in_order_facts_and_counters(
    scenario: Scenario, data: st.DataObject
) -> None:
    in_order = fold(scenario.events)
    duplicates = data.draw(st.lists(st.sampled_from(scenario.events), max_size=len(scenario.events)))
    shuffled = data.draw(st.permutations(scenario.events + duplicates))
    assert state(fold(shuffled)) == state(in_order)
    # The counters built change by change equal those computed from the final facts alone.
    recounted = in_order.recount()
    assert (recounted.counts, recounted.names) == (in_order.counts, in_order.names)
    newest = max(ms(event.time) for event in scenario.events)
    assert max(in_order.as_of.values()) == newest


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(scenario=scenarios(), data=st.data())
def test_every_view_from_incremental_counters_equals_a_straightforward_recomputation(
    scenario: Scenario, data: st.DataObject
) -> None:
    duplicates = data.draw(st.lists(st.sampled_from(scenario.events), max_size=len(scenario.events)))
    store = fold(data.draw(st.permutations(scenario.events + duplicates)))
    source = MemoryViews(store)
    for view, reference, query in QUERIES:
        assert run_now(view(source, query)) == expected(reference, store, query), query


def test_every_counter_key_comes_back_from_its_document_id() -> None:
    """Deltas carry counter ids only; the merger derives the labels from them."""
    from crm_reporting.aggregates import CounterKey
    from reporting_story import STORY

    store = MemoryFactStore().fold(STORY)
    assert store.counts and store.names
    for key in [*store.counts, *store.names]:
        again = CounterKey.of_doc_id(key.view, key.doc_id)
        assert again == key and again.labels() == key.labels()


def test_a_lead_folds_its_utm_from_its_snapshot_and_its_conversion() -> None:
    tagged = Lead("l1", utm=Utm(source="google", medium="cpc", campaign="autumn", term="crm"))
    fact = fold([tagged.created()]).leads["l1"]
    assert (fact.utm_source, fact.utm_medium, fact.utm_campaign) == ("google", "cpc", "autumn")
    # A conversion arriving first states the UTM too; the older creation does not undo it.
    retagged = Lead("l1", utm=Utm(source="newsletter", medium="email"))
    fact = fold([retagged.converted(3, at(30), None), tagged.created()]).leads["l1"]
    assert (fact.utm_source, fact.utm_medium, fact.utm_campaign) == ("newsletter", "email", None)


def test_a_conversion_published_without_utm_leaves_the_leads_utm_alone() -> None:
    tagged = Lead("l1", utm=Utm(source="google"))
    untagged = Lead("l1")
    for events in (
        [tagged.created(), untagged.converted(3, at(30), None, with_utm=False)],
        [untagged.converted(3, at(30), None, with_utm=False), tagged.created()],
    ):
        fact = fold(events).leads["l1"]
        assert fact.utm_source == "google" and fact.converted_at is not None
