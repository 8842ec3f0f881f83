"""The lead and its rules: capture, normalisation, de-duplication, lifecycle, scoring, merge
and conversion. No I/O here."""

from __future__ import annotations

import hashlib
import re
import unicodedata
import uuid
from collections.abc import Iterable
from datetime import datetime
from typing import Annotated, Any

from crm_contracts.events.common import (
    Actor,
    Currency,
    Id,
    IsoDate,
    IsoDateTime,
    Money,
    ShortText,
    SingleLine,
)
from crm_contracts.events.leads import (
    CapturedAtSource,
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

from .picklists import FoldedCapture, Picklists
from .scoring import LeadScore, ScoreContribution, ScoringRules
from .scoring import score as score_facts

# Ids derived from the capturing system's own key make capture idempotent even when two
# copies of the same lead arrive at once: both compute the same id.
LEAD_NAMESPACE = uuid.UUID("5b0a7c1e-6f43-4c7e-9a8e-2f1d3c4b5a69")

# A lead keeps links to at most this many likely duplicates (the earliest captured ones).
MAX_DUPLICATE_LINKS = 25
MAX_CUSTOM_ATTRIBUTES = 50
_ABSENT = object()
_NO_CHANNEL = frozenset({LeadSource.OTHER.value, LeadSource.UNKNOWN.value})
DEFAULT_LISTS = Picklists.defaults()


class LeadRuleViolation(Exception):
    """An operation the lead's rules do not allow; ``field`` names what is wrong."""

    def __init__(self, message: str, field: str = "status") -> None:
        super().__init__(message)
        self.field = field


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
    LeadStatus.MERGED: frozenset(),
}
OPEN_STATUSES = frozenset({LeadStatus.NEW, LeadStatus.WORKING, LeadStatus.NURTURING, LeadStatus.QUALIFIED})
# Statuses a rep sets directly; qualified, disqualified, converted and merged have their own
# operations because they carry more (a rating, a reason, the new records, the survivor).
WORKABLE_STATUSES = frozenset({LeadStatus.WORKING, LeadStatus.NURTURING})


def lead_id_for(source_system: str, external_id: str) -> str:
    return str(uuid.uuid5(LEAD_NAMESPACE, f"{source_system}\x1f{external_id}"))


# -- normalisation ----------------------------------------------------------------------------
_FREE_MAIL = frozenset(
    {
        "gmail.com",
        "googlemail.com",
        "yahoo.com",
        "yahoo.co.uk",
        "yahoo.de",
        "yahoo.fr",
        "ymail.com",
        "hotmail.com",
        "hotmail.co.uk",
        "hotmail.de",
        "hotmail.fr",
        "outlook.com",
        "live.com",
        "msn.com",
        "icloud.com",
        "me.com",
        "mac.com",
        "aol.com",
        "gmx.de",
        "gmx.net",
        "gmx.at",
        "gmx.com",
        "web.de",
        "t-online.de",
        "freenet.de",
        "proton.me",
        "protonmail.com",
        "pm.me",
        "mail.com",
        "yandex.com",
        "yandex.ru",
        "mail.ru",
        "zoho.com",
        "fastmail.com",
        "freemail.hu",
        "citromail.hu",
        "orange.fr",
        "free.fr",
        "libero.it",
        "seznam.cz",
        "wp.pl",
        "o2.pl",
    }
)
_GMAIL = frozenset({"gmail.com", "googlemail.com"})
_PHONE_MATCH_DIGITS = 9
_PHONE_MIN_DIGITS = 6


def is_free_mail(domain: str | None) -> bool:
    return domain is not None and domain in _FREE_MAIL


def email_domain(email: str | None) -> str | None:
    if not email or "@" not in email:
        return None
    return email.rsplit("@", 1)[1].strip().lower() or None


def normalise_email(email: str | None) -> str | None:
    """The address as a duplicate key: lower case, without a ``+tag`` (sub-addressing), and for
    Gmail without dots, since all of those reach the same mailbox."""
    if not email or "@" not in email:
        return None
    local, domain = email.strip().lower().rsplit("@", 1)
    local = local.split("+", 1)[0]
    if domain in _GMAIL:
        local, domain = local.replace(".", ""), "gmail.com"
    return f"{local}@{domain}" if local and domain else None


def normalise_phone(phone: str | None) -> str | None:
    """Digits only, keeping a leading '+' (so '+44 20 7946-0000' and '+442079460000' match);
    a leading international '00' becomes '+'."""
    if not phone:
        return None
    digits = re.sub(r"\D", "", phone)
    if not digits:
        return None
    if phone.strip().startswith("+"):
        return "+" + digits
    if digits.startswith("00") and len(digits) > 2:
        return "+" + digits[2:]
    return digits


def phone_key(phone: str | None) -> str | None:
    """The last nine digits: the national number without country code or trunk '0', so that
    '+44 20 7946 0000' and '020 7946 0000' are the same key. Too-short numbers give none."""
    normalised = normalise_phone(phone)
    if normalised is None:
        return None
    digits = normalised.lstrip("+")
    if len(digits) < _PHONE_MIN_DIGITS:
        return None
    return digits[-_PHONE_MATCH_DIGITS:]


def company_domain(website: str | None, email: str | None) -> str | None:
    """The company's domain from its website, else from a non-free-mail address."""
    if website:
        host = re.sub(r"^[a-z][a-z0-9+.\-]*://", "", website.strip().lower()).split("/")[0]
        host = host.rsplit("@", 1)[-1].split(":")[0].removeprefix("www.").strip(".")
        if host:
            return host
    domain = email_domain(email)
    if domain and not is_free_mail(domain):
        return domain
    return None


def fold(text: str) -> str:
    """Case- and accent-insensitive form ('José' and 'jose' fold alike)."""
    decomposed = unicodedata.normalize("NFKD", text.casefold())
    return "".join(ch for ch in decomposed if not unicodedata.combining(ch))


def person_name_key(person: Person) -> str | None:
    parts = [fold(p).strip() for p in (person.first_name, person.last_name) if p and p.strip()]
    return " ".join(" ".join(parts).split()) or None


_TERM_SPLIT = re.compile(r"[^\w@.+\-]+")


def search_terms(person: Person, company: Company, domain: str | None) -> list[str]:
    """The words a lead is found by: name, email (whole, local part, domain), company name and
    domain, phone digits; folded, so a prefix search on them is case- and accent-insensitive."""
    terms: set[str] = set()
    for text in (person.first_name, person.last_name, company.name):
        if text:
            terms.update(word.strip(".-") for word in _TERM_SPLIT.split(fold(text)))
    if person.email:
        email = fold(person.email)
        local, _, mail_domain = email.partition("@")
        terms.update((email, local, mail_domain))
    if domain:
        terms.add(fold(domain))
    normalised_phone = normalise_phone(person.phone)
    if normalised_phone:
        terms.add(normalised_phone.lstrip("+"))
    return sorted(term for term in terms if term)


def search_tokens(query: str) -> list[str]:
    """A search text as the folded words it must match (each as a prefix of a term)."""
    return [token for token in (t.strip(".-") for t in _TERM_SPLIT.split(fold(query))) if token]


# -- parts of a lead ----------------------------------------------------------------------------
class HistoryEntry(BaseModel):
    model_config = ConfigDict(frozen=True)

    at: AwareDatetime
    by: str
    action: str
    from_status: LeadStatus | None = None
    to_status: LeadStatus | None = None
    detail: str | None = None
    lead_id: str | None = Field(
        default=None, description="Set on entries a survivor took over from a lead merged into it"
    )


class Conversion(BaseModel):
    account_id: str
    contact_id: str
    opportunity_id: str | None = None
    converted_at: AwareDatetime
    converted_by: str


class ManualRating(BaseModel):
    """A rep's rating: it overrides the score's rating until cleared; rescoring keeps it."""

    model_config = ConfigDict(frozen=True)

    rating: LeadRating
    by: str
    at: AwareDatetime


class DuplicateLink(BaseModel):
    """Another lead that is likely the same person, and the keys both share."""

    model_config = ConfigDict(frozen=True)

    lead_id: str
    keys: list[str]
    captured_at: AwareDatetime


class MatchKeys(BaseModel):
    """A lead's duplicate keys (what stored leads are looked up by)."""

    model_config = ConfigDict(frozen=True)

    email: str | None
    phone: str | None
    company_domain: str | None
    name: str | None

    @property
    def empty(self) -> bool:
        return self.email is None and self.phone is None and not (self.company_domain and self.name)


def shared_keys(a: MatchKeys, b: MatchKeys) -> list[str]:
    """The duplicate keys two leads share. A company domain alone is not a duplicate (colleagues
    share it); together with the same person's name it is."""
    keys = []
    if a.email is not None and a.email == b.email:
        keys.append("email")
    if a.phone is not None and a.phone == b.phone:
        keys.append("phone")
    if a.company_domain and a.name and (a.company_domain, a.name) == (b.company_domain, b.name):
        keys.append("company_domain+name")
    return keys


# Fields a capture carries; the latest capture of a key sets all of them.
CAPTURED_FIELDS: tuple[str, ...] = (
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
)


def _millis(moment: datetime) -> datetime:
    """MongoDB keeps milliseconds; trimming here makes stored and incoming times compare equal."""
    return moment.replace(microsecond=moment.microsecond // 1000 * 1000)


class TimedCapture(LeadCaptured):
    """A capture whose business time is settled, and where that time came from."""

    captured_at: IsoDateTime
    captured_at_source: CapturedAtSource = CapturedAtSource.PAYLOAD


def timed_capture(
    captured: LeadCaptured, *, event_time: datetime | None, received_at: datetime
) -> TimedCapture:
    """The capture's own ``captured_at``, else the event's ``time``, else the time of receipt
    (HTTP and import rows have no event). A capture already timed keeps its time."""
    if isinstance(captured, TimedCapture):
        return captured
    if captured.captured_at is not None:
        at, source = captured.captured_at, CapturedAtSource.PAYLOAD
    elif event_time is not None:
        at, source = event_time, CapturedAtSource.EVENT_TIME
    else:
        at, source = received_at, CapturedAtSource.RECEIVED
    fields = dict(captured) | {"captured_at": at, "captured_at_source": source}
    return TimedCapture.model_construct(set(fields), **fields)  # validated already, as a LeadCaptured


def canonical_capture(captured: LeadCaptured, *, received_at: datetime) -> TimedCapture:
    """The timed capture with times at millisecond precision, as they will be stored."""
    timed = timed_capture(captured, event_time=None, received_at=received_at)
    engagement = timed.engagement
    if engagement.last_activity_at is not None:
        engagement = engagement.model_copy(update={"last_activity_at": _millis(engagement.last_activity_at)})
    return timed.model_copy(update={"captured_at": _millis(timed.captured_at), "engagement": engagement})


def capture_digest(captured: TimedCapture) -> str:
    """Content fingerprint: breaks ties between captures with the same ``captured_at`` so that
    the winner does not depend on the order they arrive in. The time's source is not content
    (and leaving it out keeps the digests of leads stored before it existed)."""
    return hashlib.sha256(captured.model_dump_json(exclude={"captured_at_source"}).encode()).hexdigest()[:32]


class MergeOutcome(BaseModel):
    taken_fields: list[str]
    matching_keys: list[str]


# -- the lead ------------------------------------------------------------------------------------
class Lead(BaseModel):
    """A lead: an inquiry not yet tied to an opportunity."""

    id: str
    version: int = 0
    status: LeadStatus = LeadStatus.NEW
    rating: LeadRating | None = Field(default=None, description="The rep's rating if set, else the score's")
    manual_rating: ManualRating | None = None
    score: int = 0
    score_rating: LeadRating | None = None
    score_fit: int = 0
    score_engagement: int = 0
    score_explanation: list[ScoreContribution] = Field(default_factory=list)
    scored_at: AwareDatetime | None = None
    scoring_rules_version: int = 0
    source_system: str
    external_id: str
    person: Person = Person()
    company: Company = Company()
    lead_source: str = LeadSource.UNKNOWN.value
    lead_source_given: str | None = Field(
        default=None, description="The lead_source as the latest capture wrote it, before folding"
    )
    source_detail: str | None = None
    origin: str = LeadOrigin.API.value
    origin_given: str | None = Field(default=None, description="The origin as the latest capture wrote it")
    campaign_id: str | None = None
    utm: Utm | None = None
    consent: Consent = Consent()
    engagement: Engagement = Engagement()
    owner_id: str | None = None
    custom: CustomAttributes = Field(default_factory=dict)
    captured_at: AwareDatetime
    captured_at_source: CapturedAtSource = CapturedAtSource.PAYLOAD
    capture_digest: str = ""
    created_at: AwareDatetime
    updated_at: AwareDatetime
    email_normalised: str | None = None
    phone_normalised: str | None = None
    phone_key: str | None = None
    company_domain: str | None = None
    name_key: str | None = None
    search_terms: list[str] = Field(default_factory=list)
    disqualification_reason: str | None = None
    conversion: Conversion | None = None
    possible_duplicates: list[DuplicateLink] = Field(default_factory=list)
    duplicate_of: list[str] = Field(default_factory=list)
    merged_into: str | None = None
    merged_from: list[str] = Field(default_factory=list)
    history: list[HistoryEntry] = Field(default_factory=list)

    # -- capture ----------------------------------------------------------------------------
    @classmethod
    def capture(
        cls,
        captured: LeadCaptured,
        rules: ScoringRules,
        *,
        now: datetime,
        by: str,
        picklists: Picklists | None = None,
    ) -> Lead:
        """A new lead from a capture, its picklist fields folded into the organisation's values
        (``picklists``; the defaults when it never revised them). Raises
        ``UnknownPicklistValue`` for a value the lists refuse."""
        folded = (picklists or DEFAULT_LISTS).fold(captured)
        captured = canonical_capture(folded.captured, received_at=now)
        lead = cls(
            id=lead_id_for(captured.source_system, captured.external_id),
            source_system=captured.source_system,
            external_id=captured.external_id,
            captured_at=captured.captured_at,
            captured_at_source=captured.captured_at_source,
            capture_digest=capture_digest(captured),
            created_at=now,
            updated_at=now,
        )
        lead._take_captured_fields(captured, folded)
        lead._apply_score(rules, now)
        lead.version = 1
        lead.history.append(HistoryEntry(at=now, by=by, action="captured", to_status=LeadStatus.NEW))
        return lead

    def recapture(
        self,
        captured: LeadCaptured,
        rules: ScoringRules,
        *,
        now: datetime,
        by: str,
        picklists: Picklists | None = None,
    ) -> list[str]:
        """Apply a resent capture of this lead's key. The capture with the latest
        ``captured_at`` wins (ties broken by content), so resends in any order end in the same
        state. Returns the changed fields (empty: nothing to do)."""
        folded = (picklists or DEFAULT_LISTS).fold(captured)
        captured = canonical_capture(folded.captured, received_at=now)
        if captured.captured_at_source is not CapturedAtSource.PAYLOAD and not self._brings_news(captured):
            return []  # a resend without its own time: its receipt is no newer capture of the lead
        digest = capture_digest(captured)
        if (captured.captured_at, digest) <= (self.captured_at, self.capture_digest):
            return []
        before = self._captured_state()
        self._take_captured_fields(captured, folded)
        self.captured_at = captured.captured_at
        self.captured_at_source = captured.captured_at_source
        self.capture_digest = digest
        changed = [name for name, value in self._captured_state().items() if before[name] != value]
        if self.status is not LeadStatus.MERGED:
            changed += self._apply_score(rules, now)
        self._touch(now, by, "updated", detail=", ".join(changed))
        return changed

    def absorb_capture(
        self,
        captured: LeadCaptured,
        rules: ScoringRules,
        *,
        now: datetime,
        by: str,
        for_lead: str,
        picklists: Picklists | None = None,
    ) -> list[str]:
        """A capture of a lead merged into this one: newer data than this lead's own updates
        the fields it carries (empty values never erase), older data only fills gaps."""
        captured = canonical_capture((picklists or DEFAULT_LISTS).fold(captured).captured, received_at=now)
        newer = captured.captured_at >= self.captured_at
        before = self._captured_state()
        incoming = {name: getattr(captured, name) for name in CAPTURED_FIELDS}
        taken = self._combine(incoming, prefer_incoming=newer)
        if newer:
            self.captured_at = captured.captured_at
            self.captured_at_source = captured.captured_at_source
        changed = [name for name, value in self._captured_state().items() if before[name] != value]
        if not changed and not taken:
            return []
        changed += self._apply_score(rules, now)
        self._touch(now, by, "updated", detail=f"capture of merged lead {for_lead}: " + ", ".join(changed))
        return changed

    def _brings_news(self, captured: LeadCaptured) -> bool:
        return any(getattr(self, name) != getattr(captured, name) for name in CAPTURED_FIELDS)

    def _captured_state(self) -> dict[str, Any]:
        return {name: getattr(self, name) for name in (*CAPTURED_FIELDS, "captured_at", "captured_at_source")}

    def _take_captured_fields(self, captured: LeadCaptured, folded: FoldedCapture) -> None:
        for name in CAPTURED_FIELDS:
            setattr(self, name, getattr(captured, name))
        self.lead_source_given = folded.lead_source_given
        self.origin_given = folded.origin_given
        self._derive()

    def _derive(self) -> None:
        """Keys and search terms follow the data they come from."""
        self.email_normalised = normalise_email(self.person.email)
        self.phone_normalised = normalise_phone(self.person.phone)
        self.phone_key = phone_key(self.person.phone)
        self.company_domain = company_domain(self.company.website, self.person.email)
        self.name_key = person_name_key(self.person)
        self.search_terms = search_terms(self.person, self.company, self.company_domain)

    # -- scoring ----------------------------------------------------------------------------
    def scoring_facts(self, now: datetime) -> dict[str, Any]:
        mail_domain = email_domain(self.person.email)
        last_activity = self.engagement.last_activity_at
        facts: dict[str, Any] = {
            "company.size": self.company.size,
            "company.industry": self.company.industry,
            "company.country": self.company.country,
            "company.city": self.company.city,
            "company.domain": self.company_domain,
            "person.job_title": self.person.job_title,
            "person.email_domain": mail_domain,
            "person.free_mail": is_free_mail(mail_domain) if mail_domain else None,
            "person.email": self.person.email,
            "person.phone": self.person.phone,
            "lead_source": self.lead_source,
            "origin": self.origin,
            "campaign_id": self.campaign_id,
            "consent.do_not_email": self.consent.do_not_email,
            "consent.do_not_call": self.consent.do_not_call,
            "engagement.visits": self.engagement.visits,
            "engagement.page_views": self.engagement.page_views,
            "engagement.time_on_site_seconds": self.engagement.time_on_site_seconds,
            "engagement.days_since_last_activity": (
                max(0, (now - last_activity).days) if last_activity is not None else None
            ),
        }
        facts.update({f"custom.{key}": value for key, value in self.custom.items()})
        return facts

    def _apply_score(self, rules: ScoringRules, now: datetime) -> list[str]:
        result: LeadScore = score_facts(self.scoring_facts(now), rules, now=now)
        before = (self.score, self.rating, self.score_explanation)
        self.score = result.score
        self.score_rating = result.rating
        self.score_fit = result.fit
        self.score_engagement = result.engagement
        self.score_explanation = list(result.contributions)
        self.scored_at = now
        self.scoring_rules_version = rules.version
        self._settle_rating()
        after = (self.score, self.rating, self.score_explanation)
        return [
            name
            for name, old, new in zip(("score", "rating", "score_explanation"), before, after, strict=True)
            if old != new
        ]

    def rescore(self, rules: ScoringRules, *, now: datetime, by: str) -> list[str]:
        """Score again (new rules, or time has passed for recency). A rep's rating stays."""
        previous = self.score
        changed = self._apply_score(rules, now)
        if changed:
            self._touch(
                now, by, "rescored", detail=f"score {previous} -> {self.score} (rules v{rules.version})"
            )
        return changed

    def _settle_rating(self) -> None:
        self.rating = self.manual_rating.rating if self.manual_rating else self.score_rating

    def set_manual_rating(self, rating: LeadRating | None, *, now: datetime, by: str) -> bool:
        """Set (or, with None, clear) the rep's rating. Returns whether anything changed."""
        self._refuse_if_closed()
        if (self.manual_rating.rating if self.manual_rating else None) == rating:
            return False
        self.manual_rating = ManualRating(rating=rating, by=by, at=now) if rating else None
        self._settle_rating()
        detail = f"rated {rating.value} by hand" if rating else "manual rating cleared"
        self._touch(now, by, "rated", detail=detail)
        return True

    # -- lifecycle --------------------------------------------------------------------------
    def _refuse_if_closed(self) -> None:
        if self.status is LeadStatus.CONVERTED:
            raise LeadAlreadyConverted(f"status: lead {self.id} is already converted")
        if self.status is LeadStatus.MERGED:
            raise LeadRuleViolation(f"status: lead {self.id} was merged into {self.merged_into}")

    def move_to(self, status: LeadStatus, *, now: datetime, by: str, detail: str | None = None) -> None:
        self._refuse_if_closed()
        if status not in ALLOWED_TRANSITIONS[self.status]:
            raise LeadRuleViolation(f"status: a {self.status.value} lead cannot become {status.value}")
        previous = self.status
        self.status = status
        self._touch(now, by, "status_changed", from_status=previous, to_status=status, detail=detail)

    def work(self, status: LeadStatus, *, now: datetime, by: str, note: str | None = None) -> bool:
        """A rep starts working or nurturing the lead. Returns False when it already is."""
        if status not in WORKABLE_STATUSES:
            raise LeadRuleViolation(
                f"status: {status.value} is set through its own operation; here only "
                + " or ".join(sorted(s.value for s in WORKABLE_STATUSES))
            )
        self._refuse_if_closed()
        if self.status is status:
            return False
        self.move_to(status, now=now, by=by, detail=note)
        return True

    def qualify(self, rating: LeadRating | None, *, now: datetime, by: str) -> bool:
        """Qualify; a rating given by the rep becomes the manual override, else the score's
        rating stands. Returns False when the lead already was qualified so."""
        changed = False
        if self.status is not LeadStatus.QUALIFIED:
            detail = f"rated {rating.value}" if rating else f"score {self.score}"
            self.move_to(LeadStatus.QUALIFIED, now=now, by=by, detail=detail)
            changed = True
        if rating is not None:
            changed = self.set_manual_rating(rating, now=now, by=by) or changed
        return changed

    def assign_owner(self, owner_id: str | None, *, now: datetime, by: str) -> bool:
        """Give the lead to ``owner_id`` (None: unassigned). Returns False when it already is
        so. A converted or merged lead lives on elsewhere, so its owner no longer changes."""
        self._refuse_if_closed()
        if self.owner_id == owner_id:
            return False
        previous, self.owner_id = self.owner_id, owner_id
        self._touch(now, by, "owner_assigned", detail=f"owner {previous or '-'} -> {owner_id or '-'}")
        return True

    def disqualify(self, reason: str, *, now: datetime, by: str) -> None:
        self.move_to(LeadStatus.DISQUALIFIED, now=now, by=by, detail=reason)
        self.disqualification_reason = reason

    def convert(
        self,
        request: ConversionRequest,
        *,
        now: datetime,
        by: Actor,
        company_currency: str,
        new_id: Any = uuid.uuid4,
    ) -> LeadConverted:
        """Convert into an account, a contact and optionally an opportunity (in the company
        currency unless the request names one). Only qualified leads convert, unless
        ``allow_unqualified`` is set for an open one."""
        self._refuse_if_closed()
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
            website=self.company.website,
        )
        contact = ConvertedContact(
            contact_id=request.existing_contact_id or str(new_id()),
            is_new=request.existing_contact_id is None,
            first_name=self.person.first_name,
            last_name=self.person.last_name,
            email=self.person.email,
            phone=self.person.phone,
            job_title=self.person.job_title,
            consent=self.consent,
        )
        opportunity = None
        if request.opportunity is not None:
            spec = request.opportunity
            opportunity = ConvertedOpportunity(
                opportunity_id=str(new_id()),
                name=spec.name,
                amount=spec.amount,
                currency=spec.currency or company_currency,
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
            utm=self.utm,
            converted_at=now,
            converted_by=by,
            captured_at=self.captured_at,
        )

    # -- duplicates -------------------------------------------------------------------------
    @property
    def match_keys(self) -> MatchKeys:
        if self.status is LeadStatus.MERGED:  # its keys live on in the survivor
            return MatchKeys(email=None, phone=None, company_domain=None, name=None)
        return MatchKeys(
            email=self.email_normalised,
            phone=self.phone_key,
            company_domain=self.company_domain,
            name=self.name_key,
        )

    def _precedes(self, lead_id: str, captured_at: datetime) -> bool:
        return (captured_at, lead_id) < (self.captured_at, self.id)

    def link_duplicates(
        self, links: Iterable[DuplicateLink], *, now: datetime, by: str, record: bool = True
    ) -> bool:
        """Replace the links to likely duplicates. Returns whether they changed. ``record``
        False: part of a change already being recorded (a capture), so no history entry."""
        ordered = sorted(
            (link for link in links if link.lead_id != self.id),
            key=lambda link: (link.captured_at, link.lead_id),
        )[:MAX_DUPLICATE_LINKS]
        # Which of them came first also follows this lead's own capture time.
        earlier = [link.lead_id for link in ordered if self._precedes(link.lead_id, link.captured_at)]
        if ordered == self.possible_duplicates and earlier == self.duplicate_of:
            return False
        before = {link.lead_id for link in self.possible_duplicates}
        after = {link.lead_id for link in ordered}
        self.possible_duplicates = ordered
        self.duplicate_of = earlier
        if not record:
            return True
        found, cleared = sorted(after - before), sorted(before - after)
        detail = "; ".join(
            part
            for part in (
                f"likely duplicate of {', '.join(found)}" if found else "",
                f"no longer matches {', '.join(cleared)}" if cleared else "",
            )
            if part
        )
        self._touch(now, by, "duplicates_changed", detail=detail or "matching keys changed")
        return True

    # -- merge ------------------------------------------------------------------------------
    def merge(self, duplicate: Lead, rules: ScoringRules, *, now: datetime, by: str) -> MergeOutcome:
        """Merge ``duplicate`` into this lead, which survives: it takes the fields it lacks and
        both histories; the duplicate becomes ``merged`` and points here."""
        if duplicate.id == self.id:
            raise LeadRuleViolation("duplicate_id: a lead cannot be merged into itself", field="duplicate_id")
        if self.status is LeadStatus.MERGED:
            raise LeadRuleViolation(
                f"status: lead {self.id} was itself merged into {self.merged_into}; merge into that one"
            )
        if duplicate.status in (LeadStatus.MERGED, LeadStatus.CONVERTED):
            raise LeadRuleViolation(
                f"duplicate_id: lead {duplicate.id} is {duplicate.status.value} and cannot be merged",
                field="duplicate_id",
            )
        keys = shared_keys(self.match_keys, duplicate.match_keys)
        incoming = {name: getattr(duplicate, name) for name in CAPTURED_FIELDS}
        taken = self._combine(incoming, prefer_incoming=False)
        if self.manual_rating is None and duplicate.manual_rating is not None:
            self.manual_rating = duplicate.manual_rating
            taken.append("manual_rating")
        self._apply_score(rules, now)
        self.merged_from = sorted({*self.merged_from, duplicate.id, *duplicate.merged_from})
        self.history = sorted(
            [
                *self.history,
                *(
                    entry.model_copy(update={"lead_id": entry.lead_id or duplicate.id})
                    for entry in duplicate.history
                ),
            ],
            key=lambda entry: entry.at,
        )
        self._touch(
            now, by, "merged", detail=f"merged lead {duplicate.id}; took {', '.join(taken) or 'nothing'}"
        )
        duplicate.status, previous = LeadStatus.MERGED, duplicate.status
        duplicate.merged_into = self.id
        duplicate._touch(
            now,
            by,
            "merged_into",
            from_status=previous,
            to_status=LeadStatus.MERGED,
            detail=f"merged into {self.id}",
        )
        return MergeOutcome(taken_fields=taken, matching_keys=keys)

    def _combine(self, incoming: dict[str, Any], *, prefer_incoming: bool) -> list[str]:
        """Combine another record's captured fields into this lead. Gaps are always filled;
        where both have a value, ``prefer_incoming`` decides. Consent only ever tightens (a
        do-not-contact flag from either wins) and engagement keeps the higher counts and the
        latest activity. Returns the dotted names of fields that changed."""
        taken: list[str] = []
        for section in ("person", "company", "utm"):
            mine: BaseModel | None = getattr(self, section)
            theirs: BaseModel | None = incoming[section]
            if theirs is None:
                continue
            if mine is None:
                setattr(self, section, theirs)
                taken.append(section)
                continue
            updates = {
                name: value
                for name, value in theirs.model_dump().items()
                if value is not None
                and (prefer_incoming or getattr(mine, name) is None)
                and getattr(mine, name) != value
            }
            if updates:
                setattr(self, section, mine.model_copy(update=updates))
                taken += [f"{section}.{name}" for name in sorted(updates)]
        for name in ("source_detail", "campaign_id", "owner_id"):
            value = incoming[name]
            if (
                value is not None
                and (prefer_incoming or getattr(self, name) is None)
                and getattr(self, name) != value
            ):
                setattr(self, name, value)
                taken.append(name)
        # "other" and "unknown" are the absence of a known channel; origin says how this record
        # entered, so stays.
        source: str = incoming["lead_source"]
        if source not in _NO_CHANNEL and source != self.lead_source:
            if prefer_incoming or self.lead_source in _NO_CHANNEL:
                self.lead_source = source
                taken.append("lead_source")
        custom = dict(self.custom)
        for key, value in sorted(incoming["custom"].items()):
            if (key not in custom and len(custom) < MAX_CUSTOM_ATTRIBUTES) or (
                prefer_incoming and key in custom
            ):
                if custom.get(key, _ABSENT) != value:
                    custom[key] = value
                    taken.append(f"custom.{key}")
        self.custom = custom
        consent: Consent = incoming["consent"]
        tighter = Consent(
            do_not_email=self.consent.do_not_email or consent.do_not_email,
            do_not_call=self.consent.do_not_call or consent.do_not_call,
        )
        if tighter != self.consent:
            self.consent = tighter
            taken.append("consent")
        combined = _combine_engagement(self.engagement, incoming["engagement"])
        if combined != self.engagement:
            self.engagement = combined
            taken.append("engagement")
        self._derive()
        return taken

    # -- events -----------------------------------------------------------------------------
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
            utm=self.utm,
            owner_id=self.owner_id,
            captured_at=self.captured_at,
            captured_at_source=self.captured_at_source,
            duplicate_of=self.duplicate_of,
            merged_into=self.merged_into,
        )

    def _touch(self, now: datetime, by: str, action: str, **details: Any) -> None:
        self.version += 1
        self.updated_at = now
        self.history.append(HistoryEntry(at=now, by=by, action=action, **details))


def _combine_engagement(mine: Engagement, theirs: Engagement) -> Engagement:
    latest = mine
    if theirs.last_activity_at is not None and (
        mine.last_activity_at is None or theirs.last_activity_at > mine.last_activity_at
    ):
        latest = theirs
    return Engagement(
        visits=max(mine.visits, theirs.visits),
        time_on_site_seconds=max(mine.time_on_site_seconds, theirs.time_on_site_seconds),
        page_views=max(mine.page_views, theirs.page_views),
        last_activity=latest.last_activity,
        last_activity_at=latest.last_activity_at,
    )


def _person_name(person: Person) -> str:
    name = " ".join(part for part in (person.first_name, person.last_name) if part)
    return name or "Unnamed account"


class OpportunityRequest(BaseModel):
    """The opportunity to open on conversion."""

    model_config = ConfigDict(extra="forbid")

    name: ShortText
    amount: Money | None = None
    currency: Currency | None = Field(
        default=None, description="The company currency (CRM_COMPANY_CURRENCY) when omitted"
    )
    expected_close_date: IsoDate | None = None
    pipeline_id: Id | None = Field(default=None, description="Default pipeline when omitted")
    owner_id: Id | None = None


class ConversionRequest(BaseModel):
    """How to convert: into new or existing records, with or without an opportunity."""

    model_config = ConfigDict(extra="forbid")

    existing_account_id: Id | None = None
    account_name: Annotated[str, SingleLine(max_length=200)] | None = None
    existing_contact_id: Id | None = None
    opportunity: OpportunityRequest | None = None
    allow_unqualified: bool = False
