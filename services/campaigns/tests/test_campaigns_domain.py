"""Unit tests of the campaign's rules: planning, status lifecycle, cost ledger, derived figures."""

from __future__ import annotations

from datetime import UTC, date, datetime
from decimal import Decimal
from typing import Any

import pytest
from crm_campaigns.domain import (
    ALLOWED_TRANSITIONS,
    MAX_COST_ENTRIES,
    MAX_HIERARCHY_DEPTH,
    Campaign,
    CampaignDetails,
    IllegalTransition,
    InvalidCampaign,
    MemberCounts,
    NewCostEntry,
    OpportunityOutcome,
    OpportunityState,
    check_hierarchy,
    cost_per_lead,
    opportunity_figures,
    return_on_investment,
    rollup_scope,
    summarize,
)
from crm_campaigns.use_cases import TOPICS
from crm_contracts.events.campaigns import (
    CampaignCreated,
    CampaignPurpose,
    CampaignStatus,
    CampaignType,
    CostEntry,
)
from crm_contracts.events.common import MONEY_MAX, Actor

NOW = datetime(2026, 11, 20, 12, 0, tzinfo=UTC)
REP = Actor(id="rep-1")


def details(**overrides: Any) -> CampaignDetails:
    data: dict[str, Any] = {
        "name": "Autumn webinar",
        "type": "webinar",
        "start_date": "2026-10-01",
        "end_date": "2026-11-30",
        "budgeted_cost": "10000.00",
        "currency": "EUR",
    }
    data.update(overrides)
    return CampaignDetails.model_validate(data)


def campaign(status: CampaignStatus = CampaignStatus.PLANNED, **overrides: Any) -> Campaign:
    return Campaign.plan("c-1", details(**overrides), now=NOW, by="rep-1", status=status)


def cost(
    amount: str, entry_id: str = "inv-1", currency: str = "EUR", note: str | None = None
) -> NewCostEntry:
    return NewCostEntry(
        entry_id=entry_id,
        amount=Decimal(amount),
        currency=currency,
        incurred_on=date(2026, 10, 5),
        note=note,
    )


# -- planning ---------------------------------------------------------------------------------
def test_a_planned_campaign_starts_at_version_1_with_its_details() -> None:
    c = campaign()
    assert (c.status, c.version, c.purpose) == (CampaignStatus.PLANNED, 1, CampaignPurpose.LEAD_GENERATION)
    assert c.type is CampaignType.WEBINAR and c.actual_cost == Decimal("0.00")
    assert [(h.from_status, h.to_status) for h in c.status_history] == [(None, CampaignStatus.PLANNED)]


def test_the_end_date_may_not_lie_before_the_start() -> None:
    with pytest.raises(InvalidCampaign) as refused:
        campaign(start_date="2026-10-01", end_date="2026-09-30")
    assert refused.value.field == "end_date"
    assert campaign(start_date="2026-10-01", end_date="2026-10-01").end_date == date(2026, 10, 1)


def test_a_campaign_cannot_be_its_own_parent() -> None:
    with pytest.raises(InvalidCampaign) as refused:
        campaign(parent_campaign_id="c-1")
    assert refused.value.field == "parent_campaign_id"


def test_the_snapshot_is_a_valid_campaign_created_payload() -> None:
    c = campaign(expected_response="2.50", expected_revenue="50000")
    created = CampaignCreated(campaign=c.snapshot(), created_at=NOW, created_by=REP)
    assert created.campaign.expected_response == Decimal("2.50")
    assert created.campaign.budgeted_cost == Decimal("10000.00")


# -- revising --------------------------------------------------------------------------------
def test_revising_changes_only_the_given_details_and_names_them() -> None:
    c = campaign()
    updated = c.revise(
        {"end_date": date(2026, 12, 15), "budgeted_cost": Decimal("10000.00")}, now=NOW, by=REP
    )
    assert updated is not None and updated.changed_fields == ["end_date"]
    assert c.end_date == date(2026, 12, 15) and c.version == 2 and c.name == "Autumn webinar"
    assert updated.campaign.end_date == date(2026, 12, 15)


def test_a_revision_that_changes_nothing_keeps_the_version() -> None:
    c = campaign()
    assert c.revise({"name": "Autumn webinar"}, now=NOW, by=REP) is None
    assert c.version == 1


@pytest.mark.parametrize(
    ("changes", "field"),
    [
        ({"end_date": date(2026, 9, 1)}, "end_date"),
        ({"name": None}, "name"),
        ({"parent_campaign_id": "c-1"}, "parent_campaign_id"),
    ],
)
def test_invalid_revisions_are_refused_naming_the_field(changes: dict[str, Any], field: str) -> None:
    c = campaign()
    with pytest.raises(InvalidCampaign) as refused:
        c.revise(changes, now=NOW, by=REP)
    assert refused.value.field == field and c.version == 1


def test_a_finished_campaign_keeps_its_plan() -> None:
    c = campaign(status=CampaignStatus.COMPLETED)
    with pytest.raises(IllegalTransition) as refused:
        c.revise({"name": "Renamed"}, now=NOW, by=REP)
    assert refused.value.field == "status" and c.name == "Autumn webinar"


def test_the_currency_is_fixed_once_costs_are_booked() -> None:
    c = campaign()
    assert c.revise({"currency": "USD"}, now=NOW, by=REP) is not None
    c.record_cost(cost("10.00", currency="USD"), now=NOW, by=REP)
    with pytest.raises(IllegalTransition) as refused:
        c.revise({"currency": "EUR"}, now=NOW, by=REP)
    assert refused.value.field == "currency" and c.currency == "USD"


def test_a_parent_may_not_sit_below_the_campaign_nor_too_deep() -> None:
    check_hierarchy("c-1", ["c-2", "c-3"])
    with pytest.raises(InvalidCampaign) as cycle:
        check_hierarchy("c-1", ["c-2", "c-1", "c-3"])
    assert cycle.value.field == "parent_campaign_id"
    with pytest.raises(InvalidCampaign):
        check_hierarchy("c-1", [f"c-{i}" for i in range(2, MAX_HIERARCHY_DEPTH + 1)])


# -- status lifecycle -------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("start", "target"),
    [
        (CampaignStatus.PLANNED, CampaignStatus.ACTIVE),
        (CampaignStatus.PLANNED, CampaignStatus.ABORTED),
        (CampaignStatus.ACTIVE, CampaignStatus.COMPLETED),
        (CampaignStatus.ACTIVE, CampaignStatus.ABORTED),
    ],
)
def test_legal_transitions_change_status_bump_version_and_record_history(
    start: CampaignStatus, target: CampaignStatus
) -> None:
    c = campaign(status=start)
    changed = c.change_status(target, now=NOW, by=REP, reason="go")
    assert c.status is target and c.version == 2
    assert (changed.previous_status, changed.status, changed.changed_by) == (start, target, REP)
    assert c.status_history[-1].from_status is start and c.status_history[-1].reason == "go"


@pytest.mark.parametrize(
    ("start", "target"),
    [
        (CampaignStatus.PLANNED, CampaignStatus.COMPLETED),
        (CampaignStatus.ACTIVE, CampaignStatus.PLANNED),
        (CampaignStatus.COMPLETED, CampaignStatus.ACTIVE),
        (CampaignStatus.COMPLETED, CampaignStatus.ABORTED),
        (CampaignStatus.ABORTED, CampaignStatus.ACTIVE),
        (CampaignStatus.ACTIVE, CampaignStatus.ACTIVE),
    ],
)
def test_illegal_transitions_are_refused_naming_status_and_change_nothing(
    start: CampaignStatus, target: CampaignStatus
) -> None:
    c = campaign(status=start)
    with pytest.raises(IllegalTransition) as refused:
        c.change_status(target, now=NOW, by=REP)
    assert refused.value.field == "status"
    assert c.status is start and c.version == 1 and len(c.status_history) == 1


def test_completed_and_aborted_are_final() -> None:
    assert ALLOWED_TRANSITIONS[CampaignStatus.COMPLETED] == frozenset()
    assert ALLOWED_TRANSITIONS[CampaignStatus.ABORTED] == frozenset()


# -- cost ledger ------------------------------------------------------------------------------
def test_the_actual_cost_is_the_sum_of_the_ledger_including_corrections() -> None:
    c = campaign()
    first = c.record_cost(cost("1200.50", "inv-1"), now=NOW, by=REP)
    c.record_cost(cost("300.25", "inv-2"), now=NOW, by=REP)
    last = c.record_cost(cost("-100.00", "credit-1", note="refund"), now=NOW, by=REP)
    assert c.actual_cost == Decimal("1400.75")
    assert [e.entry_id for e in c.cost_entries] == ["inv-1", "inv-2", "credit-1"]
    assert c.version == 4
    assert first is not None and first.actual_cost == Decimal("1200.50")
    assert last is not None and last.actual_cost == Decimal("1400.75") and last.entry.note == "refund"


def test_a_cost_that_would_take_the_actual_cost_past_the_money_bound_is_refused() -> None:
    """Every amount an event carries stays within Money's bound, so the ledger's total does."""
    c = campaign()
    c.record_cost(cost("9999999999999999.00", "inv-1"), now=NOW, by=REP)
    with pytest.raises(InvalidCampaign) as refused:
        c.record_cost(cost("1.00", "inv-2"), now=NOW, by=REP)
    assert refused.value.field == "amount" and c.actual_cost == Decimal("9999999999999999.00")
    last = c.record_cost(cost("0.99", "inv-3"), now=NOW, by=REP)
    assert last is not None and last.actual_cost == MONEY_MAX


def test_resending_the_same_cost_entry_changes_nothing() -> None:
    c = campaign()
    c.record_cost(cost("500.00"), now=NOW, by=REP)
    assert c.record_cost(cost("500.00"), now=NOW, by=REP) is None
    assert c.actual_cost == Decimal("500.00") and c.version == 2


def test_the_same_entry_id_with_other_content_is_refused() -> None:
    c = campaign()
    c.record_cost(cost("500.00"), now=NOW, by=REP)
    with pytest.raises(IllegalTransition) as refused:
        c.record_cost(cost("501.00"), now=NOW, by=REP)
    assert refused.value.field == "entry_id" and c.actual_cost == Decimal("500.00")


@pytest.mark.parametrize(
    ("entry", "field"),
    [
        (cost("10.00", currency="USD"), "currency"),
        (cost("0.00"), "amount"),
        (cost("-0.01"), "amount"),
    ],
)
def test_costs_in_another_currency_zero_or_driving_the_total_negative_are_refused(
    entry: NewCostEntry, field: str
) -> None:
    c = campaign()
    with pytest.raises(InvalidCampaign) as refused:
        c.record_cost(entry, now=NOW, by=REP)
    assert refused.value.field == field
    assert c.cost_entries == [] and c.version == 1


def test_the_ledger_is_capped() -> None:
    c = campaign()
    c.cost_entries = [
        CostEntry(
            entry_id=f"e-{i}",
            amount=Decimal("1.00"),
            currency="EUR",
            incurred_on=date(2026, 10, 5),
            recorded_at=NOW,
            recorded_by=REP,
        )
        for i in range(MAX_COST_ENTRIES)
    ]
    with pytest.raises(IllegalTransition) as refused:
        c.record_cost(cost("1.00", "one-too-many"), now=NOW, by=REP)
    assert refused.value.field == "entry_id" and len(c.cost_entries) == MAX_COST_ENTRIES


def test_costs_may_be_booked_after_a_campaign_ended() -> None:
    c = campaign(status=CampaignStatus.COMPLETED)
    assert c.record_cost(cost("75.00"), now=NOW, by=REP) is not None
    assert c.actual_cost == Decimal("75.00")


# -- derived figures --------------------------------------------------------------------------
def test_cost_per_lead_is_rounded_to_the_cent_and_absent_without_leads() -> None:
    assert cost_per_lead(Decimal("1000.00"), 3) == Decimal("333.33")
    assert cost_per_lead(Decimal("1000.00"), 6) == Decimal("166.67")
    assert cost_per_lead(Decimal("0.00"), 4) == Decimal("0.00")
    assert cost_per_lead(Decimal("1000.00"), 0) is None


def test_the_summary_combines_the_ledger_with_member_counts() -> None:
    c = campaign()
    c.record_cost(cost("900.00"), now=NOW, by=REP)
    outcomes = [
        outcome("o-1", "2000.00", OpportunityState.WON),
        outcome("o-2", "500.00", OpportunityState.OPEN),
    ]
    summary = summarize(c, MemberCounts(members=5, responses=2, leads=4, converted_leads=1), outcomes)
    assert (summary.members, summary.responses, summary.response_rate) == (5, 2, Decimal("40.00"))
    assert summary.actual_cost == Decimal("900.00")
    assert summary.cost_per_lead == Decimal("225.00")
    assert summary.conversion_rate == Decimal("25.00")
    assert summary.budget_remaining == Decimal("9100.00")
    assert (summary.opportunities, summary.open_opportunities, summary.won_opportunities) == (2, 1, 1)
    assert summary.won_revenue == Decimal("2000.00")
    assert summary.roi == Decimal("1.2222")
    empty = summarize(campaign(), MemberCounts(members=0, responses=0, leads=0, converted_leads=0), [])
    assert empty.cost_per_lead is None and empty.conversion_rate is None and empty.roi is None
    assert empty.response_rate is None


def outcome(
    opportunity_id: str, amount: str, state: OpportunityState, currency: str = "EUR"
) -> OpportunityOutcome:
    return OpportunityOutcome(
        opportunity_id=opportunity_id, amount=Decimal(amount), currency=currency, state=state
    )


def test_roi_is_won_revenue_less_cost_over_cost_and_absent_while_nothing_was_spent() -> None:
    assert return_on_investment(Decimal("3000.00"), Decimal("1000.00")) == Decimal("2.0000")
    assert return_on_investment(Decimal("0.00"), Decimal("1000.00")) == Decimal("-1.0000")
    assert return_on_investment(Decimal("1000.00"), Decimal("3000.00")) == Decimal("-0.6667")
    assert return_on_investment(Decimal("5000.00"), Decimal("0.00")) is None


def test_only_won_opportunities_in_the_campaigns_currency_count_as_its_revenue() -> None:
    figures = opportunity_figures(
        [
            outcome("o-1", "1000.00", OpportunityState.WON),
            outcome("o-2", "250.50", OpportunityState.WON),
            outcome("o-3", "9999.00", OpportunityState.LOST),
            outcome("o-4", "400.00", OpportunityState.OPEN),
            outcome("o-5", "700.00", OpportunityState.WON, currency="USD"),
            outcome("o-6", "300.00", OpportunityState.WON, currency="USD"),
        ],
        "EUR",
    )
    assert (figures.opportunities, figures.won_opportunities, figures.lost_opportunities) == (6, 4, 1)
    assert figures.won_revenue == Decimal("1250.50")
    assert figures.won_revenue_in_other_currencies == {"USD": Decimal("1000.00")}


def test_sub_campaigns_in_the_same_currency_roll_up_into_the_parent() -> None:
    parent = campaign()
    parent.record_cost(cost("1000.00"), now=NOW, by=REP)
    child = Campaign.plan("c-2", details(budgeted_cost="500.00", parent_campaign_id="c-1"), now=NOW, by="r")
    child.record_cost(cost("500.00"), now=NOW, by=REP)
    abroad = Campaign.plan("c-3", details(currency="USD", parent_campaign_id="c-1"), now=NOW, by="r")
    abroad.record_cost(cost("700.00", currency="USD"), now=NOW, by=REP)
    assert rollup_scope(parent, [child, abroad]) == ([parent, child], ["c-3"])

    summary = summarize(
        parent,
        MemberCounts(members=3, responses=3, leads=3, converted_leads=1),
        [outcome("o-1", "3000.00", OpportunityState.WON)],
        [child, abroad],
    )
    assert (summary.sub_campaigns, summary.sub_campaigns_in_other_currencies) == (["c-2"], ["c-3"])
    assert summary.actual_cost == Decimal("1500.00")
    assert summary.budgeted_cost == Decimal("10500.00")
    assert summary.cost_per_lead == Decimal("500.00")
    assert summary.roi == Decimal("1.0000")


def test_every_event_payload_maps_to_a_catalogue_topic_of_that_payload() -> None:
    for payload, spec in TOPICS.items():
        assert spec.data_model is payload, payload
    assert TOPICS[CampaignCreated].topic == "campaign.created"
