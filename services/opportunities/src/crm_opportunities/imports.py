"""Bulk import from another CRM: the rows of an NDJSON or CSV upload (accounts, contacts,
opportunities), each validated on its own, so one bad row is reported and the others still go in.
Opportunity rows are in ``opportunity_rows``."""

from __future__ import annotations

import uuid
from typing import Annotated

from crm_contracts.events.common import (
    Currency,
    ExternalId,
    Id,
    IsoDateTime,
    Money,
    ShortText,
    SingleLine,
)
from crm_contracts.events.opportunities import AccountTier, AccountType
from pydantic import (
    BaseModel,
    ConfigDict,
    EmailStr,
    Field,
    ValidationInfo,
    field_validator,
    model_validator,
)

from .countries import country_code
from .domain import YearEstablished

# Ids derived from (system, kind, external id): importing the same export again updates the
# same records instead of duplicating them.
IMPORT_NAMESPACE = uuid.UUID("0f6d3f5e-2b9a-4c1e-8d47-3a5e9c1b7d20")


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
    annual_revenue_currency: Currency | None = Field(
        default=None, description="The revenue's currency; the organisation's own when omitted"
    )
    year_established: YearEstablished | None = None
    website: Annotated[str, SingleLine(max_length=300)] | None = None
    domain: str | None = Field(default=None, max_length=253, pattern=r"^[A-Za-z0-9.\-]+$")
    street: Annotated[str, SingleLine(max_length=200)] | None = None
    postal_code: Annotated[str, SingleLine(max_length=20)] | None = None
    city: Annotated[str, SingleLine(max_length=100)] | None = None
    region: Annotated[str, SingleLine(max_length=100)] | None = None
    country: Annotated[str, SingleLine(max_length=100)] | None = Field(
        default=None, description="An ISO 3166-1 code (DE, DEU) or an English name (Germany)"
    )
    owner_id: Id | None = None
    parent_external_id: ExternalId | None = None
    created_at: IsoDateTime | None = None

    @field_validator("country")
    @classmethod
    def _country_code(cls, value: str | None) -> str | None:
        return None if value is None else country_code(value)

    @field_validator("annual_revenue_currency")
    @classmethod
    def _currency_of_a_revenue(cls, value: str | None, info: ValidationInfo) -> str | None:
        if value is not None and info.data.get("annual_revenue") is None:
            raise ValueError("a currency needs an annual_revenue")
        return value

    @field_validator("parent_external_id")
    @classmethod
    def _not_its_own_parent(cls, value: str | None, info: ValidationInfo) -> str | None:
        if value is not None and value == info.data.get("external_id"):
            raise ValueError("an account cannot be its own parent")
        return value


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
    do_not_email: bool | None = Field(
        default=None, description="Consent, recorded at the import with source 'import <system>'"
    )
    do_not_call: bool | None = Field(
        default=None, description="As do_not_email; a column left out keeps its value"
    )
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
