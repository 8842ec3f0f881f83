"""MongoDB access through PyMongo's native async client, and transactions with retry."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

from pymongo import AsyncMongoClient
from pymongo.asynchronous.client_session import AsyncClientSession
from pymongo.asynchronous.database import AsyncDatabase
from pymongo.read_concern import ReadConcern
from pymongo.write_concern import WriteConcern

from .settings import ServiceSettings

Document = dict[str, Any]
T = TypeVar("T")


def create_client(settings: ServiceSettings) -> AsyncMongoClient[Document]:
    return AsyncMongoClient(
        settings.mongo_url.get_secret_value(),
        appname=f"crm-{settings.service_name}",
        tz_aware=True,
        serverSelectionTimeoutMS=5000,
        w="majority",
    )


async def in_transaction(
    client: AsyncMongoClient[Document],
    work: Callable[[AsyncClientSession], Awaitable[T]],
) -> T:
    """Run ``work`` in one transaction; PyMongo retries it on transient errors and unknown
    commit results, so ``work`` must only touch the database through the session."""
    async with client.start_session() as session:
        return await session.with_transaction(
            work,
            read_concern=ReadConcern("snapshot"),
            write_concern=WriteConcern("majority"),
        )


async def ping(db: AsyncDatabase[Document]) -> None:
    await db.command("ping")
