"""The queries the reporting tests ask of every view: each view function with its
straightforward recomputation (``reporting_oracle``) and a query covering groups, filters and
periods; and the same kind of questions as HTTP requests."""

from __future__ import annotations

from datetime import UTC, date, datetime
from typing import Any

import reporting_oracle as oracle
from crm_contracts.events.campaigns import CampaignStatus
from crm_contracts.events.leads import LeadSource
from crm_reporting import views
from crm_reporting.memory import MemoryFactStore

NOW = datetime(2027, 6, 1, tzinfo=UTC)


async def _pipeline(source: views.ViewSource, query: views.PipelineQuery) -> list[views.PipelineRow]:
    return await views.pipeline_rows(source, query, NOW)


def queries() -> list[tuple[Any, Any, Any]]:
    """(view function, oracle function, query) triples covering groups, filters and periods."""
    d = date
    q: list[tuple[Any, Any, Any]] = [(views.funnel_rows, oracle.funnel, views.FunnelQuery())]
    for group in views.FunnelDimension:
        q.append(
            (views.funnel_rows, oracle.funnel, views.FunnelQuery(group_by=group, period=views.Grain.MONTH))
        )
    q += [
        (
            views.funnel_rows,
            oracle.funnel,
            views.FunnelQuery.model_validate(
                {"from": d(2026, 3, 3), "to": d(2026, 4, 12), "period": "week", "group_by": "rating"}
            ),
        ),
        (
            views.funnel_rows,
            oracle.funnel,
            views.FunnelQuery.model_validate(
                {"from": d(2026, 3, 15), "to": d(2027, 2, 3), "basis": "cohort", "group_by": "lead_source"}
            ),
        ),
        (
            views.funnel_rows,
            oracle.funnel,
            views.FunnelQuery.model_validate({"from": d(2026, 3, 2), "to": d(2026, 4, 20), "period": "day"}),
        ),
        (
            views.funnel_rows,
            oracle.funnel,
            views.FunnelQuery.model_validate(
                {"period": "quarter", "campaign_id": "spring", "group_by": "owner_id"}
            ),
        ),
        (
            views.funnel_rows,
            oracle.funnel,
            views.FunnelQuery.model_validate({"period": "year", "basis": "cohort", "lead_source": "web"}),
        ),
    ]
    for grouping in views.PipelineGrouping:
        q.append((_pipeline, oracle.pipeline, views.PipelineQuery(group_by=grouping)))
    q += [
        (_pipeline, oracle.pipeline, views.PipelineQuery(owner_id="rep-2")),
        (
            _pipeline,
            oracle.pipeline,
            views.PipelineQuery(product_id="p1", group_by=views.PipelineGrouping.SALES_TEAM),
        ),
        (views.forecast_rows, oracle.forecast, views.ForecastQuery()),
        (
            views.forecast_rows,
            oracle.forecast,
            views.ForecastQuery.model_validate(
                {"from": d(2026, 4, 1), "to": d(2026, 7, 1), "product_id": "p2"}
            ),
        ),
        (views.forecast_rows, oracle.forecast, views.ForecastQuery(owner_id="rep-1")),
        (views.win_loss_rows, oracle.win_loss, views.WinLossQuery(currency="EUR")),
        (
            views.win_loss_rows,
            oracle.win_loss,
            views.WinLossQuery(currency="USD", group_by=views.WinLossDimension.LOSS_REASON),
        ),
        (
            views.win_loss_rows,
            oracle.win_loss,
            views.WinLossQuery.model_validate(
                {
                    "from": d(2026, 3, 20),
                    "to": d(2026, 9, 1),
                    "period": "month",
                    "group_by": "owner_id",
                    "currency": "EUR",
                }
            ),
        ),
        (
            views.win_loss_rows,
            oracle.win_loss,
            views.WinLossQuery(
                currency="EUR", group_by=views.WinLossDimension.PRODUCT, sales_team_id="north"
            ),
        ),
        (
            views.win_loss_rows,
            oracle.win_loss,
            views.WinLossQuery(
                currency="EUR", group_by=views.WinLossDimension.CAMPAIGN, lead_source=LeadSource.WEB
            ),
        ),
        (views.lead_source_rows, oracle.lead_sources, views.LeadSourceQuery(currency="EUR")),
        (
            views.lead_source_rows,
            oracle.lead_sources,
            views.LeadSourceQuery.model_validate(
                {"period": "month", "campaign_id": "spring", "currency": "EUR"}
            ),
        ),
        (views.velocity_rows, oracle.velocity, views.VelocityQuery()),
        (
            views.velocity_rows,
            oracle.velocity,
            views.VelocityQuery.model_validate({"from": d(2026, 3, 1), "to": d(2026, 5, 1)}),
        ),
        (views.conversion_rows, oracle.conversion, views.VelocityQuery(pipeline_id="default")),
        (views.campaign_roi_rows, oracle.campaign_roi, views.CampaignRoiQuery()),
        (views.campaign_roi_rows, oracle.campaign_roi, views.CampaignRoiQuery(status=CampaignStatus.ACTIVE)),
        (
            views.history_rows,
            oracle.history,
            views.PipelineHistoryQuery.model_validate({"from": d(2026, 3, 1), "to": d(2026, 5, 1)}),
        ),
        (
            views.history_rows,
            oracle.history,
            views.PipelineHistoryQuery.model_validate(
                {"from": d(2026, 4, 15), "to": d(2027, 6, 1), "period": "month"}
            ),
        ),
    ]
    return q


QUERIES = queries()


def expected(function: Any, store: MemoryFactStore, query: Any) -> Any:
    """What the straightforward recomputation says ``query`` must answer."""
    return function(store, query, NOW) if function is oracle.pipeline else function(store, query)


# (path, params) that BI tools might send; every view and most of its options.
HTTP_REQUESTS: list[tuple[str, dict[str, str]]] = [
    ("/reports/funnel", {}),
    ("/reports/funnel", {"group_by": "lead_source", "period": "month"}),
    (
        "/reports/funnel",
        {"group_by": "campaign_id", "basis": "cohort", "from": "2026-03-01", "to": "2026-04-01"},
    ),
    ("/reports/funnel", {"period": "week", "from": "2026-03-01", "to": "2026-04-15", "owner_id": "rep-1"}),
    ("/reports/funnel", {"period": "year"}),
    ("/reports/pipeline", {}),
    ("/reports/pipeline", {"group_by": "owner"}),
    ("/reports/pipeline", {"group_by": "product", "pipeline_id": "default"}),
    ("/reports/forecast", {}),
    ("/reports/forecast", {"owner_id": "rep-1", "from": "2026-01-01"}),
    ("/reports/win-loss", {}),
    ("/reports/win-loss", {"group_by": "loss_reason", "period": "quarter"}),
    ("/reports/win-loss", {"group_by": "owner_id", "currency": "USD"}),
    ("/reports/stage-velocity", {}),
    ("/reports/stage-velocity", {"from": "2020-01-01", "to": "2026-05-01"}),
    ("/reports/stage-conversion", {"pipeline_id": "default"}),
    ("/reports/lead-sources", {}),
    ("/reports/lead-sources", {"period": "month", "campaign_id": "spring"}),
    ("/reports/campaign-roi", {}),
    ("/reports/pipeline-history", {"from": "2026-03-01", "to": "2026-04-01"}),
    ("/reports/pipeline-history", {"from": "2019-12-01", "to": "2020-04-01", "period": "month"}),
]
