"""Dead letters can be inspected and replayed with ``crm-dlq``: a capture parked while it could
not be applied is replayed to its topic once, the leads service stores it, and a second replay
sends nothing again."""

from __future__ import annotations

import json
from typing import Any

import pytest
from crm_contracts import catalog
from crm_contracts.events.leads import LeadCaptured, lead_captured_example
from crm_leads.bootstrap import LeadsSettings, create_app
from crm_localinfra.testing import (
    eventually,
    isolation_key,
    publish_raw,
    read_topic,
    service_client,
    service_env,
)
from crm_runtime.dlq_cli import DlqSettings, main
from crm_runtime.events import encode, make_event
from pymongo import AsyncMongoClient

pytestmark = pytest.mark.integration


async def test_parked_events_are_listed_and_replayed_once(
    infra: Any, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    env = service_env(infra, "leads", isolation=isolation_key())
    settings = LeadsSettings(**env)
    for key, value in env.items():
        monkeypatch.setenv(f"CRM_{key.upper()}", str(value))
    assert DlqSettings().topic_prefix == settings.topic_prefix

    # A malformed capture gets parked by the service, with its reason.
    async with service_client(create_app(settings)) as http:
        await publish_raw(infra.kafka_bootstrap, settings.topic("lead.captured"), b"{oops", key=b"k1")
        await read_topic(
            infra.kafka_bootstrap, settings.topic("lead.captured.dlq"), until=lambda r: len(r) == 1
        )

        # A valid capture parked earlier (say, while its handler kept failing) sits beside it.
        data = LeadCaptured.model_validate(lead_captured_example() | {"external_id": "parked-1"})
        parked = make_event(catalog.LEAD_CAPTURED, data, source="/webforms", subject="parked-1")
        await publish_raw(
            infra.kafka_bootstrap, settings.topic("lead.captured.dlq"), encode(parked), b"parked-1"
        )

        assert await _run(main, ["list", "lead.captured"]) == 0
        listed = _entries(capsys.readouterr().out)
        by_key = {entry["key"]: entry for entry in listed}  # different keys: any partition order
        assert sorted(by_key) == ["k1", "parked-1"]
        assert "not JSON" in by_key["k1"]["headers"]["crm-dlq-error"]
        assert by_key["k1"]["headers"]["crm-dlq-original-topic"] == settings.topic("lead.captured")

        assert await _run(main, ["replay", "lead.captured"]) == 0
        replayed = _entries(capsys.readouterr().out)
        assert len(replayed) == 2

        mongo: AsyncMongoClient[dict[str, Any]] = AsyncMongoClient(infra.mongo_url)
        try:

            async def parked_capture_stored() -> bool:
                found = await mongo[settings.database_name].leads.count_documents({"external_id": "parked-1"})
                return found == 1

            await eventually(parked_capture_stored)
        finally:
            await mongo.close()

        # Replay remembers its position: nothing new was parked except the malformed one again.
        await read_topic(
            infra.kafka_bootstrap, settings.topic("lead.captured.dlq"), until=lambda r: len(r) == 3
        )
        assert await _run(main, ["replay", "lead.captured"]) == 0
        again = _entries(capsys.readouterr().out)
        assert [entry["key"] for entry in again] == ["k1"]
        assert (await http.get("/health/ready")).status_code == 200


def _entries(output: str) -> list[dict[str, Any]]:
    """The CLI's JSON lines (the in-process service logs to the same stdout)."""
    entries = (json.loads(line) for line in output.splitlines() if line.startswith("{"))
    return [entry for entry in entries if "dlq_offset" in entry]


async def _run(command: Any, argv: list[str]) -> int:
    import asyncio

    # The CLI runs its own event loop; keep it off ours.
    result: int = await asyncio.to_thread(command, argv)
    return result
