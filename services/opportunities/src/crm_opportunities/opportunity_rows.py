"""An opportunity row of an import, as a CRM export carries it: the account (or none), owner,
sales team, line items, stage history with dates, created / expected close / closed dates, won
or lost with the loss reason, amount and currency. NDJSON rows give lists as JSON; CSV cells
encode them as documented on each field. Names (products, stages, teams, loss reasons) are
resolved against this service's records when the row is applied (``opportunity_import``)."""

from __future__ import annotations

from decimal import Decimal, InvalidOperation
from typing import Annotated, Any, Literal

from crm_contracts.events.common import (
    Currency,
    ExternalId,
    Id,
    IsoDate,
    IsoDateTime,
    Money,
    Percent,
    ShortText,
)
from crm_contracts.events.picklists import PicklistCode
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from .domain import DEFAULT_PIPELINE_ID, Competitor, LossNote
from .imports import ImportRow

# A name as another CRM spells it: the id or the name of a record here (see ``names``).
Name = Annotated[str, Field(min_length=1, max_length=200)]
Quantity = Annotated[Decimal, Field(gt=0, le=Decimal("1000000000"), decimal_places=4)]
DiscountPercent = Annotated[Decimal, Field(ge=0, le=100, decimal_places=2)]


class HistoryEntry(BaseModel):
    model_config = ConfigDict(extra="forbid", str_strip_whitespace=True)

    stage_id: Name = Field(description="The stage's id or name in the pipeline")
    entered_at: IsoDateTime


class LineItemEntry(BaseModel):
    model_config = ConfigDict(extra="forbid", str_strip_whitespace=True)

    product: Name = Field(description="The product's id or its catalogue name")
    quantity: Quantity = Decimal("1")
    unit_price: Money | None = Field(default=None, description="The catalogue's list price when omitted")
    discount_percent: DiscountPercent = Decimal("0")


def _split_entries(value: str) -> list[str]:
    return [entry.strip() for entry in value.split("|") if entry.strip()]


def _number_after(text: str, separator: str) -> tuple[str, str | None]:
    """``text`` without a trailing ``<separator><number>``, and that number (if there is one)."""
    head, found, tail = text.rpartition(separator)
    if not found:
        return text, None
    try:
        Decimal(tail.strip())
    except InvalidOperation:
        return text, None
    return head.strip(), tail.strip()


def line_items_from_text(value: str) -> list[dict[str, Any]]:
    """The CSV encoding: ``product*quantity@unit_price`` entries separated by ``|``, quantity
    (default 1) and price (default: the catalogue's) optional: ``Widget*3@19.90|Setup fee``."""
    entries = []
    for entry in _split_entries(value):
        rest, price = _number_after(entry, "@")
        product, quantity = _number_after(rest, "*")
        item: dict[str, Any] = {"product": product}
        if quantity is not None:
            item["quantity"] = quantity
        if price is not None:
            item["unit_price"] = price
        entries.append(item)
    return entries


def history_from_text(value: str) -> list[dict[str, Any]]:
    """The CSV encoding: ``stage@timestamp`` entries separated by ``|``, oldest first."""
    entries = []
    for entry in _split_entries(value):
        stage, separator, at = entry.rpartition("@")
        if not (stage.strip() and separator and at.strip()):
            raise ValueError("write each entry as stage_id@timestamp, entries separated by |")
        entries.append({"stage_id": stage.strip(), "entered_at": at.strip()})
    return entries


class OpportunityRow(ImportRow):
    name: ShortText
    account_external_id: ExternalId | None = Field(
        default=None, description="The account's id in the same export (imported before)"
    )
    account_id: Id | None = Field(default=None, description="An account of this service, instead")
    pipeline_id: Name = Field(default=DEFAULT_PIPELINE_ID, description="The pipeline's id or name")
    stage_id: Name | None = Field(
        default=None, description="The current stage's id or name; the first one (or status's) when omitted"
    )
    status: Literal["open", "won", "lost"] | None = Field(
        default=None,
        description="won / lost without a stage_id: the pipeline's closed-won / closed-lost stage",
    )
    probability: Percent | None = None
    amount: Money | None = Field(
        default=None, description="The line items' total when omitted and there are some"
    )
    currency: Currency | None = Field(default=None, description="The company currency when omitted")
    expected_close_date: IsoDate | None = None
    owner_id: Id | None = None
    sales_team_id: Name | None = Field(default=None, description="The sales team's id or name")
    lead_source: PicklistCode | None = None
    campaign_id: Id | None = None
    created_at: IsoDateTime | None = Field(default=None, description="The original creation time")
    closed_at: IsoDateTime | None = None
    loss_reason: Name | None = Field(
        default=None,
        description="Why it was lost: a value, label or alias of the loss_reason picklist (a pipeline "
        "with reasons of its own: one of those)",
    )
    loss_note: LossNote | None = Field(default=None, description="Lost: the rep's account of why")
    competitor: Competitor | None = Field(default=None, description="Lost: who won the deal instead")
    stage_history: list[HistoryEntry] | None = Field(
        default=None,
        min_length=1,
        max_length=100,
        description=(
            "The stages it went through, oldest first, ending with the current one. NDJSON: a "
            "list of {stage_id, entered_at}; CSV: stage@timestamp entries separated by '|'"
        ),
    )
    line_items: list[LineItemEntry] | None = Field(
        default=None,
        max_length=200,
        description=(
            "Products on the deal. NDJSON: a list of {product, quantity, unit_price, "
            "discount_percent}; CSV: product*quantity@unit_price entries separated by '|' "
            "(quantity and price optional)"
        ),
    )

    @field_validator("stage_history", mode="before")
    @classmethod
    def _history_from_csv(cls, value: Any) -> Any:
        return history_from_text(value) if isinstance(value, str) else value

    @field_validator("line_items", mode="before")
    @classmethod
    def _line_items_from_csv(cls, value: Any) -> Any:
        return line_items_from_text(value) if isinstance(value, str) else value

    @field_validator("status", mode="before")
    @classmethod
    def _status_in_any_case(cls, value: Any) -> Any:
        return value.strip().lower() if isinstance(value, str) else value

    @model_validator(mode="after")
    def _at_most_one_account(self) -> OpportunityRow:
        if self.account_external_id is not None and self.account_id is not None:
            raise ValueError("give at most one of account_external_id and account_id")
        return self

    @property
    def current_stage(self) -> str | None:
        """The stage the row says it is in: ``stage_id``, else the history's last."""
        if self.stage_id is not None:
            return self.stage_id
        return self.stage_history[-1].stage_id if self.stage_history else None
