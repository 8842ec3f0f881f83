"""The lead and its rules: capture, lifecycle, qualification and conversion. No I/O here."""

from __future__ import annotations

import re
import uuid
from datetime import date, datetime
from typing import Any

from crm_contracts.events.common import Actor, Currency, Id, Money, ShortText
from crm_contracts.events.leads import (
    Company,
    Consent,
    ConvertedAccount,
    ConvertedContact,
    ConvertedOpportunity,
    CustomAttributes,
    Engagement,
    LeadCaptured,
    LeadConverted,
    LeadOrigin,
    LeadRating,
    LeadSnapshot,
    LeadSource,
    LeadStatus,
    Person,
    Utm,
)
from pydantic import AwareDatetime, BaseModel, ConfigDict, Field

# Ids derived from the capturing system's own key make capture idempotent even when two
# copies of the same lead arrive at once: both compute the same id.
LEAD_NAMESPACE = uuid.UUID("5b0a7c1e-6f43-4c7e-9a8e-2f1d3c4b5a69")


class LeadRuleViolation(Exception):
    """An operation the lead's lifecycle does not allow."""


class LeadAlreadyConverted(LeadRuleViolation):
    pass


ALLOWED_TRANSITIONS: dict[LeadStatus, frozenset[LeadStatus]] = {
    LeadStatus.NEW: frozenset(
        {LeadStatus.WORKING, LeadStatus.NURTURING, LeadStatus.QUALIFIED, LeadStatus.DISQUALIFIED}
    ),
    LeadStatus.WORKING: frozenset({LeadStatus.NURTURING, LeadStatus.QUALIFIED, LeadStatus.DISQUALIFIED}),
    LeadStatus.NURTURING: frozenset({LeadStatus.WORKING, LeadStatus.QUALIFIED, LeadStatus.DISQUALIFIED}),
    LeadStatus.QUALIFIED: frozenset(
        {LeadStatus.WORKING, LeadStatus.NURTURING, LeadStatus.DISQUALIFIED, LeadStatus.CONVERTED}
    ),
    LeadStatus.DISQUALIFIED: frozenset({LeadStatus.WORKING, LeadStatus.NURTURING}),
    LeadStatus.CONVERTED: frozenset(),
}
OPEN_STATUSES = frozenset({LeadStatus.NEW, LeadStatus.WORKING, LeadStatus.NURTURING, LeadStatus.QUALIFIED})


def lead_id_for(source_system: str, external_id: str) -> str:
    return str(uuid.uuid5(LEAD_NAMESPACE, f"{source_system}\x1f{external_id}"))


def normalise_email(email: str | None) -> str | None:
    return email.strip().lower() if email else None


def normalise_phone(phone: str | None) -> str | None:
    """Digits only, keeping a leading '+' (so '+44 20 7946-0000' and '+442079460000' match)."""
    if not phone:
        return None
    digits = re.sub(r"\D", "", phone)
    if not digits:
        return None
    return ("+" if phone.strip().startswith("+") else "") + digits


_FREE_MAIL = frozenset(
    {"gmail.com", "yahoo.com", "hotmail.com", "outlook.com", "icloud.com", "gmx.de", "proton.me"}
)


def company_domain(website: str | None, email: str | None) -> str | None:
    """The company's domain from its website, else from a non-free-mail address."""
    if website:
        host = re.sub(r"^[a-z]+://", "", website.strip().lower()).split("/")[0].split(":")[0]
        host = host.removeprefix("www.")
        if host:
            return host
    if email and "@" in email:
        domain = email.rsplit("@", 1)[1].strip().lower()
        if domain not in _FREE_MAIL:
            return domain
    return None


class HistoryEntry(BaseModel):
    model_config = ConfigDict(frozen=True)

    at: AwareDatetime
    by: str
    action: str
    from_status: LeadStatus | None = None
    to_status: LeadStatus | None = None
    detail: str | None = None


class Conversion(BaseModel):
    account_id: str
    contact_id: str
    opportunity_id: str | None = None
    converted_at: AwareDatetime
    converted_by: str


class Lead(BaseModel):
    """A lead: an inquiry not yet tied to an opportunity."""

    model_config = ConfigDict(validate_assignment=True)

    id: str
    version: int = 0
    status: LeadStatus = LeadStatus.NEW
    rating: LeadRating | None = None
    score: int | None = None
    source_system: str
    external_id: str
    person: Person = Person()
    company: Company = Company()
    lead_source: LeadSource = LeadSource.OTHER
    source_detail: str | None = None
    origin: LeadOrigin = LeadOrigin.API
    campaign_id: str | None = None
    utm: Utm | None = None
    consent: Consent = Consent()
    engagement: Engagement = Engagement()
    owner_id: str | None = None
    custom: CustomAttributes = Field(default_factory=dict)
    captured_at: AwareDatetime
    created_at: AwareDatetime
    updated_at: AwareDatetime
    email_normalised: str | None = None
    phone_normalised: str | None = None
    company_domain: str | None = None
    disqualification_reason: str | None = None
    conversion: Conversion | None = None
    duplicate_of: list[str] = Field(default_factory=list)
    history: list[HistoryEntry] = Field(default_factory=list)

    # -- capture ----------------------------------------------------------------------------
    @classmethod
    def capture(cls, captured: LeadCaptured, *, now: datetime, by: str) -> Lead:
        lead = cls(
            id=lead_id_for(captured.source_system, captured.external_id),
            source_system=captured.source_system,
            external_id=captured.external_id,
            captured_at=captured.captured_at,
            created_at=now,
            updated_at=now,
        )
        lead._take_captured_fields(captured)
        lead.version = 1
        lead.history.append(HistoryEntry(at=now, by=by, action="captured", to_status=LeadStatus.NEW))
        return lead

    def recapture(self, captured: LeadCaptured, *, now: datetime, by: str) -> list[str]:
        """Apply a resent capture. The capture with the latest ``captured_at`` wins, so resends
        in any order end in the same state. Returns the changed fields (empty: nothing to do)."""
        if captured.captured_at < self.captured_at:
            return []
        before = self.model_dump(include=set(_CAPTURED_FIELDS))
        self._take_captured_fields(captured)
        self.captured_at = captured.captured_at
        after = self.model_dump(include=set(_CAPTURED_FIELDS))
        changed = sorted(key for key in _CAPTURED_FIELDS if before[key] != after[key])
        if changed:
            self._touch(now, by, "updated", detail=", ".join(changed))
        return changed

    def _take_captured_fields(self, captured: LeadCaptured) -> None:
        for name in _CAPTURED_FIELDS - {"captured_at"}:
            setattr(self, name, getattr(captured, name))
        self.email_normalised = normalise_email(self.person.email)
        self.phone_normalised = normalise_phone(self.person.phone)
        self.company_domain = company_domain(self.company.website, self.person.email)

    # -- lifecycle --------------------------------------------------------------------------
    def move_to(self, status: LeadStatus, *, now: datetime, by: str, detail: str | None = None) -> None:
        if self.status == LeadStatus.CONVERTED:
            raise LeadAlreadyConverted(f"lead {self.id} is already converted")
        if status not in ALLOWED_TRANSITIONS[self.status]:
            raise LeadRuleViolation(f"status: a {self.status.value} lead cannot become {status.value}")
        previous = self.status
        self.status = status
        self._touch(now, by, "status_changed", from_status=previous, to_status=status, detail=detail)

    def qualify(self, rating: LeadRating, *, now: datetime, by: str, score: int | None = None) -> None:
        if self.status != LeadStatus.QUALIFIED:
            self.move_to(LeadStatus.QUALIFIED, now=now, by=by, detail=f"rated {rating.value}")
        else:
            self._touch(now, by, "rated", detail=f"rated {rating.value}")
        self.rating = rating
        if score is not None:
            self.score = score

    def disqualify(self, reason: str, *, now: datetime, by: str) -> None:
        self.move_to(LeadStatus.DISQUALIFIED, now=now, by=by, detail=reason)
        self.disqualification_reason = reason

    def convert(
        self,
        request: ConversionRequest,
        *,
        now: datetime,
        by: Actor,
        new_id: Any = uuid.uuid4,
    ) -> LeadConverted:
        """Convert into an account, a contact and optionally an opportunity. Only qualified
        leads convert, unless ``allow_unqualified`` is set for an open one."""
        if self.status == LeadStatus.CONVERTED:
            raise LeadAlreadyConverted(f"lead {self.id} is already converted")
        if self.status != LeadStatus.QUALIFIED and not (
            request.allow_unqualified and self.status in OPEN_STATUSES
        ):
            raise LeadRuleViolation(
                f"status: only qualified leads convert (this one is {self.status.value}); "
                "set allow_unqualified to convert an open lead"
            )
        account = ConvertedAccount(
            account_id=request.existing_account_id or str(new_id()),
            is_new=request.existing_account_id is None,
            name=request.account_name or self.company.name or _person_name(self.person),
            domain=self.company_domain,
            industry=self.company.industry,
            employees=self.company.size,
            country=self.company.country,
            city=self.company.city,
        )
        contact = ConvertedContact(
            contact_id=request.existing_contact_id or str(new_id()),
            is_new=request.existing_contact_id is None,
            first_name=self.person.first_name,
            last_name=self.person.last_name,
            email=self.person.email,
            phone=self.person.phone,
            job_title=self.person.job_title,
        )
        opportunity = None
        if request.opportunity is not None:
            spec = request.opportunity
            opportunity = ConvertedOpportunity(
                opportunity_id=str(new_id()),
                name=spec.name,
                amount=spec.amount,
                currency=spec.currency,
                expected_close_date=spec.expected_close_date,
                pipeline_id=spec.pipeline_id,
                owner_id=spec.owner_id or self.owner_id,
            )
        previous = self.status
        self.status = LeadStatus.CONVERTED
        self.conversion = Conversion(
            account_id=account.account_id,
            contact_id=contact.contact_id,
            opportunity_id=opportunity.opportunity_id if opportunity else None,
            converted_at=now,
            converted_by=by.id,
        )
        self._touch(now, by.id, "converted", from_status=previous, to_status=LeadStatus.CONVERTED)
        return LeadConverted(
            lead_id=self.id,
            account=account,
            contact=contact,
            opportunity=opportunity,
            lead_source=self.lead_source,
            campaign_id=self.campaign_id,
            converted_at=now,
            converted_by=by,
            captured_at=self.captured_at,
        )

    def snapshot(self) -> LeadSnapshot:
        return LeadSnapshot(
            lead_id=self.id,
            status=self.status,
            rating=self.rating,
            score=self.score,
            source_system=self.source_system,
            external_id=self.external_id,
            person=self.person,
            company=self.company,
            lead_source=self.lead_source,
            origin=self.origin,
            campaign_id=self.campaign_id,
            owner_id=self.owner_id,
            captured_at=self.captured_at,
            duplicate_of=self.duplicate_of,
        )

    def _touch(self, now: datetime, by: str, action: str, **details: Any) -> None:
        self.version += 1
        self.updated_at = now
        self.history.append(HistoryEntry(at=now, by=by, action=action, **details))


_CAPTURED_FIELDS = frozenset(
    {
        "person",
        "company",
        "lead_source",
        "source_detail",
        "origin",
        "campaign_id",
        "utm",
        "consent",
        "engagement",
        "owner_id",
        "custom",
        "captured_at",
    }
)


def _person_name(person: Person) -> str:
    name = " ".join(part for part in (person.first_name, person.last_name) if part)
    return name or "Unnamed account"


class OpportunityRequest(BaseModel):
    """The opportunity to open on conversion."""

    model_config = ConfigDict(extra="forbid")

    name: ShortText
    amount: Money | None = None
    currency: Currency = "EUR"
    expected_close_date: date | None = None
    pipeline_id: Id | None = Field(default=None, description="Default pipeline when omitted")
    owner_id: Id | None = None


class ConversionRequest(BaseModel):
    """How to convert: into new or existing records, with or without an opportunity."""

    model_config = ConfigDict(extra="forbid")

    existing_account_id: Id | None = None
    account_name: str | None = Field(default=None, max_length=200)
    existing_contact_id: Id | None = None
    opportunity: OpportunityRequest | None = None
    allow_unqualified: bool = False
