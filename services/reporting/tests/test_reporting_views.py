"""Each view's numbers on small stories worked out by hand: events folded in memory through the
same projection and counters as the service. Also the period tiling and a historical import
(events dated years back land in their own periods)."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import replace
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal
from typing import Any

import pytest
from crm_campaigns import domain as campaigns_domain
from crm_contracts.envelope import CloudEvent
from crm_contracts.events.campaigns import CampaignStatus
from crm_contracts.events.leads import LeadRating, LeadSource, LeadStatus, Utm
from crm_reporting import views
from crm_reporting.memory import MemoryFactStore, MemoryViews, run_now
from reporting_events import (
    NEGOTIATION,
    PROPOSAL,
    PROSPECTING,
    QUALIFICATION,
    Deal,
    Lead,
    at,
    campaign_created,
    cost_recorded,
    days,
    member_added,
    pipeline_defined,
)

D = Decimal


def source(events: Iterable[CloudEvent[Any]]) -> MemoryViews:
    return MemoryViews(MemoryFactStore().fold(events))


def rows(view: Any, events: Iterable[CloudEvent[Any]], query: Any, *extra: Any) -> list[Any]:
    result: list[Any] = run_now(view(source(events), query, *extra))
    return result


def q(model: type[Any], **values: Any) -> Any:
    return model.model_validate(values)


# -- periods ----------------------------------------------------------------------------------
def test_a_range_is_covered_by_whole_years_then_months_then_edge_days() -> None:
    tiling = views.tile(date(2024, 11, 29), date(2027, 2, 3), None)
    assert tiling.full_years == (2025, 2027)
    assert tiling.year_months == {2024: {12}, 2027: {1}}
    assert tiling.month_days == {(2024, 11): {29, 30}, (2027, 2): {1, 2}}
    assert not tiling.months_of_full_years
    assert views.tile(date(2026, 3, 5), date(2026, 3, 9), None).month_days == {(2026, 3): {5, 6, 7, 8}}
    assert views.tile(None, date(2026, 3, 1), views.Grain.QUARTER).full_years == (None, 2026)
    assert views.tile(date(2026, 3, 1), date(2026, 3, 1), None) == views.Tiling()


def test_periods_are_iso_weeks_calendar_quarters_and_days_need_a_bounded_range() -> None:
    assert views.bucket_of(date(2026, 3, 1), views.Grain.WEEK) == date(2026, 2, 23)  # a Sunday
    assert views.bucket_of(date(2026, 8, 31), views.Grain.QUARTER) == date(2026, 7, 1)
    with pytest.raises(views.QueryError) as missing:
        views.tile(None, date(2026, 3, 1), views.Grain.DAY)
    assert missing.value.field == "from"
    with pytest.raises(views.QueryError) as too_long:
        views.tile(date(2020, 1, 1), date(2026, 1, 1), views.Grain.WEEK)
    assert too_long.value.field == "to"


# -- funnel -----------------------------------------------------------------------------------
A = Lead("a", captured=at(0), campaign="spring", owner="rep-1")  # Mon 2 March 2026
B = Lead("b", captured=at(days(6)), source=LeadSource.EVENT, owner="rep-2")  # Sun 8 March
C = Lead("c", captured=at(days(30)), campaign="spring", owner="rep-1")  # 1 April
DEAL_A = Deal("o-a", created=at(days(10)), amount="12500.50", lead_id="a")
FUNNEL_STORY: list[CloudEvent[Any]] = [
    campaign_created("spring", "Spring fair", at(0)),
    A.created(),
    A.qualified(2, at(days(1)), LeadRating.HOT),
    A.converted(3, at(days(9)), "o-a"),
    DEAL_A.created_event(),
    *DEAL_A.close(2, at(days(40)), PROSPECTING, True),  # 11 April
    B.created(),
    B.qualified(2, at(days(7)), LeadRating.COLD),
    C.created(),
    C.converted(2, at(days(31)), None),  # qualified by converting
]


def counts(row: views.FunnelRow) -> tuple[Any, ...]:
    return (row.group, row.period, row.captured, row.qualified, row.converted, row.opportunities, row.won)


def test_the_funnel_counts_each_step_when_it_happened() -> None:
    [total] = rows(views.funnel_rows, FUNNEL_STORY, views.FunnelQuery())
    assert counts(total) == (None, None, 3, 3, 2, 1, 1)
    assert (total.qualified_rate, total.qualified_to_converted_rate, total.won_rate, total.overall_rate) == (
        D("1.0000"),
        D("0.6667"),
        D("1.0000"),
        D("0.3333"),
    )
    by_month = rows(views.funnel_rows, FUNNEL_STORY, q(views.FunnelQuery, period="month"))
    assert [counts(r) for r in by_month] == [
        (None, date(2026, 3, 1), 2, 2, 1, 1, 0),
        (None, date(2026, 4, 1), 1, 1, 1, 0, 1),
    ]
    weeks = rows(
        views.funnel_rows,
        FUNNEL_STORY,
        q(
            views.FunnelQuery,
            period="week",
            group_by="owner_id",
            **{"from": date(2026, 3, 1), "to": date(2026, 3, 16)},
        ),
    )
    assert [counts(r) for r in weeks] == [
        ("rep-1", date(2026, 3, 2), 1, 1, 0, 0, 0),
        ("rep-1", date(2026, 3, 9), 0, 0, 1, 1, 0),
        ("rep-2", date(2026, 3, 2), 1, 0, 0, 0, 0),
        ("rep-2", date(2026, 3, 9), 0, 1, 0, 0, 0),
    ]


GOOGLE_CPC = Utm(source="google", medium="cpc", campaign="spring-search")
A_GOOGLE = replace(A, utm=GOOGLE_CPC)
UTM_STORY: list[CloudEvent[Any]] = [
    A_GOOGLE.created(),
    A_GOOGLE.qualified(2, at(days(1))),
    A_GOOGLE.converted(3, at(days(9)), "o-a"),
    DEAL_A.created_event(),
    *DEAL_A.close(2, at(days(40)), PROSPECTING, True),
    replace(B, utm=Utm(source="google", medium="organic")).created(),
    replace(C, utm=Utm(source="newsletter", medium="email")).created(),
    Lead("d", captured=at(days(2))).created(),  # no UTM
]


def test_the_funnel_is_grouped_and_filtered_by_the_utm_of_the_leads() -> None:
    by_source = rows(views.funnel_rows, UTM_STORY, q(views.FunnelQuery, group_by="utm_source"))
    assert [counts(r) for r in by_source] == [
        ("google", None, 2, 1, 1, 1, 1),
        ("newsletter", None, 1, 0, 0, 0, 0),
        (None, None, 1, 0, 0, 0, 0),
    ]
    google_mediums = q(views.FunnelQuery, utm_source="google", group_by="utm_medium")
    assert [counts(r) for r in rows(views.funnel_rows, UTM_STORY, google_mediums)] == [
        ("cpc", None, 1, 1, 1, 1, 1),
        ("organic", None, 1, 0, 0, 0, 0),
    ]
    campaigns = q(views.FunnelQuery, utm_source="google", group_by="utm_campaign")
    assert [counts(r) for r in rows(views.funnel_rows, UTM_STORY, campaigns)] == [
        ("spring-search", None, 1, 1, 1, 1, 1),
        (None, None, 1, 0, 0, 0, 0),
    ]
    # Lead-source conversion of one UTM source.
    sources = q(views.FunnelQuery, utm_source="google", group_by="lead_source")
    assert [counts(r) for r in rows(views.funnel_rows, UTM_STORY, sources)] == [
        ("event", None, 1, 0, 0, 0, 0),
        ("web", None, 1, 1, 1, 1, 1),
    ]
    [newsletter] = rows(views.funnel_rows, UTM_STORY, q(views.FunnelQuery, utm_medium="email"))
    assert counts(newsletter) == (None, None, 1, 0, 0, 0, 0)


def test_utm_pairs_the_counters_do_not_keep_are_refused_naming_the_dimensions() -> None:
    query = q(views.FunnelQuery, utm_medium="cpc", group_by="rating")
    with pytest.raises(views.QueryError, match="rating and utm_medium"):
        rows(views.funnel_rows, UTM_STORY, query)


def test_the_cohort_funnel_follows_the_leads_captured_in_the_period() -> None:
    march = q(
        views.FunnelQuery,
        basis="cohort",
        group_by="campaign_id",
        **{"from": date(2026, 3, 1), "to": date(2026, 4, 1)},
    )
    assert [(counts(r), r.group_name) for r in rows(views.funnel_rows, FUNNEL_STORY, march)] == [
        (("spring", None, 1, 1, 1, 1, 1), "Spring fair"),
        ((None, None, 1, 1, 0, 0, 0), None),
    ]


def test_a_filter_and_a_group_may_name_two_dimensions_not_three() -> None:
    query = q(views.FunnelQuery, group_by="rating", campaign_id="spring", lead_source="web")
    with pytest.raises(views.QueryError) as refused:
        rows(views.funnel_rows, FUNNEL_STORY, query)
    assert refused.value.field == "group_by"
    hot_spring = q(views.FunnelQuery, group_by="rating", campaign_id="spring")
    assert [counts(r)[:3] for r in rows(views.funnel_rows, FUNNEL_STORY, hot_spring)] == [
        ("hot", None, 1),
        (None, None, 1),
    ]


# -- pipeline and forecast --------------------------------------------------------------------
BIG = Deal("o1", created=at(0), amount="1000.00", owner="rep-1", team="north", products=("p1", "p2"))
SMALL = Deal(
    "o2", created=at(days(2)), amount="333.33", owner="rep-2", products=("p1",), close_date=date(2026, 5, 3)
)
GONE = Deal("o3", created=at(0), amount="50.00")
PIPELINE_STORY = [
    BIG.created_event(),
    BIG.moved(2, at(days(1)), PROSPECTING, PROPOSAL),
    SMALL.created_event(),
    SMALL.moved(2, at(days(3)), PROSPECTING, NEGOTIATION),
    GONE.created_event(),
    *GONE.close(2, at(days(4)), PROSPECTING, False),
]


def test_a_pipeline_definition_renames_and_reorders_stages_newest_definition_winning() -> None:
    renamed = replace(PROPOSAL, name="Solution proposed")
    newest = pipeline_defined((PROSPECTING, NEGOTIATION, renamed), at(days(5)), version=2)
    older = pipeline_defined((PROSPECTING, QUALIFICATION, PROPOSAL, NEGOTIATION), at(days(-1)))
    for story in ([*PIPELINE_STORY, older, newest], [newest, older, *PIPELINE_STORY, newest]):
        result = rows(views.pipeline_rows, story, views.PipelineQuery(), at(days(10)))
        assert [(r.stage_id, r.stage_name) for r in result] == [
            ("negotiation", "Negotiation"),
            ("proposal", "Solution proposed"),
        ]


def test_the_pipeline_sums_open_opportunities_weighted_and_aged_in_stage_order() -> None:
    now = at(days(10))
    result = rows(views.pipeline_rows, PIPELINE_STORY, views.PipelineQuery(), now)
    assert [
        (r.stage_id, r.stage_name, r.count, r.amount, r.weighted_amount, r.average_age_days) for r in result
    ] == [
        ("proposal", "Proposal", 1, D("1000.00"), D("500.0000"), D("10.0000")),
        ("negotiation", "Negotiation", 1, D("333.33"), D("266.6640"), D("8.0000")),
    ]
    by_product = rows(
        views.pipeline_rows, PIPELINE_STORY, views.PipelineQuery(group_by=views.PipelineGrouping.PRODUCT), now
    )
    assert [(r.product_id, r.count, r.amount) for r in by_product] == [
        ("p1", 2, D("1333.33")),
        ("p2", 1, D("1000.00")),
    ]
    rep_2 = rows(
        views.pipeline_rows,
        PIPELINE_STORY,
        views.PipelineQuery(owner_id="rep-2", group_by=views.PipelineGrouping.SALES_TEAM),
        now,
    )
    assert [(r.sales_team_id, r.count) for r in rep_2] == [(None, 1)]


def test_the_forecast_places_open_deals_by_expected_close_and_won_ones_by_closing() -> None:
    won = Deal("o4", created=at(0), amount="200.00")
    story = [*PIPELINE_STORY, won.created_event(), *won.close(2, at(days(40)), PROSPECTING, True)]
    result = rows(views.forecast_rows, story, views.ForecastQuery())
    assert [
        (r.close_month, r.forecast_category.value, r.count, r.amount, r.weighted_amount) for r in result
    ] == [
        ("2026-04", "closed", 1, D("200.00"), D("200.0000")),
        ("2026-05", "commit", 1, D("333.33"), D("266.6640")),
        ("2026-06", "best_case", 1, D("1000.00"), D("500.0000")),
    ]
    spring = q(views.ForecastQuery, **{"from": date(2026, 4, 1), "to": date(2026, 6, 1)})
    assert [r.close_month for r in rows(views.forecast_rows, story, spring)] == ["2026-04", "2026-05"]


# -- win/loss and lead sources ----------------------------------------------------------------
def closed_deals() -> list[CloudEvent[Any]]:
    w1 = Deal("w1", created=at(0), amount="1000.00", owner="rep-1", source=LeadSource.WEB)
    w2 = Deal("w2", created=at(0), amount="3000.00", owner="rep-1", source=LeadSource.WEB)
    w3 = Deal("w3", created=at(0), amount="700.00", currency="USD", owner="rep-2")
    l1 = Deal("l1", created=at(0), amount="999.00", owner="rep-2", source=LeadSource.WEB)
    return [
        *(d.created_event() for d in (w1, w2, w3, l1)),
        *w1.close(2, at(days(10)), PROSPECTING, True),
        *w2.close(2, at(days(20)), PROSPECTING, True),
        *w3.close(2, at(days(30)), PROSPECTING, True),
        *l1.close(2, at(days(40)), PROSPECTING, False, "price"),
    ]


def test_win_loss_counts_rates_revenue_deal_size_and_cycle() -> None:
    [total] = rows(views.win_loss_rows, closed_deals(), views.WinLossQuery(currency="EUR"))
    assert (total.opportunities_created, total.won, total.lost, total.win_rate) == (4, 3, 1, D("0.7500"))
    assert (total.won_revenue, total.average_deal_size, total.won_revenue_in_other_currencies) == (
        D("4000.00"),
        D("2000.00"),
        {"USD": D("700.00")},
    )
    assert (total.average_cycle_days, total.average_won_cycle_days) == (D("25.0000"), D("20.0000"))
    reasons = rows(
        views.win_loss_rows,
        closed_deals(),
        views.WinLossQuery(currency="EUR", group_by=views.WinLossDimension.LOSS_REASON),
    )
    assert [(r.group, r.won, r.lost) for r in reasons] == [("price", 0, 1), (None, 3, 0)]
    by_owner = rows(
        views.win_loss_rows,
        closed_deals(),
        q(views.WinLossQuery, group_by="owner_id", period="month", currency="USD"),
    )
    assert [(r.group, r.period, r.won, r.lost, r.won_revenue) for r in by_owner] == [
        ("rep-1", date(2026, 3, 1), 2, 0, D("0.00")),
        ("rep-2", date(2026, 3, 1), 0, 0, D("0.00")),
        ("rep-2", date(2026, 4, 1), 1, 1, D("700.00")),
    ]


def test_lead_sources_join_lead_counts_with_the_deals_of_the_source() -> None:
    story = [*FUNNEL_STORY, *closed_deals()]
    result = {
        r.lead_source: r for r in rows(views.lead_source_rows, story, views.LeadSourceQuery(currency="EUR"))
    }
    web = result["web"]
    assert (web.leads, web.qualified, web.converted, web.opportunities, web.won, web.lost) == (
        2,
        2,
        2,
        4,
        3,
        1,
    )
    assert (web.won_revenue, web.win_rate, web.lead_conversion_rate) == (
        D("16500.50"),
        D("0.7500"),
        D("1.0000"),
    )
    assert (result["event"].leads, result["event"].qualified_rate) == (1, D("1.0000"))


# -- stage velocity and conversion ------------------------------------------------------------
def velocity_story() -> list[CloudEvent[Any]]:
    """Prospecting stays of 1, 2 and 4 days and 3 h 20 min; two of them move to Proposal."""
    events: list[CloudEvent[Any]] = []
    for index, (stay, target) in enumerate(
        [(days(1), PROPOSAL), (days(2), QUALIFICATION), (days(4), PROPOSAL), (200, QUALIFICATION)]
    ):
        deal = Deal(f"v{index}", created=at(0))
        events += [deal.created_event(), deal.moved(2, at(stay), PROSPECTING, target)]
    return events


def test_stage_velocity_gives_the_average_and_the_median_of_completed_stays() -> None:
    result = rows(views.velocity_rows, velocity_story(), views.VelocityQuery())
    prospecting = result[0]
    assert (prospecting.stage_id, prospecting.entered, prospecting.completed) == ("prospecting", 4, 4)
    # (1 + 2 + 4 + 200/1440) / 4 days; median of 200 min, 1 d, 2 d, 4 d = 1.5 days.
    assert prospecting.average_days == D("1.7847")
    assert prospecting.median_days == D("1.5000")
    three = rows(views.velocity_rows, velocity_story()[:6], views.VelocityQuery())[0]
    assert three.median_days == D("2.0000")
    assert [(r.stage_id, r.entered, r.completed) for r in result[1:]] == [
        ("qualification", 2, 0),
        ("proposal", 2, 0),
    ]


def test_stage_conversion_is_moves_out_of_a_stage_over_times_it_was_entered() -> None:
    result = rows(views.conversion_rows, velocity_story(), views.VelocityQuery(pipeline_id="default"))
    assert [(r.stage_id, r.to_stage_id, r.entered, r.moves, r.conversion_rate) for r in result] == [
        ("prospecting", "qualification", 4, 2, D("0.5000")),
        ("prospecting", "proposal", 4, 2, D("0.5000")),
    ]
    with pytest.raises(views.QueryError):
        rows(
            views.velocity_rows,
            velocity_story(),
            q(views.VelocityQuery, **{"from": date(2026, 3, 2), "to": date(2026, 4, 1)}),
        )


# -- campaign ROI -----------------------------------------------------------------------------
def test_campaign_roi_uses_the_campaigns_service_definitions() -> None:
    leads = [Lead(f"m{i}", captured=at(i), campaign="spring") for i in range(3)]
    deal = Deal("o-spring", created=at(days(1)), amount="2500.00", lead_id="m0")
    foreign = Deal("o-usd", created=at(days(1)), amount="99.00", currency="USD", campaign="spring")
    story: list[CloudEvent[Any]] = [
        campaign_created("spring", "Spring fair", at(0), budget="2000.00"),
        cost_recorded("spring", 2, at(days(2)), "e1", "900.00", "900.00"),
        cost_recorded("spring", 3, at(days(3)), "e2", "-150.00", "750.00"),
        *(lead.created() for lead in leads),
        *(member_added("spring", lead.lead_id, lead.captured) for lead in leads),
        leads[0].converted(2, at(days(1)), "o-spring"),
        deal.created_event(),
        *deal.close(2, at(days(9)), PROSPECTING, True),
        foreign.created_event(),
        *foreign.close(2, at(days(9)), PROSPECTING, True),
    ]
    [row] = rows(views.campaign_roi_rows, story, views.CampaignRoiQuery())
    assert (row.members, row.leads, row.converted_leads, row.opportunities, row.won_opportunities) == (
        3,
        3,
        1,
        2,
        2,
    )
    assert (row.actual_cost, row.won_revenue, row.won_revenue_in_other_currencies) == (
        D("750.00"),
        D("2500.00"),
        {"USD": D("99.00")},
    )
    assert row.cost_per_lead == campaigns_domain.cost_per_lead(D("750.00"), 3) == D("250.00")
    assert row.roi == campaigns_domain.return_on_investment(D("2500.00"), D("750.00")) == D("2.3333")
    assert row.model_dump()["conversion_rate"] == campaigns_domain.conversion_rate(1, 3) == D("33.33")
    assert row.lead_conversion_rate == D("0.3333")  # converted_leads / leads, as lead sources say it
    assert rows(views.campaign_roi_rows, story, views.CampaignRoiQuery(status=CampaignStatus.COMPLETED)) == []


def test_a_campaign_no_campaign_event_defined_is_a_row_named_unknown_until_it_is_created() -> None:
    leads = [Lead("u1", captured=at(1), campaign="typo-fair"), Lead("u2", captured=at(2), campaign="spring")]
    story: list[CloudEvent[Any]] = [
        campaign_created("spring", "Spring fair", at(0)),
        *(lead.created() for lead in leads),
    ]
    by_id = {r.campaign_id: r for r in rows(views.campaign_roi_rows, story, views.CampaignRoiQuery())}
    assert (by_id["typo-fair"].name, by_id["typo-fair"].known, by_id["typo-fair"].leads) == (
        "(unknown campaign typo-fair)",
        False,
        1,
    )
    assert (by_id["spring"].name, by_id["spring"].known) == ("Spring fair", True)
    later = [*story, campaign_created("typo-fair", "Autumn fair", at(3))]
    [named] = rows(views.campaign_roi_rows, later, views.CampaignRoiQuery(campaign_id="typo-fair"))
    assert (named.name, named.known, named.leads) == ("Autumn fair", True, 1)


def test_a_duplicate_merged_into_another_lead_is_no_lead_of_its_campaign() -> None:
    """The duplicate's lead.updated (status merged) takes it out of the funnel and of campaign
    ROI's leads; the survivor counts once, under its own campaign."""
    duplicate, survivor = (
        Lead("d1", captured=at(1), campaign="spring"),
        Lead("s1", captured=at(2), campaign="spring"),
    )
    story: list[CloudEvent[Any]] = [
        campaign_created("spring", "Spring fair", at(0)),
        duplicate.created(),
        survivor.created(),
        duplicate.updated(2, at(days(1)), status=LeadStatus.MERGED),
    ]
    [row] = rows(views.campaign_roi_rows, story, views.CampaignRoiQuery())
    assert (row.leads, row.converted_leads) == (1, 0)


# -- pipeline history and a historical import -------------------------------------------------
def long_ago(year: int, month: int, day: int) -> datetime:
    return datetime(year, month, day, 15, 30, tzinfo=UTC)


def test_a_historical_import_lands_in_the_periods_it_happened_in() -> None:
    old = Deal(
        "h1", created=long_ago(2019, 12, 30), amount="800.00", close_date=date(2020, 2, 1), lead_id="h-lead"
    )
    lead = Lead("h-lead", captured=long_ago(2019, 11, 4))
    story = [
        lead.created(),
        lead.converted(2, long_ago(2019, 12, 30), "h1"),
        old.created_event(),
        old.moved(2, long_ago(2020, 1, 10), PROSPECTING, NEGOTIATION),
        *old.close(3, long_ago(2020, 3, 2), NEGOTIATION, True),
    ]
    by_quarter = rows(views.funnel_rows, story, q(views.FunnelQuery, period="quarter"))
    assert [counts(r) for r in by_quarter] == [
        (None, date(2019, 10, 1), 1, 1, 1, 1, 0),
        (None, date(2020, 1, 1), 0, 0, 0, 0, 1),
    ]
    [won] = rows(
        views.win_loss_rows,
        story,
        q(views.WinLossQuery, period="year", currency="EUR", **{"from": date(2020, 1, 1)}),
    )
    assert (won.period, won.won, won.average_won_cycle_days) == (date(2020, 1, 1), 1, D("63.0000"))
    history = rows(
        views.history_rows,
        story,
        q(views.PipelineHistoryQuery, period="month", **{"from": date(2019, 12, 1), "to": date(2020, 4, 1)}),
    )
    assert [(r.day, r.stage_id, r.count, r.weighted_amount) for r in history] == [
        (date(2019, 12, 31), "prospecting", 1, D("80.0000")),
        (date(2020, 1, 31), "negotiation", 1, D("640.0000")),
        (date(2020, 2, 29), "negotiation", 1, D("640.0000")),
    ]
    days_around_the_move = rows(
        views.history_rows,
        story,
        q(views.PipelineHistoryQuery, **{"from": date(2020, 1, 9), "to": date(2020, 1, 11)}),
    )
    assert [(r.day, r.stage_id) for r in days_around_the_move] == [
        (date(2020, 1, 9), "prospecting"),
        (date(2020, 1, 10), "negotiation"),
    ]
    assert timedelta(days=63) == long_ago(2020, 3, 2) - long_ago(2019, 12, 30)
