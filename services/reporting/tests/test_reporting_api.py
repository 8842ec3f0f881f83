"""The reporting API's contract as BI tools see it in OpenAPI: read-only views, their filters,
and CSV as an alternative representation. No I/O (the app is built, not started)."""

from __future__ import annotations

from typing import Any

from crm_reporting.api import FUNNEL_CSV_COLUMNS, PIPELINE_CSV_COLUMNS
from crm_reporting.bootstrap import ReportingSettings, create_app


def openapi() -> dict[str, Any]:
    spec: dict[str, Any] = create_app(ReportingSettings(log_level="WARNING")).openapi()
    return spec


def test_both_views_are_documented_as_json_and_csv_gets_only() -> None:
    paths = openapi()["paths"]
    for path, columns in (
        ("/reports/funnel", FUNNEL_CSV_COLUMNS),
        ("/reports/pipeline", PIPELINE_CSV_COLUMNS),
    ):
        assert set(paths[path]) == {"get"}
        content = paths[path]["get"]["responses"]["200"]["content"]
        assert set(content) == {"application/json", "text/csv"}
        assert content["text/csv"]["example"].splitlines() == [",".join(columns)]


def test_the_funnel_documents_its_filters_and_period_names() -> None:
    parameters = openapi()["paths"]["/reports/funnel"]["get"]["parameters"]
    assert [p["name"] for p in parameters] == [
        "lead_source",
        "campaign_id",
        "rating",
        "from",
        "to",
        "basis",
        "group_by",
        "format",
    ]


def test_report_rows_serialise_money_and_rates_as_strings() -> None:
    schemas = openapi()["components"]["schemas"]
    for model, field in (
        ("PipelineRow", "amount"),
        ("PipelineRow", "weighted_amount"),
        ("FunnelRow", "won_rate"),
    ):
        schema = schemas[model]["properties"][field]
        types = {option.get("type") for option in schema.get("anyOf", [schema])}
        assert "string" in types and "number" not in types, (model, field, schema)
