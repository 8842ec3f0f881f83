"""Where the organisation's picklists are kept: the ``picklists`` collection, one document per
revised list (``_id`` its name), written with a version check. A list never revised is not
stored: it has its default values (version 0)."""

from __future__ import annotations

from crm_contracts.events.picklists import PicklistName
from crm_runtime.mongo import Document, from_bson, to_bson
from pymongo.asynchronous.client_session import AsyncClientSession
from pymongo.asynchronous.database import AsyncDatabase
from pymongo.errors import DuplicateKeyError

from .picklists import Picklist, Picklists

PICKLISTS = "picklists"


class PicklistChanged(Exception):
    """The picklist was revised by someone else since it was read."""


class PicklistStore:
    def __init__(self, db: AsyncDatabase[Document]) -> None:
        self._lists = db[PICKLISTS]

    async def all(self, session: AsyncClientSession | None = None) -> Picklists:
        """Every picklist in force, read in the caller's transaction: one small query per capture
        or batch of captures, so a revision applies to the next capture in every replica."""
        stored: dict[PicklistName, Picklist] = {}
        async for doc in self._lists.find({}, session=session):
            data = from_bson(doc)
            data["name"] = data.pop("_id")
            picklist = Picklist.model_validate(data)
            stored[picklist.name] = picklist
        return Picklists({name: stored.get(name) or Picklist.default(name) for name in PicklistName})

    async def save(self, picklist: Picklist, expected_version: int, session: AsyncClientSession) -> None:
        doc: Document = to_bson(picklist.model_dump(exclude={"name"}))
        try:
            if expected_version == 0:
                await self._lists.insert_one({"_id": picklist.name.value, **doc}, session=session)
                return
            result = await self._lists.replace_one(
                {"_id": picklist.name.value, "version": expected_version}, doc, session=session
            )
        except DuplicateKeyError as exc:
            raise PicklistChanged(f"the {picklist.name} picklist was revised concurrently") from exc
        if result.matched_count != 1:
            raise PicklistChanged(f"the {picklist.name} picklist changed since version {expected_version}")
