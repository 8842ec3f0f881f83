"""Version guard for read models and replicas of other services' aggregates: an older version
of an aggregate never overwrites a newer one, whatever order events arrive in."""

from __future__ import annotations

from typing import Any

from pymongo.asynchronous.client_session import AsyncClientSession
from pymongo.asynchronous.collection import AsyncCollection

from .mongo import Document

VERSION_FIELD = "_version"


def is_newer(stored_version: int | None, incoming_version: int | None) -> bool:
    """Whether an incoming version should replace the stored one. Events without a version
    (``None``) only ever fill an empty slot."""
    if stored_version is None:
        return True
    if incoming_version is None:
        return False
    return incoming_version > stored_version


async def stored_version(
    collection: AsyncCollection[Document], key: Any, session: AsyncClientSession
) -> int | None:
    current = await collection.find_one({"_id": key}, {VERSION_FIELD: 1}, session=session)
    if current is None:
        return None
    version = current.get(VERSION_FIELD)
    return int(version) if version is not None else -1


async def replace_if_newer(
    collection: AsyncCollection[Document],
    key: Any,
    version: int | None,
    document: Document,
    session: AsyncClientSession,
) -> bool:
    """Store ``document`` as the state of ``key`` at ``version`` unless a newer one is stored.
    Runs inside the caller's transaction, so the read and the write see one snapshot."""
    if not is_newer(await stored_version(collection, key, session), version):
        return False
    await collection.replace_one(
        {"_id": key}, {**document, "_id": key, VERSION_FIELD: version}, upsert=True, session=session
    )
    return True
