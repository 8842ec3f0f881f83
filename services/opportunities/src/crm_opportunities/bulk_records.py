"""The records a bulk action on opportunities touches, read with one ``$in`` query per
collection and held in memory while the same use cases as the single-record routes apply its
items one by one; then stored with one version-guarded bulk write per collection.

A bulk action changes opportunities (owner, stage) and, when a deal is won, its account; it
reads their pipelines, accounts and sales teams for the events' figures. Anything else a held
repository is asked to do fails the request (``NotInABatch``): nothing is written."""

from __future__ import annotations

from collections.abc import Iterable
from typing import TypeVar

import bson
from bson.codec_options import CodecOptions
from crm_runtime.mongo import Document
from crm_runtime.picklist_store import PicklistStore
from crm_runtime.picklists import Picklist, PicklistSet
from pydantic import BaseModel
from pymongo import ReplaceOne
from pymongo.asynchronous.client_session import AsyncClientSession

from .batch_records import HeldPipelines, NotInABatch, _Held
from .domain import Account, Opportunity, SalesTeam
from .repository import (
    AccountRepository,
    ConcurrentModification,
    OpportunityRepository,
    Repositories,
    SalesTeamRepository,
    _Records,
    _to_document,
)

_STORED: CodecOptions[Document] = CodecOptions(tz_aware=True)


V = TypeVar("V", Opportunity, Account)


class _Changed:
    """The changes of one collection: each record as the request left it, and the version
    it was read at (its write's guard)."""

    def __init__(self) -> None:
        self.read_at: dict[str, int] = {}
        self.records: dict[str, BaseModel] = {}

    def update(self, held: _Held[V], record: V, expected_version: int) -> None:
        current = held.by_id.get(record.id)
        if current is None or current.version != expected_version:
            raise ConcurrentModification(f"{record.id} changed since version {expected_version}")
        self.read_at.setdefault(record.id, expected_version)
        stored = bson.decode(bson.encode(_to_document(record)), codec_options=_STORED)
        held.by_id[record.id] = self.records[record.id] = held._records._to_record(stored)

    async def save(self, records: _Records[V], session: AsyncClientSession) -> None:
        if not self.records:
            return
        result = await records.collection.bulk_write(
            [
                ReplaceOne({"_id": record_id, "version": self.read_at[record_id]}, _to_document(record))
                for record_id, record in self.records.items()
            ],
            ordered=False,
            session=session,
        )
        if result.matched_count != len(self.records):
            raise ConcurrentModification("records changed while the bulk action was applied")


class HeldOpportunities(OpportunityRepository):
    def __init__(self, real: OpportunityRepository, session: AsyncClientSession) -> None:
        super().__init__(real.collection)
        self.held = _Held(real, session)
        self.changed = _Changed()

    async def get(self, record_id: str, session: AsyncClientSession | None = None) -> Opportunity | None:
        return await self.held.get(record_id)

    async def add(self, record: Opportunity, session: AsyncClientSession) -> None:
        raise NotInABatch("opening an opportunity is not a bulk action")

    async def update(self, record: Opportunity, expected_version: int, session: AsyncClientSession) -> None:
        self.changed.update(self.held, record, expected_version)


class HeldAccounts(AccountRepository):
    def __init__(self, real: AccountRepository, session: AsyncClientSession) -> None:
        super().__init__(real.collection, real._domains)
        self.held = _Held(real, session)
        self.changed = _Changed()

    async def get(self, record_id: str, session: AsyncClientSession | None = None) -> Account | None:
        return await self.held.get(record_id)

    async def find(self, account_id: str, session: AsyncClientSession | None = None) -> Account | None:
        return await self.held.get(account_id)

    async def add(self, record: Account, session: AsyncClientSession) -> None:
        raise NotInABatch("creating an account is not a bulk action")

    async def update(self, record: Account, expected_version: int, session: AsyncClientSession) -> None:
        self.changed.update(self.held, record, expected_version)


class HeldSalesTeams(SalesTeamRepository):
    def __init__(self, real: SalesTeamRepository, session: AsyncClientSession) -> None:
        super().__init__(real.collection)
        self.held = _Held(real, session)

    async def get(self, record_id: str, session: AsyncClientSession | None = None) -> SalesTeam | None:
        return await self.held.get(record_id)

    async def count_assignment(self, team_id: str, delta: int, session: AsyncClientSession) -> bool:
        raise NotInABatch("changing an opportunity's sales team is not a bulk action")


class HeldPicklists(PicklistStore):
    """The loss reasons read once per bulk request (in its transaction), not once per item."""

    def __init__(self, real: PicklistStore, session: AsyncClientSession) -> None:
        self.defaults = real.defaults
        self._real = real
        self._session = session
        self._read: PicklistSet | None = None

    async def all(self, session: AsyncClientSession | None = None) -> PicklistSet:
        if self._read is None:
            self._read = await self._real.all(self._session)
        return self._read

    async def save(self, picklist: Picklist, expected_version: int, session: AsyncClientSession) -> None:
        raise NotInABatch("revising a picklist is not a bulk action")


class BulkRecords:
    """``Repositories`` for a bulk action over the opportunities it names."""

    def __init__(self, real: Repositories, session: AsyncClientSession) -> None:
        self._session = session
        self._real = real
        self._opportunities = HeldOpportunities(real.opportunities, session)
        self._accounts = HeldAccounts(real.accounts, session)
        self._pipelines = HeldPipelines(real.pipelines, session)
        self._teams = HeldSalesTeams(real.sales_teams, session)
        self.repos = Repositories(
            pipelines=self._pipelines,
            accounts=self._accounts,
            contacts=real.contacts,
            opportunities=self._opportunities,
            products=real.products,
            sales_teams=self._teams,
            picklists=HeldPicklists(real.picklists, session),
        )

    @classmethod
    async def load(
        cls, real: Repositories, session: AsyncClientSession, opportunity_ids: Iterable[str]
    ) -> BulkRecords:
        """The opportunities, then their pipelines, accounts and sales teams: four ``$in`` queries."""
        records = cls(real, session)
        await records._opportunities.held.load(opportunity_ids)
        found = [o for o in records._opportunities.held.by_id.values() if o is not None]
        await records._pipelines.held.load(o.pipeline_id for o in found)
        await records._accounts.held.load(o.account_id for o in found if o.account_id is not None)
        await records._teams.held.load(o.sales_team_id for o in found if o.sales_team_id is not None)
        return records

    async def save(self) -> None:
        await self._opportunities.changed.save(self._real.opportunities, self._session)
        await self._accounts.changed.save(self._real.accounts, self._session)
