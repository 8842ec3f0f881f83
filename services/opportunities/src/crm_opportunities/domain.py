"""Accounts, contacts, pipelines and opportunities, and the rules of moving an opportunity
through its pipeline's stages until it is won or lost. No I/O here."""

from __future__ import annotations

import dataclasses
import itertools
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import date, datetime
from decimal import Decimal
from enum import StrEnum
from typing import Annotated, Any

from crm_contracts.events.common import (
    MONEY_MAX,
    Actor,
    Currency,
    Id,
    MultiLine,
    Percent,
    ShortText,
    SingleLine,
)
from crm_contracts.events.leads import Utm
from crm_contracts.events.opportunities import DEFAULT_LOSS_REASONS as DEFAULT_LOSS_REASON_LABELS
from crm_contracts.events.opportunities import (
    AccountCreated,
    AccountTier,
    AccountType,
    AccountUpdated,
    ContactConsent,
    ContactCreated,
    ContactUpdated,
    ForecastCategory,
    OpportunityFigures,
    PipelineDefined,
    PipelineStage,
    StageKind,
)
from crm_contracts.events.picklists import PICKLIST_CODE_PATTERN, PicklistCode, PicklistName, PicklistValue
from crm_runtime.picklists import Picklist, UnknownPicklistValue, value_code
from pydantic import (
    AfterValidator,
    AwareDatetime,
    BaseModel,
    ConfigDict,
    Field,
    computed_field,
    field_validator,
    model_validator,
)

DEFAULT_PIPELINE_ID = "default"
CENT = Decimal("0.01")

# The loss_reason picklist's values until an administrator revises it (the service can replace
# them by setting); a pipeline with a list of its own uses that one instead.
DEFAULT_LOSS_REASONS: tuple[str, ...] = tuple(value for value, _ in DEFAULT_LOSS_REASON_LABELS)

LossReason = ShortText
LossNote = Annotated[str, MultiLine(max_length=2000)]
Competitor = Annotated[str, SingleLine(max_length=200)]


def loss_reason_list(names: Sequence[str] | Picklist) -> Picklist:
    """The loss_reason picklist as configured by names (``CRM_DEFAULT_LOSS_REASONS``): each a
    value (``no_budget``) or a label to make one of (``"Bad luck"`` gives ``bad_luck``), plus
    ``unknown``; the suite's labels for its own defaults. A picklist is taken as it is."""
    if isinstance(names, Picklist):
        return names
    labels = dict(DEFAULT_LOSS_REASON_LABELS)
    values: list[PicklistValue] = []
    for name in names:
        code = name if re.fullmatch(PICKLIST_CODE_PATTERN, name) else value_code(name)
        if all(entry.value != code for entry in values):
            values.append(PicklistValue(value=code, label=labels.get(code, name)))
    default = Picklist.default(PicklistName.LOSS_REASON)
    unknown = [entry for entry in default.values if entry.value == "unknown"]
    values += [entry for entry in unknown if all(v.value != "unknown" for v in values)]
    return Picklist(name=PicklistName.LOSS_REASON, values=values, blank_value=None)


# -- errors -----------------------------------------------------------------------------------
class OpportunityRuleViolation(Exception):
    """A request the rules refuse; ``field`` names what to change."""

    def __init__(self, message: str, *, field: str) -> None:
        super().__init__(message)
        self.field = field


class InvalidRequest(OpportunityRuleViolation):
    """The request itself is wrong (an unknown stage, a missing loss reason): fix the input."""


class IllegalTransition(OpportunityRuleViolation):
    """The request is well-formed but the opportunity's state refuses it (e.g. it is closed)."""


# -- pipelines --------------------------------------------------------------------------------
class Stage(BaseModel):
    """One step of a pipeline, with the defaults an opportunity takes on entering it."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    id: Id = Field(examples=["proposal"])
    name: ShortText = Field(examples=["Proposal"])
    kind: StageKind = StageKind.OPEN
    probability: Percent = Field(description="Default win probability on entering the stage")
    forecast_category: ForecastCategory

    @property
    def is_closed(self) -> bool:
        return self.kind is not StageKind.OPEN


def check_stages(stages: Sequence[Stage]) -> None:
    """Raise ValueError unless ``stages`` make a usable pipeline: unique ids, an open first
    stage, at least one way to win and one to lose, and closed stages whose figures cannot
    contradict their outcome (a won deal is certain, a lost one is worth nothing)."""
    seen: set[str] = set()
    for stage in stages:
        if stage.id in seen:
            raise ValueError(f"stage id {stage.id!r} appears more than once")
        seen.add(stage.id)
        if stage.kind is StageKind.CLOSED_WON and (
            stage.probability != 100 or stage.forecast_category is not ForecastCategory.CLOSED
        ):
            raise ValueError(f"closed-won stage {stage.id!r} must have probability 100 and forecast closed")
        if stage.kind is StageKind.CLOSED_LOST and (
            stage.probability != 0 or stage.forecast_category is not ForecastCategory.OMITTED
        ):
            raise ValueError(f"closed-lost stage {stage.id!r} must have probability 0 and forecast omitted")
        if stage.kind is StageKind.OPEN and stage.forecast_category is ForecastCategory.CLOSED:
            raise ValueError(f"open stage {stage.id!r} cannot have forecast category closed")
    if not stages or stages[0].kind is not StageKind.OPEN:
        raise ValueError("the first stage must be open: new opportunities start there")
    kinds = {stage.kind for stage in stages}
    for needed in (StageKind.CLOSED_WON, StageKind.CLOSED_LOST):
        if needed not in kinds:
            raise ValueError(f"a pipeline needs at least one {needed.value} stage")


def check_definition(stages: Sequence[Stage], loss_reasons: Sequence[str] | None) -> None:
    """Raise ValueError unless stages and loss reasons make a usable pipeline."""
    check_stages(stages)
    if loss_reasons is not None and len(set(loss_reasons)) != len(loss_reasons):
        raise ValueError("loss_reasons must not repeat")


class Pipeline(BaseModel):
    """An ordered list of stages an opportunity moves through; installations have several."""

    model_config = ConfigDict(extra="forbid")

    id: Id
    name: ShortText
    stages: list[Stage] = Field(min_length=3, max_length=50)
    loss_reasons: list[LossReason] | None = Field(
        default=None, max_length=100, description="None: the service's default list"
    )
    version: int = 1
    created_at: AwareDatetime
    updated_at: AwareDatetime | None = None

    @model_validator(mode="after")
    def _usable(self) -> Pipeline:
        check_definition(self.stages, self.loss_reasons)
        return self

    def stage(self, stage_id: str) -> Stage:
        for stage in self.stages:
            if stage.id == stage_id:
                return stage
        raise InvalidRequest(f"stage {stage_id!r} is not a stage of pipeline {self.id!r}", field="stage_id")

    @property
    def first_stage(self) -> Stage:
        return self.stages[0]

    def position(self, stage_id: str) -> int | None:
        """0-based place of the stage in the pipeline; None for a stage it no longer has."""
        for index, stage in enumerate(self.stages):
            if stage.id == stage_id:
                return index
        return None

    def defined_event(self, default_loss_reasons: Sequence[str] | Picklist) -> PipelineDefined:
        """The full definition, so readers can order stages without asking this service."""
        return PipelineDefined(
            pipeline_id=self.id,
            name=self.name,
            stages=[
                PipelineStage(
                    stage_id=stage.id,
                    name=stage.name,
                    kind=stage.kind,
                    probability=stage.probability,
                    forecast_category=stage.forecast_category,
                    position=index,
                )
                for index, stage in enumerate(self.stages)
            ],
            loss_reasons=list(self.allowed_loss_reasons(default_loss_reasons)),
            defined_at=self.updated_at or self.created_at,
        )

    def allowed_loss_reasons(self, default: Sequence[str] | Picklist) -> Sequence[str]:
        """The pipeline's own list, else the organisation's (its active values)."""
        if self.loss_reasons is not None:
            return self.loss_reasons
        return default.active_values() if isinstance(default, Picklist) else default

    def loss_reason(self, given: str | None, organisation: Sequence[str] | Picklist) -> str:
        """The loss reason a close as lost stores for ``given``. A pipeline with a list of its
        own (kept for installations that had them) takes only its values, spelled exactly; else
        the organisation's loss_reason picklist folds the spelling (aliases, case, blanks)."""
        if self.loss_reasons is not None:
            if not given:
                raise InvalidRequest(
                    f"closing as lost needs a loss_reason, one of: {', '.join(self.loss_reasons)}",
                    field="loss_reason",
                )
            if given not in self.loss_reasons:
                raise InvalidRequest(
                    f"loss_reason {given!r} is not one of: {', '.join(self.loss_reasons)}",
                    field="loss_reason",
                )
            return given
        picklist = loss_reason_list(organisation)
        try:
            return picklist.resolve(given)
        except UnknownPicklistValue as exc:
            reason = exc.reason
            if not exc.given:
                reason = f"closing as lost needs a loss_reason, one of: {', '.join(picklist.active_values())}"
            raise InvalidRequest(reason, field="loss_reason") from exc

    def revise(
        self,
        *,
        name: str,
        stages: Sequence[Stage],
        loss_reasons: Sequence[str] | None,
        stages_in_use: Mapping[str, int],
        now: datetime,
    ) -> list[str]:
        """Replace the definition, keeping every opportunity in it valid: a stage that holds
        open opportunities can be renamed, re-ordered or re-weighted but neither removed nor
        closed. Opportunities keep the figures they have until their next move. Returns the
        parts that changed."""
        check_definition(stages, loss_reasons)
        revised = {stage.id: stage for stage in stages}
        for stage_id, count in sorted(stages_in_use.items()):
            if not count:
                continue
            if stage_id not in revised:
                raise IllegalTransition(
                    f"stage {stage_id!r} holds {count} open opportunities: move them before removing it",
                    field="stages",
                )
            if revised[stage_id].is_closed:
                raise IllegalTransition(
                    f"stage {stage_id!r} holds {count} open opportunities: it cannot become closed",
                    field="stages",
                )
        changed = [
            part
            for part, before, after in (
                ("name", self.name, name),
                ("stages", self.stages, list(stages)),
                ("loss_reasons", self.loss_reasons, None if loss_reasons is None else list(loss_reasons)),
            )
            if before != after
        ]
        if changed:
            self.name = name
            self.stages = list(stages)
            self.loss_reasons = None if loss_reasons is None else list(loss_reasons)
            self.version += 1
            self.updated_at = now
        return changed


def default_pipeline(now: datetime) -> Pipeline:
    """The pipeline every installation starts with, as CRM users know it."""
    open_, won, lost = StageKind.OPEN, StageKind.CLOSED_WON, StageKind.CLOSED_LOST
    fc = ForecastCategory
    return Pipeline(
        id=DEFAULT_PIPELINE_ID,
        name="Sales",
        stages=[
            Stage(
                id="prospecting",
                name="Prospecting",
                kind=open_,
                probability=10,
                forecast_category=fc.PIPELINE,
            ),
            Stage(
                id="qualification",
                name="Qualification",
                kind=open_,
                probability=20,
                forecast_category=fc.PIPELINE,
            ),
            Stage(id="proposal", name="Proposal", kind=open_, probability=50, forecast_category=fc.BEST_CASE),
            Stage(
                id="negotiation", name="Negotiation", kind=open_, probability=80, forecast_category=fc.COMMIT
            ),
            Stage(id="closed_won", name="Closed Won", kind=won, probability=100, forecast_category=fc.CLOSED),
            Stage(
                id="closed_lost", name="Closed Lost", kind=lost, probability=0, forecast_category=fc.OMITTED
            ),
        ],
        created_at=now,
    )


# -- accounts and contacts --------------------------------------------------------------------
class Address(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    street: Annotated[str, SingleLine(max_length=200)] | None = None
    postal_code: Annotated[str, SingleLine(max_length=20)] | None = None
    city: Annotated[str, SingleLine(max_length=100)] | None = None
    region: Annotated[str, SingleLine(max_length=100)] | None = None
    country: str | None = Field(default=None, pattern=r"^[A-Z]{2}$", examples=["DE"])


def _not_after_this_year(year: int) -> int:
    if year > datetime.now().year + 1:  # +1: a company founded "next year" on its papers
        raise ValueError(f"a company cannot be established after {datetime.now().year + 1}")
    return year


YearEstablished = Annotated[
    int,
    Field(ge=1000, examples=[1998], description="When the company was founded"),
    AfterValidator(_not_after_this_year),
]


_SCHEME = re.compile(r"^[a-z][a-z0-9+.\-]*://")


def normalise_domain(website_or_domain: str | None) -> str | None:
    """'https://www.Engines.example/about' -> 'engines.example': the key that stops one company
    from becoming two accounts."""
    if not website_or_domain:
        return None
    host = _SCHEME.sub("", website_or_domain.strip().lower()).split("/")[0].split(":")[0]
    host = host.removeprefix("www.").strip(".")
    return host or None


# An account chain deeper than this is refused: real group structures are far shallower, and
# the bound keeps the cycle check to a few reads.
MAX_HIERARCHY_DEPTH = 20


class AccountChanges(BaseModel):
    """Fields of an account that may change; only the fields set are applied."""

    model_config = ConfigDict(extra="forbid")

    name: ShortText | None = None
    type: AccountType | None = None
    tier: AccountTier | None = None
    industry: str | None = None
    employees: int | None = None
    annual_revenue: Decimal | None = None
    annual_revenue_currency: Currency | None = None
    year_established: int | None = None
    website: str | None = None
    domain: str | None = None
    address: Address | None = None
    parent_account_id: str | None = None
    owner_id: str | None = None


_ACCOUNT_REQUIRED = frozenset({"name", "type", "address"})


class Account(BaseModel):
    """A business the company tracks: customer, prospect, partner, competitor and so on."""

    model_config = ConfigDict(validate_assignment=True)

    id: str
    version: int = 1
    name: str
    type: AccountType = AccountType.PROSPECT
    tier: AccountTier | None = None
    industry: str | None = None
    employees: int | None = None
    annual_revenue: Decimal | None = None
    # None: in the organisation's own currency (the revenue was given without one).
    annual_revenue_currency: Currency | None = None
    year_established: int | None = None
    website: str | None = None
    domain: str | None = None
    address: Address = Address()
    parent_account_id: str | None = None
    owner_id: str | None = None
    originating_lead_id: str | None = None
    # Ids other systems used for this company before it was matched (e.g. by domain) to it.
    aliases: list[str] = Field(default_factory=list)
    # The system and id of the export row that created it (imports only).
    external_system: str | None = None
    external_id: str | None = None
    created_at: AwareDatetime
    updated_at: AwareDatetime
    updated_by: Actor | None = None

    def update(
        self, changes: AccountChanges, *, ancestry: Sequence[str], by: Actor, now: datetime
    ) -> list[str]:
        """Apply the fields set in ``changes``; returns the fields that really changed.

        ``ancestry`` is the chain above the new parent (the parent first) when the parent
        changes: an account can be neither its own parent nor the parent of an ancestor. A new
        website moves the domain along when the domain was the old website's."""
        fields = set(changes.model_fields_set)
        for name in sorted(fields & _ACCOUNT_REQUIRED):
            if getattr(changes, name) is None:
                raise InvalidRequest(f"{name} cannot be cleared", field=name)
        values = {name: getattr(changes, name) for name in fields}
        if "domain" in values:
            values["domain"] = normalise_domain(values["domain"])
        elif "website" in values and self.domain == normalise_domain(self.website):
            values["domain"] = normalise_domain(values["website"])
        if values.get("parent_account_id") is not None:
            check_parent(self.id, values["parent_account_id"], ancestry)
        changed = []
        for name, value in sorted(values.items()):
            if getattr(self, name) != value:
                setattr(self, name, value)
                changed.append(name)
        if changed:
            self._touch(by, now)
        return changed

    def fill_blank_website(self, website: str | None, *, by: Actor, now: datetime) -> list[str]:
        """A converted lead's website for an account that has none. A website the account
        already has is newer or curated (edited, imported): an older lead never overwrites it.
        The domain stays as it is: it was what matched the lead to this account, or is none."""
        if website is None or self.website is not None:
            return []
        self.website = website
        self._touch(by, max(now, self.updated_at))
        return ["website"]

    def won_deal(self, *, by: Actor, now: datetime) -> list[str]:
        """A won opportunity makes a prospect a customer. Partners, resellers and the other
        relationship types keep theirs: buying once does not change what they are to us."""
        if self.type is not AccountType.PROSPECT:
            return []
        self.type = AccountType.CUSTOMER
        self._touch(by, max(now, self.updated_at))
        return ["type"]

    def _touch(self, by: Actor, now: datetime) -> None:
        self.version += 1
        self.updated_at = now
        self.updated_by = by

    def created_event(self) -> AccountCreated:
        return AccountCreated(**self._event_fields())

    def updated_event(self, changed_fields: Sequence[str]) -> AccountUpdated:
        assert self.updated_by is not None  # set by every change
        return AccountUpdated(
            **self._event_fields(),
            changed_fields=list(changed_fields),
            updated_at=self.updated_at,
            updated_by=self.updated_by,
        )

    def _event_fields(self) -> dict[str, Any]:
        return {
            "account_id": self.id,
            "name": self.name,
            "type": self.type,
            "tier": self.tier,
            "domain": self.domain,
            "industry": self.industry,
            "employees": self.employees,
            "country": self.address.country,
            "owner_id": self.owner_id,
            "parent_account_id": self.parent_account_id,
            "originating_lead_id": self.originating_lead_id,
            "created_at": self.created_at,
        }


def check_parent(account_id: str, parent_id: str, ancestry: Sequence[str]) -> None:
    """Refuse a parent that would make the account hierarchy a loop or too deep to walk.
    ``ancestry`` is the parent's chain upwards, starting with the parent itself."""
    if parent_id == account_id or account_id in ancestry:
        raise IllegalTransition(
            f"account {parent_id} is {account_id} or one of its subsidiaries: the hierarchy would loop",
            field="parent_account_id",
        )
    if len(ancestry) > MAX_HIERARCHY_DEPTH:
        raise IllegalTransition(
            f"account hierarchies are at most {MAX_HIERARCHY_DEPTH} levels deep", field="parent_account_id"
        )


CONSENT_FROM_API = "api"


def consent_from_lead(lead_id: str) -> str:
    return f"lead conversion {lead_id}"


def consent_from_import(system: str) -> str:
    return f"import {system}"


class ContactChanges(BaseModel):
    """Fields of a contact that may change; only the fields set are applied."""

    model_config = ConfigDict(extra="forbid")

    account_id: str | None = None
    first_name: str | None = None
    last_name: str | None = None
    email: str | None = None
    phone: str | None = None
    job_title: str | None = None
    role: str | None = None
    decision_maker: bool | None = None
    influencer: bool | None = None
    consent: ContactConsent | None = None


_CONTACT_REQUIRED = frozenset({"decision_maker", "influencer", "consent"})


class Contact(BaseModel):
    """A person the company tracks, usually working for an account, with a role there; the
    decision makers and influencers are the ones that matter most."""

    model_config = ConfigDict(validate_assignment=True)

    id: str
    version: int = 1
    account_id: str | None = None
    first_name: str | None = None
    last_name: str | None = None
    email: str | None = None
    phone: str | None = None
    job_title: str | None = None
    role: str | None = None
    decision_maker: bool = False
    influencer: bool = False
    originating_lead_id: str | None = None
    consent: ContactConsent | None = Field(
        default=None, description="Do not email / do not call, when and how it was said; null: never recorded"
    )
    aliases: list[str] = Field(
        default_factory=list, description="Imported ids matched to this contact (same email)"
    )
    created_at: AwareDatetime
    updated_at: AwareDatetime
    updated_by: Actor | None = None

    @property
    def display_name(self) -> str:
        name = " ".join(part for part in (self.first_name, self.last_name) if part)
        return name or self.email or self.id

    def update(self, changes: ContactChanges, *, by: Actor, now: datetime) -> list[str]:
        """Apply the fields set in ``changes``; a contact keeps a name or an email."""
        fields = set(changes.model_fields_set)
        for name in sorted(fields & _CONTACT_REQUIRED):
            if getattr(changes, name) is None:
                raise InvalidRequest(f"{name} cannot be cleared", field=name)
        values = {name: getattr(changes, name) for name in fields}
        if values.get("email") is not None:
            values["email"] = values["email"].lower()
        after = {name: values.get(name, getattr(self, name)) for name in ("first_name", "last_name", "email")}
        if not any(after.values()):
            field = next((name for name in ("email", "last_name", "first_name") if name in fields), "email")
            raise InvalidRequest("a contact needs a first name, a last name or an email", field=field)
        changed = []
        for name, value in sorted(values.items()):
            if getattr(self, name) != value:
                setattr(self, name, value)
                changed.append(name)
        if changed:
            self.version += 1
            self.updated_at = now
            self.updated_by = by
        return changed

    def take_consent(self, consent: ContactConsent, *, by: Actor, now: datetime) -> list[str]:
        """A converted lead's consent, unless the contact's was recorded at the same time or
        later: a newer statement is never overwritten by an older lead's."""
        if self.consent is not None and self.consent.recorded_at >= consent.recorded_at:
            return []
        if self.consent is not None and (self.consent.do_not_email, self.consent.do_not_call) == (
            consent.do_not_email,
            consent.do_not_call,
        ):
            return []  # the same flags: the record of when they were first said stays
        self.consent = consent
        self.version += 1
        self.updated_at = max(now, self.updated_at)
        self.updated_by = by
        return ["consent"]

    def created_event(self) -> ContactCreated:
        return ContactCreated(**self._event_fields())

    def updated_event(self, changed_fields: Sequence[str]) -> ContactUpdated:
        assert self.updated_by is not None  # set by every change
        return ContactUpdated(
            **self._event_fields(),
            changed_fields=list(changed_fields),
            updated_at=self.updated_at,
            updated_by=self.updated_by,
        )

    def _event_fields(self) -> dict[str, Any]:
        return {
            "contact_id": self.id,
            "account_id": self.account_id,
            "first_name": self.first_name,
            "last_name": self.last_name,
            "email": self.email,
            "job_title": self.job_title,
            "role": self.role,
            "decision_maker": self.decision_maker,
            "influencer": self.influencer,
            "originating_lead_id": self.originating_lead_id,
            "consent": self.consent,
            "created_at": self.created_at,
        }


class SalesTeam(BaseModel):
    """A team of sales reps with its manager and region; opportunities name the team that
    works them, and reporting breaks the pipeline down by team and region."""

    model_config = ConfigDict(validate_assignment=True)

    id: str
    version: int = 1
    name: str
    manager_id: str | None = None
    region: str | None = None
    # How many opportunities name the team: kept in the same transactions that assign it,
    # so a team cannot be deleted while a concurrent change assigns it.
    opportunities: int = 0
    created_at: AwareDatetime
    updated_at: AwareDatetime

    def revise(self, changes: Mapping[str, Any], *, now: datetime) -> list[str]:
        changed = []
        for name, value in sorted(changes.items()):
            if name not in _TEAM_FIELDS:
                raise InvalidRequest(f"{name} is not a field of a sales team", field=name)
            if name == "name" and value is None:
                raise InvalidRequest("name cannot be cleared", field=name)
            if getattr(self, name) != value:
                setattr(self, name, value)
                changed.append(name)
        if changed:
            self.version += 1
            self.updated_at = now
        return changed


_TEAM_FIELDS = frozenset({"name", "manager_id", "region"})


# -- opportunities ----------------------------------------------------------------------------
class OpportunityStatus(StrEnum):
    OPEN = "open"
    WON = "won"
    LOST = "lost"


_STATUS_OF_KIND = {
    StageKind.OPEN: OpportunityStatus.OPEN,
    StageKind.CLOSED_WON: OpportunityStatus.WON,
    StageKind.CLOSED_LOST: OpportunityStatus.LOST,
}


class StageVisit(BaseModel):
    """One stay in a stage: time in stage is ``left_at - entered_at`` exactly."""

    pipeline_id: str | None = Field(default=None, description="The pipeline the stage belongs to")
    stage_id: str
    stage_name: str
    stage_kind: StageKind
    probability: int
    forecast_category: ForecastCategory
    entered_at: AwareDatetime
    entered_by: Actor
    left_at: AwareDatetime | None = None
    left_by: Actor | None = None


class FieldChange(BaseModel):
    """A change of a figure, values in canonical text (exact decimals, ISO dates)."""

    field: str
    previous: str | None
    value: str | None
    at: AwareDatetime
    by: Actor


@dataclass(frozen=True)
class StageMove:
    """What a move did, for the events that report it."""

    previous: StageVisit
    current: StageVisit
    closed: bool
    reopened: bool
    previous_pipeline_id: str | None = None


@dataclass(frozen=True)
class HistoricalStage:
    """A stage an imported opportunity entered in the CRM it comes from, and when."""

    stage_id: str
    entered_at: datetime


@dataclass(frozen=True)
class ImportedStep:
    """One step of an imported opportunity's replay: its opening (no move, no changed fields),
    its line items put on (the ``changed_fields``) or one move, with the opportunity as it
    stood right after, for the event that reports the step."""

    move: StageMove | None
    snapshot: Opportunity
    changed_fields: tuple[str, ...] = ()


@dataclass(frozen=True)
class ImportedOpportunity:
    opportunity: Opportunity
    steps: list[ImportedStep]


class ContactRole(BaseModel):
    """A contact's part in one deal (decision maker, economic buyer, champion, ...)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    contact_id: Id
    role: ShortText = Field(examples=["economic buyer"])


class Product(BaseModel):
    """An entry of the product catalogue, with the list price line items start from."""

    model_config = ConfigDict(validate_assignment=True)

    id: str
    version: int = 1
    sku: str | None = None
    name: str
    description: str | None = None
    list_price: Decimal
    currency: str
    active: bool = True
    created_at: AwareDatetime
    updated_at: AwareDatetime

    @field_validator("list_price")
    @classmethod
    def _to_cents(cls, price: Decimal) -> Decimal:
        return price.quantize(CENT)

    def revise(self, changes: Mapping[str, Any], *, now: datetime) -> list[str]:
        """Change catalogue fields; line items already on opportunities keep their prices."""
        changed = []
        for name, value in sorted(changes.items()):
            if name not in _PRODUCT_FIELDS:
                raise InvalidRequest(f"{name} is not a catalogue field", field=name)
            if getattr(self, name) != value:
                setattr(self, name, value)
                changed.append(name)
        if changed:
            self.version += 1
            self.updated_at = now
        return changed


_PRODUCT_FIELDS = frozenset({"sku", "name", "description", "list_price", "currency", "active"})


class LineItem(BaseModel):
    """A product on an opportunity: quantity times unit price, less the discount."""

    model_config = ConfigDict(frozen=True)

    product_id: str
    product_name: str
    quantity: Decimal = Field(gt=0)
    unit_price: Decimal = Field(ge=0)
    discount_percent: Decimal = Field(default=Decimal("0"), ge=0, le=100)

    @field_validator("unit_price")
    @classmethod
    def _to_cents(cls, price: Decimal) -> Decimal:
        return price.quantize(CENT)

    @computed_field  # type: ignore[prop-decorator]
    @property
    def total(self) -> Decimal:
        return (self.quantity * self.unit_price * (100 - self.discount_percent) / 100).quantize(CENT)

    @classmethod
    def of(
        cls,
        product: Product,
        *,
        quantity: Decimal,
        unit_price: Decimal | None = None,
        discount_percent: Decimal = Decimal("0"),
    ) -> LineItem:
        if not product.active:
            raise InvalidRequest(f"product {product.id} is no longer sold", field="product_id")
        return cls(
            product_id=product.id,
            product_name=product.name,
            quantity=quantity,
            unit_price=product.list_price if unit_price is None else unit_price,
            discount_percent=discount_percent,
        )


class OpportunityChanges(BaseModel):
    """Fields a rep may change on an open opportunity; only the fields set are applied."""

    model_config = ConfigDict(extra="forbid")

    name: ShortText | None = None
    amount: Decimal | None = None
    currency: str | None = None
    expected_close_date: date | None = None
    owner_id: str | None = None
    probability: Percent | None = None
    primary_contact_id: str | None = None
    contact_roles: list[ContactRole] | None = None
    sales_team_id: str | None = None
    forecast_category: ForecastCategory | None = Field(
        default=None, description="Overrides the stage's default; null goes back to the stage's"
    )


def _check_open_forecast_category(category: ForecastCategory | None) -> None:
    # closed belongs to won deals: an open one in it would count as booked revenue.
    if category is ForecastCategory.CLOSED:
        raise InvalidRequest(
            "an open opportunity's forecast category is omitted, pipeline, best_case or commit; "
            "closed comes with winning it",
            field="forecast_category",
        )


# Fields whose value may be cleared with an explicit null.
_CLEARABLE = frozenset(
    {"expected_close_date", "owner_id", "primary_contact_id", "sales_team_id", "forecast_category"}
)


def _text(value: Any) -> str | None:
    if value is None:
        return None
    if isinstance(value, date):
        return value.isoformat()
    if isinstance(value, BaseModel):
        return value.model_dump_json()
    if isinstance(value, list):
        return "[" + ",".join(_text(item) or "null" for item in value) + "]"
    return str(value)


class Opportunity(BaseModel):
    """A potential source of revenue moving through a pipeline until it is won or lost."""

    model_config = ConfigDict(validate_assignment=True)

    id: str
    version: int = 0
    name: str
    account_id: str | None = Field(default=None, description="None: a deal with no account (imported)")
    primary_contact_id: str | None = None
    owner_id: str | None = None
    pipeline_id: str
    stage_id: str
    stage_name: str
    stage_kind: StageKind
    status: OpportunityStatus = OpportunityStatus.OPEN
    probability: int
    probability_overridden: bool = False
    forecast_category: ForecastCategory
    amount: Decimal = Decimal("0")
    currency: str
    expected_close_date: date | None = None
    lead_id: str | None = None
    lead_source: PicklistCode | None = None
    campaign_id: str | None = None
    utm: Utm | None = Field(default=None, description="The UTM parameters of the lead it was converted from")
    created_at: AwareDatetime
    created_by: Actor
    updated_at: AwareDatetime
    closed_at: AwareDatetime | None = None
    closed_by: Actor | None = None
    loss_reason: str | None = None
    loss_note: str | None = Field(default=None, description="When lost: the rep's account of why")
    competitor: str | None = Field(default=None, description="When lost: who won the deal instead")
    forecast_category_overridden: bool = False
    contact_roles: list[ContactRole] = Field(default_factory=list)
    sales_team_id: str | None = None
    line_items: list[LineItem] = Field(default_factory=list)
    stage_history: list[StageVisit] = Field(default_factory=list)
    changes: list[FieldChange] = Field(default_factory=list)

    @field_validator("amount")
    @classmethod
    def _to_cents(cls, amount: Decimal) -> Decimal:
        # One representation per amount ("5000" and "5000.00" are the same money).
        return amount.quantize(CENT)

    # -- opening ----------------------------------------------------------------------------
    @classmethod
    def open(
        cls,
        *,
        opportunity_id: str,
        name: str,
        account_id: str | None,
        pipeline: Pipeline,
        by: Actor,
        now: datetime,
        stage_id: str | None = None,
        probability: int | None = None,
        currency: str,
        amount: Decimal | None = None,
        expected_close_date: date | None = None,
        owner_id: str | None = None,
        primary_contact_id: str | None = None,
        lead_id: str | None = None,
        lead_source: PicklistCode | None = None,
        campaign_id: str | None = None,
        utm: Utm | None = None,
        contact_roles: Sequence[ContactRole] = (),
        sales_team_id: str | None = None,
        forecast_category: ForecastCategory | None = None,
    ) -> Opportunity:
        """A new opportunity in ``stage_id`` (the pipeline's first stage when omitted), in the
        stage's forecast category unless ``forecast_category`` overrides it."""
        stage = pipeline.stage(stage_id) if stage_id is not None else pipeline.first_stage
        if stage.is_closed:
            raise InvalidRequest(
                f"a new opportunity starts in an open stage, not {stage.id!r}", field="stage_id"
            )
        _check_open_forecast_category(forecast_category)
        visit = _visit(
            pipeline.id, stage, probability if probability is not None else stage.probability, now, by
        )
        return cls(
            id=opportunity_id,
            version=1,
            name=name,
            account_id=account_id,
            primary_contact_id=primary_contact_id,
            owner_id=owner_id,
            pipeline_id=pipeline.id,
            stage_id=stage.id,
            stage_name=stage.name,
            stage_kind=stage.kind,
            probability=visit.probability,
            probability_overridden=probability is not None and probability != stage.probability,
            forecast_category=forecast_category or stage.forecast_category,
            forecast_category_overridden=forecast_category not in (None, stage.forecast_category),
            amount=amount if amount is not None else Decimal("0"),
            currency=currency,
            expected_close_date=expected_close_date,
            lead_id=lead_id,
            lead_source=lead_source,
            campaign_id=campaign_id,
            utm=utm,
            contact_roles=list(contact_roles),
            sales_team_id=sales_team_id,
            created_at=now,
            created_by=by,
            updated_at=now,
            stage_history=[visit],
        )

    @classmethod
    def imported(
        cls,
        *,
        pipeline: Pipeline,
        stage_id: str | None,
        created_at: datetime | None,
        closed_at: datetime | None,
        loss_reason: str | None,
        default_loss_reasons: Sequence[str] | Picklist,
        by: Actor,
        now: datetime,
        history: Sequence[HistoricalStage] = (),
        line_items: Sequence[LineItem] = (),
        derive_amount: bool = True,
        loss_note: str | None = None,
        competitor: str | None = None,
        **fields: Any,
    ) -> ImportedOpportunity:
        """An opportunity brought over from another CRM, replayed through its original stages
        at their original dates: opened in the first, moved through the others, so its stage
        history, its version and the events of each step are those of a live opportunity.

        Without a ``history`` only the current stage is known: an open one is entered at
        ``created_at``; a closed one is reached from the pipeline's first stage at ``closed_at``
        (the path in between is unknown, the dates are not).

        ``line_items`` are put on right after the opening, as a rep would before moving the
        deal on (with ``derive_amount`` the amount becomes their total)."""
        path = _import_path(pipeline, stage_id, created_at, closed_at, loss_reason, history, now)
        first_at, first_stage = path[0]
        # The row's probability is the current one: it applies to the last stage, if open.
        probability = fields.pop("probability", None)
        last_is_open = not pipeline.stage(path[-1][1]).is_closed
        try:
            opportunity = cls.open(
                pipeline=pipeline,
                stage_id=first_stage,
                now=first_at,
                by=by,
                probability=probability if len(path) == 1 else None,
                **fields,
            )
        except OpportunityRuleViolation as exc:
            raise type(exc)(str(exc), field="stage_history.0.stage_id" if history else exc.field) from exc
        steps = [ImportedStep(move=None, snapshot=opportunity.model_copy(deep=True))]
        if line_items:
            try:
                changed = opportunity.set_line_items(
                    line_items, derive_amount=derive_amount, by=by, now=first_at
                )
            except OpportunityRuleViolation as exc:
                raise type(exc)(str(exc), field="line_items") from exc
            steps.append(
                ImportedStep(
                    move=None, snapshot=opportunity.model_copy(deep=True), changed_fields=tuple(changed)
                )
            )
        for index, (entered_at, next_stage) in enumerate(path[1:], start=1):
            last = index == len(path) - 1
            try:
                move = opportunity.move_to_stage(
                    pipeline,
                    next_stage,
                    by=by,
                    now=entered_at,
                    loss_reason=loss_reason if last else None,
                    probability=probability if last and last_is_open else None,
                    default_loss_reasons=default_loss_reasons,
                    loss_note=loss_note if last else None,
                    competitor=competitor if last else None,
                )
            except OpportunityRuleViolation as exc:
                field = (
                    f"stage_history.{index}.stage_id" if history and exc.field == "stage_id" else exc.field
                )
                raise type(exc)(str(exc), field=field) from exc
            steps.append(ImportedStep(move=move, snapshot=opportunity.model_copy(deep=True)))
        return ImportedOpportunity(opportunity=opportunity, steps=steps)

    # -- stage moves ------------------------------------------------------------------------
    @property
    def is_closed(self) -> bool:
        return self.stage_kind is not StageKind.OPEN

    @computed_field  # type: ignore[prop-decorator]
    @property
    def weighted_amount(self) -> Decimal:
        """Amount times probability: what the opportunity adds to the weighted pipeline."""
        return (self.amount * self.probability / 100).quantize(CENT)

    def move_to_stage(
        self,
        pipeline: Pipeline,
        stage_id: str,
        *,
        by: Actor,
        now: datetime,
        loss_reason: str | None = None,
        probability: int | None = None,
        default_loss_reasons: Sequence[str] | Picklist = DEFAULT_LOSS_REASONS,
        loss_note: str | None = None,
        competitor: str | None = None,
    ) -> StageMove:
        """Move forward or backward within the pipeline. Closing as lost needs a reason (see
        ``Pipeline.loss_reason``), and may say more in a note and name the competitor who won;
        a closed opportunity only leaves its stage through ``reopen``."""
        self._check_pipeline(pipeline)
        if self.is_closed:
            raise IllegalTransition(
                f"opportunity {self.id} is closed ({self.status.value}); reopen it before moving it",
                field="stage_id",
            )
        target = pipeline.stage(stage_id)
        if target.id == self.stage_id:
            raise IllegalTransition(
                f"opportunity {self.id} is already in stage {target.id!r}", field="stage_id"
            )
        if target.kind is StageKind.CLOSED_LOST:
            loss_reason = pipeline.loss_reason(loss_reason, default_loss_reasons)
        else:
            for name, value in (
                ("loss_reason", loss_reason),
                ("loss_note", loss_note),
                ("competitor", competitor),
            ):
                if value is not None:
                    raise InvalidRequest(f"{name} only applies when closing as lost", field=name)
        if target.is_closed and probability is not None and probability != target.probability:
            raise InvalidRequest(
                f"a {target.kind.value} opportunity has probability {target.probability}", field="probability"
            )
        move = self._enter(target, probability, by=by, now=now, loss_reason=loss_reason)
        if target.kind is StageKind.CLOSED_LOST:
            self.loss_note = loss_note or None
            self.competitor = competitor or None
        return move

    def reopen(
        self,
        pipeline: Pipeline,
        *,
        by: Actor,
        now: datetime,
        stage_id: str | None = None,
        probability: int | None = None,
    ) -> StageMove:
        """Take a won or lost opportunity back into an open stage: the one given, else the
        last open stage it was in."""
        self._check_pipeline(pipeline)
        if not self.is_closed:
            raise IllegalTransition(
                f"opportunity {self.id} is open; only closed ones reopen", field="stage_id"
            )
        if stage_id is not None:
            target = pipeline.stage(stage_id)
        else:
            target = self._last_open_stage(pipeline)
        if target.is_closed:
            raise InvalidRequest(f"reopen into an open stage, not {target.id!r}", field="stage_id")
        return self._enter(target, probability, by=by, now=now, loss_reason=None)

    def move_to_pipeline(
        self,
        source: Pipeline,
        target: Pipeline,
        stage_id: str | None,
        *,
        by: Actor,
        now: datetime,
        probability: int | None = None,
    ) -> StageMove:
        """Take an open opportunity into another pipeline, into ``stage_id`` of it; when no
        stage is named, the target's open stage with the same id as the current one."""
        self._check_pipeline(source)
        if self.is_closed:
            raise IllegalTransition(
                f"opportunity {self.id} is closed ({self.status.value}); reopen it before moving it",
                field="pipeline_id",
            )
        if target.id == self.pipeline_id:
            raise IllegalTransition(
                f"opportunity {self.id} is already in pipeline {target.id!r}", field="pipeline_id"
            )
        if stage_id is None:
            if target.position(self.stage_id) is None:
                raise InvalidRequest(
                    f"pipeline {target.id!r} has no stage {self.stage_id!r}: name the stage_id to move into",
                    field="stage_id",
                )
            stage_id = self.stage_id
        stage = target.stage(stage_id)
        if stage.is_closed:
            raise InvalidRequest(
                f"move into an open stage; close it there with a stage move, not {stage.id!r}",
                field="stage_id",
            )
        previous_pipeline_id = self.pipeline_id
        self.pipeline_id = target.id
        move = self._enter(stage, probability, by=by, now=now, loss_reason=None)
        return dataclasses.replace(move, previous_pipeline_id=previous_pipeline_id)

    def _last_open_stage(self, pipeline: Pipeline) -> Stage:
        known = {stage.id for stage in pipeline.stages}
        for visit in reversed(self.stage_history):
            in_pipeline = visit.pipeline_id in (None, pipeline.id)
            if in_pipeline and visit.stage_kind is StageKind.OPEN and visit.stage_id in known:
                return pipeline.stage(visit.stage_id)
        return pipeline.first_stage

    def _enter(
        self, target: Stage, probability: int | None, *, by: Actor, now: datetime, loss_reason: str | None
    ) -> StageMove:
        was_closed = self.is_closed
        previous = self.stage_history[-1].model_copy(update={"left_at": now, "left_by": by})
        self.stage_history[-1] = previous
        visit = _visit(
            self.pipeline_id, target, probability if probability is not None else target.probability, now, by
        )
        self.stage_history.append(visit)
        self.stage_id = target.id
        self.stage_name = target.name
        self.stage_kind = target.kind
        self.status = _STATUS_OF_KIND[target.kind]
        self.probability = visit.probability
        self.probability_overridden = visit.probability != target.probability
        # A rep's forecast category, like a probability, holds until the next move (as in
        # Salesforce, a new stage brings its own default).
        self.forecast_category = target.forecast_category
        self.forecast_category_overridden = False
        self.loss_note = None
        self.competitor = None
        if target.is_closed:
            self.closed_at = now
            self.closed_by = by
            self.loss_reason = loss_reason
        else:
            self.closed_at = None
            self.closed_by = None
            self.loss_reason = None
        self._touch(now)
        return StageMove(previous=previous, current=visit, closed=target.is_closed, reopened=was_closed)

    def _check_pipeline(self, pipeline: Pipeline) -> None:
        if pipeline.id != self.pipeline_id:  # a caller bug, not a user error
            raise ValueError(f"opportunity {self.id} is in pipeline {self.pipeline_id}, not {pipeline.id}")

    # -- figures ----------------------------------------------------------------------------
    def update(self, changes: OpportunityChanges, *, by: Actor, now: datetime) -> list[str]:
        """Apply the fields set in ``changes``; returns the fields that really changed."""
        if self.is_closed:
            raise IllegalTransition(
                f"opportunity {self.id} is closed ({self.status.value}); reopen it to change it",
                field="status",
            )
        fields = sorted(changes.model_fields_set)
        for name in fields:
            if getattr(changes, name) is None and name not in _CLEARABLE:
                raise InvalidRequest(f"{name} cannot be cleared", field=name)
        if "currency" in fields and changes.currency != self.currency and self.line_items:
            raise InvalidRequest("the line items are priced in the current currency", field="currency")
        changed: list[str] = []
        if "forecast_category" in fields:
            fields.remove("forecast_category")
            changed += self._override_forecast_category(changes.forecast_category, by=by, now=now)
        for name in fields:
            previous = getattr(self, name)
            setattr(self, name, getattr(changes, name))
            value = getattr(self, name)
            if value == previous:
                continue
            changed.append(name)
            self.changes.append(
                FieldChange(field=name, previous=_text(previous), value=_text(value), at=now, by=by)
            )
        if "probability" in changed:  # an explicit figure beats the stage default until the next move
            self.probability_overridden = True
        if changed:
            self._touch(now)
        return changed

    def _override_forecast_category(
        self, category: ForecastCategory | None, *, by: Actor, now: datetime
    ) -> list[str]:
        """A rep's forecast category (None: the stage's default again)."""
        _check_open_forecast_category(category)
        default = self.stage_history[-1].forecast_category if self.stage_history else self.forecast_category
        previous = self.forecast_category
        self.forecast_category = category or default
        self.forecast_category_overridden = self.forecast_category != default
        if self.forecast_category == previous:
            return []
        self.changes.append(
            FieldChange(
                field="forecast_category",
                previous=previous.value,
                value=self.forecast_category.value,
                at=now,
                by=by,
            )
        )
        return ["forecast_category"]

    def set_line_items(
        self, items: Sequence[LineItem], *, derive_amount: bool, by: Actor, now: datetime
    ) -> list[str]:
        """Replace the products on the deal; with ``derive_amount`` the amount becomes their
        total. Returns the fields that changed."""
        changes = OpportunityChanges()
        if derive_amount:
            total = sum((item.total for item in items), Decimal("0"))
            if total > MONEY_MAX:
                raise InvalidRequest(
                    f"the line items total {total}, more than the largest amount {MONEY_MAX}", field="items"
                )
            changes = OpportunityChanges(amount=total)
        if self.is_closed:
            raise IllegalTransition(
                f"opportunity {self.id} is closed ({self.status.value}); reopen it to change it",
                field="status",
            )
        changed: list[str] = []
        if list(items) != self.line_items:
            previous = self.line_items
            self.line_items = list(items)
            changed.append("line_items")
            self.changes.append(
                FieldChange(
                    field="line_items", previous=_text(previous), value=_text(self.line_items), at=now, by=by
                )
            )
        amount_changed = self.update(changes, by=by, now=now)
        if changed and not amount_changed:
            self._touch(now)
        return sorted(changed + amount_changed)

    def figures(
        self,
        *,
        pipeline: Pipeline | None = None,
        team: SalesTeam | None = None,
        account: Account | None = None,
    ) -> OpportunityFigures:
        """What reporting places the opportunity by. The stage's position comes from the
        pipeline as it is defined now, the region from the team, the industry from the account:
        each as it stands when the event is written."""
        if pipeline is not None and pipeline.id != self.pipeline_id:
            pipeline = None
        if team is not None and team.id != self.sales_team_id:
            team = None
        return OpportunityFigures(
            opportunity_id=self.id,
            name=self.name,
            account_id=self.account_id,
            primary_contact_id=self.primary_contact_id,
            owner_id=self.owner_id,
            pipeline_id=self.pipeline_id,
            stage_id=self.stage_id,
            stage_name=self.stage_name,
            stage_kind=self.stage_kind,
            probability=self.probability,
            forecast_category=self.forecast_category,
            forecast_category_overridden=self.forecast_category_overridden,
            amount=self.amount,
            currency=self.currency,
            expected_close_date=self.expected_close_date,
            lead_id=self.lead_id,
            lead_source=self.lead_source,
            campaign_id=self.campaign_id,
            created_at=self.created_at,
            stage_order=pipeline.position(self.stage_id) if pipeline is not None else None,
            sales_team_id=self.sales_team_id,
            sales_region=team.region if team is not None else None,
            account_industry=account.industry if account is not None else None,
            product_ids=list(dict.fromkeys(item.product_id for item in self.line_items)),
        )

    def _touch(self, now: datetime) -> None:
        self.version += 1
        self.updated_at = now


def _import_path(
    pipeline: Pipeline,
    stage_id: str | None,
    created_at: datetime | None,
    closed_at: datetime | None,
    loss_reason: str | None,
    history: Sequence[HistoricalStage],
    now: datetime,
) -> list[tuple[datetime, str]]:
    """The (when, stage) steps an imported opportunity is replayed through, checked against
    the row's other dates so history, creation and close tell one story."""
    if not history:
        stage = pipeline.stage(stage_id) if stage_id is not None else pipeline.first_stage
        opened = created_at or now
        if not stage.is_closed:
            if closed_at is not None or loss_reason is not None:
                field = "closed_at" if closed_at is not None else "loss_reason"
                raise InvalidRequest(f"{field} only applies to a closed stage", field=field)
            return [(opened, stage.id)]
        closed = closed_at or opened
        if closed < opened:
            raise InvalidRequest("closed_at lies before created_at", field="closed_at")
        return [(opened, pipeline.first_stage.id), (closed, stage.id)]
    path = [(visit.entered_at, visit.stage_id) for visit in history]
    if created_at is not None and created_at != path[0][0]:
        raise InvalidRequest(
            "the first stage is entered when the opportunity was created (created_at)",
            field="stage_history.0.entered_at",
        )
    for index, ((before, _), (after, _)) in enumerate(itertools.pairwise(path), start=1):
        if after < before:
            raise InvalidRequest(
                "stages are listed in the order they were entered", field=f"stage_history.{index}.entered_at"
            )
    for index, (_, visited) in enumerate(path):
        where = f"stage_history.{index}.stage_id"
        try:
            is_closed = pipeline.stage(visited).is_closed
        except InvalidRequest as exc:
            raise InvalidRequest(str(exc), field=where) from exc
        if is_closed and index < len(path) - 1:
            raise InvalidRequest("only the last stage of the history can be a closed one", field=where)
    last_at, last_stage = path[-1]
    if stage_id is not None and stage_id != last_stage:
        raise InvalidRequest("the history's last stage is the current stage", field="stage_id")
    if closed_at is not None and (not pipeline.stage(last_stage).is_closed or closed_at != last_at):
        raise InvalidRequest(
            "closed_at is when the history's closed last stage was entered", field="closed_at"
        )
    return path


def _visit(pipeline_id: str, stage: Stage, probability: int, now: datetime, by: Actor) -> StageVisit:
    return StageVisit(
        pipeline_id=pipeline_id,
        stage_id=stage.id,
        stage_name=stage.name,
        stage_kind=stage.kind,
        probability=probability,
        forecast_category=stage.forecast_category,
        entered_at=now,
        entered_by=by,
    )


# -- the case ---------------------------------------------------------------------------------
class Case(BaseModel):
    """A closed opportunity's full dossier: who it was with, where it came from, every stage it
    passed and every figure that changed, and how it ended."""

    opportunity: Opportunity
    outcome: OpportunityStatus
    loss_reason: str | None
    loss_note: str | None = None
    competitor: str | None = None
    closed_at: AwareDatetime
    closed_by: Actor | None
    cycle_days: float = Field(description="Days from creation to close")
    account: Account | None
    contacts: list[Contact]
    sales_team: SalesTeam | None = Field(description="The team that worked it, as the team stands now")
    lead_id: str | None
    lead_source: PicklistCode | None
    campaign_id: str | None
    contact_roles: list[ContactRole]
    line_items: list[LineItem]
    stage_history: list[StageVisit]
    amount_changes: list[FieldChange]
    changes: list[FieldChange]


def build_case(
    opportunity: Opportunity,
    account: Account | None,
    contacts: Sequence[Contact],
    team: SalesTeam | None = None,
) -> Case:
    if not opportunity.is_closed or opportunity.closed_at is None:
        raise IllegalTransition(
            f"opportunity {opportunity.id} is still open: only closed opportunities are cases",
            field="status",
        )
    # The primary contact leads the list; then the account's people and those with a role.
    ordered = sorted(contacts, key=lambda contact: (contact.id != opportunity.primary_contact_id, contact.id))
    return Case(
        opportunity=opportunity,
        outcome=opportunity.status,
        loss_reason=opportunity.loss_reason,
        loss_note=opportunity.loss_note,
        competitor=opportunity.competitor,
        closed_at=opportunity.closed_at,
        closed_by=opportunity.closed_by,
        cycle_days=round((opportunity.closed_at - opportunity.created_at).total_seconds() / 86400, 3),
        account=account,
        contacts=ordered,
        sales_team=team,
        lead_id=opportunity.lead_id,
        lead_source=opportunity.lead_source,
        campaign_id=opportunity.campaign_id,
        contact_roles=opportunity.contact_roles,
        line_items=opportunity.line_items,
        stage_history=opportunity.stage_history,
        amount_changes=[c for c in opportunity.changes if c.field in ("amount", "currency")],
        changes=opportunity.changes,
    )
