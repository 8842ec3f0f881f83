"""Bulk actions of the leads service on real Kafka and the MongoDB-compatible server, over
HTTP: per-item results (applied, unchanged, rejected naming the field), exactly one event per
applied item on its topic and none for the rest, the limit on items, and a request's database
round trips that do not grow with its items."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import httpx
import pytest
from crm_contracts.events.common import Actor
from crm_contracts.events.leads import LeadCaptured, lead_captured_example
from crm_leads.bootstrap import LeadsSettings, create_app
from crm_leads.bulk_actions import QualifyItem, qualify_leads
from crm_leads.domain import Lead
from crm_leads.repository import LeadRepository
from crm_leads.scoring import default_rules
from crm_leads.use_cases import now_ms
from crm_localinfra.testing import (
    CommandCounter,
    eventually,
    isolation_key,
    service_client,
    service_env,
    topic_size,
)
from crm_runtime.bulk import MAX_BULK_ITEMS
from crm_runtime.mongo import Document, in_transaction
from crm_runtime.outbox import Outbox
from crm_runtime.unit_of_work import UnitOfWork
from pymongo import AsyncMongoClient

pytestmark = pytest.mark.integration

REP = {"id": "rep-1", "name": "Rita Rep"}


@dataclass
class Leads:
    http: httpx.AsyncClient
    settings: LeadsSettings
    runtime: Any

    async def capture(self, n: int) -> str:
        body = lead_captured_example() | {
            "external_id": f"bulk-{n}",
            "person": {"first_name": f"P{n}", "email": f"p{n}@company{n}.example"},
            "company": {"name": f"Company {n}", "website": f"https://company{n}.example"},
        }
        response = await self.http.post("/leads/capture", json=body)
        assert response.status_code == 201, response.text
        lead_id: str = response.json()["id"]
        return lead_id

    async def bulk(self, action: str, items: list[dict[str, Any]]) -> dict[str, Any]:
        response = await self.http.post(f"/leads/bulk/{action}", json={"by": REP, "items": items})
        assert response.status_code == 200, response.text
        body: dict[str, Any] = response.json()
        return body

    async def topic_size(self, name: str) -> int:
        """Records on the topic once the outbox is drained: exactly what was emitted."""

        async def drained() -> bool:
            return bool(await self.runtime.outbox.pending() == 0)

        await eventually(drained, timeout=30)
        return await topic_size(self.settings.kafka_bootstrap_servers, self.settings.topic(name))


@pytest.fixture
async def leads(infra: Any) -> AsyncIterator[Leads]:
    settings = LeadsSettings(**service_env(infra, "leads", isolation=isolation_key()))
    app = create_app(settings)
    async with service_client(app) as http:
        yield Leads(http, settings, app.state.runtime)


def statuses(result: dict[str, Any]) -> list[tuple[str, str | None]]:
    return [(r["status"], r["error"]["field"] if r["error"] else None) for r in result["results"]]


async def test_bulk_actions_answer_per_item_and_emit_once_per_applied_item(leads: Leads) -> None:
    ids = [await leads.capture(n) for n in range(6)]
    qualified = await leads.bulk(
        "qualify",
        [
            *({"id": lead_id} for lead_id in ids[:3]),
            {"id": ids[3], "rating": "hot", "expected_version": 1},
            {"id": "no-such-lead"},
            {"id": ids[0], "rating": "warm"},
            {"id": ids[5], "expected_version": 9},
        ],
    )
    assert statuses(qualified) == [
        ("applied", None),
        ("applied", None),
        ("applied", None),
        ("applied", None),
        ("rejected", "id"),
        ("rejected", "id"),  # the same lead twice in one request
        ("rejected", "expected_version"),
    ]
    assert (qualified["applied"], qualified["unchanged"], qualified["rejected"]) == (4, 0, 3)
    assert qualified["results"][6]["version"] == 1
    assert await leads.topic_size("lead.qualified") == 4

    again = await leads.bulk("qualify", [{"id": lead_id} for lead_id in ids[:3]])
    assert statuses(again) == [("unchanged", None)] * 3
    assert await leads.topic_size("lead.qualified") == 4

    disqualified = await leads.bulk("disqualify", [{"id": ids[4], "reason": "no budget this year"}])
    assert disqualified["applied"] == 1
    assert (await leads.http.get(f"/leads/{ids[4]}")).json()[
        "disqualification_reason"
    ] == "no budget this year"

    owners = await leads.bulk(
        "assign-owner", [{"id": ids[0], "owner_id": "rep-7"}, {"id": ids[1], "owner_id": "rep 8 (Köln)"}]
    )
    assert owners["applied"] == 2
    assert (await leads.http.get(f"/leads/{ids[1]}")).json()["owner_id"] == "rep 8 (Köln)"
    assert await leads.topic_size("lead.updated") == 2

    converted = await leads.bulk(
        "convert",
        [
            {"id": ids[0], "opportunity": {"name": "Deal 0", "amount": "1000.00"}},
            {"id": ids[1]},
            {"id": ids[5]},  # never qualified
            {"id": ids[4], "allow_unqualified": True},  # disqualified is not open
        ],
    )
    assert statuses(converted) == [
        ("applied", None),
        ("applied", None),
        ("rejected", "status"),
        ("rejected", "status"),
    ]
    lead = (await leads.http.get(f"/leads/{ids[0]}")).json()
    assert lead["status"] == "converted" and lead["conversion"]["opportunity_id"] is not None
    assert (await leads.http.get(f"/leads/{ids[5]}")).json()["status"] == "new"
    assert await leads.topic_size("lead.converted") == 2

    closed = await leads.bulk("assign-owner", [{"id": ids[0], "owner_id": "rep-9"}])
    assert statuses(closed) == [("rejected", "status")]
    assert await leads.topic_size("lead.updated") == 2


async def test_a_bulk_request_outside_the_limit_is_refused_naming_items(leads: Leads) -> None:
    for size in (0, MAX_BULK_ITEMS + 1):
        items = [{"id": f"lead-{n}"} for n in range(size)]
        response = await leads.http.post("/leads/bulk/qualify", json={"by": REP, "items": items})
        assert response.status_code == 422, response.text
        assert [f["field"] for f in response.json()["fields"]] == ["items"]
    bad_item = await leads.http.post("/leads/bulk/disqualify", json={"by": REP, "items": [{"id": "x"}]})
    assert bad_item.status_code == 422 and bad_item.json()["fields"][0]["field"] == "items.0.reason"


async def test_a_bulk_request_costs_the_same_round_trips_for_4_or_40_leads(infra: Any) -> None:
    settings = LeadsSettings(**service_env(infra, "leads", isolation=isolation_key()))
    counter = CommandCounter({"leads", "outbox", "scoring_rules", "picklists"})
    client: AsyncMongoClient[Document] = AsyncMongoClient(
        settings.mongo_url.get_secret_value(), tz_aware=True, event_listeners=[counter]
    )
    db = client[f"{settings.database_name}_{uuid.uuid4().hex[:8]}"]
    repo = LeadRepository(db)
    outbox = Outbox(db, settings)
    made = [
        Lead.capture(
            LeadCaptured.model_validate(lead_captured_example() | {"external_id": f"rt-{n}"}),
            default_rules(),
            now=now_ms(),
            by="t",
        )
        for n in range(44)
    ]
    await in_transaction(client, lambda session: repo.save_captured(made, [], session))
    try:
        costs = []
        for batch in (made[:4], made[4:]):
            items = [QualifyItem(id=lead.id) for lead in batch]

            async def qualify(session: Any, items: list[QualifyItem] = items) -> Any:
                return await qualify_leads(repo, UnitOfWork(session, outbox), items, Actor(id="rep-1"))

            counter.commands.clear()
            result = await in_transaction(client, qualify)
            assert result.applied == len(batch)
            costs.append(list(counter.commands))
        assert costs[0] == costs[1], costs
        # The leads read with one $in, written with one guarded bulk write, the events with one insert.
        assert costs[0].count("find leads") == 1 and costs[0].count("update leads") == 1, costs[0]
        assert costs[0].count("insert outbox") == 1 and len(costs[0]) == 5, costs[0]
        assert await outbox.pending() == 44
    finally:
        await client.drop_database(db.name)
        await client.close()
