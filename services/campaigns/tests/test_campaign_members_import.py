"""Campaign members import jobs over HTTP, on the real broker and database: the 202 names a job
to follow; rows naming campaigns by id or name and leads by id or by their capture system's id
become members that lived through their statuses on the file's dates (events included, first
touch re-derived); bad rows of every kind are listed with column, value and reason; importing
the same file again changes nothing and emits nothing."""

from __future__ import annotations

import csv
import io
import re
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import httpx
import pytest
from crm_campaigns.bootstrap import CampaignsSettings, create_app
from crm_contracts import catalog
from crm_contracts.events.common import Actor
from crm_contracts.events.leads import (
    Company,
    LeadCreated,
    LeadMerged,
    LeadOrigin,
    LeadSnapshot,
    LeadSource,
    LeadStatus,
    Person,
)
from crm_localinfra.testing import (
    IMPORT_ACTIVE,
    eventually,
    import_ended,
    isolation_key,
    publish_raw,
    service_client,
    service_env,
    topic_size,
)
from crm_runtime import ServiceRuntime
from crm_runtime.events import encode, make_event

pytestmark = [pytest.mark.integration, pytest.mark.e2e]

REP = {"id": "rep-7", "name": "Grace"}


@dataclass
class Service:
    http: httpx.AsyncClient
    settings: CampaignsSettings
    runtime: ServiceRuntime
    bootstrap: str

    async def campaign(self, campaign_id: str, name: str) -> None:
        body = {"campaign_id": campaign_id, "name": name, "type": "webinar", "currency": "EUR", "by": REP}
        response = await self.http.post("/campaigns", json=body)
        assert response.status_code == 201, response.text

    async def lead_created(self, lead_id: str, campaign_id: str | None, captured_at: datetime) -> None:
        lead = LeadSnapshot(
            lead_id=lead_id,
            status=LeadStatus.NEW,
            source_system="webforms",
            external_id=f"form-{lead_id}",
            person=Person(first_name="Ada", email=f"{lead_id}@engines.example"),
            company=Company(name="Analytical Engines"),
            lead_source=LeadSource.WEB,
            origin=LeadOrigin.LANDING_PAGE_FORM,
            campaign_id=campaign_id,
            captured_at=captured_at,
        )
        event = make_event(catalog.LEAD_CREATED, LeadCreated(lead=lead), source="/crm/leads", subject=lead_id)
        await publish_raw(
            self.bootstrap,
            self.settings.topic(catalog.LEAD_CREATED.topic),
            encode(event),
            key=lead_id.encode(),
        )

    async def consumed(self, topic: str, count: int) -> None:
        async def reached() -> bool:
            text = (await self.http.get("/metrics")).text
            found = re.search(
                rf'^crm_events_processed_total\{{topic="{re.escape(topic)}"\}} (\S+)$', text, re.M
            )
            return found is not None and float(found.group(1)) == count

        await eventually(reached, timeout=60)

    async def imported(self, body: bytes, query: str = "") -> dict[str, Any]:
        response = await self.http.post(
            f"/imports/members{query}", content=body, headers={"content-type": "text/csv"}
        )
        assert response.status_code == 202, response.text
        assert response.json()["state"] in IMPORT_ACTIVE
        job = await import_ended(self.http, response.headers["location"])

        async def drained() -> bool:
            return await self.runtime.outbox.pending() == 0

        await eventually(drained, timeout=60)
        return job

    async def rejections(self, job: dict[str, Any]) -> dict[int, dict[str, str]]:
        text = (await self.http.get(job["rejections"])).text
        return {int(r["row"]): r for r in csv.DictReader(io.StringIO(text))}

    async def topic_sizes(self) -> tuple[int, int]:
        return (
            await topic_size(self.bootstrap, self.settings.topic(catalog.CAMPAIGN_MEMBER_ADDED.topic)),
            await topic_size(
                self.bootstrap, self.settings.topic(catalog.CAMPAIGN_MEMBER_STATUS_CHANGED.topic)
            ),
        )


@pytest.fixture
async def service(infra: Any) -> AsyncIterator[Service]:
    # Small chunks, so the file spans several transactions.
    settings = CampaignsSettings(
        **service_env(infra, "campaigns", isolation=isolation_key()), import_chunk_rows=4
    )
    app = create_app(settings)
    async with service_client(app) as http:
        yield Service(http, settings, app.state.runtime, infra.kafka_bootstrap)


FILE = (
    b"campaign_id,campaign_name,lead_id,lead_external_id,lead_source_system,status,joined_at,responded_at\n"
    b"fair,,lead-1,,,attended,2026-10-01T09:00:00Z,2026-10-05T18:30:00Z\n"  # 1: by ids, with history
    b",Autumn webinar,,form-lead-2,webforms,registered,2026-09-01T10:00:00Z,\n"  # 2: by name / capture id
    b"fair,,lead-2,,,registered,2026-11-01T08:00:00Z,\n"  # 3: the capture's membership moves on
    b",Sprng fair,lead-1,,,sent,2026-10-01T09:00:00Z,\n"  # 4: unknown campaign name
    b"webinar,,lead-1,,,atended,2026-10-01T09:00:00Z,\n"  # 5: no such status
    b"fair,,lead-nobody,,,sent,2026-10-01T09:00:00Z,\n"  # 6: unknown lead
    b"twin-1,,lead-1,,,sent,2026-13-01T09:00:00Z,\n"  # 7: no such date
    b"webinar,,lead-2,,,attended,2026-10-01T09:00:00Z,2026-09-30T09:00:00Z\n"  # 8: responded before joining
    b",Twin,lead-1,,,sent,2026-10-01T09:00:00Z,\n"  # 9: two campaigns have this name
    b",Autumn webinar,,form-lead-9,webforms,sent,2026-10-01T09:00:00Z,\n"  # 10: unknown capture id
    b"twin-2,,lead-1,,,clicked,2026-10-01T09:00:00Z,2026-10-02T09:00:00Z\n"  # 11: clicked < responded
)


async def test_members_import_applies_good_rows_rejects_bad_ones_and_a_second_run_changes_nothing(
    service: Service,
) -> None:
    for campaign_id, name in [
        ("fair", "Spring fair"),
        ("webinar", "Autumn webinar"),
        ("twin-1", "Twin"),
        ("twin-2", "Twin"),
    ]:
        await service.campaign(campaign_id, name)
    await service.lead_created("lead-1", None, datetime(2026, 9, 20, tzinfo=UTC))
    await service.lead_created("lead-2", "fair", datetime(2026, 11, 2, 9, 30, tzinfo=UTC))
    await service.consumed(catalog.LEAD_CREATED.topic, 2)

    job = await service.imported(FILE, "?source_system=old-crm")
    assert (job["state"], job["file_rows"], job["applied"], job["rejected"]) == ("done", 11, 3, 8), job
    rejected = await service.rejections(job)
    assert sorted(rejected) == [4, 5, 6, 7, 8, 9, 10, 11]
    assert (rejected[4]["column"], rejected[4]["value"]) == ("campaign_name", "Sprng fair")
    assert rejected[4]["reason"].endswith("did you mean 'Spring fair'?")
    assert (rejected[5]["column"], rejected[5]["value"]) == ("status", "atended")
    assert "did you mean 'attended'" in rejected[5]["reason"]
    assert (rejected[6]["column"], rejected[6]["value"]) == ("lead_id", "lead-nobody")
    assert "not seen its lead.created" in rejected[6]["reason"]
    assert (rejected[7]["column"], rejected[7]["value"]) == ("joined_at", "2026-13-01T09:00:00Z")
    assert "e.g. 2025-03-04T10:00:00Z" in rejected[7]["reason"]
    assert rejected[8]["column"] == "responded_at" and "before joined_at" in rejected[8]["reason"]
    assert rejected[9]["column"] == "campaign_name" and "twin-1, twin-2" in rejected[9]["reason"]
    assert (rejected[10]["column"], rejected[10]["value"]) == ("lead_external_id", "form-lead-9")
    assert "captured from webforms" in rejected[10]["reason"]
    assert rejected[11]["column"] == "responded_at" and "not at clicked" in rejected[11]["reason"]

    attended = (await service.http.get("/campaigns/fair/members/lead:lead-1")).json()
    assert [(s["status"], s["at"]) for s in attended["status_history"]] == [
        ("sent", "2026-10-01T09:00:00Z"),
        ("responded", "2026-10-05T18:30:00Z"),
        ("attended", "2026-10-05T18:30:00Z"),
    ]
    assert (attended["responded"], attended["touched_via"], attended["version"]) == (True, ["import"], 3)
    moved_on = (await service.http.get("/campaigns/fair/members/lead:lead-2")).json()
    assert (moved_on["status"], moved_on["joined_at"]) == ("registered", "2026-11-01T08:00:00Z")
    assert moved_on["touched_via"] == ["import", "lead.created"]
    touches = (await service.http.get("/leads/lead-2/touches")).json()
    assert touches["first_touch_campaign_id"] == "webinar"  # joined it in September
    # The capture's member_added, two for the imported memberships; three status changes.
    assert await service.topic_sizes() == (3, 3)

    again = await service.imported(FILE, "?source_system=old-crm")
    assert (again["state"], again["applied"], again["rejected"]) == ("done", 3, 8)
    assert await service.topic_sizes() == (3, 3)
    assert (await service.http.get("/campaigns/fair/members/lead:lead-1")).json() == attended
    assert (await service.http.get("/campaigns/fair/members/lead:lead-2")).json() == moved_on


async def test_a_row_naming_a_lead_merged_into_another_is_rejected_naming_the_survivor(
    service: Service,
) -> None:
    await service.campaign("fair", "Spring fair")
    for lead_id in ("lead-dup", "lead-keep"):
        await service.lead_created(lead_id, None, datetime(2026, 9, 20, tzinfo=UTC))
    merged = LeadMerged(
        survivor=LeadSnapshot(
            lead_id="lead-keep",
            status=LeadStatus.NEW,
            source_system="webforms",
            external_id="form-lead-keep",
            person=Person(first_name="Ada", email="lead-keep@engines.example"),
            company=Company(name="Analytical Engines"),
            lead_source=LeadSource.WEB,
            origin=LeadOrigin.LANDING_PAGE_FORM,
            captured_at=datetime(2026, 9, 20, tzinfo=UTC),
        ),
        merged_lead_id="lead-dup",
        merged_at=datetime(2026, 9, 25, tzinfo=UTC),
        merged_by=Actor(id="rep-7"),
    )
    event = make_event(catalog.LEAD_MERGED, merged, source="/crm/leads", subject="lead-keep", version=2)
    await publish_raw(
        service.bootstrap, service.settings.topic(catalog.LEAD_MERGED.topic), encode(event), key=b"lead-keep"
    )
    await service.consumed(catalog.LEAD_MERGED.topic, 1)
    body = (
        b"campaign_id,lead_id,lead_external_id,lead_source_system,status,joined_at\n"
        b"fair,lead-dup,,,sent,2026-10-01T09:00:00Z\n"  # 1: by id
        b"fair,,form-lead-dup,webforms,sent,2026-10-01T09:00:00Z\n"  # 2: by its capture id
        b"fair,lead-keep,,,sent,2026-10-01T09:00:00Z\n"  # 3: the survivor goes in
    )
    job = await service.imported(body)
    assert (job["applied"], job["failed"]) == (1, 2), job
    rejected = await service.rejections(job)
    assert (rejected[1]["column"], rejected[1]["value"]) == ("lead_id", "lead-dup")
    assert (rejected[2]["column"], rejected[2]["value"]) == ("lead_external_id", "form-lead-dup")
    assert all("merged into lead lead-keep" in rejected[row]["reason"] for row in (1, 2))


async def test_an_unknown_column_refuses_the_file_naming_it(service: Service) -> None:
    body = b"campaign_id,lead_id,joined,status\nfair,lead-1,2026-10-01T09:00:00Z,sent\n"
    response = await service.http.post("/imports/members", content=body, headers={"content-type": "text/csv"})
    assert response.status_code == 422, response.text
    assert response.json()["fields"][0]["field"] == "joined"
    assert "did you mean 'joined_at'?" in response.json()["message"]
