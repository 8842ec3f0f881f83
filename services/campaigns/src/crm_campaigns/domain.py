"""The campaign and its rules: details, status lifecycle, cost ledger and the figures derived
from them. No I/O here."""

from __future__ import annotations

from datetime import date, datetime
from decimal import ROUND_HALF_UP, Decimal
from enum import StrEnum
from typing import Any

from crm_contracts.events.campaigns import (
    CampaignCostRecorded,
    CampaignPurpose,
    CampaignSnapshot,
    CampaignStatus,
    CampaignStatusChanged,
    CampaignType,
    CampaignUpdated,
    CostAmount,
    CostEntry,
    MemberType,
    ResponsePercent,
)
from crm_contracts.events.common import Actor, Currency, Id, Money, ShortText
from pydantic import AwareDatetime, BaseModel, ConfigDict, Field, ValidationError

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


class CampaignDetails(BaseModel):
    """What a user decides about a campaign when planning it."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: ShortText
    type: CampaignType
    purpose: CampaignPurpose = CampaignPurpose.LEAD_GENERATION
    start_date: date | None = None
    end_date: date | None = None
    owner_id: Id | None = None
    parent_campaign_id: Id | None = None
    budgeted_cost: Money | None = None
    expected_revenue: Money | None = None
    expected_response: ResponsePercent | None = None
    currency: Currency = "EUR"


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
    incurred_on: date
    note: str | None = Field(default=None, max_length=500)


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
    currency: str = "EUR"
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
        )

    def _touch(self, now: datetime) -> None:
        self.version += 1
        self.updated_at = now


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


class CampaignMember(BaseModel):
    """A lead or contact a campaign reached. Leads join through their campaign (first touch);
    conversion is followed from the lead's ``lead.converted``."""

    campaign_id: str
    member_id: str
    member_type: MemberType
    lead_id: str | None = None
    contact_id: str | None = None
    lead_source: str | None = None
    joined_at: AwareDatetime | None = None
    converted: bool = False
    converted_at: AwareDatetime | None = None
    account_id: str | None = None
    opportunity_id: str | None = None


class MemberCounts(BaseModel):
    members: int
    leads: int
    converted_leads: int


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
        won_opportunities=len(won),
        lost_opportunities=sum(1 for o in outcomes if o.state is OpportunityState.LOST),
        won_revenue=revenue.quantize(CENT),
        won_revenue_in_other_currencies={k: v.quantize(CENT) for k, v in sorted(other.items())},
    )


def return_on_investment(won_revenue: Decimal, actual_cost: Decimal) -> Decimal | None:
    """(won revenue - actual cost) / actual cost, as a ratio to four places (1.5 = 150 %);
    None while nothing was spent."""
    if actual_cost <= 0:
        return None
    return ((won_revenue - actual_cost) / actual_cost).quantize(Decimal("0.0001"), rounding=ROUND_HALF_UP)


class CampaignSummary(BaseModel):
    """A campaign's performance figures: its own, or with its sub-campaigns rolled up."""

    campaign_id: str
    status: CampaignStatus
    currency: str
    sub_campaigns: list[str] = Field(description="Sub-campaigns whose figures are included.")
    sub_campaigns_in_other_currencies: list[str] = Field(
        description="Sub-campaigns left out: their costs and revenue are in another currency."
    )
    members: int
    leads: int
    converted_leads: int
    conversion_rate: Decimal | None = Field(description="Converted leads per lead, in percent.")
    opportunities: int
    won_opportunities: int
    lost_opportunities: int
    won_revenue: Decimal
    won_revenue_in_other_currencies: dict[str, Decimal]
    budgeted_cost: Decimal | None
    actual_cost: Decimal
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
