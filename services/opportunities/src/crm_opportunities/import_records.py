"""The accounts and contacts a chunk of an import can touch, read with a few ``$in`` queries and
held in memory while ``import_account`` / ``import_contact`` apply the chunk's rows one by one;
then stored with one write per collection and kind of change.

Unlike a batch of conversions (``batch_records``), an import also changes records: an update is
applied to the held record and written at the end as a replacement guarded by the version it
was read at, so a concurrent change still fails the chunk (its transaction then runs again).
What is held answers every read the use cases make as the database would inside a transaction
that had already applied the chunk's earlier rows."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Generic, TypeVar

import bson
from crm_runtime.mongo import Document
from pydantic import BaseModel
from pymongo import DeleteOne, ReplaceOne, UpdateOne
from pymongo.asynchronous.client_session import AsyncClientSession
from pymongo.asynchronous.collection import AsyncCollection

from .batch_records import _STORED, HeldAccounts, HeldContacts, _Held
from .domain import MAX_HIERARCHY_DEPTH, Account, Contact
from .repository import ConcurrentModification, Repositories, _to_document

R = TypeVar("R", bound=BaseModel)


class _Replacements(Generic[R]):
    """Changed records of one collection, each with the version it was read at."""

    def __init__(self, held: _Held[R], collection: AsyncCollection[Document]) -> None:
        self._held = held
        self._collection = collection
        self._read_at: dict[str, int] = {}

    def replace(self, record_id: str, record: R, expected_version: int) -> None:
        stored = self._held._records._to_record(
            bson.decode(bson.encode(_to_document(record)), codec_options=_STORED)
        )
        self._held.by_id[record_id] = stored
        if record_id in self._held.added:
            self._held.added[record_id] = stored  # still to be inserted: the insert carries it
            return
        self._read_at.setdefault(record_id, expected_version)

    async def save(self, session: AsyncClientSession) -> None:
        if not self._read_at:
            return
        replacements = []
        for record_id, version in self._read_at.items():
            record = self._held.by_id[record_id]
            assert record is not None
            replacements.append(ReplaceOne({"_id": record_id, "version": version}, _to_document(record)))
        result = await self._collection.bulk_write(replacements, ordered=False, session=session)
        if result.matched_count != len(replacements):
            raise ConcurrentModification("a record of the chunk changed since it was read")


class ImportedAccounts(HeldAccounts):
    """Accounts by id and alias, their domain claims, and the hierarchy above them."""

    def __init__(self, real: Repositories, session: AsyncClientSession) -> None:
        super().__init__(real.accounts, session)
        self._changes = _Replacements(self.held, self.collection)
        self._released: dict[str, str] = {}  # domain -> the account giving it up

    async def load(self, account_ids: set[str], domains: set[str]) -> None:
        """As ``HeldAccounts.load``, and the accounts holding the domains with them: a row
        matched to one by its domain adds an alias to it."""
        await super().load(account_ids, domains)
        await self.held.load(holder for holder in self._holders.values() if holder is not None)

    async def load_hierarchy(self, account_ids: set[str]) -> None:
        """The accounts above ``account_ids`` (held ones), one ``$in`` query per level."""
        level = account_ids
        for _ in range(MAX_HIERARCHY_DEPTH + 1):
            parents = {
                record.parent_account_id
                for account_id in level
                if (record := self.held.by_id.get(account_id)) is not None
                and record.parent_account_id is not None
            }
            level = parents - self.held.by_id.keys()
            if not level:
                return
            await self.held.load(level)

    async def update(self, record: Account, expected_version: int, session: AsyncClientSession) -> None:
        self._changes.replace(record.id, record, expected_version)

    async def ancestry(self, parent_id: str, session: AsyncClientSession) -> list[str]:
        chain: list[str] = []
        current: str | None = parent_id
        while current is not None and len(chain) <= MAX_HIERARCHY_DEPTH:
            chain.append(current)
            record = await self.held.get(current)
            current = record.parent_account_id if record is not None else None
        return chain

    async def release_domain(self, domain: str, account_id: str, session: AsyncClientSession) -> None:
        if self._claimed.get(domain) == account_id:
            del self._claimed[domain]  # claimed by this chunk: never written
        elif domain not in self._holders or self._holders[domain] == account_id:
            # An old domain is not read first: its claim goes if it is still this account's.
            self._released[domain] = account_id
        else:
            return
        self._holders[domain] = None

    async def save(self) -> None:
        if self._released:  # before the claims: a domain may pass to another account
            await self._domains.bulk_write(
                [DeleteOne({"_id": domain, "account_id": owner}) for domain, owner in self._released.items()],
                session=self._session,
            )
        await super().save()
        await self._changes.save(self._session)


class ImportedContacts(HeldContacts):
    """Contacts by id, and by email for the one-person-one-contact rule."""

    def __init__(self, real: Repositories, session: AsyncClientSession) -> None:
        super().__init__(real.contacts, session)
        self._session = session
        self._changes = _Replacements(self.held, self.collection)
        self._emails: set[str] = set()
        self._new_aliases: list[tuple[str, str]] = []

    async def load_emails(self, emails: Iterable[str]) -> None:
        wanted = sorted(set(emails) - self._emails)
        if not wanted:
            return
        self._emails.update(wanted)
        docs = await self.collection.find({"email": {"$in": wanted}}, session=self._session).to_list()
        for doc in docs:
            self.held.by_id.setdefault(str(doc["_id"]), self._to_record(doc))

    async def with_email(self, email: str, session: AsyncClientSession) -> Contact | None:
        """As the database answers: the contact with the smallest id having ``email`` now."""
        await self.load_emails([email])
        ids = sorted(i for i, c in self.held.by_id.items() if c is not None and c.email == email)
        return await self.held.get(ids[0]) if ids else None

    async def update(self, record: Contact, expected_version: int, session: AsyncClientSession) -> None:
        self._changes.replace(record.id, record, expected_version)

    async def add_alias(self, contact_id: str, alias: str, session: AsyncClientSession) -> None:
        # A lookup key written with the chunk (one bulk write), not business data.
        self._new_aliases.append((contact_id, alias))

    async def save(self) -> None:
        await self.held.save()
        await self._changes.save(self._session)
        if self._new_aliases:
            await self.collection.bulk_write(
                [UpdateOne({"_id": c}, {"$addToSet": {"aliases": a}}) for c, a in self._new_aliases],
                session=self._session,
            )


class ImportBatch:
    """``Repositories`` for ``import_account`` and ``import_contact`` over one chunk's records."""

    def __init__(self, real: Repositories, session: AsyncClientSession) -> None:
        self.accounts = ImportedAccounts(real, session)
        self.contacts = ImportedContacts(real, session)
        self.repos = Repositories(
            pipelines=real.pipelines,
            accounts=self.accounts,
            contacts=self.contacts,
            opportunities=real.opportunities,
            products=real.products,
            sales_teams=real.sales_teams,
            picklists=real.picklists,
        )

    async def save(self) -> None:
        await self.accounts.save()
        await self.contacts.save()
