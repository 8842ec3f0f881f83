"""HTTP RED metrics and access logs for every service, from prometheus-fastapi-instrumentator.

Each request is counted and timed by its route template (``/leads/{lead_id}``, never the raw
path, so the series stay bounded; a path no route knows counts as ``none``), method and exact
status: ``crm_http_requests_total`` and the histogram ``crm_http_request_duration_seconds``,
on the service's own registry (its ``/metrics``). Errors are the 5xx (and 4xx) statuses of the
same counter. Each request also writes one JSON access line (method, route, path, status,
duration_ms; the formatter adds the trace id) in place of uvicorn's plain one. Probes and
scrapes (``/health/*``, ``/metrics``) are left out of both: constant, and noise."""

from __future__ import annotations

import logging

from fastapi import FastAPI
from prometheus_client import CollectorRegistry
from prometheus_fastapi_instrumentator import Instrumentator, metrics

ACCESS_LOG = logging.getLogger("crm.access")
UNKNOWN_ROUTE = "none"
EXCLUDED_ROUTES = ("^/health/", "^/metrics$")
# From a 5 ms read to a 30 s import upload; the alert's latency threshold sits on a bucket.
LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)


def log_access(info: metrics.Info) -> None:
    status = int(info.modified_status)
    ACCESS_LOG.info(
        "%s %s %d",
        info.method,
        info.modified_handler,
        status,
        extra={
            "method": info.method,
            "route": info.modified_handler,
            "path": info.request.url.path,
            "status": status,
            "duration_ms": round(info.modified_duration * 1000, 1),
        },
    )


class HttpInstrumentation:
    """The RED metrics (registered on ``registry`` at once, so alerts and dashboards can be
    checked against them) and the access log; ``instrument`` adds them to an app."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self._instrumentator = Instrumentator(
            should_group_status_codes=False,
            should_group_untemplated=True,
            excluded_handlers=list(EXCLUDED_ROUTES),
            registry=registry,
        )
        requests = metrics.requests(
            metric_name="crm_http_requests_total",
            metric_doc="HTTP requests answered, by route template, method and status",
            registry=registry,
        )
        latency = metrics.latency(
            metric_name="crm_http_request_duration_seconds",
            metric_doc="Time to answer an HTTP request (body included), by route template, method and status",
            buckets=LATENCY_BUCKETS,
            registry=registry,
        )
        self._instrumentator.add(requests, latency, log_access)

    def instrument(self, app: FastAPI) -> None:
        self._instrumentator.instrument(app)
