"""HTTP routes of the reporting service: the views BI tools read, as JSON or CSV.

Every response says how fresh it is: ``as_of`` (time of the newest event merged into the
view's counters; header ``X-Report-As-Of``) and ``consumer_lag`` (events published but not in
the view yet: the consumer group's lag plus events folded into facts whose deltas are not
merged yet; header ``X-Consumer-Lag``).
"""

from __future__ import annotations

import csv
import io
from collections.abc import Awaitable, Callable, Sequence
from datetime import date, datetime, timedelta
from decimal import Decimal
from enum import StrEnum
from typing import Annotated, Any, TypeVar

from crm_contracts.events.campaigns import CampaignStatus, CampaignType
from crm_contracts.events.common import Currency, Id, IsoDate, ShortText, SingleLine
from crm_contracts.events.leads import LeadRating
from crm_contracts.events.picklists import PICKLIST_CODE_PATTERN
from crm_runtime import ApiError, ServiceRuntime
from fastapi import APIRouter, Depends, Query, Request
from fastapi.responses import Response
from prometheus_client import Gauge
from pydantic import BaseModel, Field

from . import examples
from .examples import Example
from .repository import Generation, GenerationSource, ReportingRepository
from .views import (
    CampaignRoiQuery,
    CampaignRoiRow,
    ForecastQuery,
    ForecastRow,
    FunnelDimension,
    FunnelQuery,
    FunnelRow,
    Grain,
    HistoryGrain,
    LeadSourceQuery,
    LeadSourceRow,
    PeriodBasis,
    PipelineGrouping,
    PipelineHistoryQuery,
    PipelineHistoryRow,
    PipelineQuery,
    PipelineRow,
    QueryError,
    StageConversionRow,
    StageVelocityRow,
    VelocityQuery,
    WinLossDimension,
    WinLossQuery,
    WinLossRow,
    campaign_roi_rows,
    conversion_rows,
    forecast_rows,
    funnel_rows,
    history_rows,
    lead_source_rows,
    pipeline_rows,
    utcnow,
    velocity_rows,
    win_loss_rows,
)

AS_OF_HEADER = "X-Report-As-Of"
LAG_HEADER = "X-Consumer-Lag"
CSV_MEDIA_TYPE = "text/csv"

RowT = TypeVar("RowT", bound=BaseModel)


class ReportFormat(StrEnum):
    JSON = "json"
    CSV = "csv"


# Which kinds of facts feed each view: its as_of is the newest of theirs.
LEADS, OPPORTUNITIES, CAMPAIGNS = ("leads",), ("opportunities",), ("campaigns",)


class Report(BaseModel):
    as_of: datetime | None = Field(description="Time of the newest event applied to this view.")
    consumer_lag: int | None = Field(
        description="Events published but not yet in this view (null until the lag was first measured)."
    )


class FunnelReport(Report):
    filters: FunnelQuery
    group_by: FunnelDimension | None
    rows: list[FunnelRow]


class PipelineReport(Report):
    filters: PipelineQuery
    rows: list[PipelineRow]


class ForecastReport(Report):
    filters: ForecastQuery
    rows: list[ForecastRow]


class WinLossReport(Report):
    filters: WinLossQuery
    rows: list[WinLossRow]


class StageVelocityReport(Report):
    filters: VelocityQuery
    rows: list[StageVelocityRow]


class StageConversionReport(Report):
    filters: VelocityQuery
    rows: list[StageConversionRow]


class LeadSourceReport(Report):
    filters: LeadSourceQuery
    rows: list[LeadSourceRow]


class CampaignRoiReport(Report):
    filters: CampaignRoiQuery
    rows: list[CampaignRoiRow]


class PipelineHistoryReport(Report):
    filters: PipelineHistoryQuery
    rows: list[PipelineHistoryRow]


def columns_of(row: type[BaseModel], *leading: str) -> tuple[str, ...]:
    return ("as_of", *leading, *row.model_fields)


FUNNEL_CSV_COLUMNS = columns_of(FunnelRow, "group_by")
PIPELINE_CSV_COLUMNS = columns_of(PipelineRow)
FORECAST_CSV_COLUMNS = columns_of(ForecastRow)
WIN_LOSS_CSV_COLUMNS = columns_of(WinLossRow, "group_by")
VELOCITY_CSV_COLUMNS = columns_of(StageVelocityRow)
CONVERSION_CSV_COLUMNS = columns_of(StageConversionRow)
LEAD_SOURCE_CSV_COLUMNS = columns_of(LeadSourceRow)
CAMPAIGN_ROI_CSV_COLUMNS = columns_of(CampaignRoiRow)
HISTORY_CSV_COLUMNS = columns_of(PipelineHistoryRow)


def _cell(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, datetime):
        return value.isoformat().replace("+00:00", "Z")
    if isinstance(value, date):
        return value.isoformat()
    if isinstance(value, StrEnum):
        return value.value
    if isinstance(value, dict):  # amounts by currency: "USD=120.00;GBP=5.00"
        return ";".join(f"{k}={_cell(v)}" for k, v in value.items())
    if isinstance(value, Decimal):
        return str(value)
    return str(value)


def csv_text(columns: Sequence[str], rows: Sequence[dict[str, Any]]) -> str:
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\r\n")
    writer.writerow(columns)
    for row in rows:
        writer.writerow([_cell(row.get(column)) for column in columns])
    return buffer.getvalue()


def _responses(columns: Sequence[str], example: Example, extra: dict[str, Any]) -> dict[int | str, Any]:
    payload: dict[str, Any] = {
        "as_of": examples.AS_OF.isoformat().replace("+00:00", "Z"),
        "consumer_lag": 0,
        "filters": example.filters.model_dump(mode="json", by_alias=True),
        **example.extra,
        "rows": [row.model_dump(mode="json") for row in example.rows],
    }
    rows = [{**extra, "as_of": examples.AS_OF, **dict(row)} for row in example.rows]
    return {
        200: {
            "content": {
                "application/json": {"example": payload},
                CSV_MEDIA_TYPE: {"schema": {"type": "string"}, "example": csv_text(columns, rows)},
            },
            "description": "JSON by default; CSV (header row, stable columns) with format=csv "
            "or Accept: text/csv.",
        },
        422: {"description": "A filter is invalid; the body names it."},
    }


def _wants_csv(request: Request, requested: ReportFormat | None) -> bool:
    if requested is not None:
        return requested == ReportFormat.CSV
    return CSV_MEDIA_TYPE in request.headers.get("accept", "").lower()


class Freshness(BaseModel):
    as_of: datetime | None
    consumer_lag: int | None


async def freshness(runtime: ServiceRuntime, generation: Generation, kinds: Sequence[str]) -> Freshness:
    marks = await generation.as_of()
    known = [marks[kind] for kind in kinds if kind in marks]
    kafka = runtime.lag.total
    lag = None if kafka is None else kafka + await generation.pending()
    return Freshness(as_of=max(known) if known else None, consumer_lag=lag)


async def respond(
    request: Request,
    requested: ReportFormat | None,
    report: Report,
    columns: Sequence[str],
    csv_extra: dict[str, Any] | None = None,
) -> Response:
    headers = {AS_OF_HEADER: _cell(report.as_of), LAG_HEADER: _cell(report.consumer_lag)}
    if _wants_csv(request, requested):
        extra = {"as_of": report.as_of, **(csv_extra or {})}
        rows = [{**extra, **dict(row)} for row in getattr(report, "rows", [])]
        return Response(csv_text(columns, rows), media_type=CSV_MEDIA_TYPE, headers=headers)
    # pydantic's own serializer: several times faster than dumping to dicts and json.dumps.
    return Response(report.model_dump_json(by_alias=True), media_type="application/json", headers=headers)


async def computed(work: Callable[[], Awaitable[list[RowT]]]) -> list[RowT]:
    try:
        return await work()
    except QueryError as exc:
        raise ApiError(422, "validation_failed", exc.reason, field=exc.field) from exc


def _check_range(period_from: date | None, period_to: date | None) -> None:
    if period_from is not None and period_to is not None and period_to <= period_from:
        raise ApiError(422, "validation_failed", "to must be later than from", field="to")


PicklistFilter = Annotated[
    str | None, Query(pattern=PICKLIST_CODE_PATTERN, description="A value of the leads service's picklist")
]
UtmFilter = Annotated[
    Annotated[str, SingleLine(min_length=1, max_length=200)] | None,
    Query(description="A UTM value exactly as the leads were captured with it (case-sensitive)"),
]
Label = Annotated[Annotated[str, SingleLine(min_length=1, max_length=100)] | None, Query()]
FromDay = Annotated[
    IsoDate | None, Query(alias="from", description="First day, inclusive (YYYY-MM-DD, UTC).")
]
ToDay = Annotated[IsoDate | None, Query(alias="to", description="End day, exclusive (YYYY-MM-DD, UTC).")]
Split = Annotated[Grain | None, Query(description="Split into periods by when things happened.")]
MoneyCurrency = Annotated[
    Currency,
    Query(
        description="Currency of the money columns; other currencies are listed apart. Defaults to "
        "the company currency (CRM_COMPANY_CURRENCY); filters.currency and each row say which was used."
    ),
]


def reports_router(runtime: ServiceRuntime, repo: ReportingRepository) -> APIRouter:
    router = APIRouter(prefix="/reports", tags=["reports"])
    read = [Depends(runtime.auth.require("read"))]
    # Read when the router is built, not at import: the setting is the default (and the
    # OpenAPI shows it) whatever the code was imported with.
    company_currency = runtime.settings.company_currency
    unknown_campaigns = Gauge(
        "crm_reporting_unknown_campaigns",
        "Campaigns that leads, members or opportunities name but no campaign event defined, as "
        "the last campaign-roi report over every campaign found them (shown as '(unknown campaign <id>)')",
        registry=runtime.registry,
    )

    async def live() -> tuple[Generation, GenerationSource]:
        generation = await repo.live()
        return generation, GenerationSource(generation)

    @router.get(
        "/funnel",
        dependencies=read,
        response_model=FunnelReport,
        responses=_responses(FUNNEL_CSV_COLUMNS, examples.funnel, {"group_by": "lead_source"}),
        summary="Lead funnel: captured → qualified → converted → opportunity → won",
        description=(
            "Counts leads by the steps they reached, with step-to-step and overall conversion "
            "rates (fractions with four decimals as strings; null when a step has no leads), by "
            "lead source, origin, campaign, rating, owner or the UTM source, medium and campaign of "
            "the lead's capture (group_by) and period. Periods use when things happened (captured, "
            "qualified, converted, the opportunity's creation and win). Filters and group_by "
            "together may name one dimension, or two of lead_source, campaign_id, rating and "
            "owner_id, or utm_source with lead_source, utm_medium or utm_campaign (e.g. "
            "group_by=lead_source&utm_source=google: lead-source conversion of one UTM source). "
            "A lead without UTM counts under null. Each rate's formula is in its field's description; "
            "converted_rate is a deprecated alias of qualified_to_converted_rate."
        ),
    )
    async def funnel(
        request: Request,
        lead_source: PicklistFilter = None,
        origin: PicklistFilter = None,
        campaign_id: Id | None = None,
        rating: LeadRating | None = None,
        owner_id: Id | None = None,
        utm_source: UtmFilter = None,
        utm_medium: UtmFilter = None,
        utm_campaign: UtmFilter = None,
        period_from: FromDay = None,
        period_to: ToDay = None,
        basis: Annotated[
            PeriodBasis,
            Query(
                description="activity: each step counts what reached it within the period; "
                "cohort: the leads captured within the period, with every step they reached since."
            ),
        ] = PeriodBasis.ACTIVITY,
        group_by: FunnelDimension | None = None,
        period: Split = None,
        format: ReportFormat | None = None,
    ) -> Response:
        _check_range(period_from, period_to)
        query = FunnelQuery.model_validate(
            {
                "lead_source": lead_source,
                "origin": origin,
                "campaign_id": campaign_id,
                "rating": rating,
                "owner_id": owner_id,
                "utm_source": utm_source,
                "utm_medium": utm_medium,
                "utm_campaign": utm_campaign,
                "from": period_from,
                "to": period_to,
                "basis": basis,
                "group_by": group_by,
                "period": period,
            }
        )
        generation, source = await live()
        rows = await computed(lambda: funnel_rows(source, query))
        fresh = await freshness(runtime, generation, LEADS)
        report = FunnelReport(**dict(fresh), filters=query, group_by=group_by, rows=rows)
        return await respond(request, format, report, FUNNEL_CSV_COLUMNS, {"group_by": group_by})

    @router.get(
        "/pipeline",
        dependencies=read,
        response_model=PipelineReport,
        responses=_responses(PIPELINE_CSV_COLUMNS, examples.pipeline, {}),
        summary="Open pipeline by pipeline and stage (or owner): count, amount, weighted amount, age",
        description=(
            "Open opportunities per pipeline and stage (group_by=stage), pipeline or owner, and "
            "currency (amounts in different currencies are never added). weighted_amount is the sum "
            "of amount * probability / 100; average_age_days the mean time since creation. Money is "
            "exact decimal, serialised as strings. Besides pipeline_id, filters and group_by together "
            "may name one dimension, or stage_id, owner_id or sales_team_id with one other."
        ),
    )
    async def pipeline(
        request: Request,
        pipeline_id: Id | None = None,
        stage_id: Id | None = None,
        owner_id: Id | None = None,
        sales_team_id: Id | None = None,
        sales_region: Label = None,
        account_industry: Label = None,
        product_id: Id | None = None,
        group_by: PipelineGrouping = PipelineGrouping.STAGE,
        format: ReportFormat | None = None,
    ) -> Response:
        query = PipelineQuery(
            pipeline_id=pipeline_id,
            stage_id=stage_id,
            owner_id=owner_id,
            sales_team_id=sales_team_id,
            sales_region=sales_region,
            account_industry=account_industry,
            product_id=product_id,
            group_by=group_by,
        )
        generation, source = await live()
        rows = await computed(lambda: pipeline_rows(source, query, utcnow()))
        fresh = await freshness(runtime, generation, OPPORTUNITIES)
        report = PipelineReport(**dict(fresh), filters=query, rows=rows)
        return await respond(request, format, report, PIPELINE_CSV_COLUMNS)

    @router.get(
        "/forecast",
        dependencies=read,
        response_model=ForecastReport,
        responses=_responses(FORECAST_CSV_COLUMNS, examples.forecast, {}),
        summary="Forecast by close month and forecast category, weighted and unweighted",
        description=(
            "Open opportunities by expected close month, and won ones by the month they closed, per "
            "forecast category (pipeline, best case, commit, closed, omitted) and currency. Lost "
            "opportunities forecast nothing. from/to select close months by their first day; besides "
            "pipeline_id, one of owner, team, region, industry and product may be filtered."
        ),
    )
    async def forecast(
        request: Request,
        pipeline_id: Id | None = None,
        owner_id: Id | None = None,
        sales_team_id: Id | None = None,
        sales_region: Label = None,
        account_industry: Label = None,
        product_id: Id | None = None,
        period_from: FromDay = None,
        period_to: ToDay = None,
        format: ReportFormat | None = None,
    ) -> Response:
        _check_range(period_from, period_to)
        query = ForecastQuery.model_validate(
            {
                "pipeline_id": pipeline_id,
                "owner_id": owner_id,
                "sales_team_id": sales_team_id,
                "sales_region": sales_region,
                "account_industry": account_industry,
                "product_id": product_id,
                "from": period_from,
                "to": period_to,
            }
        )
        generation, source = await live()
        rows = await computed(lambda: forecast_rows(source, query))
        fresh = await freshness(runtime, generation, OPPORTUNITIES)
        return await respond(
            request, format, ForecastReport(**dict(fresh), filters=query, rows=rows), FORECAST_CSV_COLUMNS
        )

    @router.get(
        "/win-loss",
        dependencies=read,
        response_model=WinLossReport,
        responses=_responses(WIN_LOSS_CSV_COLUMNS, examples.win_loss, {"group_by": "owner_id"}),
        summary="Win/loss: won and lost, win rate, won revenue, deal size, loss reasons, cycle length",
        description=(
            "Opportunities closed in each period (by closing day) and created in it, by owner, "
            "pipeline, loss reason, lead source or campaign (group_by). win_rate = won / (won + lost); "
            "cycle lengths run from creation to closing. Money in the chosen currency (by default the "
            "company currency, CRM_COMPANY_CURRENCY); other currencies are listed apart. Besides "
            "pipeline_id, filters and group_by together may name one dimension, or owner_id or "
            "sales_team_id with one other, or lead_source with campaign_id."
        ),
    )
    async def win_loss(
        request: Request,
        owner_id: Id | None = None,
        sales_team_id: Id | None = None,
        sales_region: Label = None,
        account_industry: Label = None,
        product_id: Id | None = None,
        pipeline_id: Id | None = None,
        lead_source: PicklistFilter = None,
        campaign_id: Id | None = None,
        loss_reason: Annotated[ShortText | None, Query()] = None,
        period_from: FromDay = None,
        period_to: ToDay = None,
        period: Split = None,
        group_by: WinLossDimension | None = None,
        currency: MoneyCurrency = company_currency,
        format: ReportFormat | None = None,
    ) -> Response:
        _check_range(period_from, period_to)
        query = WinLossQuery.model_validate(
            {
                "owner_id": owner_id,
                "sales_team_id": sales_team_id,
                "sales_region": sales_region,
                "account_industry": account_industry,
                "product_id": product_id,
                "pipeline_id": pipeline_id,
                "lead_source": lead_source,
                "campaign_id": campaign_id,
                "loss_reason": loss_reason,
                "from": period_from,
                "to": period_to,
                "period": period,
                "group_by": group_by,
                "currency": currency,
            }
        )
        generation, source = await live()
        rows = await computed(lambda: win_loss_rows(source, query))
        fresh = await freshness(runtime, generation, OPPORTUNITIES)
        report = WinLossReport(**dict(fresh), filters=query, rows=rows)
        return await respond(request, format, report, WIN_LOSS_CSV_COLUMNS, {"group_by": group_by})

    @router.get(
        "/stage-velocity",
        dependencies=read,
        response_model=StageVelocityReport,
        responses=_responses(VELOCITY_CSV_COLUMNS, examples.velocity, {}),
        summary="Time in each stage: average and median days",
        description=(
            "Per pipeline and open stage: how often opportunities entered it, how many stays ended "
            "with a move, and the average and median length of those stays (from entering to the "
            "next stage change). All time, or whole months from/to (stays counted when they ended)."
        ),
    )
    async def stage_velocity(
        request: Request,
        pipeline_id: Id | None = None,
        period_from: FromDay = None,
        period_to: ToDay = None,
        format: ReportFormat | None = None,
    ) -> Response:
        _check_range(period_from, period_to)
        query = VelocityQuery.model_validate(
            {"pipeline_id": pipeline_id, "from": period_from, "to": period_to}
        )
        generation, source = await live()
        rows = await computed(lambda: velocity_rows(source, query))
        fresh = await freshness(runtime, generation, OPPORTUNITIES)
        report = StageVelocityReport(**dict(fresh), filters=query, rows=rows)
        return await respond(request, format, report, VELOCITY_CSV_COLUMNS)

    @router.get(
        "/stage-conversion",
        dependencies=read,
        response_model=StageConversionReport,
        responses=_responses(CONVERSION_CSV_COLUMNS, examples.conversion, {}),
        summary="Stage-to-stage conversion",
        description=(
            "Per pipeline, the moves from each open stage to each next stage (won and lost "
            "included) and their share of the times the stage was entered."
        ),
    )
    async def stage_conversion(
        request: Request,
        pipeline_id: Id | None = None,
        period_from: FromDay = None,
        period_to: ToDay = None,
        format: ReportFormat | None = None,
    ) -> Response:
        _check_range(period_from, period_to)
        query = VelocityQuery.model_validate(
            {"pipeline_id": pipeline_id, "from": period_from, "to": period_to}
        )
        generation, source = await live()
        rows = await computed(lambda: conversion_rows(source, query))
        fresh = await freshness(runtime, generation, OPPORTUNITIES)
        report = StageConversionReport(**dict(fresh), filters=query, rows=rows)
        return await respond(request, format, report, CONVERSION_CSV_COLUMNS)

    @router.get(
        "/lead-sources",
        dependencies=read,
        response_model=LeadSourceReport,
        responses=_responses(LEAD_SOURCE_CSV_COLUMNS, examples.lead_sources, {}),
        summary="Lead sources: leads, qualified, converted, opportunities, won revenue, rates",
        description=(
            "Per lead source (and period): leads captured, qualified and converted in it, "
            "opportunities created from the source, won and lost, and the revenue won (in the chosen "
            "currency, by default the company currency). An opportunity's source is its own, else the "
            "one its lead's conversion named. Rates are shares of the leads captured (qualified_rate, "
            "lead_conversion_rate) or of the closed opportunities (win_rate); converted_rate is a "
            "deprecated alias of lead_conversion_rate. Not split by UTM (won revenue and losses are "
            "kept per opportunity, without the lead's UTM): the funnel gives lead-source conversion "
            "of a UTM source with group_by=lead_source&utm_source=..."
        ),
    )
    async def lead_sources(
        request: Request,
        campaign_id: Id | None = None,
        period_from: FromDay = None,
        period_to: ToDay = None,
        period: Split = None,
        currency: MoneyCurrency = company_currency,
        format: ReportFormat | None = None,
    ) -> Response:
        _check_range(period_from, period_to)
        query = LeadSourceQuery.model_validate(
            {
                "campaign_id": campaign_id,
                "from": period_from,
                "to": period_to,
                "period": period,
                "currency": currency,
            }
        )
        generation, source = await live()
        rows = await computed(lambda: lead_source_rows(source, query))
        fresh = await freshness(runtime, generation, LEADS + OPPORTUNITIES)
        report = LeadSourceReport(**dict(fresh), filters=query, rows=rows)
        return await respond(request, format, report, LEAD_SOURCE_CSV_COLUMNS)

    @router.get(
        "/campaign-roi",
        dependencies=read,
        response_model=CampaignRoiReport,
        responses=_responses(CAMPAIGN_ROI_CSV_COLUMNS, examples.campaign_roi, {}),
        summary="Campaign ROI: cost, members, leads, conversions, opportunities, won revenue, ROI",
        description=(
            "Per campaign, all time: actual cost (its cost ledger), members, leads and converted "
            "leads, opportunities attributed to it, won revenue in the campaign's currency, cost "
            "per lead and ROI = (won revenue - actual cost) / actual cost, as the campaigns "
            "service's summary defines them. lead_conversion_rate = converted_leads / leads as in "
            "the lead-sources view; conversion_rate (the same in percent) is deprecated. A campaign "
            "that leads or opportunities name but no campaign event defined is kept, as a row named "
            "'(unknown campaign <id>)' with known false (metric crm_reporting_unknown_campaigns); "
            "it takes its name once the campaign's campaign.created arrives."
        ),
    )
    async def campaign_roi(
        request: Request,
        campaign_id: Id | None = None,
        status: CampaignStatus | None = None,
        type: CampaignType | None = None,
        format: ReportFormat | None = None,
    ) -> Response:
        query = CampaignRoiQuery(campaign_id=campaign_id, status=status, type=type)
        generation, source = await live()
        rows = await computed(lambda: campaign_roi_rows(source, query))
        if query == CampaignRoiQuery():
            unknown_campaigns.set(sum(1 for row in rows if not row.known))
        fresh = await freshness(runtime, generation, LEADS + OPPORTUNITIES + CAMPAIGNS)
        report = CampaignRoiReport(**dict(fresh), filters=query, rows=rows)
        return await respond(request, format, report, CAMPAIGN_ROI_CSV_COLUMNS)

    @router.get(
        "/pipeline-history",
        dependencies=read,
        response_model=PipelineHistoryReport,
        responses=_responses(HISTORY_CSV_COLUMNS, examples.history, {}),
        summary="The open pipeline as it stood at the end of past days",
        description=(
            "For each day in [from, to) (or the last day of each week or month), the open "
            "opportunities per pipeline, stage and currency as they stood at the end of that day "
            "(UTC), from when each change happened in the business."
        ),
    )
    async def pipeline_history(
        request: Request,
        period_from: Annotated[IsoDate, Query(alias="from", description="First day (YYYY-MM-DD, UTC).")],
        period_to: ToDay = None,
        pipeline_id: Id | None = None,
        stage_id: Id | None = None,
        period: HistoryGrain = HistoryGrain.DAY,
        format: ReportFormat | None = None,
    ) -> Response:
        end = period_to or utcnow().date() + timedelta(days=1)
        _check_range(period_from, end)
        query = PipelineHistoryQuery.model_validate(
            {
                "pipeline_id": pipeline_id,
                "stage_id": stage_id,
                "from": period_from,
                "to": end,
                "period": period,
            }
        )
        generation, source = await live()
        rows = await computed(lambda: history_rows(source, query))
        fresh = await freshness(runtime, generation, OPPORTUNITIES)
        report = PipelineHistoryReport(**dict(fresh), filters=query, rows=rows)
        return await respond(request, format, report, HISTORY_CSV_COLUMNS)

    return router
