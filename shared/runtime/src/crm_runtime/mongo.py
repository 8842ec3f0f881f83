"""MongoDB access through PyMongo's native async client, and transactions with retry."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from datetime import UTC, date, datetime
from decimal import Decimal
from enum import Enum
from typing import Any, TypeVar

from bson import Decimal128
from pymongo import AsyncMongoClient
from pymongo.asynchronous.client_session import AsyncClientSession
from pymongo.asynchronous.database import AsyncDatabase
from pymongo.errors import ServerSelectionTimeoutError
from pymongo.read_concern import ReadConcern
from pymongo.write_concern import WriteConcern

from .settings import ServiceSettings

Document = dict[str, Any]
T = TypeVar("T")


class DatabaseUnreachable(ServerSelectionTimeoutError):
    """No MongoDB server answered for the whole server-selection timeout. Unlike the error it
    replaces it carries no TransientTransactionError label, so a transaction gives up at once
    instead of retrying for PyMongo's 120 s while an HTTP caller waits."""


def compound_key(*parts: str) -> str:
    """One ``_id`` from several ids, unambiguous whatever the ids hold: ``|`` separates the
    parts, and a ``|`` or ``\\`` inside a part is escaped with ``\\``. Ids without either (no id
    could hold them before issue 18) join as plain ``a|b``, so keys stored before stay valid."""
    return "|".join(part.replace("\\", "\\\\").replace("|", "\\|") for part in parts)


def create_client(settings: ServiceSettings) -> AsyncMongoClient[Document]:
    return AsyncMongoClient(
        settings.mongo_url.get_secret_value(),
        appname=f"crm-{settings.service_name}",
        tz_aware=True,
        serverSelectionTimeoutMS=settings.mongo_server_selection_timeout_ms,
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


def to_bson(value: Any) -> Any:
    """Plain Python (e.g. a pydantic ``model_dump()``) to BSON-storable values: Decimal as
    Decimal128 (exact money), date as midnight UTC datetime, enums as their value."""
    if isinstance(value, dict):
        return {key: to_bson(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [to_bson(item) for item in value]
    if isinstance(value, Decimal):
        return Decimal128(value)
    if isinstance(value, Enum):
        return value.value
    if isinstance(value, date) and not isinstance(value, datetime):
        return datetime(value.year, value.month, value.day, tzinfo=UTC)
    return value


def from_bson(value: Any) -> Any:
    """The inverse of ``to_bson`` for what pydantic cannot read directly (Decimal128)."""
    if isinstance(value, dict):
        return {key: from_bson(item) for key, item in value.items()}
    if isinstance(value, list):
        return [from_bson(item) for item in value]
    if isinstance(value, Decimal128):
        return value.to_decimal()
    return value
