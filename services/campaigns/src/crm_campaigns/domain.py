"""The campaign and its rules: details, status lifecycle, cost ledger, members and their
statuses, the touches that attribute leads to campaigns, and the figures derived from them.
No I/O here."""

from __future__ import annotations

import itertools
from collections.abc import Iterable, Mapping, Sequence
from datetime import date, datetime
from decimal import ROUND_HALF_UP, Decimal
from enum import StrEnum
from typing import Annotated, Any

from crm_contracts.events.campaigns import (
    CampaignCostRecorded,
    CampaignMemberAdded,
    CampaignMemberStatusChanged,
    CampaignPurpose,
    CampaignSnapshot,
    CampaignStatus,
    CampaignStatusChanged,
    CampaignType,
    CampaignUpdated,
    CostAmount,
    CostEntry,
    MemberStatus,
    MemberStatusOption,
    MemberType,
    ResponsePercent,
    default_member_statuses,
)
from crm_contracts.events.common import MONEY_MAX, Actor, Currency, Id, IsoDate, Money, MultiLine, ShortText
from pydantic import AfterValidator, AwareDatetime, BaseModel, ConfigDict, Field, ValidationError

CENT = Decimal("0.01")
# The ledger lives inside the campaign document (one atomic, versioned aggregate); the cap keeps
# that document far below MongoDB's 16 MB limit.
MAX_COST_ENTRIES = 5000
MAX_HIERARCHY_DEPTH = 10

ALLOWED_TRANSITIONS: dict[CampaignStatus, frozenset[CampaignStatus]] = {
    CampaignStatus.PLANNED: frozenset({CampaignStatus.ACTIVE, CampaignStatus.ABORTED}),
    CampaignStatus.ACTIVE: frozenset({CampaignStatus.COMPLETED, CampaignStatus.ABORTED}),
    CampaignStatus.COMPLETED: frozenset(),
    CampaignStatus.ABORTED: frozenset(),
}


# -- member statuses --------------------------------------------------------------------------
# Engagement grows along this order; a member only moves forward (tracking may skip a step,
# e.g. a click without a recorded open), and may unsubscribe from any step.
ENGAGEMENT_ORDER: tuple[MemberStatus, ...] = (
    MemberStatus.SENT,
    MemberStatus.OPENED,
    MemberStatus.CLICKED,
    MemberStatus.RESPONDED,
    MemberStatus.REGISTERED,
    MemberStatus.ATTENDED,
)
# A lead captured through a campaign answered it: that is the status it joins with.
STATUS_ON_CAPTURE = MemberStatus.RESPONDED
DEFAULT_MEMBER_STATUSES: tuple[MemberStatusOption, ...] = tuple(default_member_statuses())


def _rank(status: MemberStatus) -> int:
    return ENGAGEMENT_ORDER.index(status) if status in ENGAGEMENT_ORDER else len(ENGAGEMENT_ORDER)


def _valid_member_statuses(options: tuple[MemberStatusOption, ...]) -> tuple[MemberStatusOption, ...]:
    """A campaign's member statuses: each at most once, in the engagement order. ``responded``
    must be offered and count as a response (captured leads join with it); ``unsubscribed``
    never counts as one."""
    seen: set[MemberStatus] = set()
    for option in options:
        if option.status in seen:
            raise ValueError(f"{option.status.value} is listed twice")
        seen.add(option.status)
    by_status = {o.status: o for o in options}
    responded = by_status.get(STATUS_ON_CAPTURE)
    if responded is None or not responded.counts_as_response:
        raise ValueError("responded must be offered and count as a response: captured leads join with it")
    unsubscribed = by_status.get(MemberStatus.UNSUBSCRIBED)
    if unsubscribed is not None and unsubscribed.counts_as_response:
        raise ValueError("unsubscribed cannot count as a response")
    return tuple(sorted(options, key=lambda o: _rank(o.status)))


MemberStatuses = Annotated[
    tuple[MemberStatusOption, ...],
    AfterValidator(_valid_member_statuses),
    Field(
        description="The member statuses the campaign offers and which count as a response; "
        "by default all, with responded, registered and attended counting."
    ),
]


class CampaignRuleViolation(Exception):
    """Something the campaign's rules refuse; ``field`` names the input at fault."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"{field}: {message}")
        self.field = field
        self.reason = message


class InvalidCampaign(CampaignRuleViolation):
    """The input itself is inconsistent (e.g. the end before the start)."""


class IllegalTransition(CampaignRuleViolation):
    """The change does not fit the campaign's current state."""


class CampaignPlan(BaseModel):
    """What a user decides about a campaign when planning it, but its currency."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: ShortText
    type: CampaignType
    purpose: CampaignPurpose = CampaignPurpose.LEAD_GENERATION
    start_date: IsoDate | None = None
    end_date: IsoDate | None = None
    owner_id: Id | None = None
    parent_campaign_id: Id | None = None
    budgeted_cost: Money | None = None
    expected_revenue: Money | None = None
    expected_response: ResponsePercent | None = None
    member_statuses: MemberStatuses = DEFAULT_MEMBER_STATUSES


class CampaignDetails(CampaignPlan):
    """What a user decides about a campaign when planning it; the currency its budget, costs and
    revenue are counted in (the HTTP API fills in the company currency when none is given)."""

    currency: Currency


class StatusChange(BaseModel):
    model_config = ConfigDict(frozen=True)

    at: AwareDatetime
    by: str
    from_status: CampaignStatus | None
    to_status: CampaignStatus
    reason: str | None = None


class NewCostEntry(BaseModel):
    """A cost as reported by a user or a finance system, before it joins the ledger."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    entry_id: Id
    amount: CostAmount
    currency: Currency
    incurred_on: IsoDate
    note: Annotated[str, MultiLine(max_length=500)] | None = None


class Campaign(BaseModel):
    """A marketing activity that supports sales by generating leads or informing."""

    model_config = ConfigDict(validate_assignment=True)

    id: str
    version: int = 0
    name: str
    type: CampaignType
    purpose: CampaignPurpose
    status: CampaignStatus = CampaignStatus.PLANNED
    start_date: date | None = None
    end_date: date | None = None
    owner_id: str | None = None
    parent_campaign_id: str | None = None
    budgeted_cost: Decimal | None = None
    expected_revenue: Decimal | None = None
    expected_response: Decimal | None = None
    currency: str
    member_statuses: tuple[MemberStatusOption, ...] = DEFAULT_MEMBER_STATUSES
    cost_entries: list[CostEntry] = Field(default_factory=list)
    status_history: list[StatusChange] = Field(default_factory=list)
    created_at: AwareDatetime
    created_by: str
    updated_at: AwareDatetime

    # -- planning ---------------------------------------------------------------------------
    @classmethod
    def plan(
        cls,
        campaign_id: str,
        details: CampaignDetails,
        *,
        now: datetime,
        by: str,
        status: CampaignStatus = CampaignStatus.PLANNED,
    ) -> Campaign:
        """A new campaign. It may be recorded in any status (e.g. a finished campaign entered
        afterwards); only later changes must follow the lifecycle."""
        if details.parent_campaign_id == campaign_id:
            raise InvalidCampaign("parent_campaign_id", "a campaign cannot be its own parent")
        _check_dates(details.start_date, details.end_date)
        campaign = cls(
            id=campaign_id,
            version=1,
            status=status,
            created_at=now,
            created_by=by,
            updated_at=now,
            **details.model_dump(),
        )
        campaign.status_history.append(StatusChange(at=now, by=by, from_status=None, to_status=status))
        return campaign

    @property
    def details(self) -> CampaignDetails:
        return CampaignDetails.model_validate(self.model_dump(include=set(CampaignDetails.model_fields)))

    def revise(self, changes: dict[str, Any], *, now: datetime, by: Actor) -> CampaignUpdated | None:
        """Change the campaign's details; returns None when nothing actually changed. A finished
        campaign keeps its plan, and the currency is fixed once costs are booked in it."""
        try:
            revised = CampaignDetails.model_validate({**self.details.model_dump(), **changes})
        except ValidationError as exc:
            first = exc.errors(include_url=False)[0]
            raise InvalidCampaign(".".join(str(p) for p in first["loc"]), first["msg"]) from exc
        changed = sorted(
            name for name in CampaignDetails.model_fields if getattr(revised, name) != getattr(self, name)
        )
        if not changed:
            return None
        if not ALLOWED_TRANSITIONS[self.status]:
            raise IllegalTransition("status", f"a {self.status.value} campaign can no longer be changed")
        if "currency" in changed and self.cost_entries:
            raise IllegalTransition("currency", f"costs are already booked in {self.currency}")
        if revised.parent_campaign_id == self.id:
            raise InvalidCampaign("parent_campaign_id", "a campaign cannot be its own parent")
        _check_dates(revised.start_date, revised.end_date)
        for name in changed:
            setattr(self, name, getattr(revised, name))
        self._touch(now)
        return CampaignUpdated(
            campaign=self.snapshot(), changed_fields=changed, updated_at=now, updated_by=by
        )

    # -- lifecycle --------------------------------------------------------------------------
    def change_status(
        self, status: CampaignStatus, *, now: datetime, by: Actor, reason: str | None = None
    ) -> CampaignStatusChanged:
        if status == self.status:
            raise IllegalTransition("status", f"the campaign is already {status.value}")
        if status not in ALLOWED_TRANSITIONS[self.status]:
            allowed = sorted(s.value for s in ALLOWED_TRANSITIONS[self.status])
            raise IllegalTransition(
                "status",
                f"a {self.status.value} campaign cannot become {status.value}"
                + (f" (allowed: {', '.join(allowed)})" if allowed else f" ({self.status.value} is final)"),
            )
        previous = self.status
        self.status = status
        self.status_history.append(
            StatusChange(at=now, by=by.id, from_status=previous, to_status=status, reason=reason)
        )
        self._touch(now)
        return CampaignStatusChanged(
            campaign_id=self.id,
            previous_status=previous,
            status=status,
            reason=reason,
            changed_at=now,
            changed_by=by,
        )

    # -- costs ------------------------------------------------------------------------------
    @property
    def actual_cost(self) -> Decimal:
        """What the campaign really cost so far: the sum of its ledger."""
        return sum((entry.amount for entry in self.cost_entries), Decimal("0")).quantize(CENT)

    def cost_entry(self, entry_id: str) -> CostEntry | None:
        return next((entry for entry in self.cost_entries if entry.entry_id == entry_id), None)

    def record_cost(self, new: NewCostEntry, *, now: datetime, by: Actor) -> CampaignCostRecorded | None:
        """Append a cost entry. Re-sending an entry with the same id and content changes nothing
        (returns None), so a client may retry safely; the same id with other content is refused."""
        existing = self.cost_entry(new.entry_id)
        if existing is not None:
            if _same_cost(existing, new):
                return None
            raise IllegalTransition("entry_id", f"cost entry {new.entry_id} exists with other content")
        if new.currency != self.currency:
            raise InvalidCampaign(
                "currency", f"costs are booked in the campaign's currency {self.currency}, not {new.currency}"
            )
        if new.amount == 0:
            raise InvalidCampaign("amount", "a cost entry must not be zero")
        if self.actual_cost + new.amount < 0:
            raise InvalidCampaign(
                "amount", f"a correction of {new.amount} would make the actual cost negative"
            )
        if self.actual_cost + new.amount > MONEY_MAX:
            raise InvalidCampaign("amount", f"the actual cost would pass the largest amount {MONEY_MAX}")
        if len(self.cost_entries) >= MAX_COST_ENTRIES:
            raise IllegalTransition("entry_id", f"the ledger holds the maximum of {MAX_COST_ENTRIES} entries")
        entry = CostEntry(
            entry_id=new.entry_id,
            amount=new.amount,
            currency=new.currency,
            incurred_on=new.incurred_on,
            note=new.note,
            recorded_at=now,
            recorded_by=by,
        )
        self.cost_entries.append(entry)
        self._touch(now)
        return CampaignCostRecorded(
            campaign_id=self.id, entry=entry, actual_cost=self.actual_cost, currency=self.currency
        )

    # -- member statuses --------------------------------------------------------------------
    @property
    def offered_statuses(self) -> tuple[MemberStatus, ...]:
        return tuple(option.status for option in self.member_statuses)

    @property
    def response_statuses(self) -> frozenset[MemberStatus]:
        return response_statuses(self.member_statuses)

    @property
    def first_member_status(self) -> MemberStatus:
        """What a member added without a status starts with: the earliest offered step."""
        return self.member_statuses[0].status

    def check_offers(self, status: MemberStatus, field: str = "status") -> None:
        if status not in self.offered_statuses:
            offered = ", ".join(s.value for s in self.offered_statuses)
            raise InvalidCampaign(field, f"the campaign does not offer {status.value} (offers: {offered})")

    # -- views ------------------------------------------------------------------------------
    def snapshot(self) -> CampaignSnapshot:
        return CampaignSnapshot(
            campaign_id=self.id,
            name=self.name,
            type=self.type,
            purpose=self.purpose,
            status=self.status,
            start_date=self.start_date,
            end_date=self.end_date,
            owner_id=self.owner_id,
            parent_campaign_id=self.parent_campaign_id,
            budgeted_cost=self.budgeted_cost,
            expected_revenue=self.expected_revenue,
            expected_response=self.expected_response,
            currency=self.currency,
            actual_cost=self.actual_cost,
            member_statuses=list(self.member_statuses),
        )

    def _touch(self, now: datetime) -> None:
        self.version += 1
        self.updated_at = now


def response_statuses(options: Iterable[MemberStatusOption]) -> frozenset[MemberStatus]:
    return frozenset(option.status for option in options if option.counts_as_response)


def removed_statuses(
    before: Iterable[MemberStatusOption], after: Iterable[MemberStatusOption]
) -> set[MemberStatus]:
    """Statuses a revision stops offering (refused while a member holds one)."""
    return {o.status for o in before} - {o.status for o in after}


def check_hierarchy(campaign_id: str, ancestors_of_parent: list[str]) -> None:
    """Refuse a parent whose own ancestors (parent first) include the campaign, or a hierarchy
    deeper than ``MAX_HIERARCHY_DEPTH``."""
    if campaign_id in ancestors_of_parent:
        raise InvalidCampaign("parent_campaign_id", "the parent is a sub-campaign of this campaign")
    if len(ancestors_of_parent) + 1 >= MAX_HIERARCHY_DEPTH:
        raise InvalidCampaign(
            "parent_campaign_id", f"a campaign hierarchy has at most {MAX_HIERARCHY_DEPTH} levels"
        )


def _check_dates(start: date | None, end: date | None) -> None:
    if start is not None and end is not None and end < start:
        raise InvalidCampaign("end_date", f"the end {end} lies before the start {start}")


def _same_cost(entry: CostEntry, new: NewCostEntry) -> bool:
    return (entry.amount, entry.currency, entry.incurred_on, entry.note) == (
        new.amount,
        new.currency,
        new.incurred_on,
        new.note,
    )


def cost_per_lead(actual_cost: Decimal, leads: int) -> Decimal | None:
    """Actual cost divided by the leads the campaign brought, to the cent; None without leads."""
    if leads <= 0:
        return None
    return (actual_cost / leads).quantize(CENT, rounding=ROUND_HALF_UP)


def conversion_rate(converted_leads: int, leads: int) -> Decimal | None:
    """Share of the campaign's leads that converted, in percent to two places."""
    if leads <= 0:
        return None
    return (Decimal(converted_leads) * 100 / leads).quantize(CENT, rounding=ROUND_HALF_UP)


# -- members ----------------------------------------------------------------------------------
def member_id_for(member_type: MemberType, record_id: str) -> str:
    """A member's id within its campaign: one membership per lead or contact and campaign."""
    return f"{member_type.value}:{record_id}"


def check_member_status_change(
    current: MemberStatus, new: MemberStatus, offered: Sequence[MemberStatus]
) -> bool:
    """Whether moving a member from ``current`` to ``new`` changes anything; raises if the
    campaign does not offer ``new`` or the move goes backwards or out of ``unsubscribed``."""
    if new not in offered:
        listed = ", ".join(s.value for s in offered)
        raise InvalidCampaign("status", f"the campaign does not offer {new.value} (offers: {listed})")
    if new == current:
        return False
    if current is MemberStatus.UNSUBSCRIBED:
        raise IllegalTransition("status", "an unsubscribed member stays unsubscribed")
    if new is not MemberStatus.UNSUBSCRIBED and _rank(new) < _rank(current):
        raise IllegalTransition(
            "status",
            f"a member who is {current.value} cannot go back to {new.value}: statuses only move forward "
            f"({' > '.join(s.value for s in ENGAGEMENT_ORDER)}, or unsubscribed)",
        )
    return True


class LeadReference(BaseModel):
    """A lead as the campaigns service knows it from its lead events: its id here, and the
    system it was captured from with its id there (a migration names leads by those)."""

    model_config = ConfigDict(frozen=True)

    lead_id: str
    source_system: str
    external_id: str

    @property
    def capture_key(self) -> str:
        return capture_key(self.source_system, self.external_id)


def capture_key(source_system: str, external_id: str) -> str:
    # The unit separator cannot occur in a single-line id, so the key is unambiguous.
    return f"{source_system}\x1f{external_id}"


class ImportedStatus(BaseModel):
    """One status an imported member held, since when, and the column of the file it came from
    (what a rejection names)."""

    model_config = ConfigDict(frozen=True)

    status: MemberStatus
    at: AwareDatetime
    column: str


def imported_history(
    campaign: Campaign,
    *,
    status: MemberStatus | None,
    joined_at: datetime,
    responded_at: datetime | None,
    status_at: datetime | None,
) -> list[ImportedStatus]:
    """The statuses an exported member held, oldest first, as a member that lived through
    them: it joined at ``joined_at`` (with the campaign's first status if the file dates its
    later ones after that), responded at ``responded_at`` if given, and reached ``status``
    (default: responded if it responded, else the campaign's first) at ``status_at`` (default:
    its latest known date). Each step must be a move the campaign allows (forward, or to
    unsubscribed); raises
    InvalidCampaign / IllegalTransition naming the column at fault."""
    # A row saying only when the member responded stands at responded.
    current = status or (STATUS_ON_CAPTURE if responded_at is not None else campaign.first_member_status)
    campaign.check_offers(current)
    if (
        responded_at is not None
        and current is not MemberStatus.UNSUBSCRIBED
        and _rank(current) < _rank(STATUS_ON_CAPTURE)
    ):
        raise InvalidCampaign(
            "responded_at",
            f"a member that responded stands at {STATUS_ON_CAPTURE.value} or further (or unsubscribed), "
            f"not at {current.value}",
        )
    if responded_at is not None and current is STATUS_ON_CAPTURE:
        if status_at is not None and status_at != responded_at:
            raise InvalidCampaign(
                "responded_at",
                f"a responded member responded when it reached the status ({status_at.isoformat()})",
            )
    column = "status_at" if status_at else "status"
    if responded_at is not None and current is STATUS_ON_CAPTURE:
        status_at, column = responded_at, "responded_at"
    at = status_at or max(joined_at, responded_at or joined_at)
    steps = [ImportedStatus(status=current, at=at, column=column)]
    if responded_at is not None and current is not STATUS_ON_CAPTURE:
        steps.append(ImportedStatus(status=STATUS_ON_CAPTURE, at=responded_at, column="responded_at"))
    # Oldest first; on the same instant, the earlier engagement step first.
    steps.sort(key=lambda step: (step.at, step.status is MemberStatus.UNSUBSCRIBED, _rank(step.status)))
    earliest = steps[0]
    if earliest.at < joined_at:
        raise InvalidCampaign(
            earliest.column, f"{earliest.at.isoformat()} lies before joined_at ({joined_at.isoformat()})"
        )
    if earliest.at > joined_at:
        first = campaign.first_member_status
        if any(step.status is first for step in steps):
            raise InvalidCampaign(
                "joined_at",
                f"the campaign's first status {first.value} is dated {earliest.at.isoformat()}: "
                "joined_at must be that date",
            )
        steps.insert(0, ImportedStatus(status=first, at=joined_at, column="joined_at"))
    for previous, step in itertools.pairwise(steps):
        try:
            check_member_status_change(previous.status, step.status, campaign.offered_statuses)
        except CampaignRuleViolation as exc:
            raise type(exc)(step.column, exc.reason) from exc
    return steps


class LeadConversion(BaseModel):
    """A lead's conversion, as its memberships show it."""

    model_config = ConfigDict(extra="ignore")

    converted_at: AwareDatetime
    account_id: str
    contact_id: str
    opportunity_id: str | None = None

    def fields(self) -> dict[str, Any]:
        return {"converted": True, **self.model_dump()}


class MemberStatusEntry(BaseModel):
    """One status a member held, since when and set by whom."""

    status: MemberStatus
    at: AwareDatetime
    by: str


class CampaignMember(BaseModel):
    """A lead or contact a campaign reached. A lead's membership is also a *touch*: the
    campaign reached the lead between ``joined_at`` and ``last_touched_at``. Conversion is
    followed from the lead's ``lead.converted``."""

    campaign_id: str
    member_id: str
    member_type: MemberType
    lead_id: str | None = None
    contact_id: str | None = None
    lead_source: str | None = None
    joined_at: AwareDatetime = Field(description="The first touch: when the campaign first reached it.")
    last_touched_at: AwareDatetime = Field(description="The latest touch of the campaign.")
    touched_via: list[str] = Field(description="What made or renewed the membership (sorted).")
    status: MemberStatus
    status_history: list[MemberStatusEntry]
    first_touch: bool = Field(
        default=False,
        description="Leads only: this campaign is the lead's first touch (it is attributed here).",
    )
    converted: bool = False
    converted_at: AwareDatetime | None = None
    account_id: str | None = None
    opportunity_id: str | None = None
    merged_from: list[str] = Field(
        default_factory=list,
        description="Leads only: duplicates merged into this lead whose membership was folded in here.",
    )
    version: int = 1

    @classmethod
    def join(
        cls,
        campaign_id: str,
        member_type: MemberType,
        record_id: str,
        *,
        status: MemberStatus,
        at: datetime,
        via: str,
        by: str,
        lead_source: str | None = None,
    ) -> CampaignMember:
        return cls(
            campaign_id=campaign_id,
            member_id=member_id_for(member_type, record_id),
            member_type=member_type,
            lead_id=record_id if member_type is MemberType.LEAD else None,
            contact_id=record_id if member_type is MemberType.CONTACT else None,
            lead_source=lead_source,
            joined_at=at,
            last_touched_at=at,
            touched_via=[via],
            status=status,
            status_history=[MemberStatusEntry(status=status, at=at, by=by)],
        )

    @property
    def reached(self) -> list[MemberStatus]:
        """Every status the member has held (the basis of response counting)."""
        return sorted({entry.status for entry in self.status_history}, key=_rank)

    def has_responded(self, responses: frozenset[MemberStatus]) -> bool:
        """A member who reached a response status has responded, even if it unsubscribed since."""
        return any(status in responses for status in self.reached)

    def touch(self, at: datetime, *, via: str, lead_source: str | None = None) -> bool:
        """Record another touch of the campaign. Keeps the earliest and latest time and every
        way it came, so touches applied in any order end in the same membership. Returns
        whether anything changed."""
        before = (self.joined_at, self.last_touched_at, self.touched_via, self.lead_source)
        if at < self.joined_at:
            self.joined_at = at
            # The source the lead had when the campaign first reached it.
            self.lead_source = lead_source or self.lead_source
        self.last_touched_at = max(self.last_touched_at, at)
        self.touched_via = sorted({*self.touched_via, via})
        return before != (self.joined_at, self.last_touched_at, self.touched_via, self.lead_source)

    def respond_through_capture(self, at: datetime, *, by: str) -> MemberStatus | None:
        """The lead was captured through the campaign: it responded. A member at an earlier
        step moves up to ``responded``; one further on keeps its status, and an unsubscribed
        member stays so. The response is dated by its earliest capture whatever the order the
        captures arrive in. Returns the previous status if the status changed."""
        for entry in self.status_history:
            if entry.status is STATUS_ON_CAPTURE and entry.by == by and at < entry.at:
                entry.at = at
        if self.status is MemberStatus.UNSUBSCRIBED or _rank(self.status) >= _rank(STATUS_ON_CAPTURE):
            return None
        previous = self.status
        self.status = STATUS_ON_CAPTURE
        self.status_history.append(MemberStatusEntry(status=STATUS_ON_CAPTURE, at=at, by=by))
        return previous

    def change_status(
        self, status: MemberStatus, *, offered: Sequence[MemberStatus], now: datetime, by: str
    ) -> MemberStatus | None:
        """Move the member to ``status`` (see ``check_member_status_change``). Returns the
        previous status, or None when the member already had it."""
        if not check_member_status_change(self.status, status, offered):
            return None
        previous = self.status
        self.status = status
        self.status_history.append(MemberStatusEntry(status=status, at=now, by=by))
        return previous

    def absorb(self, duplicate: CampaignMember) -> MemberStatus | None:
        """Fold the membership of a lead merged into this one (same campaign) into this one:
        the earliest join and latest touch, every way it came, and per status the earliest
        time it was reached. The member stands at the furthest status either reached, and an
        unsubscribe from either stays (consent only tightens). Commutative and idempotent, so
        the duplicate's touches folded before or after the merge end the same. Returns the
        previous status if the status changed."""
        self.touch(duplicate.joined_at, via=duplicate.touched_via[0], lead_source=duplicate.lead_source)
        self.touch(duplicate.last_touched_at, via=duplicate.touched_via[0])
        self.touched_via = sorted({*self.touched_via, *duplicate.touched_via})
        earliest: dict[MemberStatus, MemberStatusEntry] = {}
        for entry in [*self.status_history, *duplicate.status_history]:
            held = earliest.get(entry.status)
            if held is None or (entry.at, entry.by) < (held.at, held.by):
                earliest[entry.status] = entry
        self.status_history = sorted(earliest.values(), key=lambda e: (e.at, _rank(e.status)))
        self.merged_from = sorted({*self.merged_from, *duplicate.merged_from, *_lead_ids(duplicate)})
        previous = self.status
        self.status = furthest_status(earliest)
        return previous if self.status is not previous else None

    def for_survivor(self, survivor_id: str, conversion: LeadConversion | None) -> CampaignMember:
        """This (a merged duplicate's) membership as the survivor's, with the survivor's
        conversion; a new membership, so at version 1."""
        moved = self.model_copy(
            deep=True,
            update={
                "member_id": member_id_for(MemberType.LEAD, survivor_id),
                "lead_id": survivor_id,
                "first_touch": False,
                "converted": False,
                "converted_at": None,
                "account_id": None,
                "opportunity_id": None,
                "merged_from": sorted({*self.merged_from, *_lead_ids(self)}),
                "version": 1,
            },
        )
        if conversion is not None:
            moved.apply_conversion(conversion)
        return moved

    def lead_touch(self) -> LeadTouch:
        return LeadTouch(
            campaign_id=self.campaign_id,
            first_touched_at=self.joined_at,
            last_touched_at=self.last_touched_at,
            touched_via=self.touched_via,
        )

    def apply_conversion(self, conversion: LeadConversion) -> None:
        for name, value in conversion.fields().items():
            setattr(self, name, value)

    def added_event(self, via: str) -> CampaignMemberAdded:
        return CampaignMemberAdded(
            campaign_id=self.campaign_id,
            member_id=self.member_id,
            member_type=self.member_type,
            lead_id=self.lead_id,
            contact_id=self.contact_id if self.member_type is MemberType.CONTACT else None,
            added_at=self.joined_at,
            added_via=via,
            status=self.status,
        )

    def status_changed_event(
        self, previous: MemberStatus, *, responses: frozenset[MemberStatus], at: datetime, by: Actor
    ) -> CampaignMemberStatusChanged:
        return CampaignMemberStatusChanged(
            campaign_id=self.campaign_id,
            member_id=self.member_id,
            member_type=self.member_type,
            lead_id=self.lead_id,
            contact_id=self.contact_id if self.member_type is MemberType.CONTACT else None,
            previous_status=previous,
            status=self.status,
            responded=self.has_responded(responses),
            member_version=self.version,
            changed_at=at,
            changed_by=by,
        )


def _lead_ids(member: CampaignMember) -> list[str]:
    return [member.lead_id] if member.lead_id is not None else []


def furthest_status(reached: Iterable[MemberStatus]) -> MemberStatus:
    """Where a member that reached these statuses stands: unsubscribed if it ever
    unsubscribed (final), else its furthest step."""
    statuses = set(reached)
    if MemberStatus.UNSUBSCRIBED in statuses:
        return MemberStatus.UNSUBSCRIBED
    return max(statuses, key=_rank)


def merge_chain(lead_id: str, merged_into: Mapping[str, str]) -> list[str]:
    """``lead_id`` and, following merges (a survivor may be merged again later), each lead it
    lives on as; the last one lives on. A cycle (which leads never produce) stops where it
    would repeat."""
    chain = [lead_id]
    while (survivor := merged_into.get(chain[-1])) is not None and survivor not in chain:
        chain.append(survivor)
    return chain


def surviving_lead(lead_id: str, merged_into: Mapping[str, str]) -> str:
    """The lead that lives on for ``lead_id``: itself, or the last survivor of its merges."""
    return merge_chain(lead_id, merged_into)[-1]


class NewMember(BaseModel):
    """A lead or contact to add to a campaign by hand (status: the campaign's first step if
    not given)."""

    model_config = ConfigDict(frozen=True)

    member_type: MemberType
    record_id: str
    status: MemberStatus | None = None

    @property
    def member_id(self) -> str:
        return member_id_for(self.member_type, self.record_id)


class AddOutcome(StrEnum):
    ADDED = "added"
    ALREADY_MEMBER = "already_member"
    REFUSED = "refused"


class MemberAddition(BaseModel):
    """What became of one member to add: added, already a member (left as it was), or
    refused with the reason."""

    index: int
    member_id: str
    outcome: AddOutcome
    reason: str | None = None
    field: str | None = Field(default=None, description="The field a refusal names (status, lead_id).")
    member: CampaignMember | None = None


# -- attribution ------------------------------------------------------------------------------
class LeadTouch(BaseModel):
    """One campaign that reached a lead (one of the lead's memberships)."""

    campaign_id: str
    first_touched_at: AwareDatetime
    last_touched_at: AwareDatetime
    touched_via: list[str]


def first_touch(touches: Iterable[LeadTouch]) -> LeadTouch | None:
    """The lead's first touch, which first-touch attribution credits: the earliest
    ``first_touched_at``; a tie goes to the smaller campaign id, so every reader agrees."""
    return min(touches, key=lambda t: (t.first_touched_at, t.campaign_id), default=None)


def last_touch(touches: Iterable[LeadTouch]) -> LeadTouch | None:
    """The latest ``last_touched_at``; a tie goes to the larger campaign id."""
    return max(touches, key=lambda t: (t.last_touched_at, t.campaign_id), default=None)


def first_touch_changes(touches: Iterable[tuple[LeadTouch, bool]]) -> tuple[str | None, dict[str, bool]]:
    """For one lead's touches, each with whether it is marked as the first: the campaign of its
    first touch if the mark must move there (else None), and the marks to change by campaign."""
    touches = list(touches)
    first = first_touch(touch for touch, _ in touches)
    if first is None:
        return None, {}
    changes = {
        touch.campaign_id: not marked
        for touch, marked in touches
        if marked != (touch.campaign_id == first.campaign_id)
    }
    return (first.campaign_id if changes else None), changes


class MemberCounts(BaseModel):
    members: int = Field(description="Leads and contacts the campaigns reached, each counted once.")
    responses: int = Field(description="Members who reached a status counting as a response.")
    leads: int = Field(description="Leads whose first touch is one of the campaigns.")
    converted_leads: int = Field(description="Of those leads, the converted ones.")


class OpportunityState(StrEnum):
    OPEN = "open"
    WON = "won"
    LOST = "lost"


class OpportunityOutcome(BaseModel):
    """An opportunity attributed to a campaign, as far as its figures matter here."""

    opportunity_id: str
    amount: Decimal | None
    currency: str | None
    state: OpportunityState


class OpportunityFigures(BaseModel):
    opportunities: int
    open_opportunities: int
    won_opportunities: int
    lost_opportunities: int
    won_revenue: Decimal = Field(description="Won amounts in the campaign's currency.")
    won_revenue_in_other_currencies: dict[str, Decimal] = Field(
        description="Won amounts in other currencies: not converted, so not in won_revenue or ROI."
    )


def opportunity_figures(outcomes: list[OpportunityOutcome], currency: str) -> OpportunityFigures:
    won = [o for o in outcomes if o.state is OpportunityState.WON]
    other: dict[str, Decimal] = {}
    revenue = Decimal("0.00")
    for outcome in won:
        amount = outcome.amount or Decimal("0")
        if outcome.currency in (None, currency):
            revenue += amount
        else:
            other[outcome.currency] = other.get(outcome.currency, Decimal("0.00")) + amount
    return OpportunityFigures(
        opportunities=len(outcomes),
        open_opportunities=sum(1 for o in outcomes if o.state is OpportunityState.OPEN),
        won_opportunities=len(won),
        lost_opportunities=sum(1 for o in outcomes if o.state is OpportunityState.LOST),
        won_revenue=revenue.quantize(CENT),
        won_revenue_in_other_currencies={k: v.quantize(CENT) for k, v in sorted(other.items())},
    )


def response_rate(responses: int, members: int) -> Decimal | None:
    """Responses per member, in percent to two places; None without members."""
    if members <= 0:
        return None
    return (Decimal(responses) * 100 / members).quantize(CENT, rounding=ROUND_HALF_UP)


def return_on_investment(won_revenue: Decimal, actual_cost: Decimal) -> Decimal | None:
    """(won revenue - actual cost) / actual cost, as a ratio to four places (1.5 = 150 %);
    None while nothing was spent."""
    if actual_cost <= 0:
        return None
    return ((won_revenue - actual_cost) / actual_cost).quantize(Decimal("0.0001"), rounding=ROUND_HALF_UP)


class CampaignSummary(BaseModel):
    """A campaign's performance figures: its own, or with its sub-campaigns rolled up. The
    definitions are the contract reporting's campaign ROI matches (see the README)."""

    campaign_id: str
    status: CampaignStatus
    currency: str
    sub_campaigns: list[str] = Field(description="Sub-campaigns whose figures are included.")
    sub_campaigns_in_other_currencies: list[str] = Field(
        description="Sub-campaigns left out: their costs and revenue are in another currency."
    )
    members: int = Field(description="Leads and contacts the campaign reached, each counted once.")
    responses: int = Field(
        description="Members who reached a status that counts as a response in their campaign "
        "(even if they moved on or unsubscribed since)."
    )
    response_rate: Decimal | None = Field(
        description="Responses per member, in percent; null without members."
    )
    leads: int = Field(description="Leads attributed to the campaign: their first touch is this campaign.")
    converted_leads: int = Field(description="Attributed leads that converted.")
    conversion_rate: Decimal | None = Field(description="Converted leads per lead, in percent.")
    opportunities: int = Field(description="Opportunities attributed to the campaign (open, won and lost).")
    open_opportunities: int
    won_opportunities: int
    lost_opportunities: int
    won_revenue: Decimal = Field(description="Amounts of won opportunities in the campaign's currency.")
    won_revenue_in_other_currencies: dict[str, Decimal]
    budgeted_cost: Decimal | None
    actual_cost: Decimal = Field(description="Sum of the cost ledger.")
    budget_remaining: Decimal | None
    cost_per_lead: Decimal | None = Field(description="Actual cost per lead; null without leads.")
    expected_revenue: Decimal | None
    roi: Decimal | None = Field(
        description="(won revenue - actual cost) / actual cost as a ratio; null while nothing was spent."
    )


def rollup_scope(campaign: Campaign, sub_campaigns: list[Campaign]) -> tuple[list[Campaign], list[str]]:
    """The campaigns whose figures add up with ``campaign``'s (same currency: amounts are never
    converted), and the ids of those left out."""
    included = [campaign] + [c for c in sub_campaigns if c.currency == campaign.currency]
    return included, [c.id for c in sub_campaigns if c.currency != campaign.currency]


def _total(amounts: list[Decimal | None]) -> Decimal | None:
    present = [a for a in amounts if a is not None]
    return sum(present, Decimal("0")).quantize(CENT) if present else None


def summarize(
    campaign: Campaign,
    counts: MemberCounts,
    opportunities: list[OpportunityOutcome],
    sub_campaigns: list[Campaign] | None = None,
) -> CampaignSummary:
    """The figures of ``campaign`` and of the ``sub_campaigns`` rolled up into it; ``counts``
    and ``opportunities`` must cover the same campaigns (see ``rollup_scope``)."""
    included, left_out = rollup_scope(campaign, sub_campaigns or [])
    actual = sum((c.actual_cost for c in included), Decimal("0")).quantize(CENT)
    budgeted = _total([c.budgeted_cost for c in included])
    figures = opportunity_figures(opportunities, campaign.currency)
    return CampaignSummary(
        campaign_id=campaign.id,
        status=campaign.status,
        currency=campaign.currency,
        sub_campaigns=[c.id for c in included[1:]],
        sub_campaigns_in_other_currencies=left_out,
        members=counts.members,
        responses=counts.responses,
        response_rate=response_rate(counts.responses, counts.members),
        leads=counts.leads,
        converted_leads=counts.converted_leads,
        conversion_rate=conversion_rate(counts.converted_leads, counts.leads),
        **figures.model_dump(),
        budgeted_cost=budgeted,
        actual_cost=actual,
        budget_remaining=(budgeted - actual) if budgeted is not None else None,
        cost_per_lead=cost_per_lead(actual, counts.leads),
        expected_revenue=_total([c.expected_revenue for c in included]),
        roi=return_on_investment(figures.won_revenue, actual),
    )
