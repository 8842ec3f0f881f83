"""Bulk actions of the opportunities service on real Kafka and the MongoDB-compatible server,
over HTTP: bulk stage moves under the single move's rules (closing as won or lost, the loss
reason a lost deal needs, a closed deal refusing to move), bulk owner assignment, one event per
applied item and none for the rest, a retried request answered ``unchanged``; and a request's
database round trips that do not grow with its items."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import httpx
import pytest
from crm_contracts.events.common import Actor
from crm_localinfra.testing import (
    CommandCounter,
    eventually,
    isolation_key,
    service_client,
    service_env,
    topic_size,
)
from crm_opportunities.bootstrap import OpportunitiesSettings, create_app
from crm_opportunities.bulk_actions import StageItem, move_opportunities
from crm_opportunities.domain import Account
from crm_opportunities.repository import Repositories
from crm_opportunities.use_cases import NewOpportunity, Policy, open_opportunity, seed_default_pipeline
from crm_runtime.bulk import MAX_BULK_ITEMS
from crm_runtime.mongo import Document, in_transaction
from crm_runtime.outbox import Outbox
from crm_runtime.unit_of_work import UnitOfWork
from pymongo import AsyncMongoClient

pytestmark = pytest.mark.integration

BULK_RECORDS = frozenset({"opportunities", "accounts", "pipelines", "sales_teams", "outbox"})

REP = {"id": "rep-1", "name": "Rita Rep"}
T0 = datetime(2026, 1, 10, 9, 0, tzinfo=UTC)


@dataclass
class Service:
    http: httpx.AsyncClient
    settings: OpportunitiesSettings
    runtime: Any

    async def ok(self, path: str, body: dict[str, Any]) -> dict[str, Any]:
        response = await self.http.post(path, json=body)
        assert response.status_code in (200, 201), response.text
        answer: dict[str, Any] = response.json()
        return answer

    async def bulk(self, action: str, items: list[dict[str, Any]]) -> dict[str, Any]:
        return await self.ok(f"/opportunities/bulk/{action}", {"by": REP, "items": items})

    async def topic_size(self, name: str) -> int:
        async def drained() -> bool:
            return bool(await self.runtime.outbox.pending() == 0)

        await eventually(drained, timeout=30)
        return await topic_size(self.settings.kafka_bootstrap_servers, self.settings.topic(name))


@pytest.fixture
async def service(infra: Any) -> AsyncIterator[Service]:
    settings = OpportunitiesSettings(**service_env(infra, "opportunities", isolation=isolation_key()))
    app = create_app(settings)
    async with service_client(app) as http:
        service = Service(http, settings, app.state.runtime)
        yield service
        await service.topic_size("opportunity.updated")  # drained before shutdown


def statuses(result: dict[str, Any]) -> list[tuple[str, str | None]]:
    return [(r["status"], r["error"]["field"] if r["error"] else None) for r in result["results"]]


async def test_bulk_stage_moves_and_owners_follow_the_single_routes_rules(service: Service) -> None:
    await service.ok("/accounts", {"id": "acc-1", "name": "Engines Ltd"})
    for n in range(6):
        await service.ok(
            "/opportunities", {"id": f"opp-{n}", "name": f"Deal {n}", "account_id": "acc-1", "by": REP}
        )
    accounts_updated = await service.topic_size("account.updated")
    moves = [
        {"id": "opp-0", "stage_id": "proposal", "expected_version": 1},
        {"id": "opp-1", "stage_id": "closed_won"},
        {"id": "opp-2", "stage_id": "closed_lost"},  # no loss reason
        {"id": "opp-3", "stage_id": "closed_lost", "loss_reason": "price"},
        {"id": "opp-4", "stage_id": "no-such-stage"},
        {"id": "opp-5", "stage_id": "proposal", "expected_version": 7},
        {"id": "no-such-opportunity", "stage_id": "proposal"},
        {"id": "opp-0", "stage_id": "negotiation"},
    ]
    moved = await service.bulk("move-stage", moves)
    assert statuses(moved) == [
        ("applied", None),
        ("applied", None),
        ("rejected", "loss_reason"),
        ("applied", None),
        ("rejected", "stage_id"),
        ("rejected", "expected_version"),
        ("rejected", "id"),
        ("rejected", "id"),
    ]
    assert (moved["applied"], moved["rejected"]) == (3, 5)
    won = (await service.http.get("/opportunities/opp-1")).json()
    assert won["status"] == "won" and moved["results"][1]["version"] == won["version"]
    assert (await service.http.get("/opportunities/opp-3")).json()["loss_reason"] == "price"
    assert (await service.http.get("/opportunities/opp-2")).json()["stage_id"] == "prospecting"
    assert (await service.http.get("/accounts/acc-1")).json()["type"] == "customer"
    assert await service.topic_size("opportunity.stage_changed") == 3
    assert await service.topic_size("opportunity.closed") == 2
    assert await service.topic_size("account.updated") == accounts_updated + 1

    retried = await service.bulk("move-stage", [*moves[:2], {"id": "opp-3", "stage_id": "proposal"}])
    assert statuses(retried) == [
        ("rejected", "expected_version"),
        ("unchanged", None),
        ("rejected", "stage_id"),
    ]
    retried_without_version = await service.bulk("move-stage", [{"id": "opp-0", "stage_id": "proposal"}])
    assert statuses(retried_without_version) == [("unchanged", None)]
    assert await service.topic_size("opportunity.stage_changed") == 3

    owners = await service.bulk(
        "assign-owner",
        [
            {"id": "opp-0", "owner_id": "rep-7"},
            {"id": "opp-4", "owner_id": "Rita Rep (EMEA)"},
            {"id": "opp-1", "owner_id": "rep-7"},  # won: closed deals do not change
            {"id": "opp-5", "owner_id": None},  # already unassigned
        ],
    )
    assert statuses(owners) == [
        ("applied", None),
        ("applied", None),
        ("rejected", "status"),
        ("unchanged", None),
    ]
    assert (await service.http.get("/opportunities/opp-4")).json()["owner_id"] == "Rita Rep (EMEA)"
    assert await service.topic_size("opportunity.updated") == 2


async def test_a_bulk_request_outside_the_limit_is_refused_naming_items(service: Service) -> None:
    items = [{"id": f"opp-{n}", "stage_id": "proposal"} for n in range(MAX_BULK_ITEMS + 1)]
    response = await service.http.post("/opportunities/bulk/move-stage", json={"by": REP, "items": items})
    assert response.status_code == 422 and [f["field"] for f in response.json()["fields"]] == ["items"]


async def test_a_bulk_close_costs_the_same_round_trips_for_4_or_40_deals(infra: Any) -> None:
    settings = OpportunitiesSettings(**service_env(infra, "opportunities", isolation=isolation_key()))
    counter = CommandCounter(BULK_RECORDS)
    client: AsyncMongoClient[Document] = AsyncMongoClient(
        settings.mongo_url.get_secret_value(), tz_aware=True, event_listeners=[counter]
    )
    db = client[f"{settings.database_name}_{uuid.uuid4().hex[:8]}"]
    repos = Repositories.of(db)
    await repos.ensure_indexes()
    outbox = Outbox(db, settings)
    policy = Policy(company_currency="EUR")
    rep = Actor(id="rep-1")

    async def seed(session: Any) -> None:
        uow = UnitOfWork(session, outbox)
        await seed_default_pipeline(repos, uow, policy)
        for size in (4, 40):  # each batch's won deals make its own prospect a customer
            await repos.accounts.add(
                Account(id=f"acc-{size}", name="Engines", created_at=T0, updated_at=T0), session
            )
            for n in range(size):
                new = NewOpportunity(f"opp-{size}-{n}", f"Deal {n}", f"acc-{size}", rep, "EUR")
                await open_opportunity(repos, uow, new)

    await in_transaction(client, seed)
    try:
        costs = []
        for size in (4, 40):
            items = [StageItem(id=f"opp-{size}-{n}", stage_id="closed_won") for n in range(size)]

            async def close(session: Any, items: list[StageItem] = items) -> Any:
                return await move_opportunities(repos, UnitOfWork(session, outbox), policy, items, rep)

            counter.commands.clear()
            result = await in_transaction(client, close)
            assert result.applied == size
            costs.append(list(counter.commands))
        assert costs[0] == costs[1], costs
        assert costs[0].count("find opportunities") == 1 and costs[0].count("update opportunities") == 1
        assert costs[0].count("update accounts") == 1 and costs[0].count("insert outbox") == 1, costs[0]
        assert (await repos.accounts.get("acc-40")) is not None
    finally:
        await client.drop_database(db.name)
        await client.close()
