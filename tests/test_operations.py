"""Operational behaviour of a service process: JSON logs carrying the trace id, and a graceful
exit on SIGTERM that finishes its work and flushes the outbox."""

from __future__ import annotations

import asyncio
import json
import os
import signal
from pathlib import Path
from typing import Any

import httpx
import pytest
from crm_contracts.events.leads import lead_captured_example
from crm_localinfra.testing import (
    eventually,
    isolation_key,
    publish_raw,
    read_topic,
    running_services,
    service_env,
)

pytestmark = pytest.mark.integration


def log_entries(path: Path) -> list[dict[str, Any]]:
    entries = []
    for line in path.read_text().splitlines():
        if line.startswith("{"):
            entries.append(json.loads(line))
    return entries


async def test_logs_are_json_with_trace_ids_and_sigterm_exits_cleanly(infra: Any, tmp_path: Path) -> None:
    isolation = isolation_key()
    prefix = service_env(infra, "leads", isolation=isolation)["topic_prefix"]
    async with running_services(
        infra, ["leads"], log_dir=tmp_path, isolation=isolation, extra_env={"CRM_LOG_LEVEL": "INFO"}
    ) as services:
        leads = services["leads"]
        async with httpx.AsyncClient(base_url=leads.base_url, timeout=10) as http:
            created = await http.post("/leads", json=lead_captured_example())
            assert created.status_code == 201
        await publish_raw(infra.kafka_bootstrap, f"{prefix}lead.captured", b"not json", key=b"x")

        def dead_letter_logged_with_trace() -> bool:
            return any(
                entry.get("message") == "dead-lettering message" and len(entry.get("trace_id", "")) == 32
                for entry in log_entries(leads.log_path)
            )

        await eventually(dead_letter_logged_with_trace)
        entry = next(e for e in log_entries(leads.log_path) if e.get("message") == "dead-lettering message")
        assert entry["service"] == "leads" and entry["level"] == "warning"
        assert entry["topic"] == "lead.captured"

        os.kill(leads.pid, signal.SIGTERM)

        def exited() -> bool:
            try:
                os.kill(leads.pid, 0)
            except ProcessLookupError:
                return True
            # A zombie counts as exited: its parent (this test) has not reaped it yet.
            status = Path(f"/proc/{leads.pid}/stat").read_text().split(") ", 1)[1].split()[0]
            return status == "Z"

        await eventually(exited, timeout=30)
        stopped = [e for e in log_entries(leads.log_path) if e.get("message") == "service stopped"]
        assert stopped, "the lifespan shutdown ran"
    # Everything it committed was published before it exited.
    await read_topic(infra.kafka_bootstrap, f"{prefix}lead.created", until=lambda r: len(r) == 1)
    await asyncio.sleep(0)


async def test_the_request_trace_continues_into_the_published_event(infra: Any) -> None:
    from crm_leads.bootstrap import LeadsSettings, create_app
    from crm_localinfra.testing import service_client

    settings = LeadsSettings(**service_env(infra, "leads", isolation=isolation_key()))
    trace_id = "4bf92f3577b34da6a3ce929d0e0e4736"
    async with service_client(create_app(settings)) as http:
        response = await http.post(
            "/leads",
            json=lead_captured_example(),
            headers={"traceparent": f"00-{trace_id}-00f067aa0ba902b7-01"},
        )
        assert response.status_code == 201
        [record] = await read_topic(
            infra.kafka_bootstrap, settings.topic("lead.created"), until=lambda r: len(r) == 1
        )
    traceparent = record.headers["traceparent"].decode()
    assert traceparent.split("-")[1] == trace_id


async def test_a_consumed_event_trace_continues_into_the_events_it_causes(infra: Any) -> None:
    """Consumption is batched, yet each event is handled under its own producer's trace."""
    from crm_contracts import catalog
    from crm_contracts.events.leads import LeadCaptured
    from crm_leads.bootstrap import LeadsSettings, create_app
    from crm_localinfra.testing import Outgoing, publish_all, service_client
    from crm_runtime import make_event
    from crm_runtime.events import encode
    from crm_runtime.topics import ensure_topics

    settings = LeadsSettings(**service_env(infra, "leads", isolation=isolation_key()))
    await ensure_topics(settings, ["lead.captured"])
    trace_ids = [f"{n:032x}" for n in range(0xA1, 0xA4)]
    messages = []
    for n, trace_id in enumerate(trace_ids):
        example = lead_captured_example()
        person = example["person"] | {"email": f"traced{n}@example.com"}
        data = LeadCaptured.model_validate(example | {"external_id": f"traced-{n}", "person": person})
        event = make_event(catalog.LEAD_CAPTURED, data, source="/web-forms", subject=f"traced-{n}")
        traceparent = f"00-{trace_id}-00f067aa0ba902b7-01".encode()
        messages.append(Outgoing(encode(event), b"one-batch", [("traceparent", traceparent)]))
    await publish_all(infra.kafka_bootstrap, settings.topic("lead.captured"), messages)
    async with service_client(create_app(settings)):
        records = await read_topic(
            infra.kafka_bootstrap, settings.topic("lead.created"), until=lambda r: len(r) == len(trace_ids)
        )
    by_lead = {r.json()["data"]["lead"]["external_id"]: r for r in records}
    for n, trace_id in enumerate(trace_ids):
        assert by_lead[f"traced-{n}"].headers["traceparent"].decode().split("-")[1] == trace_id
