"""The records a batch of lead conversions can touch, read with a few ``$in`` queries and held
in memory while ``apply_lead_conversion`` applies the batch's conversions one by one, in
order; then stored with one insert per collection.

Conversions only create records (or link to existing ones), so what is held answers every read
the use case makes exactly as the database would inside a transaction that had already applied
the batch's earlier conversions. Anything else a held repository is asked to do (an update of
an existing record, a parent account's ancestry) is not part of a conversion: it fails the
batch, and the consumer applies its events one at a time on the real repositories. A record or
domain stored concurrently fails the batch the same way (the inserts hit the unique ``_id``)."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Generic, NoReturn, TypeVar

import bson
from bson.codec_options import CodecOptions
from crm_contracts.events.leads import LeadConverted
from crm_runtime.mongo import Document
from pydantic import BaseModel
from pymongo import UpdateOne
from pymongo.asynchronous.client_session import AsyncClientSession
from pymongo.errors import BulkWriteError

from .domain import DEFAULT_PIPELINE_ID, Account, Contact, Opportunity, Pipeline, normalise_domain
from .repository import (
    AccountRepository,
    AlreadyExists,
    ContactRepository,
    OpportunityRepository,
    PipelineRepository,
    Repositories,
    _Records,
    _to_document,
)

R = TypeVar("R", bound=BaseModel)
_STORED: CodecOptions[Document] = CodecOptions(tz_aware=True)


class NotInABatch(Exception):
    """A held repository was asked for something a conversion never does."""


class _Held(Generic[R]):
    """One collection's records by id, as the batch has left them (None: known absent)."""

    def __init__(self, records: _Records[R], session: AsyncClientSession) -> None:
        self._records = records
        self._session = session
        self.by_id: dict[str, R | None] = {}
        self.added: dict[str, R] = {}

    async def load(self, record_ids: Iterable[str]) -> None:
        wanted = sorted(set(record_ids) - self.by_id.keys())
        if not wanted:
            return
        docs = await self._records.collection.find({"_id": {"$in": wanted}}, session=self._session).to_list()
        for record_id in wanted:
            self.by_id[record_id] = None
        for doc in docs:
            record = self._records._to_record(doc)
            self.by_id[doc["_id"]] = record

    async def get(self, record_id: str) -> R | None:
        await self.load([record_id])
        record = self.by_id[record_id]
        return record.model_copy(deep=True) if record is not None else None

    def add(self, record_id: str, record: R) -> None:
        if self.by_id.get(record_id) is not None:
            raise AlreadyExists(f"{record_id} exists already")
        # As reading it back would give it (times at millisecond precision).
        stored = bson.decode(bson.encode(_to_document(record)), codec_options=_STORED)
        self.by_id[record_id] = self.added[record_id] = self._records._to_record(stored)

    async def save(self) -> None:
        if not self.added:
            return
        try:
            await self._records.collection.insert_many(
                [_to_document(record) for record in self.added.values()], session=self._session
            )
        except BulkWriteError as exc:
            raise AlreadyExists("a record of the batch was stored concurrently") from exc


def _not_in_a_batch(what: str) -> NoReturn:
    raise NotInABatch(f"{what} is not part of applying a conversion")


class HeldPipelines(PipelineRepository):
    def __init__(self, real: PipelineRepository, session: AsyncClientSession) -> None:
        super().__init__(real.collection)
        self.held = _Held(real, session)

    async def get(self, record_id: str, session: AsyncClientSession | None = None) -> Pipeline | None:
        return await self.held.get(record_id)

    async def add(self, record: Pipeline, session: AsyncClientSession) -> None:
        _not_in_a_batch("creating a pipeline")

    async def update(self, record: Pipeline, expected_version: int, session: AsyncClientSession) -> None:
        _not_in_a_batch("changing a pipeline")


class HeldContacts(ContactRepository):
    def __init__(self, real: ContactRepository, session: AsyncClientSession) -> None:
        super().__init__(real.collection)
        self.held = _Held(real, session)

    async def get(self, record_id: str, session: AsyncClientSession | None = None) -> Contact | None:
        return await self.held.get(record_id)

    async def add(self, record: Contact, session: AsyncClientSession) -> None:
        self.held.add(record.id, record)

    async def update(self, record: Contact, expected_version: int, session: AsyncClientSession) -> None:
        _not_in_a_batch("changing a contact")

    async def with_email(self, email: str, session: AsyncClientSession) -> Contact | None:
        _not_in_a_batch("looking a contact up by email")


class HeldOpportunities(OpportunityRepository):
    def __init__(self, real: OpportunityRepository, session: AsyncClientSession) -> None:
        super().__init__(real.collection)
        self.held = _Held(real, session)

    async def get(self, record_id: str, session: AsyncClientSession | None = None) -> Opportunity | None:
        return await self.held.get(record_id)

    async def add(self, record: Opportunity, session: AsyncClientSession) -> None:
        self.held.add(record.id, record)

    async def update(self, record: Opportunity, expected_version: int, session: AsyncClientSession) -> None:
        _not_in_a_batch("changing an opportunity")

    async def open_by_stage(self, pipeline_id: str, session: AsyncClientSession) -> dict[str, int]:
        _not_in_a_batch("counting open opportunities")


class HeldAccounts(AccountRepository):
    """Accounts by id and by alias, and the domain claims."""

    def __init__(self, real: AccountRepository, session: AsyncClientSession) -> None:
        super().__init__(real.collection, real._domains)
        self._session = session
        self.held = _Held(real, session)
        self._real = real
        self._by_alias: dict[str, str | None] = {}  # alias -> account id (None: no account)
        self._holders: dict[str, str | None] = {}  # domain -> account id (None: unclaimed)
        self._claimed: dict[str, str] = {}
        self._new_aliases: list[tuple[str, str]] = []

    async def load(self, account_ids: set[str], domains: set[str]) -> None:
        await self.held.load(account_ids)
        absent = sorted(i for i in account_ids if self.held.by_id.get(i) is None and i not in self._by_alias)
        for alias in absent:
            self._by_alias[alias] = None
        if absent:
            docs = await self.collection.find({"aliases": {"$in": absent}}, session=self._session).to_list()
            for doc in docs:
                account = self._to_record(doc)
                self.held.by_id.setdefault(account.id, account)
                for alias in doc.get("aliases", []):
                    if alias in self._by_alias:
                        self._by_alias[alias] = account.id
        wanted = sorted(domains - self._holders.keys())
        for domain in wanted:
            self._holders[domain] = None
        if wanted:
            claims = await self._domains.find({"_id": {"$in": wanted}}, session=self._session).to_list()
            for claim in claims:
                self._holders[claim["_id"]] = str(claim["account_id"])

    async def find(self, account_id: str, session: AsyncClientSession | None = None) -> Account | None:
        await self.load({account_id}, set())
        found = await self.held.get(account_id)
        if found is None and self._by_alias.get(account_id) is not None:
            found = await self.held.get(str(self._by_alias[account_id]))
        return found

    async def get(self, record_id: str, session: AsyncClientSession | None = None) -> Account | None:
        return await self.held.get(record_id)

    async def holder_of_domain(self, domain: str, session: AsyncClientSession) -> str | None:
        await self.load(set(), {domain})
        return self._holders[domain]

    async def claim_domain(self, domain: str, account_id: str, session: AsyncClientSession) -> None:
        if await self.holder_of_domain(domain, session) is not None:
            raise AlreadyExists(f"domain {domain} belongs to another account")
        self._holders[domain] = self._claimed[domain] = account_id

    async def add_alias(self, account_id: str, alias: str, session: AsyncClientSession) -> None:
        # The domain's holder may not have been read yet (found by its domain claim only).
        await self.held.load([account_id])
        held = self.held.by_id.get(account_id)
        if held is None:
            return  # as the update of a missing account: nothing changes
        self._by_alias[alias] = account_id
        if alias not in held.aliases:
            held.aliases.append(alias)
            self._new_aliases.append((account_id, alias))

    async def add(self, record: Account, session: AsyncClientSession) -> None:
        self.held.add(record.id, record)

    async def update(self, record: Account, expected_version: int, session: AsyncClientSession) -> None:
        _not_in_a_batch("changing an account")

    async def ancestry(self, parent_id: str, session: AsyncClientSession) -> list[str]:
        _not_in_a_batch("an account hierarchy")

    async def release_domain(self, domain: str, account_id: str, session: AsyncClientSession) -> None:
        _not_in_a_batch("releasing a domain")

    async def save(self) -> None:
        if self._claimed:
            try:
                await self._domains.insert_many(
                    [{"_id": domain, "account_id": owner} for domain, owner in self._claimed.items()],
                    session=self._session,
                )
            except BulkWriteError as exc:
                raise AlreadyExists("a domain of the batch was claimed concurrently") from exc
        await self.held.save()
        # Aliases of accounts stored before the batch; a new account carries its own.
        stored = [(i, alias) for i, alias in self._new_aliases if i not in self.held.added]
        if stored:
            await self.collection.bulk_write(
                [UpdateOne({"_id": i}, {"$addToSet": {"aliases": alias}}) for i, alias in stored],
                session=self._session,
            )


class ConversionBatch:
    """``Repositories`` for ``apply_lead_conversion`` over one batch's records."""

    def __init__(self, real: Repositories, session: AsyncClientSession) -> None:
        self._accounts = HeldAccounts(real.accounts, session)
        self._contacts = HeldContacts(real.contacts, session)
        self._opportunities = HeldOpportunities(real.opportunities, session)
        self._pipelines = HeldPipelines(real.pipelines, session)
        self.repos = Repositories(
            pipelines=self._pipelines,
            accounts=self._accounts,
            contacts=self._contacts,
            opportunities=self._opportunities,
            products=real.products,
            sales_teams=real.sales_teams,
            picklists=real.picklists,
        )

    @classmethod
    async def load(
        cls, real: Repositories, session: AsyncClientSession, conversions: list[LeadConverted]
    ) -> ConversionBatch:
        """What ``conversions`` name: accounts (by id or alias), domains, contacts,
        opportunities and pipelines, one ``$in`` query each."""
        batch = cls(real, session)
        domains = {normalise_domain(c.account.domain) for c in conversions}
        await batch._accounts.load(
            {c.account.account_id for c in conversions}, {d for d in domains if d is not None}
        )
        await batch._contacts.held.load(c.contact.contact_id for c in conversions)
        specs = [c.opportunity for c in conversions if c.opportunity is not None]
        await batch._opportunities.held.load(spec.opportunity_id for spec in specs)
        await batch._pipelines.held.load(spec.pipeline_id or DEFAULT_PIPELINE_ID for spec in specs)
        return batch

    async def save(self) -> None:
        await self._accounts.save()
        await self._contacts.held.save()
        await self._opportunities.held.save()
