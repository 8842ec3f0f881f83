"""An opportunity import chunk is set-based: its database round trips do not grow with its
rows, for new deals (closed-won with history, line items named by catalogue name, a team by
name, an account by external id) as for the same deals imported again (open ones updated,
closed ones left alone)."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

import pytest
from crm_contracts.envelope import utcnow
from crm_localinfra.testing import CommandCounter, isolation_key, service_env
from crm_opportunities.bootstrap import OpportunitiesSettings
from crm_opportunities.domain import Account, Product, SalesTeam
from crm_opportunities.imports import imported_id
from crm_opportunities.opportunity_import import apply_opportunity_rows
from crm_opportunities.repository import Repositories
from crm_opportunities.use_cases import Policy, seed_default_pipeline
from crm_runtime import UnitOfWork
from crm_runtime.imports import ImportContext, ImportRow
from crm_runtime.mongo import Document, in_transaction
from crm_runtime.outbox import Outbox
from pymongo import AsyncMongoClient

pytestmark = pytest.mark.integration

T0 = datetime(2025, 1, 10, 9, 0, tzinfo=UTC)
SIZES = (4, 40)
RECORDS = {"opportunities", "accounts", "products", "sales_teams", "pipelines", "outbox"}


@pytest.fixture
async def store(
    infra: Any,
) -> AsyncIterator[tuple[AsyncMongoClient[Document], Repositories, Outbox, CommandCounter]]:
    settings = OpportunitiesSettings(**service_env(infra, "opportunities", isolation=isolation_key()))
    counter = CommandCounter(RECORDS)
    client: AsyncMongoClient[Document] = AsyncMongoClient(
        settings.mongo_url.get_secret_value(), tz_aware=True, w="majority", event_listeners=[counter]
    )
    db = client[f"{settings.database_name}_{uuid.uuid4().hex[:8]}"]
    repos = Repositories.of(db)
    await repos.ensure_indexes()
    outbox = Outbox(db, settings)

    async def seed(session: Any) -> None:
        uow = UnitOfWork(session, outbox)
        await seed_default_pipeline(repos, uow, Policy(company_currency="EUR"))
        for product_id, name in (("widget", "Wïdget Pro"), ("setup", "Setup fee")):
            product = Product(
                id=product_id,
                name=name,
                list_price=Decimal("10"),
                currency="EUR",
                created_at=T0,
                updated_at=T0,
            )
            await repos.products.add(product, session)
        await repos.sales_teams.add(
            SalesTeam(id="team-n", name="Équipe Nord", created_at=T0, updated_at=T0), session
        )
        for size in SIZES:  # each chunk's won deals make its own prospect a customer
            account_id = imported_id("account", "old", f"A-{size}")
            await repos.accounts.add(
                Account(id=account_id, name="Engines", created_at=T0, updated_at=T0), session
            )

    await in_transaction(client, seed)
    try:
        yield client, repos, outbox, counter
    finally:
        await client.drop_database(db.name)
        await client.close()


def rows(size: int, amount: int) -> list[ImportRow]:
    history = [
        {"stage_id": "prospecting", "entered_at": "2025-01-10T09:00:00Z"},
        {"stage_id": "Proposal", "entered_at": "2025-02-01T09:00:00Z"},
    ]
    made = []
    for n in range(size):
        won = n % 2 == 0
        fields: dict[str, Any] = {
            "external_id": f"S{size}-{n}",
            "name": f"Deal {n}",
            "account_external_id": f"A-{size}",
            "sales_team_id": "equipe nord",
            "line_items": [{"product": "widget pro", "quantity": n + 1}, {"product": "SETUP FEE"}],
            "stage_history": history
            + ([{"stage_id": "closed_won", "entered_at": "2025-03-01T17:00:00Z"}] if won else []),
        }
        if not won:
            fields["amount"] = str(amount)
        made.append(ImportRow(n + 1, fields))
    return made


async def test_a_chunk_costs_the_same_round_trips_whatever_its_size(
    store: tuple[AsyncMongoClient[Document], Repositories, Outbox, CommandCounter],
) -> None:
    client, repos, outbox, counter = store
    context = ImportContext(job_id="job", source_system="old", received_at=utcnow())
    costs: dict[str, list[int]] = {"new": [], "again": []}
    for size in SIZES:
        for kind, amount in (("new", 100), ("again", 200)):
            chunk = rows(size, amount)

            async def apply(session: Any, chunk: list[ImportRow] = chunk) -> list[Any]:
                uow = UnitOfWork(session, outbox)
                async with uow.one_outbox_write():
                    return await apply_opportunity_rows(
                        repos, Policy(company_currency="EUR"), chunk, context, uow
                    )

            counter.commands.clear()
            assert await in_transaction(client, apply) == []
            costs[kind].append(len(counter.commands))
            if kind == "new":
                assert counter.commands.count("insert opportunities") == 1, counter.commands
    assert costs["new"][0] == costs["new"][1] and costs["again"][0] == costs["again"][1], costs
    # Each new deal opens, gets its line items and moves (and the won ones close), all emitted:
    # 4 + 40 deals, half won; the open ones imported again change their amount only; each
    # account becomes a customer once; and the seeded pipeline's pipeline.created.
    assert await repos.opportunities.count({}) == 44
    outbox_size = await outbox.pending()
    assert outbox_size == 22 * (1 + 1 + 2 + 1) + 22 * (1 + 1 + 1) + 22 + 2 + 1
