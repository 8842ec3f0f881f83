"""Rescoring every open lead is a background job over HTTP: POST answers 202 with the job and
where to follow it, asking again while it is under way answers the same job, the job's
progress shows counts, rate and time left, and at the end the leads carry their new scores
and each changed lead was announced with one ``lead.updated``; a queued job can be cancelled."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
from crm_contracts.events.leads import lead_captured_example
from crm_leads.bootstrap import LeadsSettings, create_app
from crm_localinfra.testing import (
    eventually,
    isolation_key,
    read_topic,
    service_client,
    service_env,
    topic_size,
)

pytestmark = pytest.mark.integration

ADMIN, WRITER, READER = "rescore-admin", "rescore-writer", "rescore-reader"
REP = {"id": "rep-1"}
ENTERPRISE_RULES = {
    "rules": [
        # The same contribution as the default rule of that id: small leads do not change.
        {
            "id": "business_email",
            "description": "Business email address",
            "category": "fit",
            "field": "person.free_mail",
            "operator": "eq",
            "value": False,
            "points": 10,
        },
        {
            "id": "enterprise",
            "description": "1000+ employees",
            "category": "fit",
            "field": "company.size",
            "operator": "gte",
            "value": 1000,
            "points": 60,
        },
    ],
    "thresholds": {"hot": 60, "warm": 30},
    "by": {"id": "admin-1"},
}


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


@pytest.fixture
async def service(infra: Any) -> AsyncIterator[tuple[httpx.AsyncClient, LeadsSettings, Any]]:
    settings = LeadsSettings(
        **service_env(infra, "leads", isolation=isolation_key()),
        api_tokens=f"{ADMIN}:admin,{WRITER}:write,{READER}:read",
        rescore_batch_size=5,  # 12 open leads: three batches
    )
    app = create_app(settings)
    async with service_client(app) as http:
        http.headers.update(bearer(ADMIN))
        yield http, settings, app.state.runtime


async def capture(http: httpx.AsyncClient, name: str, size: int) -> dict[str, Any]:
    body = lead_captured_example() | {
        "external_id": name,
        "person": {"first_name": "Ada", "email": f"ada@{name}.example"},
        "company": {"name": name, "website": f"https://{name}.example", "size": size},
    }
    response = await http.post("/leads/capture", json=body)
    assert response.status_code == 201, response.text
    lead: dict[str, Any] = response.json()
    return lead


async def finished_job(http: httpx.AsyncClient, location: str) -> dict[str, Any] | None:
    job: dict[str, Any] = (await http.get(location)).json()
    assert job["state"] in ("queued", "running", "done"), job
    return job if job["state"] == "done" else None


async def test_rescoring_runs_as_a_job_with_progress_and_announces_each_changed_lead(
    service: tuple[httpx.AsyncClient, LeadsSettings, Any], infra: Any
) -> None:
    http, settings, runtime = service
    big = [await capture(http, f"big{n}", 5000) for n in range(8)]  # 20 + 10 points: warm
    small = [await capture(http, f"small{n}", 5) for n in range(4)]  # 10 points: cold
    closed = await capture(http, "closed", 5000)
    assert (await http.post(f"/leads/{closed['id']}/disqualify", json={"reason": "no", "by": REP})).is_success
    assert {lead["rating"] for lead in big} == {"warm"}

    await runtime.jobs.stop()  # hold the job queued, to see asking twice answer the same one
    assert (await http.put("/scoring-rules", json=ENTERPRISE_RULES)).status_code == 200
    [queued] = (await http.get("/scoring-rules/rescore-jobs", headers=bearer(READER))).json()
    assert queued["state"] == "queued" and queued["kind"] == "lead-rescoring"

    first = await http.post("/scoring-rules/rescore")
    again = await http.post("/scoring-rules/rescore")
    assert first.status_code == again.status_code == 202
    assert first.json()["id"] == again.json()["id"] == queued["id"]
    location = first.headers["location"]
    assert location == f"/scoring-rules/rescore-jobs/{queued['id']}"
    assert (await http.post("/scoring-rules/rescore", headers=bearer(WRITER))).status_code == 403

    runtime.jobs.start()
    done = await eventually(lambda: finished_job(http, location), timeout=60)
    assert (done["total"], done["processed"], done["applied"], done["rejected"]) == (12, 12, 8, 0)
    assert done["eta_seconds"] == 0 and done["rate_per_second"] is not None and done["error"] is None
    assert done["started_at"] <= done["updated_at"] == done["finished_at"]

    leads = {lead["id"]: lead for lead in (await http.get("/leads", params={"limit": 50})).json()["items"]}
    for lead in big:
        now = leads[lead["id"]]
        assert (now["score"], now["rating"], now["scoring_rules_version"]) == (70, "hot", 1)
        assert now["version"] == lead["version"] + 1 and now["history"][-1]["action"] == "rescored"
    for lead in small:  # same score and explanation: only marked as scored under version 1
        now = leads[lead["id"]]
        assert (now["score"], now["version"], now["scoring_rules_version"]) == (10, lead["version"], 1)
    assert leads[closed["id"]]["scoring_rules_version"] == 0  # disqualified: not rescored

    topic = settings.topic("lead.updated")
    updates = await read_topic(infra.kafka_bootstrap, topic, until=lambda r: len(r) >= 8)
    assert {r.json()["subject"] for r in updates} == {lead["id"] for lead in big}
    for record in updates:
        event = record.json()
        assert set(event["data"]["changed_fields"]) == {"rating", "score", "score_explanation"}
        assert (event["data"]["lead"]["rating"], event["data"]["lead"]["score"]) == ("hot", 70)

    async def drained() -> bool:
        return bool(await runtime.outbox.pending() == 0)

    await eventually(drained)
    assert await topic_size(infra.kafka_bootstrap, topic) == 8  # exactly one per changed lead

    # A finished job cannot be cancelled; asking again starts a new, empty pass.
    refused = await http.delete(location)
    assert refused.status_code == 409 and refused.json()["fields"][0]["field"] == "job_id"
    later = await http.post("/scoring-rules/rescore")
    assert later.status_code == 202 and later.json()["id"] != queued["id"]
    empty = await eventually(lambda: finished_job(http, later.headers["location"]), timeout=60)
    assert (empty["total"], empty["processed"]) == (0, 0)


async def test_a_queued_rescoring_job_is_cancelled_and_unknown_jobs_are_refused(
    service: tuple[httpx.AsyncClient, LeadsSettings, Any],
) -> None:
    http, _, runtime = service
    lead = await capture(http, "big", 5000)
    await runtime.jobs.stop()
    assert (await http.put("/scoring-rules", json=ENTERPRISE_RULES)).status_code == 200
    job = (await http.post("/scoring-rules/rescore")).json()
    location = f"/scoring-rules/rescore-jobs/{job['id']}"
    assert (await http.delete(location, headers=bearer(WRITER))).status_code == 403
    cancelled = await http.delete(location)
    assert cancelled.status_code == 202 and cancelled.json()["state"] == "cancelled"
    assert cancelled.json()["finished_at"] is not None

    runtime.jobs.start()
    restarted = (await http.post("/scoring-rules/rescore")).json()  # a new pass does the work
    assert restarted["id"] != job["id"]
    done = await eventually(lambda: finished_job(http, f"/scoring-rules/rescore-jobs/{restarted['id']}"))
    assert done["applied"] == 1
    assert (await http.get(f"/leads/{lead['id']}")).json()["rating"] == "hot"
    assert (await http.get(location)).json()["state"] == "cancelled"  # and it stays so

    missing = await http.get("/scoring-rules/rescore-jobs/7c9e6679-7425-40de-944b-e07fc1f90ae7")
    assert missing.status_code == 404 and missing.json()["fields"][0]["field"] == "job_id"
    malformed = await http.get("/scoring-rules/rescore-jobs/not-a-job")
    assert malformed.status_code == 422 and malformed.json()["fields"][0]["field"].endswith("job_id")
