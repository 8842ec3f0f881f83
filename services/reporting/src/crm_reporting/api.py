"""HTTP routes of the reporting service: the views BI tools read, as JSON or CSV."""

from __future__ import annotations

import csv
import io
from collections.abc import Sequence
from datetime import datetime
from decimal import Decimal
from enum import StrEnum
from typing import Annotated, Any

from crm_contracts.events.common import Id
from crm_contracts.events.leads import LeadRating, LeadSource
from crm_runtime import ApiError, ServiceRuntime
from fastapi import APIRouter, Depends, Query, Request
from fastapi.responses import JSONResponse, Response
from pydantic import AwareDatetime, BaseModel, Field

from .domain import (
    FunnelDimension,
    FunnelQuery,
    FunnelRow,
    PeriodBasis,
    PipelineQuery,
    PipelineRow,
    funnel_rows,
    pipeline_rows,
)
from .repository import ReportingRepository

AS_OF_HEADER = "X-Report-As-Of"
LAG_HEADER = "X-Consumer-Lag"
CSV_MEDIA_TYPE = "text/csv"

FUNNEL_CSV_COLUMNS: tuple[str, ...] = ("as_of", "group_by", *FunnelRow.model_fields)
PIPELINE_CSV_COLUMNS: tuple[str, ...] = ("as_of", *PipelineRow.model_fields)


class ReportFormat(StrEnum):
    JSON = "json"
    CSV = "csv"


class FunnelReport(BaseModel):
    as_of: datetime | None = Field(description="Time of the newest event applied to this view.")
    consumer_lag: int | None = Field(
        description="Events published but not yet applied to the read models (null until first measured)."
    )
    filters: FunnelQuery
    group_by: FunnelDimension | None
    rows: list[FunnelRow]


class PipelineReport(BaseModel):
    as_of: datetime | None = Field(description="Time of the newest event applied to this view.")
    consumer_lag: int | None = Field(
        description="Events published but not yet applied to the read models (null until first measured)."
    )
    filters: PipelineQuery
    rows: list[PipelineRow]


def _csv_responses(columns: Sequence[str]) -> dict[int | str, dict[str, Any]]:
    return {
        200: {
            "content": {
                CSV_MEDIA_TYPE: {
                    "schema": {"type": "string"},
                    "example": ",".join(columns) + "\n",
                }
            },
            "description": "JSON by default; CSV (header row, stable columns) with format=csv "
            "or Accept: text/csv.",
        }
    }


def _wants_csv(request: Request, requested: ReportFormat | None) -> bool:
    if requested is not None:
        return requested == ReportFormat.CSV
    return CSV_MEDIA_TYPE in request.headers.get("accept", "").lower()


def _cell(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, datetime):
        return value.isoformat().replace("+00:00", "Z")
    if isinstance(value, StrEnum):
        return value.value
    if isinstance(value, Decimal):
        return str(value)
    return str(value)


def _freshness(as_of: datetime | None, lag: int | None) -> dict[str, str]:
    return {AS_OF_HEADER: _cell(as_of), LAG_HEADER: _cell(lag)}


def _csv(
    columns: Sequence[str], rows: Sequence[dict[str, Any]], as_of: datetime | None, lag: int | None
) -> Response:
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\r\n")
    writer.writerow(columns)
    for row in rows:
        writer.writerow([_cell(row.get(column)) for column in columns])
    return Response(buffer.getvalue(), media_type=CSV_MEDIA_TYPE, headers=_freshness(as_of, lag))


def _json(report: BaseModel, as_of: datetime | None, lag: int | None) -> Response:
    return JSONResponse(report.model_dump(mode="json", by_alias=True), headers=_freshness(as_of, lag))


def reports_router(runtime: ServiceRuntime, repo: ReportingRepository) -> APIRouter:
    router = APIRouter(prefix="/reports", tags=["reports"])
    read = [Depends(runtime.auth.require("read"))]

    @router.get(
        "/funnel",
        dependencies=read,
        response_model=FunnelReport,
        responses=_csv_responses(FUNNEL_CSV_COLUMNS),
        summary="Lead funnel: captured → qualified → converted → opportunity → won",
        description=(
            "Counts leads by the furthest steps they reached, with step-to-step and overall "
            "conversion rates (fractions with four decimals as strings; null when a step has no "
            "leads). Periods use when things happened (captured_at, qualified_at, converted_at, "
            "the opportunity's created_at and closed_at), never processing time."
        ),
    )
    async def funnel(
        request: Request,
        lead_source: LeadSource | None = None,
        campaign_id: Id | None = None,
        rating: LeadRating | None = None,
        period_from: Annotated[
            AwareDatetime | None, Query(alias="from", description="Period start (inclusive), RFC 3339.")
        ] = None,
        period_to: Annotated[
            AwareDatetime | None, Query(alias="to", description="Period end (exclusive), RFC 3339.")
        ] = None,
        basis: Annotated[
            PeriodBasis,
            Query(
                description="activity: each step counts what reached it within the period; "
                "cohort: the leads captured within the period, with every step they reached since."
            ),
        ] = PeriodBasis.ACTIVITY,
        group_by: FunnelDimension | None = None,
        format: ReportFormat | None = None,
    ) -> Response:
        if period_from is not None and period_to is not None and period_to <= period_from:
            raise ApiError(422, "validation_failed", "to must be later than from", field="to")
        query = FunnelQuery(
            lead_source=lead_source,
            campaign_id=campaign_id,
            rating=rating,
            period_from=period_from,
            period_to=period_to,
            basis=basis,
            group_by=group_by,
        )
        counts = await repo.funnel_counts(query)
        names = await repo.campaign_names(counts) if group_by == FunnelDimension.CAMPAIGN else {}
        rows = funnel_rows(counts, query, names)
        as_of = await repo.funnel_as_of()
        lag = runtime.lag.total
        if _wants_csv(request, format):
            extra = {"as_of": as_of, "group_by": group_by}
            return _csv(FUNNEL_CSV_COLUMNS, [{**extra, **dict(row)} for row in rows], as_of, lag)
        report = FunnelReport(as_of=as_of, consumer_lag=lag, filters=query, group_by=group_by, rows=rows)
        return _json(report, as_of, lag)

    @router.get(
        "/pipeline",
        dependencies=read,
        response_model=PipelineReport,
        responses=_csv_responses(PIPELINE_CSV_COLUMNS),
        summary="Open pipeline by pipeline and stage: count, amount, weighted amount",
        description=(
            "Open opportunities per pipeline, stage and currency (amounts in different currencies "
            "are never added). weighted_amount is the sum of amount * probability / 100. Money is "
            "exact decimal, serialised as strings."
        ),
    )
    async def pipeline(
        request: Request,
        pipeline_id: Id | None = None,
        owner_id: Id | None = None,
        format: ReportFormat | None = None,
    ) -> Response:
        query = PipelineQuery(pipeline_id=pipeline_id, owner_id=owner_id)
        rows = pipeline_rows(await repo.pipeline_cells(query))
        as_of = await repo.pipeline_as_of()
        lag = runtime.lag.total
        if _wants_csv(request, format):
            return _csv(PIPELINE_CSV_COLUMNS, [{"as_of": as_of, **dict(row)} for row in rows], as_of, lag)
        return _json(PipelineReport(as_of=as_of, consumer_lag=lag, filters=query, rows=rows), as_of, lag)

    return router
