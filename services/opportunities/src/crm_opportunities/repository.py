"""Where the service keeps its records: ``pipelines``, ``accounts`` (with ``account_domains``,
the claim that makes a company's domain unique), ``contacts``, ``opportunities``, ``products``
and ``sales_teams``. Changes are written with an optimistic version check so two concurrent
changes cannot both win."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

from crm_contracts.events.picklists import PicklistName
from crm_runtime.mongo import Document, from_bson, to_bson
from crm_runtime.picklist_store import PicklistStore
from pydantic import BaseModel
from pymongo import ASCENDING
from pymongo.asynchronous.client_session import AsyncClientSession
from pymongo.asynchronous.collection import AsyncCollection
from pymongo.asynchronous.database import AsyncDatabase
from pymongo.errors import DuplicateKeyError

from .domain import (
    DEFAULT_LOSS_REASONS,
    MAX_HIERARCHY_DEPTH,
    Account,
    Contact,
    Opportunity,
    OpportunityStatus,
    Pipeline,
    Product,
    SalesTeam,
    loss_reason_list,
)

PIPELINES = "pipelines"
ACCOUNTS = "accounts"
ACCOUNT_DOMAINS = "account_domains"
CONTACTS = "contacts"
OPPORTUNITIES = "opportunities"
PRODUCTS = "products"
SALES_TEAMS = "sales_teams"

R = TypeVar("R", bound=BaseModel)


class ConcurrentModification(Exception):
    """Someone else changed the record since it was read."""


class AlreadyExists(Exception):
    """A record with this id (or this unique key) exists already."""


class _Records(Generic[R]):
    """One collection of one record type; the record's ``id`` is the document's ``_id``."""

    model: type[R]

    def __init__(self, collection: AsyncCollection[Document]) -> None:
        self.collection = collection

    async def get(self, record_id: str, session: AsyncClientSession | None = None) -> R | None:
        doc = await self.collection.find_one({"_id": record_id}, session=session)
        return self._to_record(doc) if doc else None

    async def add(self, record: R, session: AsyncClientSession) -> None:
        try:
            await self.collection.insert_one(_to_document(record), session=session)
        except DuplicateKeyError as exc:
            raise AlreadyExists(f"{getattr(record, 'id', '?')} exists already") from exc

    async def update(self, record: R, expected_version: int, session: AsyncClientSession) -> None:
        record_id = getattr(record, "id", None)
        result = await self.collection.replace_one(
            {"_id": record_id, "version": expected_version}, _to_document(record), session=session
        )
        if result.matched_count != 1:
            raise ConcurrentModification(f"{record_id} changed since version {expected_version}")

    async def list(self, *, filters: Mapping[str, Any], limit: int, after_id: str | None) -> list[R]:
        """A page ordered by id; ``after_id`` is the previous page's last id (the cursor)."""
        query: Document = dict(filters)
        if after_id is not None:
            query["_id"] = {"$gt": after_id} if "_id" not in query else {"$eq": query["_id"], "$gt": after_id}
        cursor = self.collection.find(query, sort=[("_id", ASCENDING)], limit=limit)
        return [self._to_record(doc) for doc in await cursor.to_list()]

    async def count(self, filters: Mapping[str, Any], session: AsyncClientSession | None = None) -> int:
        return await self.collection.count_documents(dict(filters), session=session)

    def _to_record(self, doc: Document) -> R:
        data = from_bson(doc)
        data["id"] = data.pop("_id")
        return self.model.model_validate(data)


class PipelineRepository(_Records[Pipeline]):
    model = Pipeline

    async def all(self) -> list[Pipeline]:
        cursor = self.collection.find({}, sort=[("_id", ASCENDING)])
        return [self._to_record(doc) for doc in await cursor.to_list()]

    async def add_if_absent(self, pipeline: Pipeline) -> bool:
        """Store ``pipeline`` unless one with its id exists; safe when replicas race at startup."""
        try:
            result = await self.collection.update_one(
                {"_id": pipeline.id}, {"$setOnInsert": _to_document(pipeline)}, upsert=True
            )
        except DuplicateKeyError:
            return False
        return result.upserted_id is not None


class AccountRepository(_Records[Account]):
    model = Account

    def __init__(self, collection: AsyncCollection[Document], domains: AsyncCollection[Document]) -> None:
        super().__init__(collection)
        self._domains = domains

    async def ensure_indexes(self) -> None:
        await self.collection.create_index([("aliases", ASCENDING)])
        await self.collection.create_index([("owner_id", ASCENDING)])
        await self.collection.create_index([("type", ASCENDING)])
        await self.collection.create_index([("parent_account_id", ASCENDING)])
        # The external ids an import's "did you mean" compares a missing parent with.
        await self.collection.create_index([("external_system", ASCENDING), ("external_id", ASCENDING)])

    async def find(self, account_id: str, session: AsyncClientSession | None = None) -> Account | None:
        """The account by its id or by an id it was also known by. Two indexed lookups, not
        one ``$or``: SecantusDB answers an ``$or`` with a collection scan."""
        doc = await self.collection.find_one({"_id": account_id}, session=session)
        if doc is None:
            doc = await self.collection.find_one({"aliases": account_id}, session=session)
        return self._to_record(doc) if doc else None

    async def holder_of_domain(self, domain: str, session: AsyncClientSession) -> str | None:
        claim = await self._domains.find_one({"_id": domain}, session=session)
        return str(claim["account_id"]) if claim else None

    async def claim_domain(self, domain: str, account_id: str, session: AsyncClientSession) -> None:
        """Reserve ``domain`` for ``account_id``. Two transactions claiming one domain conflict
        on this document's ``_id``, so the loser retries and then sees the winner's account."""
        try:
            await self._domains.insert_one({"_id": domain, "account_id": account_id}, session=session)
        except DuplicateKeyError as exc:
            raise AlreadyExists(f"domain {domain} belongs to another account") from exc

    async def release_domain(self, domain: str, account_id: str, session: AsyncClientSession) -> None:
        await self._domains.delete_one({"_id": domain, "account_id": account_id}, session=session)

    async def ancestry(self, parent_id: str, session: AsyncClientSession) -> list[str]:
        """``parent_id`` and the accounts above it, nearest first; stops one past the deepest
        allowed hierarchy so a too-deep (or looping, from before the check) chain still ends."""
        chain: list[str] = []
        current: str | None = parent_id
        while current is not None and len(chain) <= MAX_HIERARCHY_DEPTH:
            doc = await self.collection.find_one({"_id": current}, {"parent_account_id": 1}, session=session)
            chain.append(current)
            current = doc.get("parent_account_id") if doc else None
        return chain

    async def add_alias(self, account_id: str, alias: str, session: AsyncClientSession) -> None:
        # Aliases are lookup keys, not business data: no version bump, no event.
        await self.collection.update_one(
            {"_id": account_id}, {"$addToSet": {"aliases": alias}}, session=session
        )


class ContactRepository(_Records[Contact]):
    model = Contact

    async def ensure_indexes(self) -> None:
        await self.collection.create_index([("aliases", ASCENDING)])
        await self.collection.create_index([("account_id", ASCENDING)])
        await self.collection.create_index([("email", ASCENDING)])
        await self.collection.create_index([("originating_lead_id", ASCENDING)])

    async def find(self, contact_id: str, session: AsyncClientSession | None = None) -> Contact | None:
        """The contact by its id or by an imported id it was matched to (two indexed lookups,
        as ``AccountRepository.find``)."""
        doc = await self.collection.find_one({"_id": contact_id}, session=session)
        if doc is None:
            doc = await self.collection.find_one({"aliases": contact_id}, session=session)
        return self._to_record(doc) if doc else None

    async def add_alias(self, contact_id: str, alias: str, session: AsyncClientSession) -> None:
        # As for accounts: a lookup key, not business data (no version bump, no event).
        await self.collection.update_one(
            {"_id": contact_id}, {"$addToSet": {"aliases": alias}}, session=session
        )

    async def with_email(self, email: str, session: AsyncClientSession) -> Contact | None:
        doc = await self.collection.find_one({"email": email}, sort=[("_id", ASCENDING)], session=session)
        return self._to_record(doc) if doc else None

    async def of_account(self, account_id: str, limit: int = 200) -> list[Contact]:
        cursor = self.collection.find({"account_id": account_id}, sort=[("_id", ASCENDING)], limit=limit)
        return [self._to_record(doc) for doc in await cursor.to_list()]


class OpportunityRepository(_Records[Opportunity]):
    model = Opportunity

    async def ensure_indexes(self) -> None:
        await self.collection.create_index([("account_id", ASCENDING)])
        await self.collection.create_index([("owner_id", ASCENDING)])
        await self.collection.create_index([("pipeline_id", ASCENDING), ("stage_id", ASCENDING)])
        await self.collection.create_index([("status", ASCENDING)])
        await self.collection.create_index([("sales_team_id", ASCENDING)])

    async def open_by_stage(self, pipeline_id: str, session: AsyncClientSession) -> dict[str, int]:
        """How many open opportunities each stage of the pipeline holds."""
        cursor = await self.collection.aggregate(
            [
                {"$match": {"pipeline_id": pipeline_id, "status": OpportunityStatus.OPEN.value}},
                {"$group": {"_id": "$stage_id", "count": {"$sum": 1}}},
            ],
            session=session,
        )
        return {str(row["_id"]): int(row["count"]) for row in await cursor.to_list()}


class ProductRepository(_Records[Product]):
    model = Product

    async def ensure_indexes(self) -> None:
        await self.collection.create_index([("active", ASCENDING)])
        await self.collection.create_index([("sku", ASCENDING)])

    async def get_many(self, product_ids: list[str], session: AsyncClientSession) -> dict[str, Product]:
        cursor = self.collection.find({"_id": {"$in": product_ids}}, session=session)
        return {str(doc["_id"]): self._to_record(doc) for doc in await cursor.to_list()}


class SalesTeamRepository(_Records[SalesTeam]):
    model = SalesTeam

    async def ensure_indexes(self) -> None:
        await self.collection.create_index([("region", ASCENDING)])
        await self.collection.create_index([("manager_id", ASCENDING)])

    async def count_assignment(self, team_id: str, delta: int, session: AsyncClientSession) -> bool:
        """Count an opportunity joining (+1) or leaving (-1) the team; False if there is no
        such team. Writing the team document makes a concurrent delete of it conflict."""
        result = await self.collection.update_one(
            {"_id": team_id}, {"$inc": {"opportunities": delta}}, session=session
        )
        return result.matched_count == 1

    async def delete_unassigned(
        self, team_id: str, expected_version: int, session: AsyncClientSession
    ) -> bool:
        result = await self.collection.delete_one(
            {"_id": team_id, "version": expected_version, "opportunities": {"$lte": 0}}, session=session
        )
        return result.deleted_count == 1


@dataclass(frozen=True)
class Repositories:
    pipelines: PipelineRepository
    accounts: AccountRepository
    contacts: ContactRepository
    opportunities: OpportunityRepository
    products: ProductRepository
    sales_teams: SalesTeamRepository
    picklists: PicklistStore
    """The organisation's picklists this service owns (loss reasons)."""

    @classmethod
    def of(
        cls, db: AsyncDatabase[Document], default_loss_reasons: Sequence[str] = DEFAULT_LOSS_REASONS
    ) -> Repositories:
        return cls(
            picklists=PicklistStore(db, {PicklistName.LOSS_REASON: loss_reason_list(default_loss_reasons)}),
            pipelines=PipelineRepository(db[PIPELINES]),
            accounts=AccountRepository(db[ACCOUNTS], db[ACCOUNT_DOMAINS]),
            contacts=ContactRepository(db[CONTACTS]),
            opportunities=OpportunityRepository(db[OPPORTUNITIES]),
            products=ProductRepository(db[PRODUCTS]),
            sales_teams=SalesTeamRepository(db[SALES_TEAMS]),
        )

    async def ensure_indexes(self) -> None:
        await self.accounts.ensure_indexes()
        await self.contacts.ensure_indexes()
        await self.opportunities.ensure_indexes()
        await self.products.ensure_indexes()
        await self.sales_teams.ensure_indexes()


def _to_document(record: BaseModel) -> Document:
    # Computed fields (e.g. weighted_amount) are derived on read, never stored.
    doc: Document = to_bson(record.model_dump(exclude={"id", *type(record).model_computed_fields}))
    doc["_id"] = getattr(record, "id")  # noqa: B009 - every record type has an id
    return doc
