"""Where a service keeps the organisation's picklists it owns: the ``picklists`` collection, one
document per revised list (``_id`` its name), written with a version check; and the one way a
list is revised (stored and announced on ``picklist.revised`` in the same transaction). A list
never revised is not stored: it has its default values (version 0)."""

from __future__ import annotations

from collections.abc import Mapping

from crm_contracts import catalog
from crm_contracts.envelope import utcnow
from crm_contracts.events.common import Actor
from crm_contracts.events.picklists import PicklistName, PicklistValue, UnknownValues
from pymongo.asynchronous.client_session import AsyncClientSession
from pymongo.asynchronous.database import AsyncDatabase
from pymongo.errors import DuplicateKeyError

from .events import make_event
from .mongo import Document, from_bson, to_bson
from .picklists import Picklist, PicklistSet
from .unit_of_work import UnitOfWork

PICKLISTS = "picklists"


class PicklistChanged(Exception):
    """The picklist was revised by someone else since it was read."""


class PicklistStore:
    """The lists one service owns (``defaults``: each owned list as it is until revised)."""

    def __init__(self, db: AsyncDatabase[Document], defaults: Mapping[PicklistName, Picklist]) -> None:
        self._lists = db[PICKLISTS]
        self.defaults = dict(defaults)

    @property
    def names(self) -> list[PicklistName]:
        return list(self.defaults)

    async def all(self, session: AsyncClientSession | None = None) -> PicklistSet:
        """Every owned picklist in force, read in the caller's transaction: one small query per
        request or batch, so a revision applies to the next record in every replica."""
        stored: dict[PicklistName, Picklist] = {}
        async for doc in self._lists.find({"_id": {"$in": [n.value for n in self.names]}}, session=session):
            data = from_bson(doc)
            data["name"] = data.pop("_id")
            picklist = Picklist.model_validate(data)
            stored[picklist.name] = picklist
        return PicklistSet({name: stored.get(name) or default for name, default in self.defaults.items()})

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

    async def revise(
        self,
        uow: UnitOfWork,
        name: PicklistName,
        values: list[PicklistValue],
        *,
        blank_value: str | None,
        unknown_values: UnknownValues,
        expected_version: int | None,
        by: Actor,
        source: str,
    ) -> Picklist:
        """Replace a picklist's values (labels, aliases, active flags, new values) and announce it
        on ``picklist.revised`` from ``source``. Records keep their values; see ``Picklist.revised``."""
        current = (await self.all(uow.session)).of(name)
        if expected_version is not None and expected_version != current.version:
            raise PicklistChanged(f"expected_version: the {name} picklist is at version {current.version}")
        now = utcnow()
        revised = current.revised(
            values, blank_value=blank_value, unknown_values=unknown_values, now=now, by=by.id
        )
        await self.save(revised, current.version, uow.session)
        await uow.emit(
            catalog.PICKLIST_REVISED,
            make_event(
                catalog.PICKLIST_REVISED,
                revised.revised_event(by),
                source=source,
                subject=name.value,
                version=revised.version,
                time=now,
            ),
        )
        return revised
