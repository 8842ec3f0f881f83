"""The reporting API's contract as BI tools see it in OpenAPI: read-only views, their filters,
CSV as an alternative representation with stable columns, and examples. No I/O (the app is
built, not started)."""

from __future__ import annotations

import csv
import io
from functools import cache
from typing import Any

from crm_reporting.api import (
    CAMPAIGN_ROI_CSV_COLUMNS,
    CONVERSION_CSV_COLUMNS,
    FORECAST_CSV_COLUMNS,
    FUNNEL_CSV_COLUMNS,
    HISTORY_CSV_COLUMNS,
    LEAD_SOURCE_CSV_COLUMNS,
    PIPELINE_CSV_COLUMNS,
    VELOCITY_CSV_COLUMNS,
    WIN_LOSS_CSV_COLUMNS,
)
from crm_reporting.bootstrap import ReportingSettings, create_app

VIEWS = {
    "/reports/funnel": FUNNEL_CSV_COLUMNS,
    "/reports/pipeline": PIPELINE_CSV_COLUMNS,
    "/reports/forecast": FORECAST_CSV_COLUMNS,
    "/reports/win-loss": WIN_LOSS_CSV_COLUMNS,
    "/reports/stage-velocity": VELOCITY_CSV_COLUMNS,
    "/reports/stage-conversion": CONVERSION_CSV_COLUMNS,
    "/reports/lead-sources": LEAD_SOURCE_CSV_COLUMNS,
    "/reports/campaign-roi": CAMPAIGN_ROI_CSV_COLUMNS,
    "/reports/pipeline-history": HISTORY_CSV_COLUMNS,
}


@cache
def openapi() -> dict[str, Any]:
    spec: dict[str, Any] = create_app(ReportingSettings(log_level="WARNING")).openapi()
    return spec


def test_every_view_is_a_documented_get_with_json_and_csv_examples() -> None:
    paths = openapi()["paths"]
    assert {p for p in paths if p.startswith("/reports/")} == set(VIEWS)
    for path, columns in VIEWS.items():
        assert set(paths[path]) == {"get"}
        content = paths[path]["get"]["responses"]["200"]["content"]
        assert set(content) == {"application/json", "text/csv"}
        example = content["application/json"]["example"]
        assert {"as_of", "consumer_lag", "filters", "rows"} <= set(example) and example["rows"], path
        table = list(csv.reader(io.StringIO(content["text/csv"]["example"])))
        assert table[0] == list(columns) and len(table) == 1 + len(example["rows"]), path
        assert columns[0] == "as_of"


def test_the_funnel_documents_its_filters_groups_and_periods() -> None:
    parameters = {p["name"]: p for p in openapi()["paths"]["/reports/funnel"]["get"]["parameters"]}
    assert list(parameters) == [
        "lead_source",
        "origin",
        "campaign_id",
        "rating",
        "owner_id",
        "from",
        "to",
        "basis",
        "group_by",
        "period",
        "format",
    ]
    period = parameters["period"]["schema"]["anyOf"][0]
    assert set(openapi()["components"]["schemas"][period["$ref"].rsplit("/", 1)[1]]["enum"]) == {
        "day",
        "week",
        "month",
        "quarter",
        "year",
    }


def test_sales_views_filter_by_owner_team_region_industry_and_product() -> None:
    for path in ("/reports/pipeline", "/reports/forecast", "/reports/win-loss"):
        names = {p["name"] for p in openapi()["paths"][path]["get"]["parameters"]}
        assert {
            "pipeline_id",
            "owner_id",
            "sales_team_id",
            "sales_region",
            "account_industry",
            "product_id",
        } <= names


def test_report_rows_serialise_money_and_rates_as_strings() -> None:
    schemas = openapi()["components"]["schemas"]
    for model, field in (
        ("PipelineRow", "amount"),
        ("PipelineRow", "weighted_amount"),
        ("FunnelRow", "won_rate"),
        ("WinLossRow", "won_revenue"),
        ("CampaignRoiRow", "roi"),
        ("StageVelocityRow", "median_days"),
    ):
        schema = schemas[model]["properties"][field]
        types = {option.get("type") for option in schema.get("anyOf", [schema])}
        assert "string" in types and "number" not in types, (model, field, schema)


def test_every_view_documents_the_422_for_a_bad_filter() -> None:
    for path in VIEWS:
        operation = openapi()["paths"][path]["get"]
        assert "422" in operation["responses"]
