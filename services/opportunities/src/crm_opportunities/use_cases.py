"""What the opportunities service does, shared by its HTTP routes and its Kafka handlers. Each
use case runs inside one unit of work: the records and the events they emit commit together.

A change that emits more than one event (a move that closes the opportunity emits
``opportunity.stage_changed`` and ``opportunity.closed``) gives them the same aggregate version:
both describe the one state the change produced."""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from datetime import date, datetime
from decimal import Decimal
from typing import Any, Literal, TypeVar

from crm_contracts import catalog
from crm_contracts.catalog import EventSpec
from crm_contracts.envelope import utcnow
from crm_contracts.events.common import Actor
from crm_contracts.events.leads import LeadConverted, Utm
from crm_contracts.events.opportunities import (
    ContactConsent,
    ForecastCategory,
    OpportunityFigures,
)
from crm_contracts.events.picklists import PicklistCode, PicklistName
from crm_runtime import UnitOfWork, make_event
from crm_runtime.picklists import Picklist
from pydantic import BaseModel

from .batch_records import ConversionBatch
from .domain import (
    DEFAULT_LOSS_REASONS,
    DEFAULT_PIPELINE_ID,
    Account,
    AccountChanges,
    Address,
    Case,
    Contact,
    ContactChanges,
    ContactRole,
    IllegalTransition,
    InvalidRequest,
    LineItem,
    Opportunity,
    OpportunityChanges,
    OpportunityStatus,
    Pipeline,
    Product,
    SalesTeam,
    Stage,
    StageMove,
    build_case,
    consent_from_import,
    consent_from_lead,
    default_pipeline,
    normalise_domain,
)
from .imports import AccountRow, ContactRow, imported_id
from .opportunity_events import (
    SOURCE,
    account_updated,
    opportunity_created,
    opportunity_moved,
    opportunity_updated,
)
from .repository import AlreadyExists, ConcurrentModification, Repositories

M = TypeVar("M", bound=BaseModel)


class NotFound(Exception):
    def __init__(self, what: str, record_id: str, *, field: str) -> None:
        super().__init__(f"{what} {record_id} does not exist")
        self.field = field


class StaleVersion(Exception):
    """The caller's ``expected_version`` is not the current one: it decided on old data."""


class DuplicateRecord(Exception):
    def __init__(self, message: str, *, field: str) -> None:
        super().__init__(message)
        self.field = field


@dataclass(frozen=True)
class Policy:
    """Installation-wide settings the rules need."""

    company_currency: str  # of new records that name no currency (CRM_COMPANY_CURRENCY)
    default_loss_reasons: Sequence[str] = DEFAULT_LOSS_REASONS


async def _emit(
    uow: UnitOfWork, spec: EventSpec[M], data: M, *, subject: str, version: int, time: datetime
) -> None:
    await uow.emit(spec, make_event(spec, data, source=SOURCE, subject=subject, version=version, time=time))


def _check_version(what: str, record_id: str, current: int, expected: int | None) -> None:
    if expected is not None and expected != current:
        raise StaleVersion(f"{what} {record_id} is at version {current}, not {expected}")


# -- pipelines --------------------------------------------------------------------------------
async def seed_default_pipeline(repos: Repositories, uow: UnitOfWork, policy: Policy) -> bool:
    """Create the default pipeline unless it exists; never touches a customised one. Replicas
    starting together race on its id: the loser's transaction fails and finds it next time."""
    if await repos.pipelines.get(DEFAULT_PIPELINE_ID, uow.session) is not None:
        return False
    await create_pipeline(repos, uow, policy, default_pipeline(utcnow()))
    return True


async def create_pipeline(
    repos: Repositories, uow: UnitOfWork, policy: Policy, pipeline: Pipeline
) -> Pipeline:
    try:
        await repos.pipelines.add(pipeline, uow.session)
    except AlreadyExists as exc:
        raise DuplicateRecord(f"pipeline {pipeline.id} exists already", field="id") from exc
    await _emit_pipeline(uow, catalog.PIPELINE_CREATED, pipeline, policy)
    return pipeline


async def revise_pipeline(
    repos: Repositories,
    uow: UnitOfWork,
    policy: Policy,
    pipeline_id: str,
    *,
    name: str,
    stages: Sequence[Stage],
    loss_reasons: Sequence[str] | None,
    expected_version: int | None = None,
) -> Pipeline:
    """Redefine a pipeline without stranding the open opportunities in it."""
    pipeline = await _pipeline(repos, uow, pipeline_id)
    _check_version("pipeline", pipeline_id, pipeline.version, expected_version)
    read_version = pipeline.version
    in_use = await repos.opportunities.open_by_stage(pipeline_id, uow.session)
    if pipeline.revise(
        name=name, stages=stages, loss_reasons=loss_reasons, stages_in_use=in_use, now=utcnow()
    ):
        await repos.pipelines.update(pipeline, read_version, uow.session)
        await _emit_pipeline(uow, catalog.PIPELINE_UPDATED, pipeline, policy)
    return pipeline


async def _emit_pipeline(uow: UnitOfWork, spec: EventSpec[Any], pipeline: Pipeline, policy: Policy) -> None:
    defined = pipeline.defined_event(policy.default_loss_reasons)
    await _emit(uow, spec, defined, subject=pipeline.id, version=pipeline.version, time=defined.defined_at)


async def _pipeline(repos: Repositories, uow: UnitOfWork, pipeline_id: str) -> Pipeline:
    pipeline = await repos.pipelines.get(pipeline_id, uow.session)
    if pipeline is None:
        raise NotFound("pipeline", pipeline_id, field="pipeline_id")
    return pipeline


# -- accounts ---------------------------------------------------------------------------------
async def create_account(repos: Repositories, uow: UnitOfWork, account: Account) -> Account:
    """Store a new account; its domain must not belong to another account (one company, one
    account), and its parent must exist."""
    if await repos.accounts.find(account.id, uow.session) is not None:
        raise DuplicateRecord(f"account {account.id} exists already", field="id")
    if account.parent_account_id is not None:
        parent = await repos.accounts.find(account.parent_account_id, uow.session)
        if parent is None:
            raise NotFound("account", account.parent_account_id, field="parent_account_id")
        account.parent_account_id = parent.id
    if account.domain is not None:
        holder = await repos.accounts.holder_of_domain(account.domain, uow.session)
        if holder is not None:
            raise DuplicateRecord(f"account {holder} already has domain {account.domain}", field="domain")
        await repos.accounts.claim_domain(account.domain, account.id, uow.session)
    await repos.accounts.add(account, uow.session)
    await _emit(
        uow,
        catalog.ACCOUNT_CREATED,
        account.created_event(),
        subject=account.id,
        version=account.version,
        time=account.created_at,
    )
    return account


async def _account(repos: Repositories, uow: UnitOfWork, account_id: str, *, field: str) -> Account:
    account = await repos.accounts.find(account_id, uow.session)
    if account is None:
        raise NotFound("account", account_id, field=field)
    return account


async def update_account(
    repos: Repositories,
    uow: UnitOfWork,
    account_id: str,
    changes: AccountChanges,
    *,
    by: Actor,
    expected_version: int | None = None,
    when: datetime | None = None,
) -> tuple[Account, list[str]]:
    """Change an account (found by its id or an alias). A new parent must exist and must not
    sit below the account; a new domain must not be another account's."""
    account = await _account(repos, uow, account_id, field="account_id")
    _check_version("account", account.id, account.version, expected_version)
    read_version = account.version
    ancestry: list[str] = []
    if changes.parent_account_id is not None:
        parent = await _account(repos, uow, changes.parent_account_id, field="parent_account_id")
        changes = changes.model_copy(update={"parent_account_id": parent.id})
        ancestry = await repos.accounts.ancestry(parent.id, uow.session)
    old_domain = account.domain
    changed = account.update(changes, ancestry=ancestry, by=by, now=when or utcnow())
    if not changed:
        return account, changed
    if "domain" in changed:
        if account.domain is not None:
            holder = await repos.accounts.holder_of_domain(account.domain, uow.session)
            if holder is not None:
                raise DuplicateRecord(f"account {holder} already has domain {account.domain}", field="domain")
            await repos.accounts.claim_domain(account.domain, account.id, uow.session)
        if old_domain is not None:
            await repos.accounts.release_domain(old_domain, account.id, uow.session)
    await repos.accounts.update(account, read_version, uow.session)
    await _emit_account_updated(uow, account, changed)
    return account, changed


async def _emit_account_updated(uow: UnitOfWork, account: Account, changed: list[str]) -> None:
    await uow.emit(*account_updated(account, changed))


async def _account_won_a_deal(
    repos: Repositories, uow: UnitOfWork, account_id: str | None, *, by: Actor, when: datetime
) -> None:
    """A won opportunity turns its prospect account into a customer, in the same transaction."""
    if account_id is None:
        return
    account = await repos.accounts.get(account_id, uow.session)
    if account is None:
        return
    read_version = account.version
    changed = account.won_deal(by=by, now=when)
    if changed:
        await repos.accounts.update(account, read_version, uow.session)
        await _emit_account_updated(uow, account, changed)


# -- contacts ---------------------------------------------------------------------------------
async def create_contact(repos: Repositories, uow: UnitOfWork, contact: Contact) -> Contact:
    if await repos.contacts.get(contact.id, uow.session) is not None:
        raise DuplicateRecord(f"contact {contact.id} exists already", field="id")
    if contact.account_id is not None:
        account = await _account(repos, uow, contact.account_id, field="account_id")
        contact.account_id = account.id
    await repos.contacts.add(contact, uow.session)
    await _emit(
        uow,
        catalog.CONTACT_CREATED,
        contact.created_event(),
        subject=contact.id,
        version=contact.version,
        time=contact.created_at,
    )
    return contact


async def update_contact(
    repos: Repositories,
    uow: UnitOfWork,
    contact_id: str,
    changes: ContactChanges,
    *,
    by: Actor,
    expected_version: int | None = None,
) -> tuple[Contact, list[str]]:
    """Change a contact's details, account, role or decision-maker / influencer flags."""
    contact = await repos.contacts.get(contact_id, uow.session)
    if contact is None:
        raise NotFound("contact", contact_id, field="contact_id")
    _check_version("contact", contact_id, contact.version, expected_version)
    read_version = contact.version
    if changes.account_id is not None:
        account = await _account(repos, uow, changes.account_id, field="account_id")
        changes = changes.model_copy(update={"account_id": account.id})
    changed = contact.update(changes, by=by, now=utcnow())
    if changed:
        await repos.contacts.update(contact, read_version, uow.session)
        await _emit(
            uow,
            catalog.CONTACT_UPDATED,
            contact.updated_event(changed),
            subject=contact.id,
            version=contact.version,
            time=contact.updated_at,
        )
    return contact, changed


# -- products and sales teams -----------------------------------------------------------------
async def create_product(repos: Repositories, uow: UnitOfWork, product: Product) -> Product:
    try:
        await repos.products.add(product, uow.session)
    except AlreadyExists as exc:
        raise DuplicateRecord(f"product {product.id} exists already", field="id") from exc
    return product


async def revise_product(
    repos: Repositories,
    uow: UnitOfWork,
    product_id: str,
    changes: dict[str, Any],
    *,
    expected_version: int | None = None,
) -> Product:
    product = await repos.products.get(product_id, uow.session)
    if product is None:
        raise NotFound("product", product_id, field="product_id")
    _check_version("product", product_id, product.version, expected_version)
    read_version = product.version
    if product.revise(changes, now=utcnow()):
        await repos.products.update(product, read_version, uow.session)
    return product


async def create_sales_team(repos: Repositories, uow: UnitOfWork, team: SalesTeam) -> SalesTeam:
    try:
        await repos.sales_teams.add(team, uow.session)
    except AlreadyExists as exc:
        raise DuplicateRecord(f"sales team {team.id} exists already", field="id") from exc
    return team


async def _sales_team(
    repos: Repositories, uow: UnitOfWork, team_id: str, expected_version: int | None
) -> SalesTeam:
    team = await repos.sales_teams.get(team_id, uow.session)
    if team is None:
        raise NotFound("sales team", team_id, field="sales_team_id")
    _check_version("sales team", team_id, team.version, expected_version)
    return team


async def revise_sales_team(
    repos: Repositories,
    uow: UnitOfWork,
    team_id: str,
    changes: dict[str, Any],
    *,
    expected_version: int | None = None,
) -> SalesTeam:
    """Rename a team or change its manager or region; opportunities name the team by id, so
    their next events carry the new region."""
    team = await _sales_team(repos, uow, team_id, expected_version)
    read_version = team.version
    if team.revise(changes, now=utcnow()):
        await repos.sales_teams.update(team, read_version, uow.session)
    return team


async def delete_sales_team(
    repos: Repositories, uow: UnitOfWork, team_id: str, *, expected_version: int | None = None
) -> None:
    """Remove a team no opportunity names. Closed opportunities keep their team (their case and
    the win/loss figures refer to it), so a team that closed deals stays."""
    team = await _sales_team(repos, uow, team_id, expected_version)
    if team.opportunities > 0:
        raise IllegalTransition(
            f"sales team {team_id} works {team.opportunities} opportunities: assign them to another first",
            field="sales_team_id",
        )
    if not await repos.sales_teams.delete_unassigned(team_id, team.version, uow.session):
        raise ConcurrentModification(f"sales team {team_id} changed while being deleted")


async def _assign_team(repos: Repositories, uow: UnitOfWork, team_id: str, delta: int) -> None:
    if not await repos.sales_teams.count_assignment(team_id, delta, uow.session) and delta > 0:
        raise NotFound("sales team", team_id, field="sales_team_id")


# -- opportunities ----------------------------------------------------------------------------
async def _check_contacts(
    repos: Repositories, uow: UnitOfWork, primary_contact_id: str | None, roles: Sequence[ContactRole]
) -> None:
    if primary_contact_id is not None and await repos.contacts.get(primary_contact_id, uow.session) is None:
        raise NotFound("contact", primary_contact_id, field="primary_contact_id")
    for index, role in enumerate(roles):
        if await repos.contacts.get(role.contact_id, uow.session) is None:
            raise NotFound("contact", role.contact_id, field=f"contact_roles.{index}.contact_id")


async def _figures(
    repos: Repositories,
    uow: UnitOfWork,
    opportunity: Opportunity,
    *,
    pipeline: Pipeline | None = None,
    account: Account | None = None,
) -> OpportunityFigures:
    """The figures with what reporting breaks them down by, read as they stand now: the
    stage's position in the pipeline, the team's region, the account's industry."""
    if pipeline is None or pipeline.id != opportunity.pipeline_id:
        pipeline = await repos.pipelines.get(opportunity.pipeline_id, uow.session)
    if opportunity.account_id is None:
        account = None
    elif account is None or account.id != opportunity.account_id:
        account = await repos.accounts.get(opportunity.account_id, uow.session)
    team = None
    if opportunity.sales_team_id is not None:
        team = await repos.sales_teams.get(opportunity.sales_team_id, uow.session)
    return opportunity.figures(pipeline=pipeline, team=team, account=account)


@dataclass(frozen=True)
class NewOpportunity:
    opportunity_id: str
    name: str
    account_id: str
    by: Actor
    currency: str
    pipeline_id: str = DEFAULT_PIPELINE_ID
    stage_id: str | None = None
    probability: int | None = None
    amount: Decimal | None = None
    expected_close_date: date | None = None
    owner_id: str | None = None
    primary_contact_id: str | None = None
    lead_id: str | None = None
    lead_source: PicklistCode | None = None
    campaign_id: str | None = None
    utm: Utm | None = None
    contact_roles: Sequence[ContactRole] = ()
    sales_team_id: str | None = None
    created_at: datetime | None = None
    forecast_category: ForecastCategory | None = None


async def open_opportunity(repos: Repositories, uow: UnitOfWork, new: NewOpportunity) -> Opportunity:
    if await repos.opportunities.get(new.opportunity_id, uow.session) is not None:
        raise DuplicateRecord(f"opportunity {new.opportunity_id} exists already", field="id")
    account = await _account(repos, uow, new.account_id, field="account_id")
    await _check_contacts(repos, uow, new.primary_contact_id, new.contact_roles)
    pipeline = await _pipeline(repos, uow, new.pipeline_id)
    if new.sales_team_id is not None:
        await _assign_team(repos, uow, new.sales_team_id, +1)
    opportunity = Opportunity.open(
        opportunity_id=new.opportunity_id,
        name=new.name,
        account_id=account.id,
        pipeline=pipeline,
        by=new.by,
        now=new.created_at or utcnow(),
        stage_id=new.stage_id,
        probability=new.probability,
        amount=new.amount,
        currency=new.currency,
        expected_close_date=new.expected_close_date,
        owner_id=new.owner_id,
        primary_contact_id=new.primary_contact_id,
        lead_id=new.lead_id,
        lead_source=new.lead_source,
        utm=new.utm,
        campaign_id=new.campaign_id,
        contact_roles=new.contact_roles,
        sales_team_id=new.sales_team_id,
        forecast_category=new.forecast_category,
    )
    await repos.opportunities.add(opportunity, uow.session)
    figures = await _figures(repos, uow, opportunity, pipeline=pipeline, account=account)
    await _emit_created(uow, opportunity, figures, by=new.by)
    return opportunity


async def _emit_created(
    uow: UnitOfWork, opportunity: Opportunity, figures: OpportunityFigures, *, by: Actor
) -> None:
    await uow.emit(*opportunity_created(opportunity, figures, by=by))


async def _opportunity(
    repos: Repositories, uow: UnitOfWork, opportunity_id: str, expected_version: int | None
) -> Opportunity:
    opportunity = await repos.opportunities.get(opportunity_id, uow.session)
    if opportunity is None:
        raise NotFound("opportunity", opportunity_id, field="opportunity_id")
    _check_version("opportunity", opportunity_id, opportunity.version, expected_version)
    return opportunity


async def loss_reasons(repos: Repositories, uow: UnitOfWork) -> Picklist:
    """The organisation's loss_reason picklist as it stands in this transaction."""
    return (await repos.picklists.all(uow.session)).of(PicklistName.LOSS_REASON)


async def move_opportunity(
    repos: Repositories,
    uow: UnitOfWork,
    policy: Policy,
    opportunity_id: str,
    stage_id: str,
    *,
    by: Actor,
    expected_version: int | None = None,
    loss_reason: str | None = None,
    probability: int | None = None,
    loss_note: str | None = None,
    competitor: str | None = None,
) -> Opportunity:
    opportunity = await _opportunity(repos, uow, opportunity_id, expected_version)
    read_version = opportunity.version
    pipeline = await _pipeline(repos, uow, opportunity.pipeline_id)
    now = utcnow()
    move = opportunity.move_to_stage(
        pipeline,
        stage_id,
        by=by,
        now=now,
        loss_reason=loss_reason,
        probability=probability,
        default_loss_reasons=await loss_reasons(repos, uow),
        loss_note=loss_note,
        competitor=competitor,
    )
    await repos.opportunities.update(opportunity, read_version, uow.session)
    await _record_move(repos, uow, opportunity, move, pipeline=pipeline, by=by)
    return opportunity


async def move_opportunity_to_pipeline(
    repos: Repositories,
    uow: UnitOfWork,
    opportunity_id: str,
    pipeline_id: str,
    *,
    by: Actor,
    stage_id: str | None = None,
    expected_version: int | None = None,
    probability: int | None = None,
) -> Opportunity:
    """Take an open opportunity into another pipeline, into the stage named (or the stage of
    the same id there); reported as a stage change with the previous pipeline."""
    opportunity = await _opportunity(repos, uow, opportunity_id, expected_version)
    read_version = opportunity.version
    source = await _pipeline(repos, uow, opportunity.pipeline_id)
    target = await _pipeline(repos, uow, pipeline_id)
    move = opportunity.move_to_pipeline(
        source, target, stage_id, by=by, now=utcnow(), probability=probability
    )
    await repos.opportunities.update(opportunity, read_version, uow.session)
    await _record_move(repos, uow, opportunity, move, pipeline=target, by=by)
    return opportunity


async def reopen_opportunity(
    repos: Repositories,
    uow: UnitOfWork,
    opportunity_id: str,
    *,
    by: Actor,
    stage_id: str | None = None,
    expected_version: int | None = None,
    probability: int | None = None,
) -> Opportunity:
    opportunity = await _opportunity(repos, uow, opportunity_id, expected_version)
    read_version = opportunity.version
    pipeline = await _pipeline(repos, uow, opportunity.pipeline_id)
    move = opportunity.reopen(pipeline, by=by, now=utcnow(), stage_id=stage_id, probability=probability)
    await repos.opportunities.update(opportunity, read_version, uow.session)
    await _record_move(repos, uow, opportunity, move, pipeline=pipeline, by=by)
    return opportunity


async def _record_move(
    repos: Repositories,
    uow: UnitOfWork,
    opportunity: Opportunity,
    move: StageMove,
    *,
    pipeline: Pipeline,
    by: Actor,
) -> None:
    """The events of one move, and a won deal's effect on its account."""
    figures = await _figures(repos, uow, opportunity, pipeline=pipeline)
    await _emit_move(uow, opportunity, move, figures, by=by)
    if move.closed and opportunity.status is OpportunityStatus.WON:
        await _account_won_a_deal(repos, uow, opportunity.account_id, by=by, when=move.current.entered_at)


async def _emit_move(
    uow: UnitOfWork, opportunity: Opportunity, move: StageMove, figures: OpportunityFigures, *, by: Actor
) -> None:
    await uow.emit_many(opportunity_moved(opportunity, move, figures, by=by))


async def update_opportunity(
    repos: Repositories,
    uow: UnitOfWork,
    opportunity_id: str,
    changes: OpportunityChanges,
    *,
    by: Actor,
    expected_version: int | None = None,
) -> Opportunity:
    opportunity = await _opportunity(repos, uow, opportunity_id, expected_version)
    read_version = opportunity.version
    await _check_contacts(repos, uow, changes.primary_contact_id, changes.contact_roles or ())
    previous_team = opportunity.sales_team_id
    now = utcnow()
    changed = opportunity.update(changes, by=by, now=now)
    if "sales_team_id" in changed:
        if opportunity.sales_team_id is not None:
            await _assign_team(repos, uow, opportunity.sales_team_id, +1)
        if previous_team is not None:
            await _assign_team(repos, uow, previous_team, -1)
    if changed:
        await repos.opportunities.update(opportunity, read_version, uow.session)
        await _emit_updated(repos, uow, opportunity, changed, by=by, now=now)
    return opportunity


@dataclass(frozen=True)
class LineRequest:
    product_id: str
    quantity: Decimal
    unit_price: Decimal | None = None
    discount_percent: Decimal = Decimal("0")


async def set_line_items(
    repos: Repositories,
    uow: UnitOfWork,
    opportunity_id: str,
    lines: Sequence[LineRequest],
    *,
    derive_amount: bool,
    by: Actor,
    expected_version: int | None = None,
) -> Opportunity:
    """Put products on the deal, priced from the catalogue unless a price is given."""
    opportunity = await _opportunity(repos, uow, opportunity_id, expected_version)
    read_version = opportunity.version
    products = await repos.products.get_many(sorted({line.product_id for line in lines}), uow.session)
    items: list[LineItem] = []
    for index, line in enumerate(lines):
        where = f"items.{index}.product_id"
        product = products.get(line.product_id)
        if product is None:
            raise NotFound("product", line.product_id, field=where)
        if product.currency != opportunity.currency:
            raise InvalidRequest(
                f"product {product.id} is priced in {product.currency}, "
                f"the opportunity in {opportunity.currency}",
                field=where,
            )
        try:
            items.append(
                LineItem.of(
                    product,
                    quantity=line.quantity,
                    unit_price=line.unit_price,
                    discount_percent=line.discount_percent,
                )
            )
        except InvalidRequest as exc:
            raise InvalidRequest(str(exc), field=where) from exc
    now = utcnow()
    changed = opportunity.set_line_items(items, derive_amount=derive_amount, by=by, now=now)
    if changed:
        await repos.opportunities.update(opportunity, read_version, uow.session)
        await _emit_updated(repos, uow, opportunity, changed, by=by, now=now)
    return opportunity


async def _emit_updated(
    repos: Repositories,
    uow: UnitOfWork,
    opportunity: Opportunity,
    changed: list[str],
    *,
    by: Actor,
    now: datetime,
) -> None:
    figures = await _figures(repos, uow, opportunity)
    await uow.emit(*opportunity_updated(opportunity, figures, changed, by=by, now=now))


# -- lead conversion --------------------------------------------------------------------------
@dataclass
class ConversionOutcome:
    """The records a conversion resolved to, and which of them it created."""

    account_id: str
    contact_id: str
    opportunity_id: str | None
    created: list[str] = field(default_factory=list)


async def apply_lead_conversion(
    repos: Repositories, uow: UnitOfWork, converted: LeadConverted
) -> ConversionOutcome:
    """Create (or link) the account, contact and opportunity a converted lead names, with the
    ids the event carries: however often the conversion arrives, each record is created once."""
    outcome = ConversionOutcome(account_id="", contact_id="", opportunity_id=None)
    outcome.account_id = await _conversion_account(repos, uow, converted, outcome)
    outcome.contact_id = await _conversion_contact(repos, uow, converted, outcome)
    spec = converted.opportunity
    if spec is None:
        return outcome
    outcome.opportunity_id = spec.opportunity_id
    if await repos.opportunities.get(spec.opportunity_id, uow.session) is not None:
        return outcome
    await open_opportunity(
        repos,
        uow,
        NewOpportunity(
            opportunity_id=spec.opportunity_id,
            name=spec.name,
            account_id=outcome.account_id,
            by=converted.converted_by,
            pipeline_id=spec.pipeline_id or DEFAULT_PIPELINE_ID,
            amount=spec.amount,
            currency=spec.currency,
            expected_close_date=spec.expected_close_date,
            owner_id=spec.owner_id,
            primary_contact_id=outcome.contact_id,
            lead_id=converted.lead_id,
            lead_source=converted.lead_source,
            campaign_id=converted.campaign_id,
            utm=converted.utm,
            created_at=converted.converted_at,
        ),
    )
    outcome.created.append("opportunity")
    return outcome


async def apply_lead_conversions(
    repos: Repositories,
    uow: UnitOfWork,
    conversions: Sequence[LeadConverted],
    *,
    each: Callable[[int], AbstractContextManager[object]] = lambda _: contextlib.nullcontext(),
) -> list[ConversionOutcome]:
    """``apply_lead_conversion`` for each of ``conversions`` in order, set-based: the records
    they name are read with one ``$in`` query per collection, the conversions applied by
    ``apply_lead_conversion`` itself over them in memory, and the new records stored with one
    insert per collection and one outbox write. ``each(i)`` is entered around the i-th (the
    consumer's per-event trace). Anything a conversion does not normally do, or a record
    stored concurrently, raises and nothing is written."""
    batch = await ConversionBatch.load(repos, uow.session, list(conversions))
    outcomes = []
    async with uow.one_outbox_write():
        for index, converted in enumerate(conversions):
            with each(index):
                outcomes.append(await apply_lead_conversion(batch.repos, uow, converted))
        await batch.save()
    return outcomes


async def _conversion_account(
    repos: Repositories, uow: UnitOfWork, converted: LeadConverted, outcome: ConversionOutcome
) -> str:
    spec = converted.account
    existing = await repos.accounts.find(spec.account_id, uow.session)
    if existing is not None:
        await _fill_account_blanks(repos, uow, existing, converted)
        return existing.id
    domain = normalise_domain(spec.domain)
    if domain is not None:
        holder = await repos.accounts.holder_of_domain(domain, uow.session)
        if holder is not None:
            # The same company under another id: link to it and remember the id it came with.
            await repos.accounts.add_alias(holder, spec.account_id, uow.session)
            matched = await repos.accounts.get(holder, uow.session)
            if matched is not None:
                await _fill_account_blanks(repos, uow, matched, converted)
            return holder
    # Also when ``is_new`` is false but the account is unknown here: recreating it from the
    # event keeps the conversion rather than losing its contact and opportunity.
    owner_id = converted.opportunity.owner_id if converted.opportunity else None
    account = Account(
        id=spec.account_id,
        name=spec.name or _person_name(converted) or "Unnamed account",
        industry=spec.industry,
        employees=spec.employees,
        domain=domain,
        website=spec.website,
        address=Address(city=spec.city, country=spec.country),
        owner_id=owner_id,
        originating_lead_id=converted.lead_id,
        created_at=converted.converted_at,
        updated_at=converted.converted_at,
    )
    await create_account(repos, uow, account)
    outcome.created.append("account")
    return account.id


async def _conversion_contact(
    repos: Repositories, uow: UnitOfWork, converted: LeadConverted, outcome: ConversionOutcome
) -> str:
    spec = converted.contact
    consent = consent_of_conversion(converted)
    existing = await repos.contacts.get(spec.contact_id, uow.session)
    if existing is not None:
        if consent is not None:
            read_version = existing.version
            changed = existing.take_consent(consent, by=converted.converted_by, now=utcnow())
            if changed:
                await _store_contact_change(repos, uow, existing, read_version, changed)
        return spec.contact_id
    contact = Contact(
        id=spec.contact_id,
        account_id=outcome.account_id,
        first_name=spec.first_name,
        last_name=spec.last_name,
        email=str(spec.email).lower() if spec.email else None,
        phone=spec.phone,
        job_title=spec.job_title,
        consent=consent,
        originating_lead_id=converted.lead_id,
        created_at=converted.converted_at,
        updated_at=converted.converted_at,
    )
    await create_contact(repos, uow, contact)
    outcome.created.append("contact")
    return contact.id


def consent_of_conversion(converted: LeadConverted) -> ContactConsent | None:
    """The lead's consent as the contact records it: said when the lead was (last) captured."""
    given = converted.contact.consent
    if given is None:
        return None
    return ContactConsent(
        do_not_email=given.do_not_email,
        do_not_call=given.do_not_call,
        recorded_at=converted.captured_at or converted.converted_at,
        source=consent_from_lead(converted.lead_id),
    )


async def _fill_account_blanks(
    repos: Repositories, uow: UnitOfWork, account: Account, converted: LeadConverted
) -> None:
    """A matched account takes what the lead knows only where it knows nothing: its own data
    may be newer than the lead's (edited, imported, another conversion)."""
    read_version = account.version
    changed = account.fill_blank_website(converted.account.website, by=converted.converted_by, now=utcnow())
    if not changed:
        return
    await repos.accounts.update(account, read_version, uow.session)
    await _emit(
        uow,
        catalog.ACCOUNT_UPDATED,
        account.updated_event(changed),
        subject=account.id,
        version=account.version,
        time=account.updated_at,
    )


async def _store_contact_change(
    repos: Repositories, uow: UnitOfWork, contact: Contact, read_version: int, changed: list[str]
) -> None:
    await repos.contacts.update(contact, read_version, uow.session)
    await _emit(
        uow,
        catalog.CONTACT_UPDATED,
        contact.updated_event(changed),
        subject=contact.id,
        version=contact.version,
        time=contact.updated_at,
    )


def _person_name(converted: LeadConverted) -> str:
    contact = converted.contact
    return " ".join(part for part in (contact.first_name, contact.last_name) if part)


async def load_case(repos: Repositories, opportunity_id: str) -> Case:
    """The dossier of a closed opportunity (read-only, so outside any transaction)."""
    opportunity = await repos.opportunities.get(opportunity_id)
    if opportunity is None:
        raise NotFound("opportunity", opportunity_id, field="opportunity_id")
    account: Account | None = None
    contacts: list[Contact] = []
    if opportunity.account_id is not None:  # a deal with no account has only its own contacts
        account = await repos.accounts.find(opportunity.account_id)
        contacts = await repos.contacts.of_account(opportunity.account_id)
    involved = [opportunity.primary_contact_id, *(role.contact_id for role in opportunity.contact_roles)]
    known = {contact.id for contact in contacts}
    for contact_id in dict.fromkeys(c for c in involved if c is not None and c not in known):
        contact = await repos.contacts.get(contact_id)
        if contact is not None:
            contacts.append(contact)
    team = await repos.sales_teams.get(opportunity.sales_team_id) if opportunity.sales_team_id else None
    return build_case(opportunity, account, contacts, team)


# -- bulk import ------------------------------------------------------------------------------
@dataclass(frozen=True)
class Imported:
    status: Literal["created", "updated", "matched", "unchanged"]
    record_id: str
    changed_fields: Sequence[str] = ()


def _outcome(record_id: str, changed: Sequence[str]) -> Imported:
    return Imported("updated", record_id, changed) if changed else Imported("unchanged", record_id)


_ACCOUNT_ROW_FIELDS = (
    "name",
    "type",
    "tier",
    "industry",
    "employees",
    "annual_revenue",
    "annual_revenue_currency",
    "year_established",
    "website",
    "owner_id",
)
_ADDRESS_ROW_FIELDS = ("street", "postal_code", "city", "region", "country")


async def import_account(
    repos: Repositories, uow: UnitOfWork, system: str, row: AccountRow, *, by: Actor
) -> Imported:
    """Create the account, or bring the one this export created before up to date with the
    fields the row gives. An account the row only matches (by domain, or an id merged into
    another company) belongs to another origin and is not overwritten."""
    account_id = imported_id("account", system, row.external_id)
    given = row.model_fields_set
    parent_id = None
    if row.parent_external_id is not None:
        parent = await repos.accounts.find(
            imported_id("account", system, row.parent_external_id), uow.session
        )
        if parent is None:
            raise NotFound("parent account", row.parent_external_id, field="parent_external_id")
        parent_id = parent.id
    existing = await repos.accounts.find(account_id, uow.session)
    if existing is not None:
        if existing.id != account_id:
            return Imported("matched", existing.id)
        values: dict[str, Any] = {name: getattr(row, name) for name in _ACCOUNT_ROW_FIELDS if name in given}
        if "domain" in given:
            values["domain"] = row.domain
        if given & set(_ADDRESS_ROW_FIELDS):
            parts = {name: getattr(row, name) for name in _ADDRESS_ROW_FIELDS if name in given}
            values["address"] = existing.address.model_copy(update=parts)
        if "parent_external_id" in given:
            values["parent_account_id"] = parent_id
        _, changed = await update_account(
            repos, uow, existing.id, AccountChanges.model_validate(values), by=by
        )
        return _outcome(existing.id, changed)
    domain = normalise_domain(row.domain or row.website)
    if domain is not None:
        holder = await repos.accounts.holder_of_domain(domain, uow.session)
        if holder is not None:
            await repos.accounts.add_alias(holder, account_id, uow.session)
            return Imported("matched", holder)
    created_at = row.created_at or utcnow()
    account = Account(
        id=account_id,
        name=row.name,
        type=row.type,
        tier=row.tier,
        industry=row.industry,
        employees=row.employees,
        annual_revenue=row.annual_revenue,
        annual_revenue_currency=row.annual_revenue_currency,
        year_established=row.year_established,
        website=row.website,
        domain=domain,
        address=Address(**{name: getattr(row, name) for name in _ADDRESS_ROW_FIELDS}),
        parent_account_id=parent_id,
        owner_id=row.owner_id,
        external_system=system,
        external_id=row.external_id,
        created_at=created_at,
        updated_at=created_at,
    )
    await create_account(repos, uow, account)
    return Imported("created", account.id)


_CONTACT_ROW_FIELDS = (
    "first_name",
    "last_name",
    "email",
    "phone",
    "job_title",
    "role",
    "decision_maker",
    "influencer",
)


async def _row_account(
    repos: Repositories, uow: UnitOfWork, system: str, account_id: str | None, account_external_id: str | None
) -> Account | None:
    if account_id is not None:
        return await _account(repos, uow, account_id, field="account_id")
    if account_external_id is not None:
        account = await repos.accounts.find(imported_id("account", system, account_external_id), uow.session)
        if account is None:
            raise NotFound("account", account_external_id, field="account_external_id")
        return account
    return None


def consent_of_import_row(system: str, row: ContactRow, held: ContactConsent | None) -> ContactConsent | None:
    """The consent an import row states (None: the row has no consent column); a flag it
    leaves out keeps the contact's. The same flags as held are no new statement."""
    given = row.model_fields_set & {"do_not_email", "do_not_call"}
    if not given or all(getattr(row, name) is None for name in given):
        return None
    flags = {
        name: getattr(row, name)
        if name in given and getattr(row, name) is not None
        else getattr(held, name, False)
        for name in ("do_not_email", "do_not_call")
    }
    if held is not None and flags == {"do_not_email": held.do_not_email, "do_not_call": held.do_not_call}:
        return held
    return ContactConsent(**flags, recorded_at=utcnow(), source=consent_from_import(system))


async def import_contact(
    repos: Repositories, uow: UnitOfWork, system: str, row: ContactRow, *, by: Actor
) -> Imported:
    """Create the contact, update the one this export created before with the fields the row
    gives, or match a contact already here with the same email (one person, one contact)."""
    contact_id = imported_id("contact", system, row.external_id)
    account = await _row_account(repos, uow, system, row.account_id, row.account_external_id)
    given = row.model_fields_set
    existing = await repos.contacts.get(contact_id, uow.session)
    if existing is not None:
        values: dict[str, Any] = {name: getattr(row, name) for name in _CONTACT_ROW_FIELDS if name in given}
        if account is not None:
            values["account_id"] = account.id
        consent = consent_of_import_row(system, row, existing.consent)
        if consent is not None and consent != existing.consent:
            values["consent"] = consent
        _, changed = await update_contact(
            repos, uow, existing.id, ContactChanges.model_validate(values), by=by
        )
        return _outcome(existing.id, changed)
    email = str(row.email).lower() if row.email else None
    if email is not None:
        twin = await repos.contacts.with_email(email, uow.session)
        if twin is not None:
            # Kept so that a lookup by this export's id finds the contact it was matched to.
            await repos.contacts.add_alias(twin.id, contact_id, uow.session)
            return Imported("matched", twin.id)
    created_at = row.created_at or utcnow()
    contact = Contact(
        id=contact_id,
        account_id=account.id if account is not None else None,
        first_name=row.first_name,
        last_name=row.last_name,
        email=email,
        phone=row.phone,
        job_title=row.job_title,
        role=row.role,
        decision_maker=row.decision_maker,
        influencer=row.influencer,
        consent=consent_of_import_row(system, row, None),
        created_at=created_at,
        updated_at=created_at,
    )
    await create_contact(repos, uow, contact)
    return Imported("created", contact.id)
