"""The suite's Grafana dashboard (deploy/helm/crm/dashboards/crm.json), checked offline: a
well-formed dashboard whose every query uses metrics the services export, with the panels the
operators need (HTTP rate, errors and latency; events in and out; lag; dead letters; outbox;
reporting freshness). The chart's ConfigMap for it is checked in test_deploy_helm."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest
from prometheus_client import CollectorRegistry

DASHBOARD = Path(__file__).resolve().parents[1] / "helm" / "crm" / "dashboards" / "crm.json"


@pytest.fixture(scope="module")
def dashboard() -> dict[str, Any]:
    loaded: dict[str, Any] = json.loads(DASHBOARD.read_text())
    return loaded


def exported(registry: CollectorRegistry) -> set[str]:
    names: set[str] = set()
    for family in registry.collect():
        names.add(family.name)
        if family.type == "counter":
            names.add(f"{family.name}_total")
        if family.type == "histogram":
            names |= {f"{family.name}_{part}" for part in ("bucket", "count", "sum")}
    return names


def graphs(dashboard: dict[str, Any]) -> list[dict[str, Any]]:
    return [panel for panel in dashboard["panels"] if panel["type"] != "row"]


def test_the_dashboard_is_well_formed(dashboard: dict[str, Any]) -> None:
    assert dashboard["uid"] == "crm-suite" and dashboard["title"] and dashboard["schemaVersion"] >= 36
    ids = [panel["id"] for panel in dashboard["panels"]]
    assert len(ids) == len(set(ids))
    variables = {v["name"] for v in dashboard["templating"]["list"]}
    assert {"datasource", "namespace"} <= variables
    for panel in graphs(dashboard):
        grid = panel["gridPos"]
        assert grid["w"] > 0 and grid["h"] > 0 and grid["x"] + grid["w"] <= 24, panel["title"]
        assert panel["datasource"]["uid"] == "${datasource}" and panel["targets"], panel["title"]
        for target in panel["targets"]:
            # Every query is scoped to the chosen namespaces, so one Grafana serves several releases.
            assert 'namespace=~"$namespace"' in target["expr"], (panel["title"], target["expr"])
    # No two panels overlap.
    cells = [
        (x, y)
        for panel in dashboard["panels"]
        for x in range(panel["gridPos"]["x"], panel["gridPos"]["x"] + panel["gridPos"]["w"])
        for y in range(panel["gridPos"]["y"], panel["gridPos"]["y"] + panel["gridPos"]["h"])
    ]
    assert len(cells) == len(set(cells))


def test_every_query_uses_metrics_the_services_export(dashboard: dict[str, Any]) -> None:
    from crm_reporting.bootstrap import ReportingSettings, create_app

    registry: CollectorRegistry = create_app(ReportingSettings()).state.runtime.registry
    available = exported(registry)  # the runtime's metrics, and reporting's own
    used = {
        name
        for panel in graphs(dashboard)
        for target in panel["targets"]
        for name in re.findall(r"\b(crm_[a-z_]+)\{", target["expr"])
    }
    assert used and used <= available, used - available


def test_the_dashboard_has_the_suites_panels(dashboard: dict[str, Any]) -> None:
    queries = " ".join(target["expr"] for panel in graphs(dashboard) for target in panel["targets"])
    for metric in (
        "crm_http_requests_total",
        "crm_http_request_duration_seconds_bucket",
        "crm_events_processed_total",
        "crm_outbox_published_total",
        "crm_consumer_lag",
        "crm_events_dead_lettered_total",
        "crm_outbox_backlog",
        "crm_reporting_last_merge_timestamp_seconds",
    ):
        assert metric + "{" in queries, metric
    assert 'status=~"5.."' in queries and "histogram_quantile(0.99," in queries
