"""Contracts of the leads service: what other systems publish (``lead.captured``) and what
the leads service emits about the lead's life (created, updated, qualified, disqualified,
merged, converted)."""

from __future__ import annotations

from datetime import date
from enum import StrEnum
from typing import Annotated, Any

from pydantic import AwareDatetime, EmailStr, Field

from .common import Actor, Contract, Currency, Id, Money, ShortText

Score = Annotated[int, Field(ge=0, le=100)]


class LeadSource(StrEnum):
    """The channel a lead came through; ``other`` plus ``source_detail`` extends it."""

    WEB = "web"
    ORGANIC_SEARCH = "organic_search"
    PAID_SEARCH = "paid_search"
    SOCIAL = "social"
    REFERRAL = "referral"
    PARTNER = "partner"
    EVENT = "event"
    COLD_CALL = "cold_call"
    EMAIL = "email"
    CHAT = "chat"
    LIST_IMPORT = "list_import"
    OTHER = "other"


class LeadOrigin(StrEnum):
    """How the lead entered the suite."""

    API = "api"
    LANDING_PAGE_FORM = "landing_page_form"
    IMPORT = "import"
    MANUAL = "manual"


class LeadStatus(StrEnum):
    NEW = "new"
    WORKING = "working"
    NURTURING = "nurturing"
    QUALIFIED = "qualified"
    DISQUALIFIED = "disqualified"
    CONVERTED = "converted"
    MERGED = "merged"
    """Terminal: the lead was merged into another one (``merged_into``), which lives on."""


class LeadRating(StrEnum):
    """Qualification result: how likely a deal is and how much it could bring."""

    HOT = "hot"
    WARM = "warm"
    COLD = "cold"


class Person(Contract):
    first_name: str | None = Field(default=None, max_length=100, examples=["Ada"])
    last_name: str | None = Field(default=None, max_length=100, examples=["Lovelace"])
    email: EmailStr | None = Field(default=None, examples=["ada@example.com"])
    phone: str | None = Field(default=None, max_length=40, pattern=r"^[0-9+()./ \-]{3,40}$")
    job_title: str | None = Field(default=None, max_length=200, examples=["Head of Operations"])


class Company(Contract):
    name: str | None = Field(default=None, max_length=200, examples=["Analytical Engines Ltd"])
    website: str | None = Field(default=None, max_length=300, examples=["https://engines.example"])
    industry: str | None = Field(default=None, max_length=100)
    size: int | None = Field(default=None, ge=0, le=10_000_000, description="Employees")
    country: str | None = Field(default=None, pattern=r"^[A-Z]{2}$", examples=["GB"])
    city: str | None = Field(default=None, max_length=100)


class Utm(Contract):
    source: str | None = Field(default=None, max_length=200)
    medium: str | None = Field(default=None, max_length=200)
    campaign: str | None = Field(default=None, max_length=200)
    term: str | None = Field(default=None, max_length=200)
    content: str | None = Field(default=None, max_length=200)


class Consent(Contract):
    do_not_email: bool = False
    do_not_call: bool = False


class Engagement(Contract):
    visits: int = Field(default=0, ge=0)
    time_on_site_seconds: int = Field(default=0, ge=0)
    page_views: int = Field(default=0, ge=0)
    last_activity: str | None = Field(default=None, max_length=200)
    last_activity_at: AwareDatetime | None = None


CustomAttributes = Annotated[
    dict[Annotated[str, Field(pattern=r"^[A-Za-z][A-Za-z0-9_]{0,63}$")], str | int | float | bool | None],
    Field(max_length=50),
]


class LeadCaptured(Contract):
    """Published to ``lead.captured`` by any system that captures a lead.

    (``source_system``, ``external_id``) identifies the lead in the capturing system: sending
    it again updates the same lead instead of creating another.
    """

    source_system: ShortText = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.\-]{0,63}$", examples=["webforms"])
    external_id: ShortText = Field(max_length=128, examples=["form-submission-981"])
    person: Person = Person()
    company: Company = Company()
    lead_source: LeadSource = LeadSource.OTHER
    source_detail: str | None = Field(default=None, max_length=200)
    origin: LeadOrigin = LeadOrigin.API
    campaign_id: Id | None = None
    utm: Utm | None = None
    consent: Consent = Consent()
    engagement: Engagement = Engagement()
    owner_id: Id | None = None
    custom: CustomAttributes = Field(default_factory=dict)
    captured_at: AwareDatetime = Field(
        description="When the lead was really captured; may lie in the past for historical imports."
    )


class LeadSnapshot(Contract):
    """The lead as it stands after a change."""

    lead_id: Id
    status: LeadStatus
    rating: LeadRating | None = None
    score: Score | None = None
    source_system: str
    external_id: str
    person: Person
    company: Company
    lead_source: LeadSource
    origin: LeadOrigin
    campaign_id: Id | None = None
    owner_id: Id | None = None
    captured_at: AwareDatetime
    duplicate_of: list[Id] = Field(
        default_factory=list, description="Likely duplicates of this lead that were captured before it."
    )
    merged_into: Id | None = Field(default=None, description="Set when the status is merged.")


class LeadCreated(Contract):
    lead: LeadSnapshot


class LeadUpdated(Contract):
    lead: LeadSnapshot
    changed_fields: list[str] = Field(default_factory=list)


class LeadQualified(Contract):
    lead_id: Id
    rating: LeadRating
    score: Score | None = None
    lead_source: LeadSource
    campaign_id: Id | None = None
    qualified_at: AwareDatetime
    qualified_by: Actor


class LeadDisqualified(Contract):
    lead_id: Id
    reason: ShortText
    lead_source: LeadSource
    campaign_id: Id | None = None
    disqualified_at: AwareDatetime
    disqualified_by: Actor


class LeadMerged(Contract):
    """Two leads became one: ``merged_lead_id`` is now terminal (status ``merged``) and points
    at the survivor, which took the fields it lacked and keeps both histories. Published with
    the survivor as subject and its version as sequence."""

    survivor: LeadSnapshot
    merged_lead_id: Id
    taken_fields: list[str] = Field(
        default_factory=list, description="Fields the survivor took from the merged lead."
    )
    matching_keys: list[str] = Field(
        default_factory=list,
        description="Why they were duplicates (email, phone, company_domain+name); empty if merged by hand.",
    )
    merged_at: AwareDatetime
    merged_by: Actor


class ConvertedAccount(Contract):
    account_id: Id
    is_new: bool = Field(description="False when the lead was matched to an existing account")
    name: str | None = Field(default=None, max_length=200)
    domain: str | None = Field(default=None, max_length=253)
    industry: str | None = Field(default=None, max_length=100)
    employees: int | None = Field(default=None, ge=0)
    country: str | None = Field(default=None, pattern=r"^[A-Z]{2}$")
    city: str | None = Field(default=None, max_length=100)


class ConvertedContact(Contract):
    contact_id: Id
    is_new: bool
    first_name: str | None = Field(default=None, max_length=100)
    last_name: str | None = Field(default=None, max_length=100)
    email: EmailStr | None = None
    phone: str | None = Field(default=None, max_length=40)
    job_title: str | None = Field(default=None, max_length=200)


class ConvertedOpportunity(Contract):
    opportunity_id: Id
    name: ShortText
    amount: Money | None = None
    currency: Currency = "EUR"
    expected_close_date: date | None = None
    pipeline_id: Id | None = Field(default=None, description="None means the default pipeline")
    owner_id: Id | None = None


class LeadConverted(Contract):
    """Carries the ids downstream services create or link, so they can do it idempotently."""

    lead_id: Id
    account: ConvertedAccount
    contact: ConvertedContact
    opportunity: ConvertedOpportunity | None = None
    lead_source: LeadSource
    campaign_id: Id | None = None
    converted_at: AwareDatetime
    converted_by: Actor
    captured_at: AwareDatetime | None = None


def lead_captured_example() -> dict[str, Any]:
    """A valid ``lead.captured`` payload, used by docs and tests."""
    return {
        "source_system": "webforms",
        "external_id": "form-981",
        "person": {"first_name": "Ada", "last_name": "Lovelace", "email": "ada@engines.example"},
        "company": {"name": "Analytical Engines", "website": "https://engines.example"},
        "lead_source": "web",
        "origin": "landing_page_form",
        "captured_at": "2026-11-02T09:30:00Z",
    }
