"""Where leads are stored: the ``leads`` collection, one document per lead, written with an
optimistic version check so two concurrent changes cannot both win silently."""

from __future__ import annotations

from typing import Any

from crm_runtime.mongo import Document, from_bson, to_bson
from pymongo import ASCENDING, DESCENDING
from pymongo.asynchronous.client_session import AsyncClientSession
from pymongo.asynchronous.database import AsyncDatabase

from .domain import Lead

LEADS = "leads"


class ConcurrentModification(Exception):
    """Someone else changed the lead since it was read."""


class LeadRepository:
    def __init__(self, db: AsyncDatabase[Document]) -> None:
        self._leads = db[LEADS]

    async def ensure_indexes(self) -> None:
        await self._leads.create_index(
            [("source_system", ASCENDING), ("external_id", ASCENDING)], unique=True, name="capture_key"
        )
        await self._leads.create_index([("email_normalised", ASCENDING)], sparse=True)
        await self._leads.create_index([("phone_normalised", ASCENDING)], sparse=True)
        await self._leads.create_index([("company_domain", ASCENDING)], sparse=True)
        await self._leads.create_index([("status", ASCENDING), ("captured_at", DESCENDING)])

    async def get(self, lead_id: str, session: AsyncClientSession | None = None) -> Lead | None:
        doc = await self._leads.find_one({"_id": lead_id}, session=session)
        return _to_lead(doc) if doc else None

    async def add(self, lead: Lead, session: AsyncClientSession) -> None:
        await self._leads.insert_one(_to_document(lead), session=session)

    async def update(self, lead: Lead, expected_version: int, session: AsyncClientSession) -> None:
        result = await self._leads.replace_one(
            {"_id": lead.id, "version": expected_version}, _to_document(lead), session=session
        )
        if result.matched_count != 1:
            raise ConcurrentModification(f"lead {lead.id} changed since version {expected_version}")

    async def list(
        self,
        *,
        filters: dict[str, Any],
        limit: int,
        after_id: str | None,
    ) -> list[Lead]:
        query: Document = dict(filters)
        if after_id is not None:
            query["_id"] = {"$gt": after_id}
        cursor = self._leads.find(query, sort=[("_id", ASCENDING)], limit=limit)
        return [_to_lead(doc) for doc in await cursor.to_list()]


def _to_document(lead: Lead) -> Document:
    doc: Document = to_bson(lead.model_dump(exclude={"id"}))
    doc["_id"] = lead.id
    return doc


def _to_lead(doc: Document) -> Lead:
    data = from_bson(doc)
    data["id"] = data.pop("_id")
    return Lead.model_validate(data)
