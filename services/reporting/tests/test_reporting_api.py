"""The reporting API's contract as BI tools see it in OpenAPI: read-only views, their filters,
CSV as an alternative representation with stable columns, and examples. No I/O (the app is
built, not started)."""

from __future__ import annotations

import csv
import io
import re
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
        "utm_source",
        "utm_medium",
        "utm_campaign",
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


RATE_FIELD = re.compile(r"_rate$|^roi$")
# Deprecated for one release: the old name of a rate that meant two things.
DEPRECATED = {
    ("FunnelRow", "converted_rate"): "qualified_to_converted_rate",
    ("LeadSourceRow", "converted_rate"): "lead_conversion_rate",
    ("CampaignRoiRow", "conversion_rate"): "lead_conversion_rate",
}


def row_schemas() -> dict[str, dict[str, Any]]:
    schemas: dict[str, dict[str, Any]] = openapi()["components"]["schemas"]
    return {name: schema for name, schema in schemas.items() if name.endswith("Row")}


def test_every_rate_in_the_reports_states_its_formula_in_the_fields_of_its_row() -> None:
    rates = [
        (model, name, field)
        for model, schema in row_schemas().items()
        for name, field in schema["properties"].items()
        if RATE_FIELD.search(name)
    ]
    assert {(m, n) for m, n, _ in rates} >= {
        ("FunnelRow", "qualified_to_converted_rate"),
        ("LeadSourceRow", "lead_conversion_rate"),
        ("WinLossRow", "win_rate"),
        ("StageConversionRow", "conversion_rate"),
        ("CampaignRoiRow", "roi"),
    }
    for model, name, field in rates:
        formula, colon, meaning = field.get("description", "").partition(":")
        assert colon and "/" in formula and meaning.strip(), (model, name, field.get("description"))
        operands = set(re.findall(r"[a-z_]+", formula))
        assert operands <= set(row_schemas()[model]["properties"]), (model, name, formula)


def test_one_rate_name_has_one_meaning_across_the_views() -> None:
    """The same name in two views says the same thing of them (its formula names each row's own
    columns); converted_rate, once converted/qualified and converted/leads, is only an alias."""
    meanings: dict[str, dict[str, str]] = {}
    for model, schema in row_schemas().items():
        for name, field in schema["properties"].items():
            if RATE_FIELD.search(name) and not field.get("deprecated"):
                meanings.setdefault(name, {})[model] = field["description"].partition(":")[2]
    assert {name: m for name, m in meanings.items() if len(set(m.values())) > 1} == {}
    assert set(meanings["lead_conversion_rate"]) == {"LeadSourceRow", "CampaignRoiRow"}
    assert "converted_rate" not in meanings


def test_the_old_rate_names_stay_one_release_as_deprecated_aliases_in_json_and_csv() -> None:
    schemas = row_schemas()
    deprecated = {
        (model, name)
        for model, schema in schemas.items()
        for name, field in schema["properties"].items()
        if field.get("deprecated")
    }
    assert deprecated == set(DEPRECATED)
    for (model, old), new in DEPRECATED.items():
        assert new in schemas[model]["properties"]
        assert f"read {new}" in schemas[model]["properties"][old]["description"]
    for columns in (FUNNEL_CSV_COLUMNS, LEAD_SOURCE_CSV_COLUMNS):
        assert {"converted_rate", "qualified_rate"} <= set(columns)
    assert "qualified_to_converted_rate" in FUNNEL_CSV_COLUMNS
    assert (
        "lead_conversion_rate" in LEAD_SOURCE_CSV_COLUMNS
        and "lead_conversion_rate" in CAMPAIGN_ROI_CSV_COLUMNS
    )


def test_the_money_views_default_to_the_company_currency_the_service_was_started_with() -> None:
    usd = create_app(ReportingSettings(log_level="WARNING", company_currency="USD")).openapi()
    for spec, currency in ((openapi(), "EUR"), (usd, "USD")):
        for path in ("/reports/win-loss", "/reports/lead-sources"):
            [parameter] = [p for p in spec["paths"][path]["get"]["parameters"] if p["name"] == "currency"]
            assert parameter["schema"]["default"] == currency, path
            assert "company currency" in parameter["description"]
