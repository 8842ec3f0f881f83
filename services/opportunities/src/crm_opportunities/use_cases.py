"""What the opportunities service does, shared by its HTTP routes and its Kafka handlers. Each
use case runs inside one unit of work: the records and the events they emit commit together.

A change that emits more than one event (a move that closes the opportunity emits
``opportunity.stage_changed`` and ``opportunity.closed``) gives them the same aggregate version:
both describe the one state the change produced."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import date, datetime
from decimal import Decimal
from typing import Any, Literal

from crm_contracts import catalog
from crm_contracts.envelope import utcnow
from crm_contracts.events.common import Actor
from crm_contracts.events.leads import LeadConverted, LeadSource
from crm_contracts.events.opportunities import (
    OpportunityClosed,
    OpportunityCreated,
    OpportunityStageChanged,
    OpportunityUpdated,
    StageKind,
)
from crm_runtime import UnitOfWork, make_event

from .domain import (
    DEFAULT_LOSS_REASONS,
    DEFAULT_PIPELINE_ID,
    Account,
    Address,
    Case,
    Contact,
    ContactRole,
    IllegalTransition,
    InvalidRequest,
    LineItem,
    Opportunity,
    OpportunityChanges,
    Pipeline,
    Product,
    SalesTeam,
    Stage,
    StageMove,
    build_case,
    default_pipeline,
    normalise_domain,
)
from .imports import AccountRow, OpportunityRow, imported_id
from .repository import AlreadyExists, Repositories

SOURCE = "/crm/opportunities"


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

    default_loss_reasons: Sequence[str] = DEFAULT_LOSS_REASONS


# -- pipelines --------------------------------------------------------------------------------
async def seed_default_pipeline(repos: Repositories) -> bool:
    """Create the default pipeline unless it exists; never touches a customised one."""
    return await repos.pipelines.add_if_absent(default_pipeline(utcnow()))


async def create_pipeline(repos: Repositories, uow: UnitOfWork, pipeline: Pipeline) -> Pipeline:
    try:
        await repos.pipelines.add(pipeline, uow.session)
    except AlreadyExists as exc:
        raise DuplicateRecord(f"pipeline {pipeline.id} exists already", field="id") from exc
    return pipeline


async def revise_pipeline(
    repos: Repositories,
    uow: UnitOfWork,
    pipeline_id: str,
    *,
    name: str,
    stages: Sequence[Stage],
    loss_reasons: Sequence[str] | None,
    expected_version: int | None = None,
) -> Pipeline:
    """Redefine a pipeline without stranding the open opportunities in it."""
    pipeline = await _pipeline(repos, uow, pipeline_id)
    if expected_version is not None and expected_version != pipeline.version:
        raise StaleVersion(f"pipeline {pipeline_id} is at version {pipeline.version}, not {expected_version}")
    read_version = pipeline.version
    in_use = await repos.opportunities.open_by_stage(pipeline_id, uow.session)
    if pipeline.revise(
        name=name, stages=stages, loss_reasons=loss_reasons, stages_in_use=in_use, now=utcnow()
    ):
        await repos.pipelines.update(pipeline, read_version, uow.session)
    return pipeline


async def _pipeline(repos: Repositories, uow: UnitOfWork, pipeline_id: str) -> Pipeline:
    pipeline = await repos.pipelines.get(pipeline_id, uow.session)
    if pipeline is None:
        raise NotFound("pipeline", pipeline_id, field="pipeline_id")
    return pipeline


# -- accounts and contacts --------------------------------------------------------------------
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
    await uow.emit(
        catalog.ACCOUNT_CREATED,
        make_event(
            catalog.ACCOUNT_CREATED,
            account.created_event(),
            source=SOURCE,
            subject=account.id,
            version=account.version,
            time=account.created_at,
        ),
    )
    return account


async def create_contact(repos: Repositories, uow: UnitOfWork, contact: Contact) -> Contact:
    if await repos.contacts.get(contact.id, uow.session) is not None:
        raise DuplicateRecord(f"contact {contact.id} exists already", field="id")
    if contact.account_id is not None:
        account = await repos.accounts.find(contact.account_id, uow.session)
        if account is None:
            raise NotFound("account", contact.account_id, field="account_id")
        contact.account_id = account.id
    await repos.contacts.add(contact, uow.session)
    await uow.emit(
        catalog.CONTACT_CREATED,
        make_event(
            catalog.CONTACT_CREATED,
            contact.created_event(),
            source=SOURCE,
            subject=contact.id,
            version=contact.version,
            time=contact.created_at,
        ),
    )
    return contact


# -- products ---------------------------------------------------------------------------------
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
    if expected_version is not None and expected_version != product.version:
        raise StaleVersion(f"product {product_id} is at version {product.version}, not {expected_version}")
    read_version = product.version
    if product.revise(changes, now=utcnow()):
        await repos.products.update(product, read_version, uow.session)
    return product


# -- opportunities ----------------------------------------------------------------------------
async def _check_contacts(
    repos: Repositories, uow: UnitOfWork, primary_contact_id: str | None, roles: Sequence[ContactRole]
) -> None:
    if primary_contact_id is not None and await repos.contacts.get(primary_contact_id, uow.session) is None:
        raise NotFound("contact", primary_contact_id, field="primary_contact_id")
    for index, role in enumerate(roles):
        if await repos.contacts.get(role.contact_id, uow.session) is None:
            raise NotFound("contact", role.contact_id, field=f"contact_roles.{index}.contact_id")


@dataclass(frozen=True)
class NewOpportunity:
    opportunity_id: str
    name: str
    account_id: str
    by: Actor
    pipeline_id: str = DEFAULT_PIPELINE_ID
    stage_id: str | None = None
    probability: int | None = None
    amount: Decimal | None = None
    currency: str = "EUR"
    expected_close_date: date | None = None
    owner_id: str | None = None
    primary_contact_id: str | None = None
    lead_id: str | None = None
    lead_source: LeadSource | None = None
    campaign_id: str | None = None
    contact_roles: Sequence[ContactRole] = ()
    sales_team: SalesTeam | None = None
    created_at: datetime | None = None


async def open_opportunity(repos: Repositories, uow: UnitOfWork, new: NewOpportunity) -> Opportunity:
    if await repos.opportunities.get(new.opportunity_id, uow.session) is not None:
        raise DuplicateRecord(f"opportunity {new.opportunity_id} exists already", field="id")
    account = await repos.accounts.find(new.account_id, uow.session)
    if account is None:
        raise NotFound("account", new.account_id, field="account_id")
    if (
        new.primary_contact_id is not None
        and await repos.contacts.get(new.primary_contact_id, uow.session) is None
    ):
        raise NotFound("contact", new.primary_contact_id, field="primary_contact_id")
    pipeline = await _pipeline(repos, uow, new.pipeline_id)
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
        campaign_id=new.campaign_id,
        contact_roles=new.contact_roles,
        sales_team=new.sales_team,
    )
    await repos.opportunities.add(opportunity, uow.session)
    await uow.emit(
        catalog.OPPORTUNITY_CREATED,
        make_event(
            catalog.OPPORTUNITY_CREATED,
            OpportunityCreated(opportunity=opportunity.figures(), created_by=new.by),
            source=SOURCE,
            subject=opportunity.id,
            version=opportunity.version,
            time=opportunity.created_at,
        ),
    )
    return opportunity


async def _opportunity(
    repos: Repositories, uow: UnitOfWork, opportunity_id: str, expected_version: int | None
) -> Opportunity:
    opportunity = await repos.opportunities.get(opportunity_id, uow.session)
    if opportunity is None:
        raise NotFound("opportunity", opportunity_id, field="opportunity_id")
    if expected_version is not None and expected_version != opportunity.version:
        raise StaleVersion(
            f"opportunity {opportunity_id} is at version {opportunity.version}, not {expected_version}"
        )
    return opportunity


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
        default_loss_reasons=policy.default_loss_reasons,
    )
    await repos.opportunities.update(opportunity, read_version, uow.session)
    await _emit_move(uow, opportunity, move, by=by, now=now)
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
    now = utcnow()
    move = opportunity.reopen(pipeline, by=by, now=now, stage_id=stage_id, probability=probability)
    await repos.opportunities.update(opportunity, read_version, uow.session)
    await _emit_move(uow, opportunity, move, by=by, now=now)
    return opportunity


async def _emit_move(
    uow: UnitOfWork, opportunity: Opportunity, move: StageMove, *, by: Actor, now: datetime
) -> None:
    figures = opportunity.figures()
    changed = OpportunityStageChanged(
        opportunity_id=opportunity.id,
        pipeline_id=opportunity.pipeline_id,
        previous_stage_id=move.previous.stage_id,
        previous_stage_name=move.previous.stage_name,
        previous_stage_kind=move.previous.stage_kind,
        stage_id=opportunity.stage_id,
        stage_name=opportunity.stage_name,
        stage_kind=opportunity.stage_kind,
        probability=opportunity.probability,
        forecast_category=opportunity.forecast_category,
        amount=opportunity.amount,
        currency=opportunity.currency,
        expected_close_date=opportunity.expected_close_date,
        changed_at=now,
        changed_by=by,
        opportunity=figures,
    )
    spec = catalog.OPPORTUNITY_STAGE_CHANGED
    await uow.emit(
        spec,
        make_event(
            spec, changed, source=SOURCE, subject=opportunity.id, version=opportunity.version, time=now
        ),
    )
    if move.closed:
        closed = OpportunityClosed(
            opportunity_id=opportunity.id,
            won=opportunity.stage_kind is StageKind.CLOSED_WON,
            amount=opportunity.amount,
            currency=opportunity.currency,
            loss_reason=opportunity.loss_reason,
            closed_at=now,
            closed_by=by,
            opportunity=figures,
        )
        spec_closed = catalog.OPPORTUNITY_CLOSED
        await uow.emit(
            spec_closed,
            make_event(
                spec_closed,
                closed,
                source=SOURCE,
                subject=opportunity.id,
                version=opportunity.version,
                time=now,
            ),
        )


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
    now = utcnow()
    changed = opportunity.update(changes, by=by, now=now)
    if changed:
        await repos.opportunities.update(opportunity, read_version, uow.session)
        await _emit_updated(uow, opportunity, changed, by=by, now=now)
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
        await _emit_updated(uow, opportunity, changed, by=by, now=now)
    return opportunity


async def _emit_updated(
    uow: UnitOfWork, opportunity: Opportunity, changed: list[str], *, by: Actor, now: datetime
) -> None:
    data = OpportunityUpdated(
        opportunity=opportunity.figures(), changed_fields=changed, updated_at=now, updated_by=by
    )
    spec = catalog.OPPORTUNITY_UPDATED
    await uow.emit(
        spec,
        make_event(spec, data, source=SOURCE, subject=opportunity.id, version=opportunity.version, time=now),
    )


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
            created_at=converted.converted_at,
        ),
    )
    outcome.created.append("opportunity")
    return outcome


async def _conversion_account(
    repos: Repositories, uow: UnitOfWork, converted: LeadConverted, outcome: ConversionOutcome
) -> str:
    spec = converted.account
    existing = await repos.accounts.find(spec.account_id, uow.session)
    if existing is not None:
        return existing.id
    domain = normalise_domain(spec.domain)
    if domain is not None:
        holder = await repos.accounts.holder_of_domain(domain, uow.session)
        if holder is not None:
            # The same company under another id: link to it and remember the id it came with.
            await repos.accounts.add_alias(holder, spec.account_id, uow.session)
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
    if await repos.contacts.get(spec.contact_id, uow.session) is not None:
        return spec.contact_id
    contact = Contact(
        id=spec.contact_id,
        account_id=outcome.account_id,
        first_name=spec.first_name,
        last_name=spec.last_name,
        email=str(spec.email) if spec.email else None,
        phone=spec.phone,
        job_title=spec.job_title,
        originating_lead_id=converted.lead_id,
        created_at=converted.converted_at,
        updated_at=converted.converted_at,
    )
    await create_contact(repos, uow, contact)
    outcome.created.append("contact")
    return contact.id


def _person_name(converted: LeadConverted) -> str:
    contact = converted.contact
    return " ".join(part for part in (contact.first_name, contact.last_name) if part)


async def load_case(repos: Repositories, opportunity_id: str) -> Case:
    """The dossier of a closed opportunity (read-only, so outside any transaction)."""
    opportunity = await repos.opportunities.get(opportunity_id)
    if opportunity is None:
        raise NotFound("opportunity", opportunity_id, field="opportunity_id")
    account = await repos.accounts.find(opportunity.account_id)
    contacts = await repos.contacts.of_account(opportunity.account_id)
    involved = [opportunity.primary_contact_id, *(role.contact_id for role in opportunity.contact_roles)]
    known = {contact.id for contact in contacts}
    for contact_id in dict.fromkeys(c for c in involved if c is not None and c not in known):
        contact = await repos.contacts.get(contact_id)
        if contact is not None:
            contacts.append(contact)
    return build_case(opportunity, account, contacts)


# -- bulk import ------------------------------------------------------------------------------
@dataclass(frozen=True)
class Imported:
    status: Literal["created", "updated", "matched", "unchanged"]
    record_id: str
    changed_fields: Sequence[str] = ()


async def import_account(repos: Repositories, uow: UnitOfWork, system: str, row: AccountRow) -> Imported:
    """Create the account unless it was imported before or its domain is already a company
    here; an existing account is matched, not overwritten."""
    account_id = imported_id("account", system, row.external_id)
    existing = await repos.accounts.find(account_id, uow.session)
    if existing is not None:
        return Imported("matched", existing.id)
    domain = normalise_domain(row.domain or row.website)
    if domain is not None:
        holder = await repos.accounts.holder_of_domain(domain, uow.session)
        if holder is not None:
            await repos.accounts.add_alias(holder, account_id, uow.session)
            return Imported("matched", holder)
    parent_id = None
    if row.parent_external_id is not None:
        parent = await repos.accounts.find(
            imported_id("account", system, row.parent_external_id), uow.session
        )
        if parent is None:
            raise NotFound("parent account", row.parent_external_id, field="parent_external_id")
        parent_id = parent.id
    created_at = row.created_at or utcnow()
    account = Account(
        id=account_id,
        name=row.name,
        type=row.type,
        tier=row.tier,
        industry=row.industry,
        employees=row.employees,
        annual_revenue=row.annual_revenue,
        website=row.website,
        domain=domain,
        address=Address(
            street=row.street,
            postal_code=row.postal_code,
            city=row.city,
            region=row.region,
            country=row.country,
        ),
        parent_account_id=parent_id,
        owner_id=row.owner_id,
        created_at=created_at,
        updated_at=created_at,
    )
    await create_account(repos, uow, account)
    return Imported("created", account.id)


_IMPORTED_FIGURES = ("name", "amount", "currency", "expected_close_date", "owner_id", "probability")


async def import_opportunity(
    repos: Repositories, uow: UnitOfWork, policy: Policy, system: str, row: OpportunityRow, *, by: Actor
) -> Imported:
    """Create the opportunity in its original stage with its original dates, or bring one
    imported before up to date (figures, then stage) with the usual events."""
    opportunity_id = imported_id("opportunity", system, row.external_id)
    if row.account_id is not None:
        account = await repos.accounts.find(row.account_id, uow.session)
        reference, field_name = row.account_id, "account_id"
    else:
        assert row.account_external_id is not None  # the row model demands one of the two
        account = await repos.accounts.find(
            imported_id("account", system, row.account_external_id), uow.session
        )
        reference, field_name = row.account_external_id, "account_external_id"
    if account is None:
        raise NotFound("account", reference, field=field_name)
    pipeline = await _pipeline(repos, uow, row.pipeline_id)
    existing = await repos.opportunities.get(opportunity_id, uow.session)
    if existing is None:
        return await _import_new_opportunity(
            repos, uow, policy, row, opportunity_id, account.id, pipeline, by
        )
    if existing.pipeline_id != pipeline.id:
        raise InvalidRequest(
            f"imported before into pipeline {existing.pipeline_id}; moving pipelines is not supported",
            field="pipeline_id",
        )
    given = row.model_fields_set & set(_IMPORTED_FIGURES)
    changes = OpportunityChanges.model_validate({name: getattr(row, name) for name in given})
    target_stage = row.stage_id if row.stage_id not in (None, existing.stage_id) else None
    if existing.is_closed:
        if target_stage is None and all(getattr(existing, name) == getattr(changes, name) for name in given):
            return Imported("unchanged", existing.id)
        raise IllegalTransition(
            f"opportunity {existing.id} is closed here; reopen it before importing changes", field="stage_id"
        )
    read_version = existing.version
    now = utcnow()
    changed = existing.update(changes, by=by, now=now)
    if changed:
        await _emit_updated(uow, existing, changed, by=by, now=now)
    if target_stage is not None:
        move = existing.move_to_stage(
            pipeline,
            target_stage,
            by=by,
            now=now,
            loss_reason=row.loss_reason,
            default_loss_reasons=policy.default_loss_reasons,
        )
        await _emit_move(uow, existing, move, by=by, now=now)
        changed = [*changed, "stage_id"]
    if not changed:
        return Imported("unchanged", existing.id)
    await repos.opportunities.update(existing, read_version, uow.session)
    return Imported("updated", existing.id, changed)


async def _import_new_opportunity(
    repos: Repositories,
    uow: UnitOfWork,
    policy: Policy,
    row: OpportunityRow,
    opportunity_id: str,
    account_id: str,
    pipeline: Pipeline,
    by: Actor,
) -> Imported:
    created_at = row.created_at or utcnow()
    opportunity = Opportunity.imported(
        pipeline=pipeline,
        stage_id=row.stage_id or pipeline.first_stage.id,
        created_at=created_at,
        closed_at=row.closed_at,
        loss_reason=row.loss_reason,
        default_loss_reasons=policy.default_loss_reasons,
        by=by,
        opportunity_id=opportunity_id,
        name=row.name,
        account_id=account_id,
        probability=row.probability,
        amount=row.amount,
        currency=row.currency,
        expected_close_date=row.expected_close_date,
        owner_id=row.owner_id,
        lead_source=row.lead_source,
        campaign_id=row.campaign_id,
    )
    await repos.opportunities.add(opportunity, uow.session)
    figures = opportunity.figures()
    created = catalog.OPPORTUNITY_CREATED
    await uow.emit(
        created,
        make_event(
            created,
            OpportunityCreated(opportunity=figures, created_by=by),
            source=SOURCE,
            subject=opportunity.id,
            version=opportunity.version,
            time=created_at,
        ),
    )
    if opportunity.closed_at is not None:
        closed = catalog.OPPORTUNITY_CLOSED
        data = OpportunityClosed(
            opportunity_id=opportunity.id,
            won=opportunity.stage_kind is StageKind.CLOSED_WON,
            amount=opportunity.amount,
            currency=opportunity.currency,
            loss_reason=opportunity.loss_reason,
            closed_at=opportunity.closed_at,
            closed_by=by,
            opportunity=figures,
        )
        await uow.emit(
            closed,
            make_event(
                closed,
                data,
                source=SOURCE,
                subject=opportunity.id,
                version=opportunity.version,
                time=opportunity.closed_at,
            ),
        )
    return Imported("created", opportunity.id)
