"""Lead import jobs over HTTP: a file with bad rows of every kind ends with each rejection
listed (row, column, value, reason) and every good row captured with its event; the 202
comes back while the job is still to run, progress shows while it runs, and it can be
cancelled; uploads over the body limit but under the import limit are taken, larger ones
refused; a service killed with SIGKILL mid-import resumes after a restart and ends with each
row of the file once and each lead's ``lead.created`` once."""

from __future__ import annotations

import asyncio
import csv
import io
import os
import signal
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest
from crm_leads.bootstrap import LeadsSettings, create_app
from crm_leads.domain import lead_id_for
from crm_localinfra.testing import (
    eventually,
    import_ended,
    isolation_key,
    read_topic,
    running_services,
    service_client,
    service_env,
)
from pymongo import AsyncMongoClient

pytestmark = pytest.mark.integration


def leads_file(rows: int, prefix: str = "L") -> bytes:
    return b"".join(
        orjson.dumps(
            {
                "external_id": f"{prefix}-{n}",
                "captured_at": "2024-02-01T09:00:00Z",
                "person": {"first_name": f"Person {n}", "email": f"p{n}@firm{n}.example"},
            }
        )
        + b"\n"
        for n in range(1, rows + 1)
    )


async def ended(http: httpx.AsyncClient, location: str, timeout: float = 120) -> dict[str, Any]:
    return await import_ended(http, location, timeout=timeout)


@pytest.fixture
async def service(infra: Any) -> AsyncIterator[tuple[httpx.AsyncClient, LeadsSettings, Any]]:
    settings = LeadsSettings(
        **service_env(infra, "leads", isolation=isolation_key()),
        import_chunk_rows=100,
        max_import_bytes=4_000_000,
    )
    app = create_app(settings)
    async with service_client(app) as http:
        yield http, settings, app.state.runtime


BAD_AND_GOOD = (
    b"external_id,captured_at,person.email,lead_source\n"
    b"g1,2024-03-01T10:00:00Z,g1@acme.example,web\n"
    b"b1,2024-03-01T10:00:00Z,not-an-email,web\n"  # invalid field
    b"b2,2024-03-01T10:00:00Z,b2@acme.example,referal\n"  # unknown value: did you mean referral
    b"g2,2024-03-01T10:00:00Z,g2@acme.example,\n"
    b"g1,2024-03-02T10:00:00Z,again@acme.example,web\n"  # the file has g1 already
    b"b3,2024-03-01T10:00:00Z,b3@acme.example,web,surplus\n"  # unreadable
    b'g3,2024-03-01T10:00:00Z,"g3@acme.example",event\n'
)


async def test_bad_rows_of_every_kind_are_listed_and_good_rows_captured_with_their_events(
    service: tuple[httpx.AsyncClient, LeadsSettings, Any],
) -> None:
    http, settings, _ = service
    response = await http.post(
        "/imports/leads?source_system=old-crm", content=BAD_AND_GOOD, headers={"content-type": "text/csv"}
    )
    assert response.status_code == 202, response.text
    job = await ended(http, response.headers["location"])
    assert (job["state"], job["file_rows"], job["applied"], job["rejected"]) == ("done", 7, 3, 4)
    rejections = list(csv.DictReader(io.StringIO((await http.get(job["rejections"])).text)))
    by_row = {int(r["row"]): r for r in rejections}
    assert sorted(by_row) == [2, 3, 5, 6]
    assert (by_row[2]["column"], by_row[2]["value"], by_row[2]["external_id"]) == (
        "person.email",
        "not-an-email",
        "b1",
    )
    assert by_row[3]["column"] == "lead_source" and by_row[3]["value"] == "referal"
    assert by_row[3]["reason"].endswith("did you mean 'referral'?")
    assert by_row[5]["column"] == "external_id" and "at row 1" in by_row[5]["reason"]
    assert by_row[6]["column"] == "(row)" and by_row[6]["reason"] == "5 values for 4 columns"
    g1 = (await http.get(f"/leads/{lead_id_for('old-crm', 'g1')}")).json()
    assert g1["person"]["email"] == "g1@acme.example"  # the duplicate row did not overwrite it
    for external_id in ("g2", "g3"):
        assert (await http.get(f"/leads/{lead_id_for('old-crm', external_id)}")).status_code == 200
    created = await read_topic(
        settings.kafka_bootstrap_servers,
        settings.topic("lead.created"),
        until=lambda records: len(records) >= 3,
    )
    assert sorted(r.json()["subject"] for r in created) == sorted(
        lead_id_for("old-crm", e) for e in ("g1", "g2", "g3")
    )


async def test_the_202_comes_at_once_progress_shows_and_the_import_can_be_cancelled(
    service: tuple[httpx.AsyncClient, LeadsSettings, Any],
) -> None:
    http, settings, runtime = service
    body = leads_file(10_000)
    assert len(body) > settings.max_body_bytes  # over the ordinary limit, under the import one
    started = time.monotonic()
    response = await http.post(
        "/imports/leads", content=body, headers={"content-type": "application/x-ndjson"}
    )
    answered = time.monotonic() - started
    assert response.status_code == 202, response.text
    accepted = response.json()
    assert accepted["state"] == "queued" and accepted["file_rows"] == 10_000 and accepted["processed"] == 0
    location = response.headers["location"]
    print(f"10,000 rows: 202 after {answered:.2f}s")

    async def progressing() -> dict[str, Any] | None:
        job: dict[str, Any] = (await http.get(location)).json()
        return job if job["processed"] > 0 else None

    running = await eventually(progressing)
    assert running["state"] == "running" and running["total"] == 10_000 and running["rate_per_second"]
    assert running["eta_seconds"] is not None and running["eta_seconds"] > 0
    listed = (await http.get("/imports")).json()
    assert [job["id"] for job in listed] == [accepted["id"]]

    cancelled = await http.delete(location)
    assert cancelled.status_code == 200 and cancelled.json()["cancel_requested"] is True
    job = await ended(http, location)
    assert job["state"] == "cancelled" and job["processed"] < 10_000
    stored = await runtime.db.leads.count_documents({})
    assert stored == job["applied"] == job["processed"]  # whole chunks, nothing after the cancel
    assert (await http.delete(location)).status_code == 409
    assert await runtime.db.import_chunks.count_documents({"job_id": accepted["id"]}) == 0


async def test_an_upload_over_the_import_limit_is_refused(
    service: tuple[httpx.AsyncClient, LeadsSettings, Any],
) -> None:
    http, settings, runtime = service
    body = leads_file(40_000)
    assert len(body) > settings.max_import_bytes
    declared = await http.post(
        "/imports/leads", content=body, headers={"content-type": "application/x-ndjson"}
    )
    assert declared.status_code == 413 and declared.json()["error"] == "payload_too_large"

    async def undeclared() -> AsyncIterator[bytes]:  # no Content-Length: refused mid-stream
        for start in range(0, len(body), 65_536):
            yield body[start : start + 65_536]

    streamed = await http.post(
        "/imports/leads", content=undeclared(), headers={"content-type": "application/x-ndjson"}
    )
    assert streamed.status_code == 413 and streamed.json()["error"] == "payload_too_large"
    assert await runtime.db.jobs.count_documents({}) == 0
    assert await runtime.db.import_chunks.count_documents({}) == 0  # the chunks stored before it went
    # Other routes keep the ordinary limit.
    other = await http.post(
        "/leads", content=b"x" * (settings.max_body_bytes + 1), headers={"content-type": "application/json"}
    )
    assert other.status_code == 413


@pytest.mark.e2e
async def test_a_service_killed_mid_import_resumes_and_applies_each_row_once(
    infra: Any, tmp_path: Path
) -> None:
    isolation = isolation_key()
    rows = 2_000
    env = {"CRM_IMPORT_CHUNK_ROWS": "50", "CRM_JOBS_LEASE_SECONDS": "2", "CRM_LOG_LEVEL": "INFO"}
    settings = LeadsSettings(**service_env(infra, "leads", isolation=isolation))
    mongo: AsyncMongoClient[dict[str, Any]] = AsyncMongoClient(infra.mongo_url, tz_aware=True)
    db = mongo[settings.database_name]
    try:
        async with running_services(
            infra, ["leads"], log_dir=tmp_path / "first", isolation=isolation, extra_env=env
        ) as first:
            leads = first["leads"]
            async with httpx.AsyncClient(base_url=leads.base_url, timeout=60) as http:
                response = await http.post(
                    "/imports/leads?source_system=crash",
                    content=leads_file(rows),
                    headers={"content-type": "application/x-ndjson"},
                )
                assert response.status_code == 202, response.text
                job_id = response.json()["id"]

                async def some_chunks_in() -> bool:
                    return bool((await http.get(f"/imports/{job_id}")).json()["processed"] >= 150)

                await eventually(some_chunks_in, timeout=120)
            os.killpg(leads.pid, signal.SIGKILL)
            await eventually(lambda: not _alive(leads.pid), timeout=30)
        killed = await db.jobs.find_one({"_id": job_id})
        assert killed is not None and killed["state"] == "running" and killed["processed"] < rows, killed
        async with running_services(
            infra, ["leads"], log_dir=tmp_path / "second", isolation=isolation, extra_env=env
        ) as second:
            async with httpx.AsyncClient(base_url=second["leads"].base_url, timeout=60) as http:
                job = await ended(http, f"/imports/{job_id}", timeout=300)
            counts = (job["state"], job["processed"], job["applied"], job["rejected"])
            assert counts == ("done", rows, rows, 0)
            assert await db.leads.count_documents({}) == rows
            # Read while the service runs: its relay publishes the rest once the killed one's
            # outbox lease has run out, which may be after the job is done.
            created = await read_topic(
                settings.kafka_bootstrap_servers,
                settings.topic("lead.created"),
                until=lambda records: len({r.json()["subject"] for r in records}) >= rows,
                timeout=120,
            )
        events_by_lead: dict[str, set[str]] = {}
        for record in created:
            event = record.json()
            events_by_lead.setdefault(event["subject"], set()).add(event["id"])
        assert len(events_by_lead) == rows
        assert all(len(ids) == 1 for ids in events_by_lead.values())  # one lead.created per lead
        assert set(events_by_lead) == {lead_id_for("crash", f"L-{n}") for n in range(1, rows + 1)}
    finally:
        await mongo.close()


def _alive(pid: int) -> bool:
    from crm_localinfra._proc import pid_alive

    return pid_alive(pid)


@pytest.mark.e2e
async def test_crm_import_uploads_follows_the_job_and_prints_where_the_rejections_are(
    infra: Any, tmp_path: Path
) -> None:
    isolation = isolation_key()
    upload = tmp_path / "leads.ndjson"
    upload.write_bytes(leads_file(600) + b'{"external_id": "bad", "person": {"email": "nope"}}\n')
    async with running_services(
        infra, ["leads"], log_dir=tmp_path, isolation=isolation, extra_env={"CRM_IMPORT_CHUNK_ROWS": "100"}
    ) as services:
        base = services["leads"].base_url
        command = [str(Path(sys.executable).parent / "crm-import"), str(upload), "--kind", "leads"]
        done = await asyncio.to_thread(
            subprocess.run,
            [*command, "--url", base, "--source-system", "cli", "--interval", "0.2"],
            capture_output=True,
            text=True,
            timeout=300,
        )
        assert done.returncode == 0, done.stderr
        assert "leads from cli): done" in done.stdout
        assert "applied 600; rejected 1" in done.stdout
        [where] = [line for line in done.stdout.splitlines() if "rejections:" in line]
        async with httpx.AsyncClient() as http:
            rejections = (await http.get(where.split("rejections: ")[1])).text
        assert "person.email" in rejections and "nope" in rejections
        # stderr is no terminal here: plain progress lines, the last one at 100%
        progress = [line for line in done.stderr.splitlines() if line.startswith("[")]
        assert progress and "100% 601/601 rows" in progress[-1]
        refused = await asyncio.to_thread(
            subprocess.run, [*command, "--url", base, "--format", "csv"], capture_output=True, text=True
        )
        assert refused.returncode == 2 and "refused (422)" in refused.stderr


async def test_an_import_row_without_captured_at_is_captured_at_the_uploads_receipt(
    service: tuple[httpx.AsyncClient, LeadsSettings, Any],
) -> None:
    http, _, _ = service
    rows = (
        b"external_id,captured_at,person.email\n"
        b"t1,,t1@acme.example\n"  # an export without a time for this row
        b"t2,2024-03-01T10:00:00Z,t2@acme.example\n"
    )
    response = await http.post(
        "/imports/leads?source_system=timeless-crm", content=rows, headers={"content-type": "text/csv"}
    )
    assert response.status_code == 202, response.text
    job = await ended(http, response.headers["location"])
    assert (job["state"], job["applied"]) == ("done", 2), job
    t1 = (await http.get(f"/leads/{lead_id_for('timeless-crm', 't1')}")).json()
    t2 = (await http.get(f"/leads/{lead_id_for('timeless-crm', 't2')}")).json()
    assert (t1["captured_at"], t1["captured_at_source"]) == (job["created_at"], "received")
    assert (t2["captured_at"], t2["captured_at_source"]) == ("2024-03-01T10:00:00Z", "payload")
