"""HTTP routes of the opportunities service: pipelines, products, sales teams, accounts,
contacts and opportunities."""

from __future__ import annotations

import uuid
from collections.abc import Awaitable, Callable
from datetime import datetime
from decimal import Decimal
from typing import Annotated, Any, Generic, Literal, TypeVar

from crm_contracts.envelope import utcnow
from crm_contracts.events.common import (
    Actor,
    Currency,
    Id,
    IsoDate,
    IsoDateTime,
    Money,
    MultiLine,
    Percent,
    ShortText,
    SingleLine,
)
from crm_contracts.events.opportunities import AccountTier, AccountType, ContactConsent, ForecastCategory
from crm_contracts.events.picklists import PicklistCode
from crm_runtime import ApiError, ServiceRuntime, UnitOfWork
from crm_runtime.external_refs import ByExternalReference, ExternalReference
from fastapi import APIRouter, Depends, Query, Response, status
from pydantic import BaseModel, ConfigDict, EmailStr, Field, model_validator

from .domain import (
    CONSENT_FROM_API,
    DEFAULT_PIPELINE_ID,
    Account,
    AccountChanges,
    Address,
    Case,
    Competitor,
    Contact,
    ContactChanges,
    ContactRole,
    IllegalTransition,
    InvalidRequest,
    LossNote,
    LossReason,
    Opportunity,
    OpportunityChanges,
    Pipeline,
    Product,
    SalesTeam,
    Stage,
    YearEstablished,
    check_definition,
    normalise_domain,
)
from .imports import (
    ImportRow,
    imported_id,
)
from .repository import AlreadyExists, ConcurrentModification, Repositories
from .use_cases import (
    DuplicateRecord,
    LineRequest,
    NewOpportunity,
    NotFound,
    Policy,
    StaleVersion,
    create_account,
    create_contact,
    create_pipeline,
    create_product,
    create_sales_team,
    delete_sales_team,
    load_case,
    move_opportunity,
    move_opportunity_to_pipeline,
    open_opportunity,
    reopen_opportunity,
    revise_pipeline,
    revise_product,
    revise_sales_team,
    set_line_items,
    update_account,
    update_contact,
    update_opportunity,
)

T = TypeVar("T")
R = TypeVar("R", bound=ImportRow)
ExpectedVersion = Annotated[
    int | None,
    Field(
        default=None, ge=1, description="The version the caller read; a different current version is a 409"
    ),
]
Limit = Annotated[int, Query(ge=1, le=500)]
SourceSystem = Annotated[
    str,
    Query(
        pattern=r"^[A-Za-z0-9][A-Za-z0-9_.\-]{0,63}$",
        description="The CRM the records come from; with each external_id it identifies a record",
    ),
]


def _lookup_description(what: str, matched_by: str | None) -> str:
    matched = (
        f" -- or the {what} already here it was matched to (by {matched_by}), which answers the imported "
        "id too"
        if matched_by
        else ""
    )
    return (
        f"`external_system` and `external_id` (both, or neither) find the {what} an import from that "
        f"system brought in under that id{matched}. The pair is the key: equal ids of two systems are "
        "two records."
    )


class _Body(BaseModel):
    model_config = ConfigDict(extra="forbid", str_strip_whitespace=True)


class Page(BaseModel, Generic[T]):
    items: list[T]
    next_cursor: str | None = Field(description="Pass as ?cursor= for the next page; null on the last")


def _page(items: list[Any], limit: int) -> dict[str, Any]:
    return {"items": items, "next_cursor": items[-1].id if len(items) == limit else None}


# -- request bodies ---------------------------------------------------------------------------
class NewPipeline(_Body):
    id: Id | None = Field(default=None, description="Generated when omitted")
    name: ShortText
    stages: list[Stage] = Field(min_length=3, max_length=50, description="In pipeline order")
    loss_reasons: list[LossReason] | None = Field(
        default=None, max_length=100, description="Omit to use the installation's default list"
    )

    @model_validator(mode="after")
    def _usable(self) -> NewPipeline:
        check_definition(self.stages, self.loss_reasons)
        return self


class PipelineRevision(_Body):
    name: ShortText
    stages: list[Stage] = Field(min_length=3, max_length=50, description="In pipeline order")
    loss_reasons: list[LossReason] | None = Field(default=None, max_length=100)
    expected_version: ExpectedVersion = None

    @model_validator(mode="after")
    def _usable(self) -> PipelineRevision:
        check_definition(self.stages, self.loss_reasons)
        return self


class NewProduct(_Body):
    id: Id | None = Field(default=None, description="Generated when omitted")
    sku: str | None = Field(default=None, max_length=64, pattern=r"^[A-Za-z0-9][A-Za-z0-9_.\-]*$")
    name: ShortText
    description: Annotated[str, MultiLine(max_length=2000)] | None = None
    list_price: Money
    currency: Currency | None = Field(
        default=None, description="The company currency (CRM_COMPANY_CURRENCY) when omitted"
    )
    active: bool = True


class ProductPatch(_Body):
    """Only the fields present change; line items already priced keep their price."""

    sku: str | None = Field(default=None, max_length=64, pattern=r"^[A-Za-z0-9][A-Za-z0-9_.\-]*$")
    name: ShortText | None = None
    description: Annotated[str, MultiLine(max_length=2000)] | None = None
    list_price: Money | None = None
    currency: Currency | None = None
    active: bool | None = None
    expected_version: ExpectedVersion = None

    @model_validator(mode="after")
    def _required_stay(self) -> ProductPatch:
        for name in ("name", "list_price", "currency", "active"):
            if name in self.model_fields_set and getattr(self, name) is None:
                raise ValueError(f"{name} cannot be cleared")
        return self


class LineItemRequest(_Body):
    product_id: Id
    quantity: Decimal = Field(gt=0, max_digits=12, decimal_places=4)
    unit_price: Money | None = Field(default=None, description="The product's list price when omitted")
    discount_percent: Decimal = Field(default=Decimal("0"), ge=0, le=100, decimal_places=2)


class LineItemsRequest(_Body):
    items: list[LineItemRequest] = Field(max_length=200)
    derive_amount: bool = Field(default=True, description="Set the amount to the line items' total")
    by: Actor
    expected_version: ExpectedVersion = None


class NewAccount(_Body):
    id: Id | None = Field(default=None, description="Generated when omitted")
    name: ShortText
    type: AccountType = AccountType.PROSPECT
    tier: AccountTier | None = None
    industry: Annotated[str, SingleLine(max_length=100)] | None = None
    employees: int | None = Field(default=None, ge=0, le=10_000_000)
    annual_revenue: Money | None = None
    annual_revenue_currency: Currency | None = Field(
        default=None, description="The revenue's currency; the organisation's own when omitted"
    )
    year_established: YearEstablished | None = None
    website: Annotated[str, SingleLine(max_length=300)] | None = None
    domain: str | None = Field(
        default=None,
        max_length=253,
        pattern=r"^[A-Za-z0-9.\-]+$",
        description="Derived from the website when omitted; unique across accounts",
    )
    address: Address = Address()
    parent_account_id: Id | None = None
    owner_id: Id | None = None
    originating_lead_id: Id | None = None


class AccountPatch(_Body):
    """Only the fields present change; null clears the optional ones. A new website moves the
    domain along when the domain was the old website's."""

    name: ShortText | None = None
    type: AccountType | None = None
    tier: AccountTier | None = None
    industry: Annotated[str, SingleLine(max_length=100)] | None = None
    employees: int | None = Field(default=None, ge=0, le=10_000_000)
    annual_revenue: Money | None = None
    annual_revenue_currency: Currency | None = None
    year_established: YearEstablished | None = None
    website: Annotated[str, SingleLine(max_length=300)] | None = None
    domain: str | None = Field(default=None, max_length=253, pattern=r"^[A-Za-z0-9.\-]+$")
    address: Address | None = None
    parent_account_id: Id | None = Field(
        default=None, description="The parent company; neither the account itself nor one below it"
    )
    owner_id: Id | None = None
    by: Actor
    expected_version: ExpectedVersion = None


class ConsentGiven(_Body):
    """The person's contact preferences as stated now; stored with the time of the request and
    source 'api'."""

    do_not_email: bool = False
    do_not_call: bool = False

    def recorded(self, now: datetime) -> ContactConsent:
        return ContactConsent(
            do_not_email=self.do_not_email,
            do_not_call=self.do_not_call,
            recorded_at=now,
            source=CONSENT_FROM_API,
        )


class NewContact(_Body):
    id: Id | None = Field(default=None, description="Generated when omitted")
    account_id: Id | None = None
    first_name: Annotated[str, SingleLine(max_length=100)] | None = None
    last_name: Annotated[str, SingleLine(max_length=100)] | None = None
    email: EmailStr | None = None
    phone: str | None = Field(default=None, max_length=40, pattern=r"^[0-9+()./ \-]{3,40}$")
    job_title: Annotated[str, SingleLine(max_length=200)] | None = None
    role: Annotated[str, SingleLine(max_length=100)] | None = Field(default=None, examples=["economic buyer"])
    decision_maker: bool = False
    influencer: bool = False
    originating_lead_id: Id | None = None
    consent: ConsentGiven | None = Field(default=None, description="Omitted: no consent recorded")

    @model_validator(mode="after")
    def _identifiable(self) -> NewContact:
        if not (self.first_name or self.last_name or self.email):
            raise ValueError("a contact needs a first name, a last name or an email")
        return self


class ContactPatch(_Body):
    """Only the fields present change; null clears the optional ones."""

    account_id: Id | None = None
    first_name: Annotated[str, SingleLine(max_length=100)] | None = None
    last_name: Annotated[str, SingleLine(max_length=100)] | None = None
    email: EmailStr | None = None
    phone: str | None = Field(default=None, max_length=40, pattern=r"^[0-9+()./ \-]{3,40}$")
    job_title: Annotated[str, SingleLine(max_length=200)] | None = None
    role: Annotated[str, SingleLine(max_length=100)] | None = Field(default=None, examples=["economic buyer"])
    decision_maker: bool | None = None
    influencer: bool | None = None
    consent: ConsentGiven | None = Field(
        default=None, description="A new statement of consent, recorded now (it cannot be cleared)"
    )
    by: Actor
    expected_version: ExpectedVersion = None


class NewSalesTeam(_Body):
    id: Id | None = Field(default=None, description="Generated when omitted")
    name: ShortText
    manager_id: Id | None = None
    region: Annotated[str, SingleLine(max_length=100)] | None = Field(default=None, examples=["DACH"])


class SalesTeamPatch(_Body):
    name: ShortText | None = None
    manager_id: Id | None = None
    region: Annotated[str, SingleLine(max_length=100)] | None = None
    expected_version: ExpectedVersion = None


class NewOpportunityBody(_Body):
    id: Id | None = Field(default=None, description="Generated when omitted")
    name: ShortText
    account_id: Id
    primary_contact_id: Id | None = None
    owner_id: Id | None = None
    pipeline_id: Id = DEFAULT_PIPELINE_ID
    stage_id: Id | None = Field(default=None, description="The pipeline's first stage when omitted")
    probability: Percent | None = Field(default=None, description="Overrides the stage's default")
    amount: Money | None = None
    currency: Currency | None = Field(
        default=None, description="The company currency (CRM_COMPANY_CURRENCY) when omitted"
    )
    expected_close_date: IsoDate | None = None
    lead_id: Id | None = None
    lead_source: PicklistCode | None = None
    campaign_id: Id | None = None
    contact_roles: list[ContactRole] = Field(default_factory=list, max_length=50)
    sales_team_id: Id | None = None
    created_at: IsoDateTime | None = Field(
        default=None, description="When it really happened (historical imports); now when omitted"
    )
    forecast_category: ForecastCategory | None = Field(
        default=None,
        description="Overrides the stage's default forecast category (omitted, pipeline, best_case, "
        "commit; closed comes with winning); the stage's when omitted",
    )
    by: Actor


class OpportunityPatch(_Body):
    """Only the fields present change; null clears expected_close_date, owner_id,
    primary_contact_id and sales_team_id, and puts forecast_category back to the stage's."""

    name: ShortText | None = None
    amount: Money | None = None
    currency: Currency | None = None
    expected_close_date: IsoDate | None = None
    owner_id: Id | None = None
    probability: Percent | None = None
    primary_contact_id: Id | None = None
    contact_roles: list[ContactRole] | None = Field(default=None, max_length=50)
    sales_team_id: Id | None = None
    forecast_category: ForecastCategory | None = Field(
        default=None,
        description="Overrides the stage's default until the next stage move; null: the stage's again",
    )
    by: Actor
    expected_version: ExpectedVersion = None


class StageMoveRequest(_Body):
    stage_id: Id
    by: Actor
    expected_version: ExpectedVersion = None
    loss_reason: LossReason | None = Field(
        default=None,
        description="Closing as lost: a value, label or alias of the loss_reason picklist (GET "
        "/picklists/loss_reason), matched ignoring case, spaces and punctuation and stored as the value; "
        "a blank one gets the list's blank_value or is refused. A pipeline with loss reasons of its own "
        "takes one of those, spelled exactly.",
    )
    loss_note: LossNote | None = Field(
        default=None, description="Closing as lost: the rep's free-text account of why"
    )
    competitor: Competitor | None = Field(default=None, description="Closing as lost: who won the deal")
    probability: Percent | None = Field(default=None, description="Overrides the stage's default")


class PipelineMoveRequest(_Body):
    pipeline_id: Id
    stage_id: Id | None = Field(
        default=None,
        description="An open stage of the target pipeline; the stage of the same id when omitted",
    )
    by: Actor
    expected_version: ExpectedVersion = None
    probability: Percent | None = Field(default=None, description="Overrides the stage's default")


class ReopenRequest(_Body):
    stage_id: Id | None = Field(default=None, description="The last open stage it was in when omitted")
    by: Actor
    expected_version: ExpectedVersion = None
    probability: Percent | None = None


# -- routes -----------------------------------------------------------------------------------
def routers(runtime: ServiceRuntime, repos: Repositories, policy: Policy) -> list[APIRouter]:
    read = [Depends(runtime.auth.require("read"))]
    write = [Depends(runtime.auth.require("write"))]
    admin = [Depends(runtime.auth.require("admin"))]  # the organisation's configuration

    async def run(work: Callable[[UnitOfWork], Awaitable[T]], *, path_field: str | None = None) -> T:
        """Run a use case in one unit of work and turn refusals into 4xx that name the field:
        the record the path names is 404 when missing, a record the body refers to is 422."""
        try:
            return await runtime.transaction(work)
        except NotFound as exc:
            if exc.field == path_field:
                raise ApiError(404, "not_found", str(exc), field=exc.field) from exc
            raise ApiError(422, "unknown_reference", str(exc), field=exc.field) from exc
        except StaleVersion as exc:
            raise ApiError(409, "stale_version", str(exc), field="expected_version") from exc
        except ConcurrentModification as exc:
            raise ApiError(409, "concurrent_modification", str(exc)) from exc
        except DuplicateRecord as exc:
            raise ApiError(409, "already_exists", str(exc), field=exc.field) from exc
        except AlreadyExists as exc:  # lost a race for an id or a domain to a concurrent request
            raise ApiError(409, "already_exists", str(exc)) from exc
        except InvalidRequest as exc:
            raise ApiError(422, "invalid_request", str(exc), field=exc.field) from exc
        except IllegalTransition as exc:
            raise ApiError(409, "illegal_transition", str(exc), field=exc.field) from exc

    def not_found(what: str, record_id: str, field: str) -> ApiError:
        return ApiError(404, "not_found", f"{what} {record_id} does not exist", field=field)

    async def imported_record(kind: str, reference: ExternalReference | None) -> str | None:
        """The ``_id`` filter of a lookup by another CRM's id: the record an import from that
        system created for it, or the one the import matched it to (an account by domain, a
        contact by email), which keeps the imported id as an alias. The id is derived from
        (system, kind, external id), so two systems' equal ids never meet; an unknown pair
        yields an id no record has, hence an empty page."""
        if reference is None:
            return None
        record_id = imported_id(kind, reference.system, reference.external_id)
        if kind == "account":
            found: Account | Contact | None = await repos.accounts.find(record_id)
        elif kind == "contact":
            found = await repos.contacts.find(record_id)
        else:
            return record_id
        return found.id if found is not None else record_id

    async def account_key(account_id: str | None) -> str | None:
        """A filter by account also finds the company by an id that was merged into it."""
        if account_id is None:
            return None
        account = await repos.accounts.find(account_id)
        return account.id if account is not None else account_id

    # -- pipelines --------------------------------------------------------------------------
    pipelines = APIRouter(prefix="/pipelines", tags=["pipelines"])

    @pipelines.get("", dependencies=read, summary="All pipelines with their stages")
    async def list_pipelines() -> list[Pipeline]:
        return await repos.pipelines.all()

    @pipelines.get("/{pipeline_id}", dependencies=read, summary="One pipeline with its stages")
    async def get_pipeline(pipeline_id: Id) -> Pipeline:
        pipeline = await repos.pipelines.get(pipeline_id)
        if pipeline is None:
            raise not_found("pipeline", pipeline_id, "pipeline_id")
        return pipeline

    @pipelines.post(
        "", status_code=status.HTTP_201_CREATED, dependencies=admin, summary="Define a custom pipeline"
    )
    async def post_pipeline(body: NewPipeline) -> Pipeline:
        pipeline = Pipeline(
            id=body.id or str(uuid.uuid4()),
            name=body.name,
            stages=body.stages,
            loss_reasons=body.loss_reasons,
            created_at=utcnow(),
        )
        return await run(lambda uow: create_pipeline(repos, uow, policy, pipeline))

    @pipelines.put(
        "/{pipeline_id}",
        dependencies=admin,
        summary="Redefine a pipeline (stages holding open opportunities cannot be removed or closed)",
    )
    async def put_pipeline(pipeline_id: Id, body: PipelineRevision) -> Pipeline:
        return await run(
            lambda uow: revise_pipeline(
                repos,
                uow,
                policy,
                pipeline_id,
                name=body.name,
                stages=body.stages,
                loss_reasons=body.loss_reasons,
                expected_version=body.expected_version,
            ),
            path_field="pipeline_id",
        )

    # -- products ---------------------------------------------------------------------------
    products = APIRouter(prefix="/products", tags=["products"])

    @products.post(
        "", status_code=status.HTTP_201_CREATED, dependencies=admin, summary="Add a product to the catalogue"
    )
    async def post_product(body: NewProduct) -> Product:
        now = utcnow()
        product = Product(
            **body.model_dump(exclude={"id", "currency"}),
            id=body.id or str(uuid.uuid4()),
            currency=body.currency or policy.company_currency,
            created_at=now,
            updated_at=now,
        )
        return await run(lambda uow: create_product(repos, uow, product))

    @products.patch(
        "/{product_id}",
        dependencies=admin,
        summary="Change a product's name, price, currency or availability",
    )
    async def patch_product(product_id: Id, body: ProductPatch) -> Product:
        changes = body.model_dump(include=body.model_fields_set - {"expected_version"})
        return await run(
            lambda uow: revise_product(
                repos, uow, product_id, changes, expected_version=body.expected_version
            ),
            path_field="product_id",
        )

    @products.get("/{product_id}", dependencies=read, summary="One product with its list price")
    async def get_product(product_id: Id) -> Product:
        product = await repos.products.get(product_id)
        if product is None:
            raise not_found("product", product_id, "product_id")
        return product

    @products.get("", dependencies=read, summary="The product catalogue, with cursor pagination")
    async def list_products(
        active: bool | None = None,
        currency: Currency | None = None,
        limit: Limit = 50,
        cursor: Id | None = None,
    ) -> Page[Product]:
        items = await repos.products.list(
            filters=_filters(active=active, currency=currency), limit=limit, after_id=cursor
        )
        return Page[Product].model_validate(_page(items, limit))

    # -- sales teams ------------------------------------------------------------------------
    teams = APIRouter(prefix="/sales-teams", tags=["sales teams"])

    @teams.post("", status_code=status.HTTP_201_CREATED, dependencies=admin, summary="Create a sales team")
    async def post_team(body: NewSalesTeam) -> SalesTeam:
        now = utcnow()
        team = SalesTeam(
            **body.model_dump(exclude={"id"}), id=body.id or str(uuid.uuid4()), created_at=now, updated_at=now
        )
        return await run(lambda uow: create_sales_team(repos, uow, team))

    @teams.get("/{team_id}", dependencies=read, summary="One sales team with its manager and region")
    async def get_team(team_id: Id) -> SalesTeam:
        team = await repos.sales_teams.get(team_id)
        if team is None:
            raise not_found("sales team", team_id, "sales_team_id")
        return team

    @teams.get("", dependencies=read, summary="Sales teams, filtered by region or manager")
    async def list_teams(
        region: Annotated[Annotated[str, SingleLine(max_length=100)] | None, Query()] = None,
        manager_id: Id | None = None,
        limit: Limit = 50,
        cursor: Id | None = None,
    ) -> Page[SalesTeam]:
        items = await repos.sales_teams.list(
            filters=_filters(region=region, manager_id=manager_id), limit=limit, after_id=cursor
        )
        return Page[SalesTeam].model_validate(_page(items, limit))

    @teams.patch(
        "/{team_id}", dependencies=admin, summary="Rename a sales team or change its manager or region"
    )
    async def patch_team(team_id: Id, body: SalesTeamPatch) -> SalesTeam:
        changes = body.model_dump(include=body.model_fields_set - {"expected_version"})
        return await run(
            lambda uow: revise_sales_team(
                repos, uow, team_id, changes, expected_version=body.expected_version
            ),
            path_field="sales_team_id",
        )

    @teams.delete(
        "/{team_id}",
        status_code=status.HTTP_204_NO_CONTENT,
        dependencies=admin,
        summary="Delete a sales team that no opportunity names",
    )
    async def delete_team(
        team_id: Id, expected_version: Annotated[int | None, Query(ge=1)] = None
    ) -> Response:
        await run(
            lambda uow: delete_sales_team(repos, uow, team_id, expected_version=expected_version),
            path_field="sales_team_id",
        )
        return Response(status_code=status.HTTP_204_NO_CONTENT)

    # -- accounts ---------------------------------------------------------------------------
    accounts = APIRouter(prefix="/accounts", tags=["accounts"])

    @accounts.post("", status_code=status.HTTP_201_CREATED, dependencies=write, summary="Create an account")
    async def post_account(body: NewAccount) -> Account:
        now = utcnow()
        account = Account(
            **body.model_dump(exclude={"id", "domain", "address"}),
            id=body.id or str(uuid.uuid4()),
            domain=normalise_domain(body.domain or body.website),
            address=body.address,
            created_at=now,
            updated_at=now,
        )
        return await run(lambda uow: create_account(repos, uow, account))

    @accounts.patch(
        "/{account_id}",
        dependencies=write,
        summary="Change an account: details, type, tier, domain, parent company, owner",
    )
    async def patch_account(account_id: Id, body: AccountPatch) -> Account:
        changes = AccountChanges.model_validate(
            body.model_dump(include=body.model_fields_set - {"by", "expected_version"})
        )

        async def work(uow: UnitOfWork) -> Account:
            account, _ = await update_account(
                repos, uow, account_id, changes, by=body.by, expected_version=body.expected_version
            )
            return account

        return await run(work, path_field="account_id")

    @accounts.get("/{account_id}", dependencies=read, summary="One account (also found by a merged id)")
    async def get_account(account_id: Id) -> Account:
        account = await repos.accounts.find(account_id)
        if account is None:
            raise not_found("account", account_id, "account_id")
        return account

    @accounts.get(
        "",
        dependencies=read,
        summary="List accounts with filters and cursor pagination",
        description=_lookup_description("account", "domain"),
    )
    async def list_accounts(
        account_type: Annotated[AccountType | None, Query(alias="type")] = None,
        tier: AccountTier | None = None,
        owner_id: Id | None = None,
        parent_account_id: Id | None = None,
        country: Annotated[str | None, Query(pattern=r"^[A-Z]{2}$")] = None,
        domain: Annotated[str | None, Query(max_length=253, pattern=r"^[A-Za-z0-9.\-]+$")] = None,
        limit: Limit = 50,
        cursor: Id | None = None,
        reference: ByExternalReference = None,
    ) -> Page[Account]:
        filters = _filters(
            _id=await imported_record("account", reference),
            type=account_type,
            tier=tier,
            owner_id=owner_id,
            parent_account_id=await account_key(parent_account_id),
            **{"address.country": country},
            domain=normalise_domain(domain),
        )
        items = await repos.accounts.list(filters=filters, limit=limit, after_id=cursor)
        return Page[Account].model_validate(_page(items, limit))

    # -- contacts ---------------------------------------------------------------------------
    contacts = APIRouter(prefix="/contacts", tags=["contacts"])

    @contacts.post("", status_code=status.HTTP_201_CREATED, dependencies=write, summary="Create a contact")
    async def post_contact(body: NewContact) -> Contact:
        now = utcnow()
        contact = Contact(
            **body.model_dump(exclude={"id", "email", "consent"}),
            id=body.id or str(uuid.uuid4()),
            email=str(body.email).lower() if body.email else None,
            consent=body.consent.recorded(now) if body.consent is not None else None,
            created_at=now,
            updated_at=now,
        )
        return await run(lambda uow: create_contact(repos, uow, contact))

    @contacts.patch(
        "/{contact_id}",
        dependencies=write,
        summary="Change a contact: details, account, role, decision-maker and influencer flags",
    )
    async def patch_contact(contact_id: Id, body: ContactPatch) -> Contact:
        values = body.model_dump(include=body.model_fields_set - {"by", "expected_version", "consent"})
        if values.get("email") is not None:
            values["email"] = str(values["email"]).lower()
        if "consent" in body.model_fields_set:
            values["consent"] = body.consent.recorded(utcnow()) if body.consent is not None else None
        changes = ContactChanges.model_validate(values)

        async def work(uow: UnitOfWork) -> Contact:
            contact, _ = await update_contact(
                repos, uow, contact_id, changes, by=body.by, expected_version=body.expected_version
            )
            return contact

        return await run(work, path_field="contact_id")

    @contacts.get("/{contact_id}", dependencies=read, summary="One contact")
    async def get_contact(contact_id: Id) -> Contact:
        contact = await repos.contacts.get(contact_id)
        if contact is None:
            raise not_found("contact", contact_id, "contact_id")
        return contact

    @contacts.get(
        "",
        dependencies=read,
        summary="List contacts with filters and cursor pagination",
        description=_lookup_description("contact", "email"),
    )
    async def list_contacts(
        account_id: Id | None = None,
        email: Annotated[EmailStr | None, Query()] = None,
        originating_lead_id: Id | None = None,
        decision_maker: bool | None = None,
        influencer: bool | None = None,
        limit: Limit = 50,
        cursor: Id | None = None,
        reference: ByExternalReference = None,
    ) -> Page[Contact]:
        filters = _filters(
            _id=await imported_record("contact", reference),
            account_id=await account_key(account_id),
            email=str(email).lower() if email else None,
            originating_lead_id=originating_lead_id,
            decision_maker=decision_maker,
            influencer=influencer,
        )
        items = await repos.contacts.list(filters=filters, limit=limit, after_id=cursor)
        return Page[Contact].model_validate(_page(items, limit))

    # -- opportunities ----------------------------------------------------------------------
    opportunities = APIRouter(prefix="/opportunities", tags=["opportunities"])

    @opportunities.post(
        "", status_code=status.HTTP_201_CREATED, dependencies=write, summary="Open an opportunity"
    )
    async def post_opportunity(body: NewOpportunityBody) -> Opportunity:
        new = NewOpportunity(
            opportunity_id=body.id or str(uuid.uuid4()),
            name=body.name,
            account_id=body.account_id,
            by=body.by,
            pipeline_id=body.pipeline_id,
            stage_id=body.stage_id,
            probability=body.probability,
            amount=body.amount,
            currency=body.currency or policy.company_currency,
            expected_close_date=body.expected_close_date,
            owner_id=body.owner_id,
            primary_contact_id=body.primary_contact_id,
            lead_id=body.lead_id,
            lead_source=body.lead_source,
            campaign_id=body.campaign_id,
            contact_roles=body.contact_roles,
            sales_team_id=body.sales_team_id,
            created_at=body.created_at,
            forecast_category=body.forecast_category,
        )
        return await run(lambda uow: open_opportunity(repos, uow, new))

    @opportunities.get(
        "/{opportunity_id}", dependencies=read, summary="One opportunity with its stage history"
    )
    async def get_opportunity(opportunity_id: Id) -> Opportunity:
        opportunity = await repos.opportunities.get(opportunity_id)
        if opportunity is None:
            raise not_found("opportunity", opportunity_id, "opportunity_id")
        return opportunity

    @opportunities.get(
        "",
        dependencies=read,
        summary="List opportunities with filters and cursor pagination",
        description=_lookup_description("opportunity", None),
    )
    async def list_opportunities(
        account_id: Id | None = None,
        owner_id: Id | None = None,
        pipeline_id: Id | None = None,
        stage_id: Id | None = None,
        sales_team_id: Id | None = None,
        opportunity_status: Annotated[
            Literal["open", "won", "lost", "closed"] | None,
            Query(alias="status", description="closed means won or lost"),
        ] = None,
        limit: Limit = 50,
        cursor: Id | None = None,
        reference: ByExternalReference = None,
    ) -> Page[Opportunity]:
        status_filter: Any = opportunity_status
        if opportunity_status == "closed":
            status_filter = {"$in": ["won", "lost"]}
        filters = _filters(
            _id=await imported_record("opportunity", reference),
            account_id=await account_key(account_id),
            owner_id=owner_id,
            pipeline_id=pipeline_id,
            stage_id=stage_id,
            sales_team_id=sales_team_id,
            status=status_filter,
        )
        items = await repos.opportunities.list(filters=filters, limit=limit, after_id=cursor)
        return Page[Opportunity].model_validate(_page(items, limit))

    @opportunities.patch(
        "/{opportunity_id}",
        dependencies=write,
        summary="Change figures, owner, probability, contacts and their roles, or the sales team",
    )
    async def patch_opportunity(opportunity_id: Id, body: OpportunityPatch) -> Opportunity:
        changes = OpportunityChanges.model_validate(
            body.model_dump(include=body.model_fields_set - {"by", "expected_version"})
        )
        return await run(
            lambda uow: update_opportunity(
                repos, uow, opportunity_id, changes, by=body.by, expected_version=body.expected_version
            ),
            path_field="opportunity_id",
        )

    @opportunities.put(
        "/{opportunity_id}/line-items",
        dependencies=write,
        summary="Replace the products on the opportunity (the amount follows their total by default)",
    )
    async def put_line_items(opportunity_id: Id, body: LineItemsRequest) -> Opportunity:
        lines = [
            LineRequest(
                product_id=item.product_id,
                quantity=item.quantity,
                unit_price=item.unit_price,
                discount_percent=item.discount_percent,
            )
            for item in body.items
        ]
        return await run(
            lambda uow: set_line_items(
                repos,
                uow,
                opportunity_id,
                lines,
                derive_amount=body.derive_amount,
                by=body.by,
                expected_version=body.expected_version,
            ),
            path_field="opportunity_id",
        )

    @opportunities.post(
        "/{opportunity_id}/stage",
        dependencies=write,
        summary="Move to another stage of its pipeline (closing as lost needs a loss reason)",
    )
    async def move_stage(opportunity_id: Id, body: StageMoveRequest) -> Opportunity:
        return await run(
            lambda uow: move_opportunity(
                repos,
                uow,
                policy,
                opportunity_id,
                body.stage_id,
                by=body.by,
                expected_version=body.expected_version,
                loss_reason=body.loss_reason,
                probability=body.probability,
                loss_note=body.loss_note,
                competitor=body.competitor,
            ),
            path_field="opportunity_id",
        )

    @opportunities.post(
        "/{opportunity_id}/pipeline",
        dependencies=write,
        summary="Move an open opportunity into another pipeline, into an open stage of it",
    )
    async def move_pipeline(opportunity_id: Id, body: PipelineMoveRequest) -> Opportunity:
        return await run(
            lambda uow: move_opportunity_to_pipeline(
                repos,
                uow,
                opportunity_id,
                body.pipeline_id,
                by=body.by,
                stage_id=body.stage_id,
                expected_version=body.expected_version,
                probability=body.probability,
            ),
            path_field="opportunity_id",
        )

    @opportunities.post(
        "/{opportunity_id}/reopen", dependencies=write, summary="Reopen a won or lost opportunity"
    )
    async def reopen(opportunity_id: Id, body: ReopenRequest) -> Opportunity:
        return await run(
            lambda uow: reopen_opportunity(
                repos,
                uow,
                opportunity_id,
                by=body.by,
                stage_id=body.stage_id,
                expected_version=body.expected_version,
                probability=body.probability,
            ),
            path_field="opportunity_id",
        )

    @opportunities.get(
        "/{opportunity_id}/case",
        dependencies=read,
        summary="The closed opportunity's case: account, contacts, lead, campaign, history, outcome",
    )
    async def get_case(opportunity_id: Id) -> Case:
        try:
            return await load_case(repos, opportunity_id)
        except NotFound as exc:
            raise ApiError(404, "not_found", str(exc), field=exc.field) from exc
        except IllegalTransition as exc:
            raise ApiError(409, "not_closed", str(exc), field=exc.field) from exc

    # Imports (accounts, contacts, opportunities) are import jobs: ``import_targets``.
    return [pipelines, products, teams, accounts, contacts, opportunities]


def _filters(**values: Any) -> dict[str, Any]:
    """Equality filters from typed query values; unset ones are left out."""
    return {
        name: value.value if hasattr(value, "value") else value
        for name, value in values.items()
        if value is not None
    }
