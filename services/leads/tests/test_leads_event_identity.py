"""Event identity is CloudEvents (source, id): publishers that number their events alike (two
web forms, an ad platform, a partner portal each sending ids 1..10) all get their leads stored,
the same event redelivered is still applied once, and inbox entries written before the source
was part of the key still keep their events from being applied again after an upgrade."""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
from crm_contracts import catalog
from crm_contracts.events.leads import LeadCaptured, lead_captured_key
from crm_leads.bootstrap import LeadsSettings, create_app
from crm_leads.domain import lead_id_for
from crm_localinfra.testing import (
    Outgoing,
    eventually,
    isolation_key,
    publish_all,
    running_services,
    service_client,
    service_env,
)
from crm_runtime.events import encode, make_event
from crm_runtime.inbox import legacy_inbox_key
from pymongo import AsyncMongoClient

pytestmark = pytest.mark.integration

# Each publisher is its own CloudEvents source and capture system, and numbers its events 1..10.
PUBLISHERS = {"/webforms/spring": "spring-form", "/ad-platform": "ads", "/partner-portal": "partners"}
TOPIC = "lead.captured"


def captured(source: str, n: int, *, time: datetime | None = None) -> Outgoing:
    system = PUBLISHERS[source]
    data = LeadCaptured.model_validate(
        {
            "source_system": system,
            "external_id": f"{system}-{n}",
            "person": {"first_name": f"Pat{n}", "email": f"pat{n}@{system}.example"},
            "lead_source": "web",
        }
    )
    event = make_event(
        catalog.LEAD_CAPTURED, data, source=source, subject=data.external_id, event_id=str(n), time=time
    )
    return Outgoing(encode(event), lead_captured_key(system, data.external_id))


def sample(runtime: Any, name: str) -> float:
    return runtime.registry.get_sample_value(name, {"topic": TOPIC}) or 0.0


async def consumed(runtime: Any, count: int) -> None:
    async def done() -> bool:
        seen = sample(runtime, "crm_events_processed_total") + sample(runtime, "crm_events_duplicate_total")
        return seen >= count

    await eventually(done, timeout=60)


async def test_publishers_reusing_ids_all_get_their_leads_and_redeliveries_stay_single(infra: Any) -> None:
    settings = LeadsSettings(**service_env(infra, "leads", isolation=isolation_key()))
    originals = [captured(source, n) for source in PUBLISHERS for n in range(1, 11)]
    redelivered = originals[::2]  # the very same messages again
    app = create_app(settings)
    runtime = app.state.runtime
    async with service_client(app):
        await publish_all(settings.kafka_bootstrap_servers, settings.topic(TOPIC), originals + redelivered)
        await consumed(runtime, len(originals) + len(redelivered))
        assert sample(runtime, "crm_events_processed_total") == 30
        assert sample(runtime, "crm_events_duplicate_total") == len(redelivered) == 15
        stored = await runtime.db.leads.find({}, {"_id": 1}).to_list()
    assert {doc["_id"] for doc in stored} == {
        lead_id_for(system, f"{system}-{n}") for system in PUBLISHERS.values() for n in range(1, 11)
    }


async def test_inbox_entries_from_before_the_upgrade_still_keep_their_events_from_applying_again(
    infra: Any,
) -> None:
    settings = LeadsSettings(**service_env(infra, "leads", isolation=isolation_key()))
    now = datetime.now(UTC)
    applied_at = now - timedelta(hours=1)
    # The old release applied spring-form's events 1..5 and wrote "<group>|<topic>|<id>" for them.
    mongo: AsyncMongoClient[dict[str, Any]] = AsyncMongoClient(infra.mongo_url, tz_aware=True)
    try:
        await mongo[settings.database_name].inbox.insert_many(
            [
                {"_id": legacy_inbox_key(settings.group_id, TOPIC, str(n)), "processed_at": applied_at}
                for n in range(1, 6)
            ]
        )
    finally:
        await mongo.close()
    before = applied_at - timedelta(hours=1)
    redelivered = [captured("/webforms/spring", n, time=before) for n in range(1, 6)]  # offsets rewound
    unseen = [captured("/webforms/spring", n, time=before) for n in range(6, 11)]  # never consumed
    reusing = [captured("/ad-platform", n, time=now) for n in range(1, 6)]  # another source, same ids
    app = create_app(settings)
    runtime = app.state.runtime
    async with service_client(app):
        await publish_all(
            settings.kafka_bootstrap_servers, settings.topic(TOPIC), redelivered + unseen + reusing
        )
        await consumed(runtime, 15)
        assert sample(runtime, "crm_events_duplicate_total") == 5
        assert sample(runtime, "crm_events_processed_total") == 10
        stored = {doc["_id"] for doc in await runtime.db.leads.find({}, {"_id": 1}).to_list()}
    assert stored == {lead_id_for("spring-form", f"spring-form-{n}") for n in range(6, 11)} | {
        lead_id_for("ads", f"ads-{n}") for n in range(1, 6)
    }


@pytest.fixture
async def running(infra: Any, tmp_path: Path) -> AsyncIterator[tuple[str, str]]:
    isolation = isolation_key()
    async with running_services(infra, ["leads"], log_dir=tmp_path, isolation=isolation) as services:
        yield (
            services["leads"].base_url,
            str(service_env(infra, "leads", isolation=isolation)["topic_prefix"]),
        )


@pytest.mark.e2e
async def test_two_sources_numbering_alike_both_show_up_over_http(
    infra: Any, running: tuple[str, str]
) -> None:
    base_url, prefix = running
    web, ads = "/webforms/spring", "/ad-platform"
    messages = [captured(source, n) for source in (web, ads) for n in range(1, 11)]
    await publish_all(infra.kafka_bootstrap, prefix + TOPIC, messages + messages[:3])
    async with httpx.AsyncClient(base_url=base_url, timeout=30) as http:

        async def listed() -> list[dict[str, Any]]:
            response = await http.get("/leads", params={"limit": 100})
            assert response.status_code == 200, response.text
            items: list[dict[str, Any]] = response.json()["items"]
            return items

        async def duplicates_seen() -> bool:
            metrics = (await http.get("/metrics")).text
            return f'crm_events_duplicate_total{{topic="{TOPIC}"}} 3.0' in metrics

        async def all_there() -> bool:
            return len(await listed()) >= 20

        await eventually(all_there, timeout=90, interval=0.5)
        await eventually(duplicates_seen, timeout=30, interval=0.5)
        leads = await listed()
    assert sorted((lead["source_system"], lead["external_id"]) for lead in leads) == sorted(
        (PUBLISHERS[source], f"{PUBLISHERS[source]}-{n}") for source in (web, ads) for n in range(1, 11)
    )
