"""Unit tests of the view computations: funnel steps, counts and rates; pipeline sums and
probability-weighted amounts. No I/O."""

from __future__ import annotations

from datetime import UTC, datetime
from decimal import Decimal

from crm_contracts.events.leads import LeadRating, LeadSource
from crm_contracts.events.opportunities import StageKind
from crm_reporting.domain import (
    FunnelCounts,
    FunnelDimension,
    FunnelQuery,
    LeadFacts,
    LeadOpportunity,
    OpportunityFacts,
    PeriodBasis,
    PipelineQuery,
    conversion_rate,
    count_funnel,
    funnel_rows,
    funnel_steps,
    pipeline_rows,
    sum_pipeline,
    weighted_amount,
)


def day(n: int) -> datetime:
    return datetime(2026, 3, n, 12, tzinfo=UTC)


def lead(
    lead_id: str,
    *,
    source: LeadSource = LeadSource.WEB,
    campaign: str | None = None,
    rating: LeadRating | None = None,
    captured: int | None = 1,
    qualified: int | None = None,
    converted: int | None = None,
    opportunity: int | None = None,
    won: int | None = None,
) -> LeadFacts:
    opportunities: tuple[LeadOpportunity, ...] = ()
    if opportunity is not None:
        opportunities = (
            LeadOpportunity(
                opportunity_id=f"opp-{lead_id}",
                created_at=day(opportunity),
                won_at=day(won) if won is not None else None,
            ),
        )
    fact = LeadFacts(
        lead_id=lead_id,
        lead_source=source,
        campaign_id=campaign,
        rating=rating,
        captured_at=day(captured) if captured is not None else None,
        qualified_at=day(qualified) if qualified is not None else None,
        converted_at=day(converted) if converted is not None else None,
        opportunities=opportunities,
    )
    return fact.with_funnel()


def open_opportunity(
    opportunity_id: str,
    amount: str,
    probability: int,
    *,
    pipeline: str = "default",
    stage: str = "proposal",
    stage_name: str = "Proposal",
    currency: str = "EUR",
    owner: str | None = "rep-1",
    kind: StageKind = StageKind.OPEN,
    as_of: int = 1,
) -> OpportunityFacts:
    return OpportunityFacts(
        opportunity_id=opportunity_id,
        pipeline_id=pipeline,
        stage_id=stage,
        stage_name=stage_name,
        stage_kind=kind,
        probability=probability,
        amount=Decimal(amount),
        currency=currency,
        owner_id=owner,
        as_of=day(as_of),
    ).with_weighted_amount()


# -- funnel -----------------------------------------------------------------------------------
def test_a_lead_converted_without_formal_qualification_counts_as_qualified_at_conversion() -> None:
    steps = funnel_steps(lead("l1", converted=4))
    assert steps.qualified == day(4)
    assert steps.converted == day(4)


def test_the_first_qualification_not_the_conversion_dates_the_qualified_step() -> None:
    assert funnel_steps(lead("l1", qualified=2, converted=4)).qualified == day(2)


def test_the_earliest_opportunity_and_earliest_win_date_the_last_two_steps() -> None:
    fact = lead("l1", converted=3).model_copy(
        update={
            "opportunities": (
                LeadOpportunity(opportunity_id="b", created_at=day(5), won_at=day(9)),
                LeadOpportunity(opportunity_id="a", created_at=day(3), won_at=None),
            )
        }
    )
    steps = funnel_steps(fact)
    assert (steps.opportunity, steps.won) == (day(3), day(9))


def test_funnel_counts_every_step_each_lead_reached() -> None:
    leads = [
        lead("l1"),
        lead("l2", qualified=2),
        lead("l3", qualified=2, converted=3),
        lead("l4", qualified=2, converted=3, opportunity=3),
        lead("l5", qualified=2, converted=3, opportunity=3, won=8),
    ]
    assert count_funnel(leads, FunnelQuery()) == {None: FunnelCounts(5, 4, 3, 2, 1)}


def test_activity_period_counts_each_step_by_when_it_happened() -> None:
    leads = [
        lead("l1", captured=1, qualified=5, converted=10),
        lead("l2", captured=5, qualified=6),
        lead("l3", captured=9, qualified=9, converted=9, opportunity=9, won=20),
    ]
    query = FunnelQuery(period_from=day(5), period_to=day(10))
    # l1: qualified only; l2: captured and qualified; l3: all but won (won on day 20).
    assert count_funnel(leads, query) == {None: FunnelCounts(2, 3, 1, 1, 0)}


def test_the_period_includes_its_start_and_excludes_its_end() -> None:
    leads = [lead("start", captured=5), lead("end", captured=10)]
    counts = count_funnel(leads, FunnelQuery(period_from=day(5), period_to=day(10)))
    assert counts == {None: FunnelCounts(captured=1)}


def test_cohort_period_follows_the_leads_captured_in_it_to_every_later_step() -> None:
    leads = [
        lead("l1", captured=1, qualified=5, converted=10),
        lead("l2", captured=5, qualified=6, converted=12, opportunity=12, won=30),
    ]
    query = FunnelQuery(period_from=day(5), period_to=day(10), basis=PeriodBasis.COHORT)
    assert count_funnel(leads, query) == {None: FunnelCounts(1, 1, 1, 1, 1)}


def test_funnel_filters_by_source_campaign_and_rating() -> None:
    leads = [
        lead("l1", source=LeadSource.WEB, campaign="spring", rating=LeadRating.HOT, qualified=2),
        lead("l2", source=LeadSource.WEB, campaign="autumn", rating=LeadRating.HOT, qualified=2),
        lead("l3", source=LeadSource.EVENT, campaign="spring", rating=LeadRating.HOT, qualified=2),
        lead("l4", source=LeadSource.WEB, campaign="spring", rating=LeadRating.COLD, qualified=2),
    ]
    query = FunnelQuery(lead_source=LeadSource.WEB, campaign_id="spring", rating=LeadRating.HOT)
    assert count_funnel(leads, query) == {None: FunnelCounts(1, 1, 0, 0, 0)}


def test_funnel_groups_by_a_dimension_with_unknown_as_its_own_group() -> None:
    leads = [lead("l1", campaign="spring"), lead("l2", campaign="spring"), lead("l3", campaign=None)]
    counts = count_funnel(leads, FunnelQuery(group_by=FunnelDimension.CAMPAIGN))
    assert counts == {"spring": FunnelCounts(captured=2), None: FunnelCounts(captured=1)}


def test_leads_with_nothing_in_the_period_make_no_group() -> None:
    leads = [lead("l1", source=LeadSource.EVENT, captured=1), lead("l2", source=LeadSource.WEB, captured=6)]
    query = FunnelQuery(period_from=day(5), group_by=FunnelDimension.LEAD_SOURCE)
    assert count_funnel(leads, query) == {"web": FunnelCounts(captured=1)}


def test_conversion_rate_is_a_four_decimal_fraction_rounded_half_even() -> None:
    assert conversion_rate(1, 3) == Decimal("0.3333")
    assert conversion_rate(2, 3) == Decimal("0.6667")
    assert conversion_rate(1, 20000) == Decimal("0.0000")  # 0.00005: half to even
    assert conversion_rate(3, 20000) == Decimal("0.0002")  # 0.00015: half to even
    assert conversion_rate(5, 5) == Decimal("1.0000")


def test_conversion_rate_with_nobody_entering_the_step_is_none_not_zero() -> None:
    assert conversion_rate(0, 0) is None
    assert conversion_rate(0, 4) == Decimal("0.0000")


def test_funnel_row_carries_step_to_step_and_overall_rates() -> None:
    [row] = funnel_rows({None: FunnelCounts(10, 5, 4, 2, 1)}, FunnelQuery())
    assert (row.captured, row.qualified, row.converted, row.opportunities, row.won) == (10, 5, 4, 2, 1)
    assert row.qualified_rate == Decimal("0.5000")
    assert row.converted_rate == Decimal("0.8000")
    assert row.opportunity_rate == Decimal("0.5000")
    assert row.won_rate == Decimal("0.5000")
    assert row.overall_rate == Decimal("0.1000")


def test_an_empty_ungrouped_funnel_is_one_row_of_zeros_without_rates() -> None:
    [row] = funnel_rows({}, FunnelQuery())
    assert row.captured == 0 and row.group is None
    assert row.qualified_rate is None and row.overall_rate is None


def test_grouped_funnel_rows_are_sorted_with_unknown_last_and_named() -> None:
    counts = {None: FunnelCounts(1), "b": FunnelCounts(2), "a": FunnelCounts(3)}
    query = FunnelQuery(group_by=FunnelDimension.CAMPAIGN)
    rows = funnel_rows(counts, query, {"a": "Spring fair"})
    assert [(r.group, r.group_name, r.captured) for r in rows] == [
        ("a", "Spring fair", 3),
        ("b", None, 2),
        (None, None, 1),
    ]


def test_funnel_filters_serialise_the_period_as_from_and_to() -> None:
    query = FunnelQuery(period_from=day(1), period_to=day(2))
    dumped = query.model_dump(mode="json", by_alias=True)
    assert dumped["from"] == "2026-03-01T12:00:00Z" and dumped["to"] == "2026-03-02T12:00:00Z"


# -- pipeline ---------------------------------------------------------------------------------
def test_weighted_amount_is_exact_decimal_arithmetic() -> None:
    assert weighted_amount(Decimal("100.10"), 25) == Decimal("25.0250")
    assert weighted_amount(Decimal("0.01"), 1) == Decimal("0.0001")
    assert weighted_amount(Decimal("999999999999999.99"), 33) == Decimal("329999999999999.9967")
    assert weighted_amount(Decimal("12500"), 0) == Decimal("0.0000")


def test_pipeline_sums_open_opportunities_per_pipeline_stage_and_currency() -> None:
    opportunities = [
        open_opportunity("o1", "100.10", 25),
        open_opportunity("o2", "0.20", 50),
        open_opportunity("o3", "1000", 50, currency="USD"),
        open_opportunity("o4", "700", 10, stage="prospecting", stage_name="Prospecting"),
        open_opportunity("o5", "5000", 100, kind=StageKind.CLOSED_WON),
        open_opportunity("o6", "5000", 0, kind=StageKind.CLOSED_LOST),
    ]
    rows = pipeline_rows(sum_pipeline(opportunities, PipelineQuery()))
    assert [(r.pipeline_id, r.stage_id, r.currency, r.count, r.amount, r.weighted_amount) for r in rows] == [
        ("default", "proposal", "EUR", 2, Decimal("100.30"), Decimal("25.1250")),
        ("default", "proposal", "USD", 1, Decimal("1000.00"), Decimal("500.0000")),
        ("default", "prospecting", "EUR", 1, Decimal("700.00"), Decimal("70.0000")),
    ]
    assert str(rows[0].amount) == "100.30" and str(rows[0].weighted_amount) == "25.1250"


def test_thousands_of_cents_add_up_exactly() -> None:
    opportunities = [open_opportunity(f"o{i}", "0.10", 33) for i in range(3000)]
    [row] = pipeline_rows(sum_pipeline(opportunities, PipelineQuery()))
    assert row.amount == Decimal("300.00")
    assert row.weighted_amount == Decimal("99.0000")


def test_pipeline_filters_by_pipeline_and_owner() -> None:
    opportunities = [
        open_opportunity("o1", "10", 10, pipeline="enterprise", owner="rep-1"),
        open_opportunity("o2", "20", 10, pipeline="enterprise", owner="rep-2"),
        open_opportunity("o3", "40", 10, pipeline="default", owner="rep-1"),
    ]
    cells = sum_pipeline(opportunities, PipelineQuery(pipeline_id="enterprise", owner_id="rep-1"))
    assert {key: cell.amount for key, cell in cells.items()} == {
        ("enterprise", "proposal", "EUR"): Decimal("10")
    }


def test_a_stage_shows_the_name_its_most_recently_changed_opportunity_carries() -> None:
    opportunities = [
        open_opportunity("o1", "10", 10, stage_name="Proposal", as_of=1),
        open_opportunity("o2", "10", 10, stage_name="Quote", as_of=3),
        open_opportunity("o3", "10", 10, stage_name="Proposal", as_of=2),
    ]
    [row] = pipeline_rows(sum_pipeline(opportunities, PipelineQuery()))
    assert row.stage_name == "Quote"
