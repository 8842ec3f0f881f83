"""A chunk of an account or contact import reads and writes set-based: the database commands
it sends do not grow with its rows (creating accounts with domains and parents, updating them
with new domains, matching accounts by domain, creating contacts and matching them by email),
and what it stores is what the per-row rules give."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import pytest
from crm_contracts.envelope import utcnow
from crm_localinfra.testing import TRANSACTION_ENDS, CommandCounter, isolation_key, service_env
from crm_opportunities.bootstrap import OpportunitiesSettings
from crm_opportunities.import_targets import account_import, contact_import
from crm_opportunities.imports import imported_id
from crm_opportunities.repository import Repositories
from crm_runtime.imports import ImportContext, ImportRow, ImportTarget, Rejection, RowDeferred
from crm_runtime.mongo import Document, in_transaction
from crm_runtime.outbox import Outbox
from crm_runtime.unit_of_work import UnitOfWork
from pymongo import AsyncMongoClient

pytestmark = pytest.mark.integration

SYSTEM = "legacy"


@dataclass
class Store:
    client: AsyncMongoClient[Document]
    db: Any
    repos: Repositories
    outbox: Outbox
    counter: CommandCounter

    async def apply(self, target: ImportTarget, rows: list[dict[str, Any]]) -> tuple[int, list[Any]]:
        """The chunk applied in one transaction: the commands it sent, and its outcomes."""
        chunk = [ImportRow(n, fields) for n, fields in enumerate(rows, start=1)]

        async def work(session: Any) -> list[Rejection | RowDeferred]:
            self.counter.commands.clear()
            return list(
                await target.apply(
                    chunk, ImportContext("job", SYSTEM, utcnow()), UnitOfWork(session, self.outbox)
                )
            )

        outcomes = await in_transaction(self.client, work)
        return len(self.counter.commands), outcomes


@pytest.fixture
async def store(infra: Any) -> AsyncIterator[Callable[[], Awaitable[Store]]]:
    settings = OpportunitiesSettings(**service_env(infra, "opportunities", isolation=isolation_key()))
    counter = CommandCounter(ignore=TRANSACTION_ENDS)
    client: AsyncMongoClient[Document] = AsyncMongoClient(
        settings.mongo_url.get_secret_value(), tz_aware=True, w="majority", event_listeners=[counter]
    )

    async def new_store() -> Store:
        db = client[f"{settings.database_name}_{uuid.uuid4().hex[:8]}"]
        repos = Repositories.of(db)
        await repos.ensure_indexes()
        await db.outbox.insert_one({"_id": "created"})  # the collection exists before a transaction
        return Store(client, db, repos, Outbox(db, settings), counter)

    yield new_store
    await client.close()


def accounts(n: int, *, industry: str = "Computing", domain: str = "old") -> list[dict[str, Any]]:
    """``n`` families of a subsidiary listed before its parent, each with its own domain."""
    rows = []
    for i in range(n):
        rows.append(
            {"external_id": f"S-{i}", "name": f"Subsidiary {i}", "parent_external_id": f"P-{i}"}
            | {"industry": industry, "domain": f"s{i}.{domain}.example"}
        )
        rows.append({"external_id": f"P-{i}", "name": f"Parent {i}", "domain": f"p{i}.{domain}.example"})
    return rows


def contacts(n: int) -> list[dict[str, Any]]:
    rows = []
    for i in range(n):
        person = {"first_name": "Ada", "account_external_id": f"P-{i}", "role": "economic buyer"}
        rows.append({"external_id": f"C-{i}", "email": f"ada{i}@p{i}.example", **person})
        rows.append({"external_id": f"T-{i}", "email": f"ADA{i}@p{i}.example", "first_name": "Twin"})
    return rows


async def test_a_chunk_sends_as_many_commands_for_many_rows_as_for_few(
    store: Callable[[], Awaitable[Store]],
) -> None:
    counts: dict[str, list[int]] = {"create": [], "update": [], "match": [], "contacts": []}
    for families in (2, 20):
        s = await store()
        created, outcomes = await s.apply(account_import(s.repos), accounts(families))
        assert outcomes == []
        counts["create"].append(created)
        updated, outcomes = await s.apply(
            account_import(s.repos), accounts(families, industry="Machinery", domain="new")
        )
        assert outcomes == []
        counts["update"].append(updated)
        twins = [
            {"external_id": f"M-{i}", "name": f"Twin {i}", "domain": f"p{i}.new.example"}
            for i in range(families)
        ]
        matched, outcomes = await s.apply(account_import(s.repos), twins)
        assert outcomes == []
        counts["match"].append(matched)
        people, outcomes = await s.apply(contact_import(s.repos), contacts(families))
        assert outcomes == []
        counts["contacts"].append(people)

        subsidiary = await s.repos.accounts.get(imported_id("account", SYSTEM, "S-1"))
        assert subsidiary is not None
        assert (subsidiary.parent_account_id, subsidiary.industry, subsidiary.domain, subsidiary.version) == (
            imported_id("account", SYSTEM, "P-1"),
            "Machinery",
            "s1.new.example",
            2,
        )
        claims = {doc["_id"] for doc in await s.db.account_domains.find().to_list()}
        assert claims == {f"{kind}{i}.new.example" for kind in "sp" for i in range(families)}
        assert await s.db.accounts.count_documents({}) == 2 * families  # twins matched by domain
        twin = await s.repos.accounts.find(imported_id("account", SYSTEM, "M-1"))
        assert twin is not None and twin.id == imported_id("account", SYSTEM, "P-1")
        assert await s.db.contacts.count_documents({}) == families  # each twin matched by email
        entries = await s.db.outbox.find({"topic": {"$exists": True}}).to_list()
        topics = [".".join(str(doc["topic"]).split(".")[-2:]) for doc in entries]  # without the prefix
        assert sorted(set(topics)) == ["account.created", "account.updated", "contact.created"]
        assert len(topics) == 2 * families + 2 * families + families
    assert all(few == many for few, many in counts.values()), counts
