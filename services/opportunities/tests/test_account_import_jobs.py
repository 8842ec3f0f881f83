"""Account and contact import jobs over HTTP (202, then ``GET /imports/{id}`` to its end, then
the rejections as CSV), with chunks of three rows so that rows wait across chunks: subsidiaries
listed before their parents (a grandchild, its parent and theirs in reverse order) are linked
within the same job; a parent missing from the file, a loop of parents and bad rows of every
kind are rejected naming the column, the value and what would be valid; importing the same file
again changes nothing and emits nothing; contacts link to accounts an earlier job imported; a
service killed with SIGKILL while deferred rows are applied resumes and applies each row once."""

from __future__ import annotations

import os
import signal
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from crm_localinfra._proc import pid_alive
from crm_localinfra.testing import (
    eventually,
    import_ended,
    import_rejections,
    isolation_key,
    read_topic,
    running_services,
    service_client,
    service_env,
    started_import,
    topic_size,
)
from crm_opportunities.bootstrap import OpportunitiesSettings, create_app
from crm_opportunities.imports import imported_id
from pymongo import AsyncMongoClient

pytestmark = pytest.mark.integration

SYSTEM = "old-crm"


@dataclass
class Service:
    http: httpx.AsyncClient
    settings: OpportunitiesSettings
    runtime: Any

    async def import_file(self, kind: str, body: bytes) -> tuple[dict[str, Any], dict[int, dict[str, str]]]:
        """The job to its end, and its rejections by row, as a client sees them."""
        location = await started_import(self.http, f"/imports/{kind}", body, "text/csv", source_system=SYSTEM)
        job = await import_ended(self.http, location)
        return job, {int(r["row"]): r for r in await import_rejections(self.http, job)}

    async def account(self, external_id: str) -> dict[str, Any]:
        response = await self.http.get(f"/accounts/{imported_id('account', SYSTEM, external_id)}")
        assert response.status_code == 200, response.text
        body: dict[str, Any] = response.json()
        return body

    async def published(self, topic: str) -> int:
        """Records on ``topic`` once everything committed is published."""

        async def drained() -> bool:
            return bool(await self.runtime.outbox.pending() == 0)

        await eventually(drained)
        return await topic_size(self.settings.kafka_bootstrap_servers, self.settings.topic(topic))


@pytest.fixture
async def service(infra: Any) -> AsyncIterator[Service]:
    settings = OpportunitiesSettings(
        **service_env(infra, "opportunities", isolation=isolation_key()), import_chunk_rows=3
    )
    app = create_app(settings)
    async with service_client(app) as http:
        yield Service(http, settings, app.state.runtime)
        await eventually(lambda: _drained(app.state.runtime))


async def _drained(runtime: Any) -> bool:
    return bool(await runtime.outbox.pending() == 0)


HEADER = (
    b"external_id,name,domain,country,year_established,annual_revenue,annual_revenue_currency,"
    b"parent_external_id,created_at\n"
)
ACCOUNTS = HEADER + (
    # chunk 1: a grandchild and its parent before theirs, and an orphan
    b"G-1,Engines Leeds,leeds.engines-tree.example,England,2011,,,C-1,2020-05-01T09:00:00Z\n"
    b"C-1,Engines Retail,retail.engines-tree.example,United Kingdom,2001,1200000.50,GBP,P-1,"
    b"2019-01-01T09:00:00Z\n"
    b"O-1,Orphan Works,,DE,,,,P-9,\n"  # P-9 is nowhere: did you mean P-1?
    # chunk 2
    b"B-1,Bad Country,,Germny,,,,,\n"
    b"P-1,Analytical Engines,engines-tree.example,gb,1843,,,,2018-01-01T09:00:00Z\n"
    b"B-2,Too Young,,,3000,,,,\n"
    # chunk 3
    b"B-3,Currency Alone,,,,,USD,,\n"
    b"P-1,Analytical Engines again,,,,,,,\n"  # the file has P-1 already
    b"S-1,Engines Paris,,France,,,,C-1,\n"  # its parent waits too: it waits behind it
    # chunk 4
    b"L-1,Loop One,,,,,,L-2,\n"
    b"L-2,Loop Two,,,,,,L-1,\n"
    b"D-1,Engines by domain,engines-tree.example,,,,,,\n"  # P-1's domain: matched to it
    # chunk 5
    b"U-1,Unreadable,,,,,,,,surplus\n"
)


async def test_subsidiaries_before_parents_resolve_in_the_job_and_bad_rows_are_rejected_by_column(
    service: Service,
) -> None:
    job, rejected = await service.import_file("accounts", ACCOUNTS)
    assert (job["state"], job["file_rows"], job["processed"]) == ("done", 13, 13)
    assert (job["applied"], job["rejected"]) == (5, 8)
    assert sorted(rejected) == [3, 4, 6, 7, 8, 10, 11, 13]
    orphan = rejected[3]
    assert (orphan["external_id"], orphan["column"], orphan["value"]) == ("O-1", "parent_external_id", "P-9")
    assert (
        orphan["reason"]
        == "no account with external id 'P-9' exists or comes in this file; did you mean 'P-1'?"
    )
    assert (rejected[4]["column"], rejected[4]["value"]) == ("country", "Germny")
    assert "did you mean 'Germany'" in rejected[4]["reason"]
    assert (rejected[6]["column"], rejected[6]["value"]) == ("year_established", "3000")
    assert (rejected[7]["column"], rejected[7]["value"]) == ("annual_revenue_currency", "USD")
    assert "needs an annual_revenue" in rejected[7]["reason"]
    assert rejected[8]["column"] == "external_id" and "at row 5" in rejected[8]["reason"]
    for loop in (10, 11):
        assert rejected[loop]["column"] == "parent_external_id" and "loop" in rejected[loop]["reason"]
    assert rejected[13]["reason"] == "10 values for 9 columns"

    parent, child, grandchild, sibling = [await service.account(e) for e in ("P-1", "C-1", "G-1", "S-1")]
    assert parent["parent_account_id"] is None and parent["name"] == "Analytical Engines"
    assert child["parent_account_id"] == parent["id"]
    assert grandchild["parent_account_id"] == child["id"] and sibling["parent_account_id"] == child["id"]
    assert (child["address"]["country"], child["year_established"]) == ("GB", 2001)
    assert (child["annual_revenue"], child["annual_revenue_currency"]) == ("1200000.50", "GBP")
    assert (grandchild["address"]["country"], sibling["address"]["country"]) == ("GB", "FR")
    assert (await service.account("D-1"))["id"] == parent["id"]  # the same company, by domain

    created = await read_topic(
        service.settings.kafka_bootstrap_servers,
        service.settings.topic("account.created"),
        until=lambda records: len(records) >= 4,
    )
    times = {r.json()["subject"]: r.json()["time"] for r in created}
    assert times == {
        parent["id"]: "2018-01-01T09:00:00Z",
        child["id"]: "2019-01-01T09:00:00Z",
        grandchild["id"]: "2020-05-01T09:00:00Z",
        sibling["id"]: times[sibling["id"]],
    }
    parents = {r.json()["subject"]: r.json()["data"].get("parent_account_id") for r in created}
    assert parents[grandchild["id"]] == child["id"] and parents[child["id"]] == parent["id"]

    again, rejected_again = await service.import_file("accounts", ACCOUNTS)
    assert (again["state"], again["applied"], again["rejected"]) == ("done", 5, 8)
    assert sorted(rejected_again) == sorted(rejected)
    assert [(await service.account(e))["version"] for e in ("P-1", "C-1", "G-1", "S-1")] == [1, 1, 1, 1]
    assert await service.published("account.created") == 4
    assert await service.published("account.updated") == 0


async def test_contacts_link_to_accounts_of_an_earlier_job_and_unknown_ones_are_rejected(
    service: Service,
) -> None:
    accounts = (
        HEADER + b"P-1,Analytical Engines,engines-people.example,GB,,,,,\nC-1,Engines Retail,,,,,,P-1,\n"
    )
    first, _ = await service.import_file("accounts", accounts)
    assert (first["applied"], first["rejected"]) == (2, 0)

    contacts = (
        b"external_id,first_name,last_name,email,account_external_id,role,decision_maker,influencer,created_at\n"
        b"K-1,Ada,Lovelace,ada@engines-people.example,P-1,economic buyer,true,,2021-03-04T10:00:00Z\n"
        b"K-2,Ada,L.,ADA@engines-people.example,,,,,\n"  # K-1's email: the same person
        b"K-3,Charles,Babbage,charles@engines-people.example,P-l,,,,\n"  # no such account
        b"K-4,,,,,,,,\n"  # no name, no email
        b"K-5,Grace,Hopper,grace@engines-people.example,C-1,champion,,true,\n"
        b"K-6,Alan,Turing,alan@engines-people.example,,,maybe,,\n"
    )
    job, rejected = await service.import_file("contacts", contacts)
    assert (job["state"], job["applied"], job["rejected"]) == ("done", 3, 3)
    assert sorted(rejected) == [3, 4, 6]
    assert (rejected[3]["column"], rejected[3]["value"]) == ("account_external_id", "P-l")
    assert rejected[3]["reason"] == (
        f"no account with external id 'P-l' was imported from '{SYSTEM}'; did you mean 'P-1'?"
    )
    assert rejected[4]["column"] == "(row)" and "first name, a last name or an email" in rejected[4]["reason"]
    assert (rejected[6]["column"], rejected[6]["value"]) == ("decision_maker", "maybe")

    ada_id, grace_id = imported_id("contact", SYSTEM, "K-1"), imported_id("contact", SYSTEM, "K-5")
    ada = (await service.http.get(f"/contacts/{ada_id}")).json()
    assert (ada["account_id"], ada["role"], ada["decision_maker"]) == (
        imported_id("account", SYSTEM, "P-1"),
        "economic buyer",
        True,
    )
    grace = (await service.http.get(f"/contacts/{grace_id}")).json()
    assert (grace["account_id"], grace["role"], grace["influencer"]) == (
        imported_id("account", SYSTEM, "C-1"),
        "champion",
        True,
    )
    assert (await service.http.get(f"/contacts/{imported_id('contact', SYSTEM, 'K-2')}")).status_code == 404
    same_email = await service.http.get("/contacts", params={"email": "ada@engines-people.example"})
    assert [c["id"] for c in same_email.json()["items"]] == [ada_id]
    created = await read_topic(
        service.settings.kafka_bootstrap_servers,
        service.settings.topic("contact.created"),
        until=lambda records: len(records) >= 2,
    )
    assert {r.json()["subject"] for r in created} == {ada_id, grace_id}
    assert next(r.json()["time"] for r in created if r.json()["subject"] == ada_id) == "2021-03-04T10:00:00Z"

    again, _ = await service.import_file("contacts", contacts)
    assert (again["applied"], again["rejected"]) == (3, 3)
    assert await service.published("contact.created") == 2
    assert await service.published("contact.updated") == 0


async def test_an_unknown_column_refuses_the_file_naming_it(service: Service) -> None:
    response = await service.http.post(
        "/imports/accounts",
        content=b"external_id,name,contry\nA-1,Engines,DE\n",
        headers={"content-type": "text/csv"},
    )
    assert response.status_code == 422, response.text
    body = response.json()
    assert body["fields"][0]["field"] == "contry" and "did you mean 'country'" in body["message"]


def subsidiaries_first(pairs: int) -> bytes:
    """``pairs`` subsidiaries, then their parents: every subsidiary waits for the end of the file."""
    lines = [b"external_id,name,parent_external_id"]
    lines += [f"S-{n},Subsidiary {n},P-{n}".encode() for n in range(1, pairs + 1)]
    lines += [f"P-{n},Parent {n},".encode() for n in range(1, pairs + 1)]
    return b"\n".join(lines) + b"\n"


@pytest.mark.e2e
async def test_a_service_killed_while_deferred_rows_are_applied_resumes_and_applies_each_row_once(
    infra: Any, tmp_path: Path
) -> None:
    isolation = isolation_key()
    pairs = 600
    env = {"CRM_IMPORT_CHUNK_ROWS": "50", "CRM_JOBS_LEASE_SECONDS": "2", "CRM_LOG_LEVEL": "INFO"}
    settings = OpportunitiesSettings(**service_env(infra, "opportunities", isolation=isolation))
    mongo: AsyncMongoClient[dict[str, Any]] = AsyncMongoClient(infra.mongo_url, tz_aware=True)
    db = mongo[settings.database_name]
    try:
        async with running_services(
            infra, ["opportunities"], log_dir=tmp_path / "first", isolation=isolation, extra_env=env
        ) as first:
            service = first["opportunities"]
            async with httpx.AsyncClient(base_url=service.base_url, timeout=60) as http:
                response = await http.post(
                    "/imports/accounts?source_system=crash",
                    content=subsidiaries_first(pairs),
                    headers={"content-type": "text/csv"},
                )
                assert response.status_code == 202, response.text
                job_id = response.json()["id"]

                async def applying_deferred_rows() -> bool:
                    # Past the parents: the subsidiaries' trailing chunks are being applied.
                    return bool((await http.get(f"/imports/{job_id}")).json()["processed"] > pairs + 50)

                await eventually(applying_deferred_rows, timeout=180)
            os.killpg(service.pid, signal.SIGKILL)
            await eventually(lambda: not pid_alive(service.pid), timeout=30)
        killed = await db.jobs.find_one({"_id": job_id})
        assert killed is not None and killed["state"] == "running" and killed["processed"] < 2 * pairs, killed
        async with running_services(
            infra, ["opportunities"], log_dir=tmp_path / "second", isolation=isolation, extra_env=env
        ) as second:
            async with httpx.AsyncClient(base_url=second["opportunities"].base_url, timeout=60) as http:

                async def ended() -> dict[str, Any] | None:
                    job: dict[str, Any] = (await http.get(f"/imports/{job_id}")).json()
                    return job if job["state"] not in ("queued", "running") else None

                job = await eventually(ended, timeout=300)
            assert (job["state"], job["processed"], job["applied"], job["rejected"]) == (
                "done",
                2 * pairs,
                2 * pairs,
                0,
            )
            assert await db.accounts.count_documents({}) == 2 * pairs
            linked = await db.accounts.count_documents({"parent_account_id": {"$ne": None}})
            assert linked == pairs
            created = await read_topic(
                settings.kafka_bootstrap_servers,
                settings.topic("account.created"),
                until=lambda records: len({r.json()["subject"] for r in records}) >= 2 * pairs,
                timeout=120,
            )
        events_by_account: dict[str, set[str]] = {}
        for record in created:
            events_by_account.setdefault(record.json()["subject"], set()).add(record.json()["id"])
        assert all(len(ids) == 1 for ids in events_by_account.values())  # one account.created each
        subsidiary = await db.accounts.find_one({"_id": imported_id("account", "crash", "S-7")})
        assert subsidiary is not None and subsidiary["parent_account_id"] == imported_id(
            "account", "crash", "P-7"
        )
    finally:
        await mongo.close()
