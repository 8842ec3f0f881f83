"""The FastStream Kafka broker every service uses: idempotent producer with acks=all,
SASL/TLS from settings, OpenTelemetry (W3C trace context in headers) and Prometheus middlewares."""

from __future__ import annotations

import logging
import ssl

from faststream.kafka import KafkaBroker
from faststream.kafka.opentelemetry import KafkaTelemetryMiddleware
from faststream.kafka.prometheus import KafkaPrometheusMiddleware
from faststream.security import BaseSecurity, SASLPlaintext, SASLScram256, SASLScram512
from opentelemetry.sdk.trace import TracerProvider
from prometheus_client import CollectorRegistry

from .settings import ServiceSettings

BROKER_LOGGER = "crm.kafka"


def kafka_security(settings: ServiceSettings) -> BaseSecurity | None:
    protocol = settings.kafka_security_protocol
    if protocol == "PLAINTEXT":
        return None
    use_ssl = protocol in ("SSL", "SASL_SSL")
    context = ssl.create_default_context(cafile=settings.kafka_ssl_cafile) if use_ssl else None
    if protocol == "SSL":
        return BaseSecurity(ssl_context=context, use_ssl=True)
    username = settings.kafka_sasl_username or ""
    password = settings.kafka_sasl_password.get_secret_value() if settings.kafka_sasl_password else ""
    sasl = {"PLAIN": SASLPlaintext, "SCRAM-SHA-256": SASLScram256, "SCRAM-SHA-512": SASLScram512}
    return sasl[settings.kafka_sasl_mechanism](username, password, ssl_context=context, use_ssl=use_ssl)


def create_broker(
    settings: ServiceSettings,
    *,
    tracer_provider: TracerProvider | None,
    registry: CollectorRegistry,
) -> KafkaBroker:
    return KafkaBroker(
        settings.kafka_bootstrap_servers,
        client_id=f"crm-{settings.service_name}",
        # Exactly-once delivery into the log per producer session: no duplicates from retries.
        enable_idempotence=True,
        acks="all",
        linger_ms=5,
        compression_type=None,
        request_timeout_ms=30_000,
        security=kafka_security(settings),
        middlewares=(
            KafkaTelemetryMiddleware(tracer_provider=tracer_provider),
            KafkaPrometheusMiddleware(registry=registry, app_name=f"crm-{settings.service_name}"),
        ),
        graceful_timeout=20.0,
        # Our logger propagates to the JSON handler, so FastStream's lines carry the trace id too.
        logger=logging.getLogger(BROKER_LOGGER),
        description=f"CRM {settings.service_name} service",
    )


def aiokafka_options(settings: ServiceSettings) -> dict[str, object]:
    """Connection options for plain aiokafka clients (tools such as the dead-letter CLI)."""
    options: dict[str, object] = {
        "bootstrap_servers": settings.kafka_bootstrap_servers,
        "security_protocol": settings.kafka_security_protocol,
    }
    if settings.kafka_security_protocol in ("SSL", "SASL_SSL"):
        options["ssl_context"] = ssl.create_default_context(cafile=settings.kafka_ssl_cafile)
    if settings.kafka_security_protocol.startswith("SASL"):
        options["sasl_mechanism"] = settings.kafka_sasl_mechanism
        options["sasl_plain_username"] = settings.kafka_sasl_username
        options["sasl_plain_password"] = (
            settings.kafka_sasl_password.get_secret_value() if settings.kafka_sasl_password else None
        )
    return options
