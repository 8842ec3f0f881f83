"""OpenTelemetry wiring: a tracer provider with an OTLP exporter when the standard
``OTEL_EXPORTER_OTLP_*`` variables say where, PyMongo and FastAPI instrumentation. Kafka spans
and W3C trace context in Kafka headers come from FastStream's telemetry middleware (kafka.py)."""

from __future__ import annotations

import os

from fastapi import FastAPI
from opentelemetry import trace
from opentelemetry.instrumentation.fastapi import FastAPIInstrumentor
from opentelemetry.instrumentation.pymongo import PymongoInstrumentor
from opentelemetry.sdk.resources import SERVICE_NAME, Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor

_configured = False


def configure_tracing(service: str) -> TracerProvider:
    """Install the global tracer provider once per process; returns it."""
    global _configured
    provider = trace.get_tracer_provider()
    if _configured and isinstance(provider, TracerProvider):
        return provider
    resource = Resource.create({SERVICE_NAME: os.environ.get("OTEL_SERVICE_NAME", f"crm-{service}")})
    sdk_provider = TracerProvider(resource=resource)
    if os.environ.get("OTEL_EXPORTER_OTLP_ENDPOINT") or os.environ.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT"):
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

        sdk_provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter()))
    trace.set_tracer_provider(sdk_provider)
    PymongoInstrumentor().instrument()
    _configured = True
    return sdk_provider


def instrument_app(app: FastAPI) -> None:
    FastAPIInstrumentor.instrument_app(app, excluded_urls="health/live,health/ready,metrics")
