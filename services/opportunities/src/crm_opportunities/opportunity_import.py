"""Import jobs for opportunities (``POST /imports/opportunities``, ``crm_runtime.imports``):
each row is an opportunity as a CRM export holds it (``opportunity_rows``), imported in its
original stages and dates, emitting the events a live deal would have emitted at the times it
would have emitted them.

A chunk is set-based: what its rows name is read with one ``$in`` query per collection
(opportunities, accounts and their aliases, products, sales teams; the pipelines whole), each
row is worked out in memory, and the chunk is written with one insert, one bulk write per
collection changed and one outbox write, whatever its size. A row is either applied whole or
rejected (column, value, reason, the closest known names) with nothing of it written.

Importing a row again changes only what changed: an open opportunity gets its new figures,
line items, pipeline and stage with the usual events; a closed one stays as it is when the row
says the same, and otherwise is rejected (reopen it here before importing changes)."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, TypeVar

from crm_contracts.envelope import utcnow
from crm_contracts.events.common import Actor
from crm_contracts.events.opportunities import OpportunityFigures, StageKind
from crm_contracts.events.picklists import PicklistName
from crm_runtime import UnitOfWork
from crm_runtime.imports import ImportContext, ImportRow, ImportTarget, Rejection, rejections_of
from crm_runtime.mongo import Document
from crm_runtime.picklists import Picklist, UnknownPicklistValue
from crm_runtime.suggestions import did_you_mean
from crm_runtime.uploads import UnreadableUpload
from pydantic import BaseModel, ValidationError
from pymongo import ReplaceOne, UpdateOne
from pymongo.asynchronous.client_session import AsyncClientSession
from pymongo.errors import BulkWriteError

from .domain import (
    Account,
    HistoricalStage,
    IllegalTransition,
    LineItem,
    Opportunity,
    OpportunityChanges,
    OpportunityRuleViolation,
    OpportunityStatus,
    Pipeline,
    Product,
    SalesTeam,
    StageMove,
)
from .imports import imported_id
from .names import Names, UnknownName
from .opportunity_events import (
    Emission,
    account_updated,
    opportunity_created,
    opportunity_moved,
    opportunity_updated,
)
from .opportunity_rows import LineItemEntry, OpportunityRow
from .repository import AlreadyExists, ConcurrentModification, Repositories, _Records, _to_document
from .use_cases import Policy

R = TypeVar("R", bound=BaseModel)
T = TypeVar("T")
OBJECT = "opportunities"
# Figures a row sets on an opportunity imported before (the others are its history).
IMPORTED_FIGURES = ("name", "amount", "currency", "expected_close_date", "owner_id", "probability")
_STATUS_KIND = {"won": StageKind.CLOSED_WON, "lost": StageKind.CLOSED_LOST, "open": StageKind.OPEN}


class RowRefused(Exception):
    """A row that cannot be applied as it stands: the column and value at fault, and why."""

    def __init__(self, column: str, value: Any, reason: str) -> None:
        super().__init__(reason)
        self.column = column
        self.value = value
        self.reason = reason


# -- what a chunk names ------------------------------------------------------------------------
@dataclass
class ChunkRecords:
    """The records a chunk's rows name, read with a constant number of queries."""

    opportunities: dict[str, Opportunity]
    accounts: dict[str, Account]  # by id and by alias
    pipelines: Names[Pipeline]
    pipelines_by_id: dict[str, Pipeline]
    products: Names[Product]
    teams: Names[SalesTeam]
    teams_by_id: dict[str, SalesTeam]
    loss_reasons: Picklist
    """The organisation's loss_reason picklist, read once for the chunk."""

    @classmethod
    async def load(
        cls, repos: Repositories, session: AsyncClientSession, rows: Sequence[OpportunityRow], system: str
    ) -> ChunkRecords:
        opportunity_ids = [imported_id("opportunity", system, row.external_id) for row in rows]
        opportunities = {
            o.id: o for o in await _find_in(repos.opportunities, "_id", opportunity_ids, session)
        }
        account_ids = {
            *(imported_id("account", system, r.account_external_id) for r in rows if r.account_external_id),
            *(r.account_id for r in rows if r.account_id),
            *(o.account_id for o in opportunities.values() if o.account_id),
        }
        accounts = {a.id: a for a in await _find_in(repos.accounts, "_id", account_ids, session)}
        missing = account_ids - accounts.keys()
        for account in await _find_in(repos.accounts, "aliases", missing, session):
            accounts.setdefault(account.id, account)
            for alias in set(account.aliases) & missing:
                accounts[alias] = accounts[account.id]
        pipelines = await _find(repos.pipelines, {}, session)  # few, and cached for the chunk
        product_names = {item.product for row in rows for item in row.line_items or ()}
        products = await _catalogue(repos.products, product_names, session)
        team_names = {
            *(row.sales_team_id for row in rows if row.sales_team_id),
            *(o.sales_team_id for o in opportunities.values() if o.sales_team_id),
        }
        teams = await _catalogue(repos.sales_teams, team_names, session)
        loss_reasons = (await repos.picklists.all(session)).of(PicklistName.LOSS_REASON)
        return cls(
            loss_reasons=loss_reasons,
            opportunities=opportunities,
            accounts=accounts,
            pipelines=Names("pipeline", ((p, (p.id, p.name)) for p in pipelines)),
            pipelines_by_id={p.id: p for p in pipelines},
            products=Names("product", ((p, _spellings(p.id, p.name, p.sku)) for p in products)),
            teams=Names("sales team", ((t, (t.id, t.name)) for t in teams)),
            teams_by_id={t.id: t for t in teams},
        )


def _spellings(*names: str | None) -> list[str]:
    return [name for name in names if name]


async def _find_in(
    records: _Records[R], key: str, values: Iterable[str], session: AsyncClientSession
) -> list[R]:
    wanted = sorted(set(values))
    if not wanted:
        return []
    return await _find(records, {key: {"$in": wanted}}, session)


async def _find(records: _Records[R], query: Document, session: AsyncClientSession) -> list[R]:
    docs = await records.collection.find(query, session=session).to_list()
    return [records._to_record(doc) for doc in docs]


async def _catalogue(records: _Records[R], names: set[str], session: AsyncClientSession) -> list[R]:
    """The records ``names`` name by id; the whole catalogue (small: products, teams) when
    some name is not an id, to match it by name and suggest the closest."""
    found = await _find_in(records, "_id", names, session)
    if names <= {getattr(record, "id") for record in found}:  # noqa: B009 - every record has an id
        return found
    return await _find(records, {}, session)


# -- a row resolved against them ---------------------------------------------------------------
@dataclass(frozen=True)
class ResolvedRow:
    """A valid row with every name it gives turned into the record (or id) it means."""

    number: int
    row: OpportunityRow
    opportunity_id: str
    account: Account | None
    pipeline: Pipeline
    stage_id: str | None
    history: list[HistoricalStage]
    line_items: list[LineItem] | None
    sales_team_id: str | None
    loss_reason: str | None
    currency: str
    """The row's, else the company currency (a new deal's; line items are priced in it)."""
    loss_reasons: Picklist


def resolve(
    row: OpportunityRow, number: int, records: ChunkRecords, system: str, policy: Policy
) -> ResolvedRow:
    """Raises RowRefused for the first name that means nothing here."""
    account = None
    if row.account_external_id is not None:
        account = records.accounts.get(imported_id("account", system, row.account_external_id))
        if account is None:
            raise RowRefused(
                "account_external_id",
                row.account_external_id,
                f"no account of {system!r} has external id {row.account_external_id!r}: "
                "import the accounts first",
            )
    elif row.account_id is not None:
        account = records.accounts.get(row.account_id)
        if account is None:
            raise RowRefused("account_id", row.account_id, f"account {row.account_id} does not exist")
    pipeline = _named(records.pipelines, "pipeline_id", row.pipeline_id)
    stages = Names("stage", ((s, (s.id, s.name)) for s in pipeline.stages))
    history = [
        HistoricalStage(
            stage_id=_named(stages, f"stage_history.{i}.stage_id", entry.stage_id).id,
            entered_at=entry.entered_at,
        )
        for i, entry in enumerate(row.stage_history or ())
    ]
    stage_id = _named(stages, "stage_id", row.stage_id).id if row.stage_id is not None else None
    if row.status is not None:
        stage_id = _stage_of_status(row, pipeline, stage_id or (history[-1].stage_id if history else None))
    loss_reason = None
    if row.loss_reason is not None and pipeline.loss_reasons is not None:  # the pipeline's own list
        reasons = Names("loss reason", ((r, (r,)) for r in pipeline.loss_reasons))
        loss_reason = _named(reasons, "loss_reason", row.loss_reason)
    elif row.loss_reason is not None:
        try:
            loss_reason = records.loss_reasons.resolve(row.loss_reason)
        except UnknownPicklistValue as exc:
            raise RowRefused("loss_reason", row.loss_reason, exc.reason) from exc
    sales_team_id = None
    if row.sales_team_id is not None:
        sales_team_id = _named(records.teams, "sales_team_id", row.sales_team_id).id
    currency = row.currency or policy.company_currency
    line_items = None
    if row.line_items is not None:
        line_items = [
            _line_item(records.products, index, entry, currency) for index, entry in enumerate(row.line_items)
        ]
    return ResolvedRow(
        number=number,
        row=row,
        opportunity_id=imported_id("opportunity", system, row.external_id),
        account=account,
        pipeline=pipeline,
        stage_id=stage_id,
        history=history,
        line_items=line_items,
        sales_team_id=sales_team_id,
        currency=currency,
        loss_reason=loss_reason,
        loss_reasons=records.loss_reasons,
    )


def _named(names: Names[T], column: str, value: str) -> T:
    try:
        return names.resolve(value)
    except UnknownName as exc:
        raise RowRefused(column, value, str(exc)) from exc


def _stage_of_status(row: OpportunityRow, pipeline: Pipeline, stage_id: str | None) -> str | None:
    """The stage ``status`` stands for: the named stage, if of that kind; else the pipeline's
    first stage of the kind (won, lost) or its first stage (open)."""
    assert row.status is not None
    kind = _STATUS_KIND[row.status]
    if stage_id is not None:
        stage = pipeline.stage(stage_id)
        if stage.kind is not kind:
            raise RowRefused(
                "status", row.status, f"the stage {stage.id!r} is {stage.kind.value}, not {row.status}"
            )
        return stage_id
    if kind is StageKind.OPEN:
        return None
    return next(stage.id for stage in pipeline.stages if stage.kind is kind)


def _line_item(products: Names[Product], index: int, entry: LineItemEntry, currency: str) -> LineItem:
    column = f"line_items.{index}.product"
    product = _named(products, column, entry.product)
    if product.currency != currency:
        raise RowRefused(
            column,
            entry.product,
            f"product {product.id} is priced in {product.currency}, the deal in {currency}",
        )
    try:
        return LineItem.of(
            product,
            quantity=entry.quantity,
            unit_price=entry.unit_price,
            discount_percent=entry.discount_percent,
        )
    except OpportunityRuleViolation as exc:
        raise RowRefused(column, entry.product, str(exc)) from exc


# -- a row worked out --------------------------------------------------------------------------
@dataclass
class Applied:
    """What a row does, before anything is written: the opportunity as it ends (with the
    version it was read at, None for a new one), its events, and its effect on a team's
    count and on the account (won at)."""

    opportunity: Opportunity | None
    read_version: int | None = None
    emissions: list[Emission] = field(default_factory=list)
    team_deltas: dict[str, int] = field(default_factory=dict)
    won_at: datetime | None = None


FiguresOf = Callable[[Opportunity], OpportunityFigures]


def figures_in(records: ChunkRecords) -> FiguresOf:
    """Figures of an opportunity placed by the chunk's pipelines, teams and accounts, as
    ``use_cases._figures`` places them by the stored ones."""

    def figures(opportunity: Opportunity) -> OpportunityFigures:
        return opportunity.figures(
            pipeline=records.pipelines_by_id.get(opportunity.pipeline_id),
            team=records.teams_by_id.get(opportunity.sales_team_id or ""),
            account=records.accounts.get(opportunity.account_id or ""),
        )

    return figures


def apply_new(resolved: ResolvedRow, figures: FiguresOf, policy: Policy, by: Actor) -> Applied:
    row = resolved.row
    imported = Opportunity.imported(
        pipeline=resolved.pipeline,
        stage_id=resolved.stage_id,
        created_at=row.created_at,
        closed_at=row.closed_at,
        loss_reason=resolved.loss_reason,
        default_loss_reasons=resolved.loss_reasons,
        loss_note=row.loss_note,
        competitor=row.competitor,
        by=by,
        now=utcnow(),
        history=resolved.history,
        line_items=resolved.line_items or (),
        derive_amount=row.amount is None,
        opportunity_id=resolved.opportunity_id,
        name=row.name,
        account_id=resolved.account.id if resolved.account is not None else None,
        probability=row.probability,
        amount=row.amount,
        currency=resolved.currency,
        expected_close_date=row.expected_close_date,
        owner_id=row.owner_id,
        sales_team_id=resolved.sales_team_id,
        lead_source=row.lead_source,
        campaign_id=row.campaign_id,
    )
    applied = Applied(imported.opportunity)
    for step in imported.steps:
        snapshot = step.snapshot
        if step.move is not None:
            applied.emissions += opportunity_moved(snapshot, step.move, figures(snapshot), by=by)
        elif step.changed_fields:
            changed = list(step.changed_fields)
            applied.emissions.append(
                opportunity_updated(snapshot, figures(snapshot), changed, by=by, now=snapshot.updated_at)
            )
        else:
            applied.emissions.append(opportunity_created(snapshot, figures(snapshot), by=by))
    opportunity = imported.opportunity
    if resolved.sales_team_id is not None:
        applied.team_deltas[resolved.sales_team_id] = 1
    if opportunity.status is OpportunityStatus.WON:
        applied.won_at = opportunity.closed_at
    return applied


def _same_items(a: Sequence[LineItem], b: Sequence[LineItem]) -> bool:
    def key(items: Sequence[LineItem]) -> list[tuple[Any, ...]]:
        return [(i.product_id, i.quantity, i.unit_price, i.discount_percent) for i in items]

    return key(a) == key(b)


def apply_again(
    resolved: ResolvedRow,
    existing: Opportunity,
    records: ChunkRecords,
    figures: FiguresOf,
    policy: Policy,
    by: Actor,
) -> Applied:
    """A row imported before: its new figures, line items, pipeline and stage, as
    ``update_opportunity``, ``set_line_items`` and the moves would apply them."""
    row = resolved.row
    # An omitted currency keeps the deal's own (the company currency is only a new deal's default).
    given = [
        name
        for name in IMPORTED_FIGURES
        if name in row.model_fields_set and not (name == "currency" and row.currency is None)
    ]
    values: dict[str, Any] = {name: getattr(row, name) for name in given}
    if "sales_team_id" in row.model_fields_set:
        values["sales_team_id"] = resolved.sales_team_id
    changes = OpportunityChanges.model_validate(values)
    pipeline = resolved.pipeline
    other_pipeline = existing.pipeline_id != pipeline.id
    target_stage = resolved.stage_id if resolved.stage_id not in (None, existing.stage_id) else None
    items = resolved.line_items
    if existing.is_closed:
        same = all(getattr(existing, name) == getattr(changes, name) for name in values)
        same = same and (items is None or _same_items(items, existing.line_items))
        if same and target_stage is None and not other_pipeline:
            return Applied(None)
        raise IllegalTransition(
            f"opportunity {existing.id} is closed here; reopen it before importing changes", field="stage_id"
        )
    work = existing.model_copy(deep=True)
    applied = Applied(work, read_version=existing.version)
    now = utcnow()
    previous_team = work.sales_team_id
    changed = work.update(changes, by=by, now=now)
    if "sales_team_id" in changed:
        for team_id, delta in ((work.sales_team_id, 1), (previous_team, -1)):
            if team_id is not None:
                applied.team_deltas[team_id] = applied.team_deltas.get(team_id, 0) + delta
    if changed:
        applied.emissions.append(opportunity_updated(work, figures(work), changed, by=by, now=now))
    if items is not None:
        changed_items = work.set_line_items(items, derive_amount="amount" not in given, by=by, now=now)
        if changed_items:
            applied.emissions.append(opportunity_updated(work, figures(work), changed_items, by=by, now=now))
            changed = [*changed, *changed_items]
    move: StageMove | None = None
    if other_pipeline:
        source = records.pipelines_by_id[existing.pipeline_id]
        move = work.move_to_pipeline(source, pipeline, resolved.stage_id, by=by, now=now)
    elif target_stage is not None:
        move = work.move_to_stage(
            pipeline,
            target_stage,
            by=by,
            now=now,
            loss_reason=resolved.loss_reason,
            default_loss_reasons=resolved.loss_reasons,
            loss_note=row.loss_note,
            competitor=row.competitor,
        )
    if move is not None:
        applied.emissions += opportunity_moved(work, move, figures(work), by=by)
        if move.closed and work.status is OpportunityStatus.WON:
            applied.won_at = now
        changed.append("stage_id")
    if not changed:
        return Applied(None)
    return applied


# -- the chunk ---------------------------------------------------------------------------------
@dataclass
class ChunkWrites:
    """Everything the chunk's applied rows write, gathered for one write per collection."""

    new: list[Opportunity] = field(default_factory=list)
    changed: list[tuple[Opportunity, int]] = field(default_factory=list)
    accounts: dict[str, tuple[Account, int]] = field(default_factory=dict)
    team_deltas: dict[str, int] = field(default_factory=dict)
    emissions: list[Emission] = field(default_factory=list)

    def add(self, applied: Applied, account: Account | None, by: Actor) -> None:
        opportunity = applied.opportunity
        if opportunity is None:
            return
        if applied.read_version is None:
            self.new.append(opportunity)
        else:
            self.changed.append((opportunity, applied.read_version))
        self.emissions += applied.emissions
        for team_id, delta in applied.team_deltas.items():
            self.team_deltas[team_id] = self.team_deltas.get(team_id, 0) + delta
        if applied.won_at is not None and account is not None:
            # As ``_account_won_a_deal``: the prospect becomes a customer (once per account).
            read_version = self.accounts.get(account.id, (account, account.version))[1]
            changed = account.won_deal(by=by, now=applied.won_at)
            if changed:
                self.accounts[account.id] = (account, read_version)
                self.emissions.append(account_updated(account, changed))

    async def save(self, repos: Repositories, uow: UnitOfWork) -> None:
        session = uow.session
        if self.new:
            try:
                await repos.opportunities.collection.insert_many(
                    [_to_document(o) for o in self.new], ordered=False, session=session
                )
            except BulkWriteError as exc:
                raise AlreadyExists("an opportunity of the chunk was stored concurrently") from exc
        await _replace_all(repos.opportunities.collection, self.changed, session)
        await _replace_all(repos.accounts.collection, list(self.accounts.values()), session)
        if self.team_deltas:
            await repos.sales_teams.collection.bulk_write(
                [
                    UpdateOne({"_id": t}, {"$inc": {"opportunities": d}})
                    for t, d in sorted(self.team_deltas.items())
                ],
                session=session,
            )
        if self.emissions:
            await uow.emit_many(self.emissions)


async def _replace_all(
    collection: Any, records: Sequence[tuple[Any, int]], session: AsyncClientSession
) -> None:
    """Replace each record if still at the version read (one bulk write)."""
    if not records:
        return
    result = await collection.bulk_write(
        [ReplaceOne({"_id": r.id, "version": version}, _to_document(r)) for r, version in records],
        session=session,
    )
    if result.matched_count != len(records):
        raise ConcurrentModification("a record of the chunk changed while it was imported")


def _value_at(fields: dict[str, Any], column: str) -> Any:
    """The row's value at a dotted column (``stage_history.1.entered_at``), if it has one."""
    value: Any = fields
    for part in column.split("."):
        if isinstance(value, dict):
            value = value.get(part)
        elif isinstance(value, list) and part.isdigit() and int(part) < len(value):
            value = value[int(part)]
        else:
            return None
    return None if isinstance(value, (dict, list)) else value


async def apply_opportunity_rows(
    repos: Repositories, policy: Policy, rows: list[ImportRow], context: ImportContext, uow: UnitOfWork
) -> list[Rejection]:
    """A chunk of rows: validated, resolved and worked out in memory, then written set-based."""
    rejections: list[Rejection] = []
    valid: list[tuple[ImportRow, OpportunityRow]] = []
    for row in rows:
        try:
            valid.append((row, OpportunityRow.model_validate(row.fields)))
        except ValidationError as exc:
            rejections += rejections_of(row, exc)
    records = await ChunkRecords.load(
        repos, uow.session, [parsed for _, parsed in valid], context.source_system
    )
    by = Actor(id=f"import:{context.source_system}")
    figures = figures_in(records)
    writes = ChunkWrites()
    for row, parsed in valid:
        try:
            resolved = resolve(parsed, row.number, records, context.source_system, policy)
            existing = records.opportunities.get(resolved.opportunity_id)
            if existing is None:
                applied = apply_new(resolved, figures, policy, by)
            else:
                applied = apply_again(resolved, existing, records, figures, policy, by)
        except RowRefused as exc:
            rejections.append(Rejection.of(row, exc.column, exc.value, exc.reason))
            continue
        except OpportunityRuleViolation as exc:
            rejections.append(Rejection.of(row, exc.field, _value_at(row.fields, exc.field), str(exc)))
            continue
        account = resolved.account
        if existing is not None and existing.account_id is not None:
            account = records.accounts.get(existing.account_id)
        writes.add(applied, account, by)
    await writes.save(repos, uow)
    return rejections


# -- the target --------------------------------------------------------------------------------
COLUMNS = frozenset(OpportunityRow.model_fields)


def check_columns(columns: list[str]) -> None:
    for column in columns:
        if column not in COLUMNS:
            raise UnreadableUpload(
                f"unknown column {column!r}"
                + (did_you_mean(column, COLUMNS) or "; use " + ", ".join(sorted(COLUMNS))),
                field=column,
            )


def opportunity_import(repos: Repositories, policy: Policy) -> ImportTarget:
    """``POST /imports/opportunities``: rows as ``OpportunityRow`` describes them."""

    async def apply(rows: list[ImportRow], context: ImportContext, uow: UnitOfWork) -> list[Rejection]:
        return await apply_opportunity_rows(repos, policy, rows, context, uow)

    return ImportTarget(
        object=OBJECT,
        summary="Import opportunities in their original stages, dates and line items (CSV or NDJSON)",
        apply=apply,
        default_source_system="import",
        check_columns=check_columns,
        example_csv=(
            "external_id,name,account_external_id,amount,currency,created_at,stage_history,line_items,closed_at\n"
            "O-1,Engines 2025,A-1,,EUR,2025-01-10T09:00:00Z,"
            "prospecting@2025-01-10T09:00:00Z|proposal@2025-02-01T09:00:00Z|closed_won@2025-03-01T17:00:00Z,"
            "Widget*3@19.90|Setup fee,2025-03-01T17:00:00Z\n"
        ),
        example_ndjson=(
            '{"external_id": "O-1", "name": "Engines 2025", "status": "lost", "loss_reason": "price", '
            '"line_items": [{"product": "Widget", "quantity": 3}], "created_at": "2025-01-10T09:00:00Z", '
            '"closed_at": "2025-03-01T17:00:00Z"}\n'
        ),
    )


__all__ = ["ChunkRecords", "ResolvedRow", "apply_opportunity_rows", "check_columns", "opportunity_import"]
