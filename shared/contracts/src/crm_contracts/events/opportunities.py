"""Contracts of the opportunities service: accounts, contacts and opportunities moving
through pipeline stages until they are won or lost."""

from __future__ import annotations

from enum import StrEnum
from typing import Annotated

from pydantic import EmailStr, Field

from .common import (
    Actor,
    Contract,
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
from .picklists import PicklistCode, PicklistValue


class AccountType(StrEnum):
    CUSTOMER = "customer"
    PROSPECT = "prospect"
    PARTNER = "partner"
    COMPETITOR = "competitor"
    RESELLER = "reseller"
    DISTRIBUTOR = "distributor"
    OTHER = "other"


class AccountTier(StrEnum):
    """ABC grouping of accounts by potential and the profit they bring."""

    A = "A"
    B = "B"
    C = "C"


class StageKind(StrEnum):
    OPEN = "open"
    CLOSED_WON = "closed_won"
    CLOSED_LOST = "closed_lost"


class ForecastCategory(StrEnum):
    OMITTED = "omitted"
    PIPELINE = "pipeline"
    BEST_CASE = "best_case"
    COMMIT = "commit"
    CLOSED = "closed"


DEFAULT_LOSS_REASONS: tuple[tuple[str, str], ...] = (
    ("price", "Price"),
    ("competitor", "Lost to a competitor"),
    ("no_budget", "No budget"),
    ("no_decision", "No decision"),
    ("timing", "Timing"),
    ("product_fit", "Product fit"),
    ("other", "Other"),
)
"""The loss reasons the suite shipped with (value, label): the ``loss_reason`` picklist until
an administrator revises it."""

UNKNOWN_LOSS_REASON = PicklistValue(value="unknown", label="Unknown")
"""In the default list so that an administrator who wants a lost deal without a reason accepted
(a migration's blanks) only sets the list's ``blank_value`` to it."""


def default_loss_reason_values() -> list[PicklistValue]:
    return [PicklistValue(value=value, label=label) for value, label in DEFAULT_LOSS_REASONS] + [
        UNKNOWN_LOSS_REASON
    ]


class AccountCreated(Contract):
    account_id: Id
    name: ShortText
    type: AccountType
    domain: Annotated[str, SingleLine(max_length=253)] | None = None
    industry: Annotated[str, SingleLine(max_length=100)] | None = None
    employees: int | None = Field(default=None, ge=0)
    country: str | None = Field(default=None, pattern=r"^[A-Z]{2}$")
    owner_id: Id | None = None
    originating_lead_id: Id | None = None
    created_at: IsoDateTime
    tier: AccountTier | None = None
    parent_account_id: Id | None = Field(default=None, description="The parent company (subsidiaries)")


class ContactConsent(Contract):
    """What the person said about being contacted, when and through what: a lead's form (the
    lead's capture time), the API, or an import. The newest statement holds."""

    do_not_email: bool = False
    do_not_call: bool = False
    recorded_at: IsoDateTime = Field(description="When the consent was given (a lead's: its capture)")
    source: Annotated[str, SingleLine(min_length=1, max_length=300)] = Field(
        description="How it was given: 'lead conversion <lead id>', 'api' or 'import <source system>'",
        examples=["lead conversion 4f1c2d9e-0a51-4a1b-9d6e-5b3f0d6a2c11"],
    )


class ContactCreated(Contract):
    contact_id: Id
    account_id: Id | None = None
    first_name: Annotated[str, SingleLine(max_length=100)] | None = None
    last_name: Annotated[str, SingleLine(max_length=100)] | None = None
    email: EmailStr | None = None
    job_title: Annotated[str, SingleLine(max_length=200)] | None = None
    decision_maker: bool = False
    originating_lead_id: Id | None = None
    created_at: IsoDateTime
    role: Annotated[str, SingleLine(max_length=100)] | None = Field(
        default=None, description="Role at the account"
    )
    influencer: bool = False
    consent: ContactConsent | None = Field(
        default=None,
        description="Do not email / do not call, when and how it was said; null: none recorded",
    )


class OpportunityFigures(Contract):
    """Everything reporting needs to place an opportunity in the pipeline and forecast."""

    opportunity_id: Id
    name: ShortText
    account_id: Id | None = Field(
        default=None, description="None for a deal with no account (imported from a CRM that allows it)"
    )
    primary_contact_id: Id | None = None
    owner_id: Id | None = None
    pipeline_id: Id
    stage_id: Id
    stage_name: ShortText
    stage_kind: StageKind
    probability: Percent
    forecast_category: ForecastCategory = Field(
        description="The opportunity's forecast category: its stage's default unless overridden"
    )
    forecast_category_overridden: bool = Field(
        default=False,
        description="True when a rep set the forecast category instead of taking the stage's default",
    )
    amount: Money
    currency: Currency
    expected_close_date: IsoDate | None = None
    lead_id: Id | None = None
    lead_source: PicklistCode | None = None
    campaign_id: Id | None = None
    created_at: IsoDateTime
    stage_order: int | None = Field(
        default=None, ge=0, description="0-based position of the stage in its pipeline, for ordering"
    )
    sales_team_id: Id | None = None
    sales_region: Annotated[str, SingleLine(max_length=100)] | None = Field(
        default=None, description="The sales team's region"
    )
    account_industry: Annotated[str, SingleLine(max_length=100)] | None = None
    product_ids: list[Id] = Field(
        default_factory=list, max_length=200, description="Products of the line items, in their order"
    )


class OpportunityCreated(Contract):
    opportunity: OpportunityFigures
    created_by: Actor


class OpportunityUpdated(Contract):
    opportunity: OpportunityFigures
    changed_fields: list[str]
    updated_at: IsoDateTime
    updated_by: Actor


class OpportunityStageChanged(Contract):
    """One move between stages, with the figures as they stand after it."""

    opportunity_id: Id
    pipeline_id: Id
    previous_stage_id: Id
    previous_stage_name: ShortText
    previous_stage_kind: StageKind | None = Field(
        default=None, description="closed_won or closed_lost when the move reopened the opportunity"
    )
    previous_pipeline_id: Id | None = Field(
        default=None, description="Set when the move took the opportunity into another pipeline"
    )
    stage_id: Id
    stage_name: ShortText
    stage_kind: StageKind
    probability: Percent
    forecast_category: ForecastCategory
    amount: Money
    currency: Currency
    expected_close_date: IsoDate | None = None
    changed_at: IsoDateTime
    changed_by: Actor
    opportunity: OpportunityFigures


class OpportunityClosed(Contract):
    opportunity_id: Id
    won: bool
    amount: Money
    currency: Currency
    loss_reason: Annotated[str, SingleLine(max_length=200)] | None = Field(
        default=None,
        description="When lost: the loss_reason picklist's value (GET /picklists/loss_reason on the "
        "opportunities service); a pipeline with a loss-reason list of its own names one of those",
    )
    loss_note: Annotated[str, MultiLine(max_length=2000)] | None = Field(
        default=None, description="When lost: the rep's free-text account of why"
    )
    competitor: Annotated[str, SingleLine(max_length=200)] | None = Field(
        default=None, description="When lost: who won the deal instead (free text)"
    )
    closed_at: IsoDateTime
    closed_by: Actor
    opportunity: OpportunityFigures


# Payloads of ``account.updated``, ``contact.updated``, ``pipeline.created`` and
# ``pipeline.updated``.
class AccountUpdated(AccountCreated):
    """The account as it stands after a change, and which fields changed."""

    changed_fields: list[str]
    updated_at: IsoDateTime
    updated_by: Actor


class ContactUpdated(ContactCreated):
    """The contact as it stands after a change, and which fields changed."""

    changed_fields: list[str]
    updated_at: IsoDateTime
    updated_by: Actor


class PipelineStage(Contract):
    stage_id: Id
    name: ShortText
    kind: StageKind
    probability: Percent
    forecast_category: ForecastCategory
    position: int = Field(ge=0, description="0-based order within the pipeline")


class PipelineDefined(Contract):
    """A pipeline's full definition (on creation and after each revision), so reporting can
    order stages and tell open from closed ones."""

    pipeline_id: Id
    name: ShortText
    stages: list[PipelineStage]
    loss_reasons: list[Annotated[str, SingleLine()]]
    defined_at: IsoDateTime
