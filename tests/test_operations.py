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
