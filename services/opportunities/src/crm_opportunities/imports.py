"""Bulk import from another CRM: the rows of an NDJSON or CSV upload (accounts, contacts,
opportunities), each validated on its own, so one bad row is reported and the others still go in."""

from __future__ import annotations

import uuid
from typing import Annotated, Any, Literal

from crm_contracts.events.common import (
    Currency,
    Id,
    IsoDate,
    IsoDateTime,
    Money,
    Percent,
    ShortText,
    SingleLine,
)
from crm_contracts.events.opportunities import AccountTier, AccountType
from crm_contracts.events.picklists import PicklistCode
from crm_runtime.uploads import RowProblem, count_statuses
from pydantic import (
    BaseModel,
    ConfigDict,
    EmailStr,
    Field,
    field_validator,
    model_validator,
)

from .domain import DEFAULT_PIPELINE_ID, LossReason

# Ids derived from (system, kind, external id): importing the same export again updates the
# same records instead of duplicating them.
IMPORT_NAMESPACE = uuid.UUID("0f6d3f5e-2b9a-4c1e-8d47-3a5e9c1b7d20")
ExternalId = Annotated[str, SingleLine(min_length=1, max_length=128)]


def imported_id(kind: str, system: str, external_id: str) -> str:
    return str(uuid.uuid5(IMPORT_NAMESPACE, f"{system}\x1f{kind}\x1f{external_id}"))


class ImportRow(BaseModel):
    """One record of an upload, identified by its id in the CRM it comes from."""

    model_config = ConfigDict(extra="forbid", str_strip_whitespace=True)

    external_id: ExternalId


class AccountRow(ImportRow):
    name: ShortText
    type: AccountType = AccountType.PROSPECT
    tier: AccountTier | None = None
    industry: Annotated[str, SingleLine(max_length=100)] | None = None
    employees: int | None = Field(default=None, ge=0, le=10_000_000)
    annual_revenue: Money | None = None
    website: Annotated[str, SingleLine(max_length=300)] | None = None
    domain: str | None = Field(default=None, max_length=253, pattern=r"^[A-Za-z0-9.\-]+$")
    street: Annotated[str, SingleLine(max_length=200)] | None = None
    postal_code: Annotated[str, SingleLine(max_length=20)] | None = None
    city: Annotated[str, SingleLine(max_length=100)] | None = None
    region: Annotated[str, SingleLine(max_length=100)] | None = None
    country: str | None = Field(default=None, pattern=r"^[A-Z]{2}$")
    owner_id: Id | None = None
    parent_external_id: ExternalId | None = None
    created_at: IsoDateTime | None = None


class ContactRow(ImportRow):
    first_name: Annotated[str, SingleLine(max_length=100)] | None = None
    last_name: Annotated[str, SingleLine(max_length=100)] | None = None
    email: EmailStr | None = None
    phone: str | None = Field(default=None, max_length=40, pattern=r"^[0-9+()./ \-]{3,40}$")
    job_title: Annotated[str, SingleLine(max_length=200)] | None = None
    role: Annotated[str, SingleLine(max_length=100)] | None = Field(
        default=None, description="Role at the account"
    )
    decision_maker: bool = False
    influencer: bool = False
    account_external_id: ExternalId | None = None
    account_id: Id | None = Field(default=None, description="An account of this service, instead")
    created_at: IsoDateTime | None = None

    @model_validator(mode="after")
    def _identifiable(self) -> ContactRow:
        if not (self.first_name or self.last_name or self.email):
            raise ValueError("a contact needs a first name, a last name or an email")
        if self.account_external_id is not None and self.account_id is not None:
            raise ValueError("give at most one of account_external_id and account_id")
        return self


class HistoryEntry(BaseModel):
    model_config = ConfigDict(extra="forbid")

    stage_id: Id
    entered_at: IsoDateTime


class OpportunityRow(ImportRow):
    name: ShortText
    account_external_id: ExternalId | None = None
    account_id: Id | None = Field(default=None, description="An account of this service, instead")
    pipeline_id: Id = DEFAULT_PIPELINE_ID
    stage_id: Id | None = Field(default=None, description="The original stage; the first one when omitted")
    probability: Percent | None = None
    amount: Money | None = None
    currency: Currency = "EUR"
    expected_close_date: IsoDate | None = None
    owner_id: Id | None = None
    lead_source: PicklistCode | None = None
    campaign_id: Id | None = None
    created_at: IsoDateTime | None = Field(default=None, description="The original creation time")
    closed_at: IsoDateTime | None = None
    loss_reason: LossReason | None = None
    stage_history: list[HistoryEntry] | None = Field(
        default=None,
        min_length=1,
        max_length=100,
        description=(
            "The stages it went through, oldest first, ending with the current one. NDJSON: a "
            "list of {stage_id, entered_at}; CSV: stage@timestamp entries separated by '|'"
        ),
    )

    @field_validator("stage_history", mode="before")
    @classmethod
    def _history_from_csv(cls, value: Any) -> Any:
        if not isinstance(value, str):
            return value
        entries = []
        for entry in value.split("|"):
            stage_id, separator, at = entry.strip().partition("@")
            if not (stage_id and separator and at):
                raise ValueError("write each entry as stage_id@timestamp, entries separated by |")
            entries.append({"stage_id": stage_id.strip(), "entered_at": at.strip()})
        return entries

    @model_validator(mode="after")
    def _one_account(self) -> OpportunityRow:
        if (self.account_external_id is None) == (self.account_id is None):
            raise ValueError("give exactly one of account_external_id and account_id")
        return self


class RowOutcome(BaseModel):
    row: int = Field(description="NDJSON: line number; CSV: record number after the header (1 = first)")
    external_id: str | None = None
    status: Literal["created", "updated", "matched", "unchanged", "failed"]
    id: str | None = None
    changed_fields: list[str] = Field(default_factory=list)
    problems: list[RowProblem] = Field(default_factory=list)


class ImportReport(BaseModel):
    source_system: str
    counts: dict[str, int]
    rows: list[RowOutcome]

    @classmethod
    def of(cls, source_system: str, rows: list[RowOutcome]) -> ImportReport:
        return cls(source_system=source_system, counts=count_statuses(row.status for row in rows), rows=rows)
