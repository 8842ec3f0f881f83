"""A database outage answers HTTP callers 503 with Retry-After in the shared error body, promptly
and naming no host, for reads and writes alike; once the database is back, the same requests
succeed. The service runs on the session's Kafka but on a database server of its own, which
this test stops and starts (the session's server is shared by the other tests)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from crm_contracts.events.leads import lead_captured_example
from crm_leads.bootstrap import LeadsSettings, create_app
from crm_localinfra._proc import free_port
from crm_localinfra.mongo import MongoConfig, SecantusServer
from crm_localinfra.testing import eventually, isolation_key, service_client, service_env

pytestmark = pytest.mark.integration

UNAVAILABLE = {
    "error": "unavailable",
    "message": "The database is not reachable; try again in 5 seconds.",
    "fields": [],
}


@pytest.fixture
def own_mongo(tmp_path: Path) -> Iterator[SecantusServer]:
    server = SecantusServer(MongoConfig(data_dir=tmp_path / "mongo", port=free_port()))
    server.start()
    try:
        yield server
    finally:
        server.stop()


def lead(external_id: str) -> dict[str, Any]:
    return lead_captured_example() | {"source_system": "crm-api", "external_id": external_id}


async def timed(call: Callable[[], Awaitable[httpx.Response]]) -> tuple[httpx.Response, float]:
    started = time.monotonic()
    answer = await call()
    return answer, time.monotonic() - started


async def test_reads_and_writes_answer_503_while_the_database_is_down_and_work_once_it_is_back(
    infra: Any, own_mongo: SecantusServer
) -> None:
    env = service_env(infra, "leads", isolation=isolation_key()) | {"mongo_url": own_mongo.url}
    settings = LeadsSettings(**env, mongo_server_selection_timeout_ms=1000)
    async with service_client(create_app(settings)) as http:
        created = await http.post("/leads", json=lead("outage-1"))
        assert created.status_code == 201, created.text
        lead_id = created.json()["id"]

        await asyncio.to_thread(own_mongo.stop)
        try:
            answers = [
                await timed(lambda: http.get("/leads")),
                await timed(lambda: http.get(f"/leads/{lead_id}")),
                await timed(lambda: http.post("/leads", json=lead("outage-2"))),
            ]
            ready = await http.get("/health/ready")
        finally:
            await asyncio.to_thread(own_mongo.start)

        for answer, took in answers:
            request = f"{answer.request.method} {answer.request.url.path}"
            assert answer.status_code == 503, (request, answer.text)
            assert answer.headers["retry-after"] == "5", request
            assert answer.json() == UNAVAILABLE, request
            assert "127.0.0.1" not in answer.text
            # One server selection (1 s), not PyMongo's 120 s of transaction retries.
            assert took < 30, (request, took)
        assert ready.status_code == 503
        assert ready.json()["checks"]["mongodb"] == "failing"

        async def reads_again() -> bool:
            return (await http.get("/leads")).status_code == 200

        await eventually(reads_again, timeout=60)
        again = await http.post("/leads", json=lead("outage-2"))
        assert again.status_code == 201, again.text
        listed = (await http.get("/leads")).json()["items"]
        assert sorted(item["external_id"] for item in listed) == ["outage-1", "outage-2"]
