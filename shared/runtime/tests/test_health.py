"""Readiness needs MongoDB (a Kafka outage only degrades it: writes wait in the outbox), and
tells everyone which check fails, but why (exception texts with hosts, ports and
connection strings) only an admin token, and the log once per change rather than per probe."""

from __future__ import annotations

import logging
from typing import Any

import pytest
from crm_runtime.health import health_router, public_view
from crm_runtime.http import TokenAuth, install_error_handlers
from fastapi import FastAPI
from http_probe import client, probe
from prometheus_client import CollectorRegistry

FAILING_EVERYWHERE = {
    "status": "unavailable",
    "checks": {"mongodb": "failing", "kafka": "failing"},
    # The runtime's own detail: the topics are checked at start, which the probe never reaches.
    "details": {"topics": {"status": "unknown"}},
}


@pytest.fixture(scope="module")
def secured() -> FastAPI:
    # MongoDB and Kafka of the probe are loopback ports nothing listens on: both checks fail.
    return probe()[0]


@pytest.mark.parametrize("token", [None, "reader", "writer", "nobody"])
async def test_readiness_shows_only_ok_or_failing_to_non_admins(secured: FastAPI, token: str | None) -> None:
    headers = {"authorization": f"Bearer {token}"} if token else {}
    async with client(secured) as http:
        answer = await http.get("/health/ready", headers=headers)
    assert answer.status_code == 503
    assert answer.json() == FAILING_EVERYWHERE
    assert "127.0.0.1" not in answer.text


async def test_readiness_tells_an_admin_why_a_check_fails(secured: FastAPI) -> None:
    async with client(secured) as http:
        answer = await http.get("/health/ready", headers={"authorization": "Bearer boss"})
    assert answer.status_code == 503
    checks = answer.json()["checks"]
    assert checks["mongodb"].startswith("failing: ServerSelectionTimeoutError: 127.0.0.1:")
    assert checks["kafka"] == "failing: ConnectionError: Kafka did not answer"


async def test_without_configured_tokens_nobody_sees_why() -> None:
    open_app = probe(tokens=None)[0]
    async with client(open_app) as http:
        answer = await http.get("/health/ready", headers={"authorization": "Bearer boss"})
    assert answer.status_code == 503 and answer.json() == FAILING_EVERYWHERE


def test_a_non_admin_sees_no_reason_and_no_section_beyond_checks_and_details() -> None:
    # Detail sections hold states, times, counts and error type names only (no messages).
    merger = {"status": "failing", "error": "OverflowError", "pending_events": 3}
    report = {
        "status": "ok",
        "checks": {"mongodb": "ok", "kafka": "failing: KafkaError: broker-0.internal:9092"},
        "details": {"merger": merger},
        "debug": {"url": "mongodb://10.0.0.7"},
    }
    assert public_view(report) == {
        "status": "ok",
        "checks": {"mongodb": "ok", "kafka": "failing"},
        "details": {"merger": merger},
    }


async def test_a_check_is_logged_when_it_starts_failing_and_when_it_recovers_not_per_probe(
    caplog: pytest.LogCaptureFixture,
) -> None:
    database_up = False

    async def database() -> None:
        if not database_up:
            raise ConnectionError("mongodb://db.internal:27017 refused")

    app = FastAPI()
    install_error_handlers(app)
    app.include_router(health_router({"mongodb": database}, auth=TokenAuth("boss:admin")))
    caplog.set_level(logging.INFO, logger="crm_runtime.health")

    def logged() -> list[tuple[str, str]]:
        return [(r.levelname, r.getMessage()) for r in caplog.records if r.name == "crm_runtime.health"]

    async with client(app) as http:
        for _ in range(3):
            assert (await http.get("/health/ready")).status_code == 503
        assert logged() == [("WARNING", "readiness check failing")]
        [failing] = [r for r in caplog.records if r.name == "crm_runtime.health"]
        assert failing.__dict__["check"] == "mongodb"
        assert failing.__dict__["reason"] == "ConnectionError: mongodb://db.internal:27017 refused"
        database_up = True
        for _ in range(3):
            assert (await http.get("/health/ready")).status_code == 200
    assert logged() == [("WARNING", "readiness check failing"), ("INFO", "readiness check passing again")]


async def _fine() -> None:
    return None


async def _kafka_away() -> None:
    raise ConnectionError("Kafka did not answer")


def _ready_app(mongodb: Any, kafka: Any, registry: CollectorRegistry) -> FastAPI:
    app = FastAPI()
    app.include_router(
        health_router(
            {"mongodb": mongodb}, degrading={"kafka": kafka}, auth=TokenAuth("boss:admin"), registry=registry
        )
    )
    return app


async def test_a_kafka_outage_degrades_readiness_without_taking_the_pod_out_of_its_service() -> None:
    registry = CollectorRegistry()
    async with client(_ready_app(_fine, _kafka_away, registry)) as http:
        answer = await http.get("/health/ready")
        told = await http.get("/health/ready", headers={"authorization": "Bearer boss"})
    assert answer.status_code == 200
    assert answer.json() == {"status": "degraded", "checks": {"mongodb": "ok", "kafka": "failing"}}
    assert told.json()["checks"]["kafka"] == "failing: ConnectionError: Kafka did not answer"
    passing = {"check": "kafka", "required": "false"}
    assert registry.get_sample_value("crm_readiness_check_passing", passing) == 0
    assert (
        registry.get_sample_value("crm_readiness_check_passing", {"check": "mongodb", "required": "true"})
        == 1
    )


async def test_the_database_failing_makes_the_service_unready_whatever_kafka_does() -> None:
    async def database_away() -> None:
        raise ConnectionError("no primary")

    registry = CollectorRegistry()
    async with client(_ready_app(database_away, _fine, registry)) as http:
        answer = await http.get("/health/ready")
    assert answer.status_code == 503
    assert answer.json() == {"status": "unavailable", "checks": {"mongodb": "failing", "kafka": "ok"}}
    assert (
        registry.get_sample_value("crm_readiness_check_passing", {"check": "kafka", "required": "false"}) == 1
    )


async def test_every_check_passing_is_ok() -> None:
    async with client(_ready_app(_fine, _fine, CollectorRegistry())) as http:
        answer = await http.get("/health/ready")
    assert answer.status_code == 200 and answer.json()["status"] == "ok"


async def test_the_runtime_needs_only_mongodb_to_be_ready(secured: FastAPI) -> None:
    registry: CollectorRegistry = secured.state.runtime.registry
    async with client(secured) as http:
        await http.get("/health/ready")
    assert (
        registry.get_sample_value("crm_readiness_check_passing", {"check": "mongodb", "required": "true"})
        == 0
    )
    assert (
        registry.get_sample_value("crm_readiness_check_passing", {"check": "kafka", "required": "false"}) == 0
    )
