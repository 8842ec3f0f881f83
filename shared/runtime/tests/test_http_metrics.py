"""HTTP RED metrics and access logs of the runtime's app: requests counted and timed by route
template (not raw path), method and status, including 404s of unknown paths and 500s of
routes that fail; one JSON access line per request with the trace id; probes left out."""

from __future__ import annotations

import json
import logging

import pytest
from crm_runtime.logs import JsonFormatter
from fastapi import FastAPI
from http_probe import client, probe
from prometheus_client import CollectorRegistry

WRITER = {"authorization": "Bearer writer"}


def registry_of(app: FastAPI) -> CollectorRegistry:
    registry: CollectorRegistry = app.state.runtime.registry
    return registry


def requests_counted(app: FastAPI, handler: str, method: str, status: str) -> float:
    labels = {"handler": handler, "method": method, "status": status}
    return registry_of(app).get_sample_value("crm_http_requests_total", labels) or 0.0


def latencies_observed(app: FastAPI, handler: str, method: str, status: str) -> float:
    labels = {"handler": handler, "method": method, "status": status}
    return registry_of(app).get_sample_value("crm_http_request_duration_seconds_count", labels) or 0.0


async def test_requests_are_counted_and_timed_by_route_template_and_status() -> None:
    app = probe()[0]
    async with client(app) as http:
        for kind in ("AutoReconnect", "NetworkTimeout", "ConnectionFailure"):
            assert (await http.get(f"/outage/{kind}")).status_code == 503
        assert (await http.post("/notes", json={"text": "hi"}, headers=WRITER)).status_code == 201
        assert (await http.post("/notes", json={"text": "hi"})).status_code == 401
        assert (await http.get("/boom")).status_code == 500
        assert (await http.get("/no/such/path/123")).status_code == 404
    # Three raw paths, one series: the template keeps the series bounded.
    assert requests_counted(app, "/outage/{kind}", "GET", "503") == 3
    assert latencies_observed(app, "/outage/{kind}", "GET", "503") == 3
    assert requests_counted(app, "/notes", "POST", "201") == 1
    assert requests_counted(app, "/notes", "POST", "401") == 1
    assert requests_counted(app, "/boom", "GET", "500") == 1
    assert requests_counted(app, "none", "GET", "404") == 1
    exposition = (await _metrics(app)).decode()
    assert "/outage/AutoReconnect" not in exposition and "/no/such/path" not in exposition


async def test_probes_and_scrapes_are_neither_counted_nor_logged(caplog: pytest.LogCaptureFixture) -> None:
    app = probe()[0]
    caplog.set_level(logging.INFO, logger="crm.access")
    async with client(app) as http:
        await http.get("/health/live")
        await http.get("/health/ready")
        await http.get("/metrics")
    exposition = (await _metrics(app)).decode()
    assert 'handler="/health' not in exposition and 'handler="/metrics"' not in exposition
    assert [r for r in caplog.records if r.name == "crm.access"] == []


class JsonLines(logging.Handler):
    """The lines the service writes on stdout, formatted as it does: while the request's span
    is current, whose trace id the formatter adds."""

    def __init__(self) -> None:
        super().__init__(logging.INFO)
        self.setFormatter(JsonFormatter("probe"))
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(self.format(record))


async def test_each_request_writes_one_json_access_line_with_route_status_duration_and_trace() -> None:
    app = probe()[0]
    access = logging.getLogger("crm.access")
    lines = JsonLines()
    access.addHandler(lines)
    level = access.level
    access.setLevel(logging.INFO)
    try:
        async with client(app) as http:
            await http.get("/outage/AutoReconnect")
            answer = await http.get("/boom")
    finally:
        access.removeHandler(lines)
        access.setLevel(level)
    [failing, entry] = [json.loads(line) for line in lines.lines]
    assert failing["message"] == "GET /outage/{kind} 503" and failing["path"] == "/outage/AutoReconnect"
    assert entry["logger"] == "crm.access" and entry["level"] == "info"
    assert entry["method"] == "GET" and entry["route"] == "/boom" and entry["path"] == "/boom"
    assert entry["status"] == 500
    assert isinstance(entry["duration_ms"], float) and entry["duration_ms"] >= 0
    # The trace id the 500's body gives for reference is the one in the access line.
    assert entry["trace_id"] in answer.json()["message"]


async def _metrics(app: FastAPI) -> bytes:
    async with client(app) as http:
        return (await http.get("/metrics")).content
