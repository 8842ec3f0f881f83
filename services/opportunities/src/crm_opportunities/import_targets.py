"""What the opportunities service imports as jobs (``crm_runtime.imports``): accounts,
contacts and opportunities (``opportunity_import``). A chunk of account or contact rows is
validated first, then applied by the one per-row use case (``import_account`` /
``import_contact``) over the chunk's records held in memory
(``ImportBatch``): a few ``$in`` reads, one write per collection and kind of change, one outbox
write.

Accounts may come in any order: a subsidiary's row is applied after its parent's when both are
in the chunk, and deferred to the end of the file (``RowDeferred``) when its parent is neither
here nor earlier in the file; once waiting cannot help, it is rejected naming the parent's
external id and the known ones closest to it."""

from __future__ import annotations

from collections import deque
from collections.abc import Callable
from typing import Any

from crm_contracts.events.common import Actor
from crm_runtime import UnitOfWork
from crm_runtime.imports import ImportContext, ImportRow, ImportTarget, Rejection, RowDeferred, rejections_of
from crm_runtime.suggestions import did_you_mean
from crm_runtime.uploads import UnreadableUpload
from pydantic import BaseModel, ValidationError
from pymongo.asynchronous.client_session import AsyncClientSession

from .domain import OpportunityRuleViolation, normalise_domain
from .import_records import ImportBatch
from .imports import AccountRow, ContactRow, imported_id
from .opportunity_import import opportunity_import
from .repository import Repositories
from .use_cases import DuplicateRecord, NotFound, Policy, import_account, import_contact

Outcome = Rejection | RowDeferred
# Known external ids a "did you mean" compares with, at most (the closest of them are named).
KNOWN_IDS_LIMIT = 20_000
# A rule's field, as the row's column.
_COLUMNS = {"parent_account_id": "parent_external_id", "id": "external_id"}


def import_targets(repos: Repositories, policy: Policy) -> list[ImportTarget]:
    """Everything the service imports as jobs, for ``ImportJobs`` (``policy``: for the targets
    whose rules need the installation's settings, such as loss reasons)."""
    return [account_import(repos), contact_import(repos), opportunity_import(repos, policy)]


def _validated(
    rows: list[ImportRow], model: type[AccountRow] | type[ContactRow], outcomes: list[Outcome]
) -> list[tuple[ImportRow, Any]]:
    valid = []
    for row in rows:  # everything validated before the chunk writes anything
        try:
            valid.append((row, model.model_validate(row.fields)))
        except ValidationError as exc:
            outcomes += rejections_of(row, exc)
    return valid


def _rule_broken(row: ImportRow, exc: NotFound | DuplicateRecord | OpportunityRuleViolation) -> Rejection:
    column = _COLUMNS.get(exc.field, exc.field)
    if column == "domain" and "domain" not in row.fields and "website" in row.fields:
        column = "website"  # the domain came from the website
    return Rejection.of(row, column, row.fields.get(column), str(exc))


async def known_account_ids(repos: Repositories, system: str, session: AsyncClientSession) -> list[str]:
    """External ids of the accounts imported from ``system``, for "did you mean"."""
    cursor = repos.accounts.collection.find(
        {"external_system": system}, {"external_id": 1, "_id": 0}, limit=KNOWN_IDS_LIMIT, session=session
    )
    return [str(doc["external_id"]) for doc in await cursor.to_list() if doc.get("external_id")]


def parents_first(
    valid: list[tuple[ImportRow, AccountRow]],
) -> tuple[list[tuple[ImportRow, AccountRow]], list[tuple[ImportRow, AccountRow]]]:
    """The chunk's rows with each parent before its subsidiaries (otherwise in file order), and
    the rows whose chain of parents within the chunk runs in a loop."""
    in_chunk = {account.external_id for _, account in valid}
    subsidiaries: dict[str, list[tuple[ImportRow, AccountRow]]] = {}
    ready: deque[tuple[ImportRow, AccountRow]] = deque()
    for item in valid:
        parent = item[1].parent_external_id
        if parent is not None and parent in in_chunk:
            subsidiaries.setdefault(parent, []).append(item)
        else:
            ready.append(item)
    ordered = []
    while ready:
        item = ready.popleft()
        ordered.append(item)
        ready.extend(subsidiaries.pop(item[1].external_id, ()))
    placed = {item[0].number for item in ordered}
    looping = [item for item in valid if item[0].number not in placed]
    return ordered, looping


def _without_parent(row: ImportRow, parent: str, ended: dict[str, Outcome | None]) -> Outcome | None:
    """What becomes of a row whose parent account is not here (yet): rejected with its parent's
    row, deferred while it may wait, else None (its parent is nowhere to be found)."""
    earlier = ended.get(parent)
    if isinstance(earlier, Rejection):
        reason = f"the row of parent account {parent!r} (row {earlier.row}) was rejected"
        return Rejection.of(row, "parent_external_id", parent, reason)
    if row.may_wait:  # its parent may come later in the file
        return RowDeferred(row)
    return None


def account_import(repos: Repositories) -> ImportTarget:
    """``POST /imports/accounts``: each row creates its account (id derived from the source
    system and the row's external id), brings the one an earlier import created up to date, or
    is matched to the account already holding its domain."""

    async def apply(rows: list[ImportRow], context: ImportContext, uow: UnitOfWork) -> list[Outcome]:
        outcomes: list[Outcome] = []
        valid: list[tuple[ImportRow, AccountRow]] = _validated(rows, AccountRow, outcomes)
        system = context.source_system
        batch = ImportBatch(repos, uow.session)
        accounts = batch.accounts
        ids = {imported_id("account", system, a.external_id) for _, a in valid}
        parents = {
            imported_id("account", system, a.parent_external_id) for _, a in valid if a.parent_external_id
        }
        domains = {normalise_domain(a.domain or a.website) for _, a in valid}
        await accounts.load(ids | parents, {d for d in domains if d is not None})
        await accounts.load_hierarchy(parents)
        ordered, looping = parents_first(valid)
        for row, _ in looping:
            outcomes.append(
                Rejection.of(
                    row,
                    "parent_external_id",
                    row.fields.get("parent_external_id"),
                    "the chain of parent accounts in this file runs in a loop back to this row",
                )
            )
        ended: dict[str, Outcome | None] = {}  # the chunk's rows by external id; None: applied
        missing: list[tuple[ImportRow, str]] = []  # waiting cannot help: rejected naming close ids
        by = Actor(id=f"import:{system}")
        async with uow.one_outbox_write():
            for row, account in ordered:
                parent = account.parent_external_id
                if parent is not None and await accounts.find(imported_id("account", system, parent)) is None:
                    outcome = _without_parent(row, parent, ended)
                    if outcome is None:  # rejected below; its subsidiaries here with it
                        outcome = Rejection.of(row, "parent_external_id", parent, "missing parent")
                        missing.append((row, parent))
                    else:
                        outcomes.append(outcome)
                    ended[account.external_id] = outcome
                    continue
                try:
                    await import_account(batch.repos, uow, system, account, by=by)
                    ended[account.external_id] = None
                except (NotFound, DuplicateRecord, OpportunityRuleViolation) as exc:
                    ended[account.external_id] = rejected = _rule_broken(row, exc)
                    outcomes.append(rejected)
            await batch.save()
        if missing:
            known = [a.external_id for _, a in valid] + await known_account_ids(repos, system, uow.session)
            for row, parent in missing:
                reason = f"no account with external id {parent!r} exists or comes in this file"
                outcomes.append(
                    Rejection.of(row, "parent_external_id", parent, reason + did_you_mean(parent, known))
                )
        return outcomes

    return ImportTarget(
        object="accounts",
        summary="Import accounts from CSV or NDJSON as a background job (parents in any row order)",
        apply=apply,
        default_source_system="import",
        check_columns=_columns_of(AccountRow),
        example_csv="external_id,name,domain,country,year_established,annual_revenue,"
        "annual_revenue_currency,parent_external_id\n"
        "A-2,Engines Retail,retail.engines.example,Germany,2001,1200000,EUR,A-1\n"
        "A-1,Analytical Engines,engines.example,GB,1843,,,\n",
        example_ndjson='{"external_id": "A-1", "name": "Analytical Engines", "country": "United Kingdom"}\n',
    )


def contact_import(repos: Repositories) -> ImportTarget:
    """``POST /imports/contacts``: each row creates its contact, brings the one an earlier import
    created up to date, or is matched to the contact already having its email; its account is
    one of this service (``account_id``) or one imported from the same system before."""

    async def apply(rows: list[ImportRow], context: ImportContext, uow: UnitOfWork) -> list[Outcome]:
        outcomes: list[Outcome] = []
        valid: list[tuple[ImportRow, ContactRow]] = _validated(rows, ContactRow, outcomes)
        system = context.source_system
        batch = ImportBatch(repos, uow.session)
        accounts = {c.account_id for _, c in valid if c.account_id} | {
            imported_id("account", system, c.account_external_id) for _, c in valid if c.account_external_id
        }
        await batch.accounts.load(accounts, set())
        await batch.contacts.held.load(imported_id("contact", system, c.external_id) for _, c in valid)
        await batch.contacts.load_emails(str(c.email).lower() for _, c in valid if c.email)
        unknown: list[tuple[ImportRow, str]] = []
        by = Actor(id=f"import:{system}")
        async with uow.one_outbox_write():
            for row, contact in valid:
                try:
                    await import_contact(batch.repos, uow, system, contact, by=by)
                except NotFound as exc:
                    if exc.field == "account_external_id":
                        unknown.append((row, str(contact.account_external_id)))
                    else:
                        outcomes.append(_rule_broken(row, exc))
                except (DuplicateRecord, OpportunityRuleViolation) as exc:
                    outcomes.append(_rule_broken(row, exc))
            await batch.save()
        if unknown:
            known = await known_account_ids(repos, system, uow.session)
            for row, external_id in unknown:
                outcomes.append(
                    Rejection.of(
                        row,
                        "account_external_id",
                        external_id,
                        f"no account with external id {external_id!r} was imported from {system!r}"
                        + did_you_mean(external_id, known),
                    )
                )
        return outcomes

    return ImportTarget(
        object="contacts",
        summary="Import contacts with their roles at their accounts, from CSV or NDJSON, as a background job",
        apply=apply,
        default_source_system="import",
        check_columns=_columns_of(ContactRow),
        example_csv="external_id,first_name,last_name,email,account_external_id,role,decision_maker\n"
        "C-1,Ada,Lovelace,ada@engines.example,A-1,economic buyer,true\n",
        example_ndjson='{"external_id": "C-1", "email": "ada@engines.example", '
        '"account_external_id": "A-1"}\n',
    )


def _columns_of(model: type[BaseModel]) -> Callable[[list[str]], None]:
    allowed = sorted(model.model_fields)

    def check(columns: list[str]) -> None:
        for column in columns:
            if column not in allowed:
                raise UnreadableUpload(
                    f"unknown column {column!r}"
                    + did_you_mean(column, allowed)
                    + f" (use {', '.join(allowed)})",
                    field=column,
                )

    return check


__all__ = ["account_import", "contact_import", "import_targets", "parents_first"]
