"""A Kafka outage is a few log lines, not thousands: each component logs one ERROR per outage,
then a periodic summary of what it held back, and one INFO line when Kafka is back. Before the
throttle, one leads process wrote about 6,400 lines (4,800 of them aiokafka's "Unable connect
to node") in a one-minute outage."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path
from typing import Any

import httpx
import pytest
from crm_contracts.events.leads import lead_captured_example
from crm_localinfra.testing import (
    RunningService,
    eventually,
    isolation_key,
    read_topic,
    running_services,
    service_env,
)

pytestmark = pytest.mark.integration

SUMMARY_SECONDS = 2


def distinct_lead(external_id: str) -> dict[str, Any]:
    return lead_captured_example() | {
        "external_id": external_id,
        "person": {"first_name": "Ada", "email": f"ada@{external_id}.example"},
        "company": {"name": external_id, "website": f"https://{external_id}.example"},
    }


def log_entries(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.startswith("{")]


def component(entry: dict[str, Any]) -> str:
    """Our components name themselves; a Kafka client's own line is named by its logger."""
    return str(entry.get("component") or entry["logger"])


async def open_outages(http: httpx.AsyncClient) -> list[str]:
    """The components the service counts an outage for (the ``crm_outage_active`` gauge)."""
    metrics = (await http.get("/metrics")).text
    return [
        line
        for line in metrics.splitlines()
        if line.startswith("crm_outage_active{") and line.endswith(" 1.0")
    ]


async def an_outage(
    infra: Any, leads: RunningService, http: httpx.AsyncClient, external_id: str
) -> list[dict[str, Any]]:
    """Stop Kafka until the summaries show, write a lead meanwhile, start it again and wait
    until every component has settled; the log entries written from the stop on."""

    async def settled() -> bool:
        return not await open_outages(http)

    await eventually(settled, timeout=120)  # nothing left open from the start or an earlier outage
    start = len(log_entries(leads.log_path))

    def since_start() -> list[dict[str, Any]]:
        return log_entries(leads.log_path)[start:]

    def summarised() -> bool:
        # The clients fail many times a second, the lag monitor once per measurement.
        summaries = {component(e) for e in since_start() if "unreachable for" in e["message"]}
        return {"aiokafka", "lag monitor"} <= summaries

    await infra.astop_kafka()
    try:
        assert (await http.post("/leads", json=distinct_lead(external_id))).status_code == 201
        await eventually(summarised, timeout=120)
        assert await open_outages(http)  # the gauge shows the outage too

        async def degraded() -> bool:
            # The pod stays in its Service: the write waits in the outbox.
            ready = await http.get("/health/ready")
            return ready.status_code == 200 and ready.json()["status"] == "degraded"

        await eventually(degraded, timeout=60)
    finally:
        await infra.astart_kafka()
    await eventually(settled, timeout=120)
    return since_start()


async def test_a_kafka_outage_logs_one_error_per_component_then_summaries_and_recovery(
    disposable_infra: Any, tmp_path: Path
) -> None:
    infra = disposable_infra  # this test stops its broker: never the shared one
    isolation = isolation_key()
    topic = service_env(infra, "leads", isolation=isolation)["topic_prefix"] + "lead.created"
    env = {"CRM_LOG_LEVEL": "INFO", "CRM_LOG_OUTAGE_SUMMARY_SECONDS": str(SUMMARY_SECONDS)}
    async with running_services(
        infra, ["leads"], log_dir=tmp_path, isolation=isolation, extra_env=env
    ) as services:
        leads = services["leads"]
        async with httpx.AsyncClient(base_url=leads.base_url, timeout=30) as http:
            assert (await http.post("/leads", json=distinct_lead("before"))).status_code == 201
            await read_topic(infra.kafka_bootstrap, topic, until=lambda r: len(r) == 1)
            # The second outage proves that recovery re-arms every component.
            for number, external_id in enumerate(("during-1", "during-2"), start=2):
                entries = await an_outage(infra, leads, http, external_id)
                await read_topic(infra.kafka_bootstrap, topic, until=lambda r, n=number: len(r) == n)

                lines = [(e["ts"], component(e), e["level"], e["message"][:120]) for e in entries]
                # Each Kafka client logger shows its own first line of the outage (an error, or
                # a warning such as "Unable to request metadata"), once.
                shown = Counter(e["logger"] for e in entries if e["logger"].startswith("aiokafka"))
                assert shown["aiokafka"] == 1 and set(shown.values()) == {1}, lines
                errors = Counter(component(e) for e in entries if e["level"] == "error")
                assert errors["lag monitor"] == 1 and set(errors.values()) == {1}, lines
                first = next(e for e in entries if component(e) == "lag monitor" and e["level"] == "error")
                assert first["error"] and first["message"].startswith("lag monitor: kafka unreachable: ")
                back = {component(e) for e in entries if "reachable again" in e["message"]}
                assert {"aiokafka", "lag monitor"} <= back, lines
                recovery = next(e for e in entries if e["message"].startswith("lag monitor: kafka reachable"))
                assert recovery["level"] == "info" and recovery["outage_seconds"] >= SUMMARY_SECONDS
                # The write is one JSON access line; probes and scrapes write none.
                access = [e for e in entries if e["logger"] == "crm.access"]
                assert [(e["method"], e["route"], e["status"]) for e in access] == [("POST", "/leads", 201)]
                assert access[0]["duration_ms"] > 0 and len(access[0]["trace_id"]) == 32
                # A summary per component every 2 s, none of the thousands held back.
                written = [e for e in entries if e["logger"] != "crm.access"]
                assert len(written) < 100, Counter(component(e) for e in written)
