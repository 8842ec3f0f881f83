"""Contracts of the leads service: what other systems publish (``lead.captured``) and what
the leads service emits about the lead's life (created, updated, qualified, disqualified,
merged, converted)."""

from __future__ import annotations

from enum import StrEnum
from typing import Annotated, Any

from pydantic import EmailStr, Field, ValidationError, model_validator
from pydantic_core import InitErrorDetails, PydanticCustomError

from .common import (
    Actor,
    Contract,
    Currency,
    ExternalId,
    Id,
    IsoDate,
    IsoDateTime,
    Money,
    MultiLine,
    ShortText,
    SingleLine,
)
from .picklists import PicklistCode, PicklistGiven, PicklistName, PicklistValue

Score = Annotated[int, Field(ge=0, le=100)]


class LeadSource(StrEnum):
    """The default lead sources: the channel a lead came through. The organisation's list is a
    picklist (``lead_source``) the leads service keeps; these are its values until revised."""

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
    UNKNOWN = "unknown"
    """A capture that names no source (missing or blank)."""


class LeadOrigin(StrEnum):
    """The default lead origins (picklist ``lead_origin``): how the lead entered the suite."""

    API = "api"
    LANDING_PAGE_FORM = "landing_page_form"
    IMPORT = "import"
    MANUAL = "manual"


_LABELS: dict[str, str] = {
    LeadSource.WEB: "Web",
    LeadSource.ORGANIC_SEARCH: "Organic search",
    LeadSource.PAID_SEARCH: "Paid search",
    LeadSource.SOCIAL: "Social",
    LeadSource.REFERRAL: "Referral",
    LeadSource.PARTNER: "Partner",
    LeadSource.EVENT: "Event",
    LeadSource.COLD_CALL: "Cold call",
    LeadSource.EMAIL: "Email",
    LeadSource.CHAT: "Chat",
    LeadSource.LIST_IMPORT: "List import",
    LeadSource.OTHER: "Other",
    LeadSource.UNKNOWN: "Unknown",
    LeadOrigin.API: "API",
    LeadOrigin.LANDING_PAGE_FORM: "Landing page form",
    LeadOrigin.IMPORT: "Import",
    LeadOrigin.MANUAL: "Manual",
}
DEFAULT_PICKLISTS: dict[PicklistName, tuple[type[StrEnum], str]] = {
    PicklistName.LEAD_SOURCE: (LeadSource, LeadSource.UNKNOWN),
    PicklistName.LEAD_ORIGIN: (LeadOrigin, LeadOrigin.API),
}
"""Each picklist's default values and the value a capture naming none gets."""


def default_picklist_values(name: PicklistName) -> list[PicklistValue]:
    """The values a picklist has until an administrator revises it: the suite's closed lists
    of before, with their labels."""
    values, _ = DEFAULT_PICKLISTS[name]
    return [PicklistValue(value=member.value, label=_LABELS[member.value]) for member in values]


class LeadStatus(StrEnum):
    NEW = "new"
    WORKING = "working"
    NURTURING = "nurturing"
    QUALIFIED = "qualified"
    DISQUALIFIED = "disqualified"
    CONVERTED = "converted"
    MERGED = "merged"
    """Terminal: the lead was merged into another one (``merged_into``), which lives on."""


class CapturedAtSource(StrEnum):
    """Where a lead's ``captured_at`` comes from: the capture's own ``captured_at``, else the
    CloudEvents ``time`` of the ``lead.captured`` event, else when the suite received it (an
    HTTP capture or an import row without a time: the request's or the upload's receipt)."""

    PAYLOAD = "payload"
    EVENT_TIME = "event_time"
    RECEIVED = "received"


class LeadRating(StrEnum):
    """Qualification result: how likely a deal is and how much it could bring."""

    HOT = "hot"
    WARM = "warm"
    COLD = "cold"


class Person(Contract):
    first_name: Annotated[str, SingleLine(max_length=100)] | None = Field(default=None, examples=["Ada"])
    last_name: Annotated[str, SingleLine(max_length=100)] | None = Field(default=None, examples=["Lovelace"])
    email: EmailStr | None = Field(default=None, examples=["ada@example.com"])
    phone: str | None = Field(default=None, max_length=40, pattern=r"^[0-9+()./ \-]{3,40}$")
    job_title: Annotated[str, SingleLine(max_length=200)] | None = Field(
        default=None, examples=["Head of Operations"]
    )


class Company(Contract):
    name: Annotated[str, SingleLine(max_length=200)] | None = Field(
        default=None, examples=["Analytical Engines Ltd"]
    )
    website: Annotated[str, SingleLine(max_length=300)] | None = Field(
        default=None, examples=["https://engines.example"]
    )
    industry: Annotated[str, SingleLine(max_length=100)] | None = None
    size: int | None = Field(default=None, ge=0, le=10_000_000, description="Employees")
    country: str | None = Field(default=None, pattern=r"^[A-Z]{2}$", examples=["GB"])
    city: Annotated[str, SingleLine(max_length=100)] | None = None


class Utm(Contract):
    source: Annotated[str, SingleLine(max_length=200)] | None = None
    medium: Annotated[str, SingleLine(max_length=200)] | None = None
    campaign: Annotated[str, SingleLine(max_length=200)] | None = None
    term: Annotated[str, SingleLine(max_length=200)] | None = None
    content: Annotated[str, SingleLine(max_length=200)] | None = None


class Consent(Contract):
    do_not_email: bool = False
    do_not_call: bool = False


# Counters are bounded so that they fit MongoDB's 64-bit integers (and any sane figure).
ENGAGEMENT_MAX = 1_000_000_000


class Engagement(Contract):
    visits: int = Field(default=0, ge=0, le=ENGAGEMENT_MAX)
    time_on_site_seconds: int = Field(default=0, ge=0, le=ENGAGEMENT_MAX)
    page_views: int = Field(default=0, ge=0, le=ENGAGEMENT_MAX)
    last_activity: Annotated[str, SingleLine(max_length=200)] | None = None
    last_activity_at: IsoDateTime | None = None


# What tells who a lead is: a capture must carry at least one of them.
IDENTIFYING_FIELDS = ("person.first_name", "person.last_name", "person.email", "person.phone", "company.name")
_IDENTIFYING_PATHS = [tuple(field.split(".")) for field in IDENTIFYING_FIELDS]

CustomAttributes = Annotated[
    dict[
        Annotated[str, Field(pattern=r"^[A-Za-z][A-Za-z0-9_]{0,63}$")],
        # A 64-bit int at most (what MongoDB stores); a larger number is taken as a float.
        Annotated[
            str | Annotated[int, Field(ge=-(2**63), le=2**63 - 1)] | float | bool | None,
            MultiLine().in_union(),
        ],
    ],
    Field(max_length=50),
]


class LeadCaptured(Contract):
    """Published to ``lead.captured`` by any system that captures a lead.

    (``source_system``, ``external_id``) identifies the lead in the capturing system: sending
    it again updates the same lead instead of creating another. A lead says who it is: at least
    one of person.first_name, person.last_name, person.email, person.phone and company.name.
    """

    source_system: ShortText = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.\-]{0,63}$", examples=["webforms"])
    external_id: ExternalId = Field(examples=["form-submission-981"])
    person: Person = Person()
    company: Company = Company()
    lead_source: PicklistGiven | None = Field(
        default=None,
        description="A value of the organisation's lead_source picklist, one of its labels or "
        "aliases (ignoring case, spaces and punctuation); stored as the picklist's value. "
        "Missing or blank: unknown. A value the list does not know is refused (the event goes "
        "to lead.captured.dlq naming the closest values) or kept as other, as the picklist's "
        "unknown_values setting says. Defaults: web, organic_search, paid_search, social, "
        "referral, partner, event, cold_call, email, chat, list_import, other, unknown.",
        examples=["web"],
    )
    source_detail: Annotated[str, SingleLine(max_length=200)] | None = None
    origin: PicklistGiven | None = Field(
        default=None,
        description="A value of the organisation's lead_origin picklist (matched as lead_source "
        "is); missing or blank: api. Defaults: api, landing_page_form, import, manual.",
        examples=["landing_page_form"],
    )
    campaign_id: Id | None = None
    utm: Utm | None = None
    consent: Consent = Consent()
    engagement: Engagement = Engagement()
    owner_id: Id | None = None
    custom: CustomAttributes = Field(default_factory=dict)
    captured_at: IsoDateTime | None = Field(
        default=None,
        description="When the lead was really captured; may lie in the past for historical imports. "
        "Optional: when absent the event's CloudEvents `time` is taken, and where there is no "
        "event (an HTTP capture, an import row) the time of receipt; the lead's `captured_at_source` "
        "says which (payload, event_time, received).",
    )

    @model_validator(mode="after")
    def _identifiable(self) -> LeadCaptured:
        """A lead nobody can name, mail or call is noise: refused, naming every field that would do."""
        if any(getattr(getattr(self, part), name) for part, name in _IDENTIFYING_PATHS):
            return self
        reason = PydanticCustomError(
            "lead_unidentified", "a lead needs a name, an e-mail, a phone or a company name; none is given"
        )
        raise ValidationError.from_exception_data(
            type(self).__name__,
            [InitErrorDetails(type=reason, loc=path, input=None) for path in _IDENTIFYING_PATHS],
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
    lead_source: PicklistCode
    origin: PicklistCode
    campaign_id: Id | None = None
    utm: Utm | None = Field(
        default=None, description="The UTM parameters of the lead's latest capture (none: not tracked)."
    )
    owner_id: Id | None = None
    captured_at: IsoDateTime
    captured_at_source: CapturedAtSource = Field(
        default=CapturedAtSource.PAYLOAD,
        description="Where captured_at comes from: the capture's own captured_at (payload), the "
        "lead.captured event's time (event_time), or the time the suite received it (received).",
    )
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
    lead_source: PicklistCode
    campaign_id: Id | None = None
    qualified_at: IsoDateTime
    qualified_by: Actor


class LeadDisqualified(Contract):
    lead_id: Id
    reason: ShortText
    lead_source: PicklistCode
    campaign_id: Id | None = None
    disqualified_at: IsoDateTime
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
    merged_at: IsoDateTime
    merged_by: Actor


class ConvertedAccount(Contract):
    account_id: Id
    is_new: bool = Field(description="False when the lead was matched to an existing account")
    name: Annotated[str, SingleLine(max_length=200)] | None = None
    domain: Annotated[str, SingleLine(max_length=253)] | None = None
    industry: Annotated[str, SingleLine(max_length=100)] | None = None
    employees: int | None = Field(default=None, ge=0)
    country: str | None = Field(default=None, pattern=r"^[A-Z]{2}$")
    city: Annotated[str, SingleLine(max_length=100)] | None = None
    website: Annotated[str, SingleLine(max_length=300)] | None = Field(
        default=None, description="The lead's company website; fills a matched account's only if it has none."
    )


class ConvertedContact(Contract):
    contact_id: Id
    is_new: bool
    first_name: Annotated[str, SingleLine(max_length=100)] | None = None
    last_name: Annotated[str, SingleLine(max_length=100)] | None = None
    email: EmailStr | None = None
    phone: Annotated[str, SingleLine(max_length=40)] | None = None
    job_title: Annotated[str, SingleLine(max_length=200)] | None = None
    consent: Consent | None = Field(
        default=None,
        description="The lead's consent flags, stated when the lead was last captured (captured_at). "
        "Absent (older publishers): nothing is said about consent. A matched contact takes them only "
        "if its own consent was recorded earlier (or never).",
    )


class ConvertedOpportunity(Contract):
    opportunity_id: Id
    name: ShortText
    amount: Money | None = None
    currency: Currency = "EUR"
    expected_close_date: IsoDate | None = None
    pipeline_id: Id | None = Field(default=None, description="None means the default pipeline")
    owner_id: Id | None = None


class LeadConverted(Contract):
    """Carries the ids downstream services create or link, so they can do it idempotently."""

    lead_id: Id
    account: ConvertedAccount
    contact: ConvertedContact
    opportunity: ConvertedOpportunity | None = None
    lead_source: PicklistCode
    campaign_id: Id | None = None
    utm: Utm | None = Field(
        default=None,
        description="The lead's UTM parameters; the opportunity opened on conversion keeps them.",
    )
    converted_at: IsoDateTime
    converted_by: Actor
    captured_at: IsoDateTime | None = None


# The Kafka key publishers give ``lead.captured``: the capture key, which names one lead.
LEAD_CAPTURED_KEY_RULE = (
    "`<source_system>:<external_id>` in UTF-8 (e.g. `webforms:form-981`; source_system has no colon, "
    "so the first one separates the two), built by `crm_contracts.events.leads.lead_captured_key`. "
    "It buys ordering per lead: every capture of one lead lands on one partition and is consumed in "
    "the order it was published, by one consumer at a time (no concurrent updates of one lead). "
    "Events keyed otherwise -- another key, or a null key -- are accepted and handled exactly the "
    "same (the key is never read: a capture is identified by its payload's source_system and "
    "external_id, duplicates by the CloudEvents (source, id), and the latest captured_at wins), "
    "but they are ordered only per key given: captures of one lead may then be consumed out of "
    "order or concurrently, which ends in the same lead after retries."
)


def lead_captured_key(source_system: str, external_id: str) -> bytes:
    """The Kafka key of a ``lead.captured`` event (see ``LEAD_CAPTURED_KEY_RULE``)."""
    return f"{source_system}:{external_id}".encode()


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
