"""What reporting knows and what it shows, without I/O.

**Facts** (one per lead, opportunity and campaign) are folded from other services' events so
that any order and any number of repetitions end in the same facts:

- a field stating a current value (status, rating, stage, amount, ...) is a *register*: it
  keeps the value from the event with the highest stamp (aggregate version, then event time,
  then event id) among the events that carry it, and each field remembers its own stamp;
- a milestone that counts once (first qualification, conversion) keeps the earliest time;
- ``as_of`` keeps the newest event time.

Each rule is commutative, associative and idempotent, which is what makes the projection
order-independent; a fact that one event leaves unchanged is not rewritten.

**Views** (funnel, pipeline) are functions from facts, or from counts the database aggregated
the same way, to rows.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import date, datetime
from decimal import ROUND_HALF_EVEN, Decimal
from enum import StrEnum
from typing import Any, TypeVar

from crm_contracts.envelope import CloudEvent
from crm_contracts.events.campaigns import CampaignCreated, CampaignPurpose, CampaignStatus, CampaignType
from crm_contracts.events.leads import (
    LeadConverted,
    LeadCreated,
    LeadDisqualified,
    LeadOrigin,
    LeadQualified,
    LeadRating,
    LeadSource,
    LeadStatus,
    LeadUpdated,
)
from crm_contracts.events.opportunities import (
    ForecastCategory,
    OpportunityClosed,
    OpportunityCreated,
    OpportunityFigures,
    OpportunityStageChanged,
    OpportunityUpdated,
    StageKind,
)
from pydantic import BaseModel, ConfigDict, Field

# (aggregate version, event time, event id): the order in which register values win.
Stamp = tuple[int, datetime, str]
# Events without a version never beat a versioned one (as crm_runtime.projection.is_newer).
UNVERSIONED = -1

LeadEvent = LeadCreated | LeadUpdated | LeadQualified | LeadDisqualified | LeadConverted
OpportunityEvent = OpportunityCreated | OpportunityUpdated | OpportunityStageChanged | OpportunityClosed

RATE_QUANTUM = Decimal("0.0001")
AMOUNT_QUANTUM = Decimal("0.01")
WEIGHTED_QUANTUM = Decimal("0.0001")


def to_millis(moment: datetime) -> datetime:
    """BSON dates keep milliseconds: folding times at that precision makes a fact read back
    from the database equal to the same fact folded in memory."""
    return moment.replace(microsecond=moment.microsecond - moment.microsecond % 1000)


def stamp_of(event: CloudEvent[Any]) -> Stamp:
    version = event.version if event.version is not None else UNVERSIONED
    return (version, to_millis(event.time), event.id)


def earliest(*moments: datetime | None) -> datetime | None:
    known = [moment for moment in moments if moment is not None]
    return min(known) if known else None


def latest(*moments: datetime | None) -> datetime | None:
    known = [moment for moment in moments if moment is not None]
    return max(known) if known else None


FactT = TypeVar("FactT", bound="Fact")


class Fact(BaseModel):
    """Base of the per-entity facts: registers with their stamps, and freshness."""

    model_config = ConfigDict(frozen=True)

    stamps: dict[str, Stamp] = Field(default_factory=dict)
    as_of: datetime | None = Field(default=None, description="Time of the newest event folded in.")

    def folded(
        self: FactT,
        *,
        at: datetime,
        stamp: Stamp,
        registers: Mapping[str, Any],
        firsts: Mapping[str, datetime | None] | None = None,
    ) -> FactT:
        """This fact with one event folded in: each register takes the event's value if the
        event's stamp beats the field's; each first-time milestone keeps the earlier time."""
        update: dict[str, Any] = {}
        stamps = dict(self.stamps)
        for name, value in registers.items():
            held = stamps.get(name)
            if held is None or stamp > held:
                stamps[name] = stamp
                update[name] = value
        for name, moment in (firsts or {}).items():
            update[name] = earliest(getattr(self, name), moment)
        update["stamps"] = stamps
        update["as_of"] = latest(self.as_of, to_millis(at))
        return self.model_copy(update=update)


# -- leads ------------------------------------------------------------------------------------
class LeadOpportunity(BaseModel):
    """What the funnel needs from one opportunity that came from the lead."""

    model_config = ConfigDict(frozen=True)

    opportunity_id: str
    created_at: datetime | None = None
    won_at: datetime | None = None


class FunnelSteps(BaseModel):
    """When the lead reached each funnel step (None: not yet)."""

    model_config = ConfigDict(frozen=True)

    captured: datetime | None = None
    qualified: datetime | None = None
    converted: datetime | None = None
    opportunity: datetime | None = None
    won: datetime | None = None


FUNNEL_STEPS: tuple[str, ...] = tuple(FunnelSteps.model_fields)


class LeadFacts(Fact):
    lead_id: str
    status: LeadStatus | None = None
    lead_source: LeadSource | None = None
    campaign_id: str | None = None
    rating: LeadRating | None = None
    score: int | None = None
    owner_id: str | None = None
    origin: LeadOrigin | None = None
    captured_at: datetime | None = None
    qualified_at: datetime | None = Field(default=None, description="First qualification.")
    disqualified_at: datetime | None = Field(default=None, description="Latest disqualification.")
    disqualification_reason: str | None = None
    converted_at: datetime | None = None
    account_id: str | None = None
    contact_id: str | None = None
    opportunity_id: str | None = Field(default=None, description="The opportunity opened on conversion.")
    opportunities: tuple[LeadOpportunity, ...] = ()
    funnel: FunnelSteps = FunnelSteps()

    def with_funnel(self) -> LeadFacts:
        return self.model_copy(update={"funnel": funnel_steps(self)})


def funnel_steps(lead: LeadFacts) -> FunnelSteps:
    """The funnel counts leads that reached a step. A lead converted without a formal
    qualification has passed that gate too, so it counts as qualified when it converted."""
    return FunnelSteps(
        captured=lead.captured_at,
        qualified=earliest(lead.qualified_at, lead.converted_at),
        converted=lead.converted_at,
        opportunity=earliest(*(o.created_at for o in lead.opportunities)),
        won=earliest(*(o.won_at for o in lead.opportunities)),
    )


def lead_id_of(data: LeadEvent) -> str:
    if isinstance(data, LeadCreated | LeadUpdated):
        return data.lead.lead_id
    return data.lead_id


def apply_lead_event(lead: LeadFacts | None, event: CloudEvent[Any]) -> LeadFacts:
    """Fold one lead event into the lead's facts."""
    data: LeadEvent = event.data
    fact = lead or LeadFacts(lead_id=lead_id_of(data))
    registers: dict[str, Any]
    firsts: dict[str, datetime | None] = {}
    if isinstance(data, LeadCreated | LeadUpdated):
        snapshot = data.lead
        registers = {
            "status": snapshot.status,
            "lead_source": snapshot.lead_source,
            "campaign_id": snapshot.campaign_id,
            "rating": snapshot.rating,
            "score": snapshot.score,
            "owner_id": snapshot.owner_id,
            "origin": snapshot.origin,
            "captured_at": to_millis(snapshot.captured_at),
        }
    elif isinstance(data, LeadQualified):
        registers = {
            "status": LeadStatus.QUALIFIED,
            "rating": data.rating,
            "score": data.score,
            "lead_source": data.lead_source,
            "campaign_id": data.campaign_id,
        }
        firsts = {"qualified_at": to_millis(data.qualified_at)}
    elif isinstance(data, LeadDisqualified):
        registers = {
            "status": LeadStatus.DISQUALIFIED,
            "lead_source": data.lead_source,
            "campaign_id": data.campaign_id,
            "disqualified_at": to_millis(data.disqualified_at),
            "disqualification_reason": data.reason,
        }
    else:
        registers = {
            "status": LeadStatus.CONVERTED,
            "lead_source": data.lead_source,
            "campaign_id": data.campaign_id,
            "account_id": data.account.account_id,
            "contact_id": data.contact.contact_id,
            "opportunity_id": data.opportunity.opportunity_id if data.opportunity else None,
        }
        if data.captured_at is not None:
            registers["captured_at"] = to_millis(data.captured_at)
        firsts = {"converted_at": to_millis(data.converted_at)}
    return fact.folded(at=event.time, stamp=stamp_of(event), registers=registers, firsts=firsts).with_funnel()


def note_opportunity(lead: LeadFacts | None, lead_id: str, opportunity: OpportunityFacts) -> LeadFacts:
    """The lead's facts with ``opportunity`` as it now stands. The entry is derived from the
    opportunity's facts, not folded, so the newest derivation is always the right one."""
    fact = lead or LeadFacts(lead_id=lead_id)
    entry = LeadOpportunity(
        opportunity_id=opportunity.opportunity_id,
        created_at=opportunity.created_at,
        won_at=opportunity.won_at,
    )
    others = [o for o in fact.opportunities if o.opportunity_id != opportunity.opportunity_id]
    entries = tuple(sorted([*others, entry], key=lambda o: o.opportunity_id))
    return fact.model_copy(
        update={"opportunities": entries, "as_of": latest(fact.as_of, opportunity.as_of)}
    ).with_funnel()


# -- opportunities ----------------------------------------------------------------------------
class OpportunityFacts(Fact):
    opportunity_id: str
    name: str | None = None
    account_id: str | None = None
    owner_id: str | None = None
    pipeline_id: str | None = None
    stage_id: str | None = None
    stage_name: str | None = None
    stage_kind: StageKind | None = None
    probability: int | None = None
    forecast_category: ForecastCategory | None = None
    amount: Decimal | None = None
    currency: str | None = None
    weighted_amount: Decimal | None = None
    expected_close_date: date | None = None
    lead_id: str | None = None
    lead_source: LeadSource | None = None
    campaign_id: str | None = None
    created_at: datetime | None = None
    stage_entered_at: datetime | None = None
    won: bool | None = None
    closed_at: datetime | None = None
    loss_reason: str | None = None
    converted_from_lead_id: str | None = Field(
        default=None, description="The lead whose conversion opened it (from lead.converted)."
    )

    @property
    def source_lead_id(self) -> str | None:
        return self.lead_id or self.converted_from_lead_id

    @property
    def won_at(self) -> datetime | None:
        if self.won and self.stage_kind == StageKind.CLOSED_WON:
            return self.closed_at
        return None

    @property
    def is_open(self) -> bool:
        return self.stage_kind == StageKind.OPEN

    def with_weighted_amount(self) -> OpportunityFacts:
        weighted = None
        if self.amount is not None and self.probability is not None:
            weighted = weighted_amount(self.amount, self.probability)
        return self.model_copy(update={"weighted_amount": weighted})


def weighted_amount(amount: Decimal, probability: int) -> Decimal:
    """amount * probability / 100, exactly (money has at most two decimals, so four suffice)."""
    return (amount * probability / Decimal(100)).quantize(WEIGHTED_QUANTUM)


def opportunity_id_of(data: OpportunityEvent) -> str:
    if isinstance(data, OpportunityCreated | OpportunityUpdated):
        return data.opportunity.opportunity_id
    return data.opportunity_id


def _figures(figures: OpportunityFigures) -> dict[str, Any]:
    return {
        "name": figures.name,
        "account_id": figures.account_id,
        "owner_id": figures.owner_id,
        "pipeline_id": figures.pipeline_id,
        "stage_id": figures.stage_id,
        "stage_name": figures.stage_name,
        "stage_kind": figures.stage_kind,
        "probability": figures.probability,
        "forecast_category": figures.forecast_category,
        "amount": figures.amount,
        "currency": figures.currency,
        "expected_close_date": figures.expected_close_date,
        "lead_id": figures.lead_id,
        "lead_source": figures.lead_source,
        "campaign_id": figures.campaign_id,
        "created_at": to_millis(figures.created_at),
    }


def apply_opportunity_event(opportunity: OpportunityFacts | None, event: CloudEvent[Any]) -> OpportunityFacts:
    """Fold one opportunity event into the opportunity's facts. Every event carries the full
    figures at its version, so a stage change arriving before the creation loses nothing."""
    data: OpportunityEvent = event.data
    fact = opportunity or OpportunityFacts(opportunity_id=opportunity_id_of(data))
    registers = _figures(data.opportunity)
    if isinstance(data, OpportunityStageChanged):
        closed = data.stage_kind != StageKind.OPEN
        registers.update(
            stage_entered_at=to_millis(data.changed_at),
            # Moving back to an open stage reopens the opportunity.
            won=data.stage_kind == StageKind.CLOSED_WON if closed else None,
            closed_at=to_millis(data.changed_at) if closed else None,
        )
        if not closed:
            registers["loss_reason"] = None
    elif isinstance(data, OpportunityClosed):
        registers.update(won=data.won, closed_at=to_millis(data.closed_at), loss_reason=data.loss_reason)
    folded = fact.folded(at=event.time, stamp=stamp_of(event), registers=registers)
    return folded.with_weighted_amount()


def link_conversion(
    opportunity: OpportunityFacts | None, opportunity_id: str, lead_id: str, event: CloudEvent[Any]
) -> OpportunityFacts:
    """Record on the opportunity that ``lead.converted`` opened it, whichever arrives first."""
    fact = opportunity or OpportunityFacts(opportunity_id=opportunity_id)
    return fact.folded(at=event.time, stamp=stamp_of(event), registers={"converted_from_lead_id": lead_id})


# -- campaigns --------------------------------------------------------------------------------
class CampaignFacts(Fact):
    campaign_id: str
    name: str | None = None
    type: CampaignType | None = None
    purpose: CampaignPurpose | None = None
    status: CampaignStatus | None = None
    start_date: date | None = None
    end_date: date | None = None
    owner_id: str | None = None
    budgeted_cost: Decimal | None = None
    expected_revenue: Decimal | None = None
    currency: str | None = None
    created_at: datetime | None = None


def apply_campaign_event(campaign: CampaignFacts | None, event: CloudEvent[Any]) -> CampaignFacts:
    data: CampaignCreated = event.data
    snapshot = data.campaign
    fact = campaign or CampaignFacts(campaign_id=snapshot.campaign_id)
    registers = {
        "name": snapshot.name,
        "type": snapshot.type,
        "purpose": snapshot.purpose,
        "status": snapshot.status,
        "start_date": snapshot.start_date,
        "end_date": snapshot.end_date,
        "owner_id": snapshot.owner_id,
        "budgeted_cost": snapshot.budgeted_cost,
        "expected_revenue": snapshot.expected_revenue,
        "currency": snapshot.currency,
        "created_at": to_millis(data.created_at),
    }
    return fact.folded(at=event.time, stamp=stamp_of(event), registers=registers)


# -- funnel view ------------------------------------------------------------------------------
class FunnelDimension(StrEnum):
    """What the funnel can be broken down by (a field of the lead's facts)."""

    LEAD_SOURCE = "lead_source"
    CAMPAIGN = "campaign_id"
    RATING = "rating"


class PeriodBasis(StrEnum):
    """How the period filters the funnel.

    ``activity``: each step counts the leads that reached it within the period (what happened
    in March). ``cohort``: the leads captured within the period, with every step they reached
    so far (what became of March's leads)."""

    ACTIVITY = "activity"
    COHORT = "cohort"


class FunnelQuery(BaseModel):
    model_config = ConfigDict(frozen=True, populate_by_name=True)

    lead_source: LeadSource | None = None
    campaign_id: str | None = None
    rating: LeadRating | None = None
    period_from: datetime | None = Field(default=None, alias="from", description="Inclusive.")
    period_to: datetime | None = Field(default=None, alias="to", description="Exclusive.")
    basis: PeriodBasis = PeriodBasis.ACTIVITY
    group_by: FunnelDimension | None = None

    def in_period(self, moment: datetime) -> bool:
        if self.period_from is not None and moment < self.period_from:
            return False
        return self.period_to is None or moment < self.period_to

    def selects(self, lead: LeadFacts) -> bool:
        return (
            (self.lead_source is None or lead.lead_source == self.lead_source)
            and (self.campaign_id is None or lead.campaign_id == self.campaign_id)
            and (self.rating is None or lead.rating == self.rating)
        )


@dataclass(frozen=True)
class FunnelCounts:
    captured: int = 0
    qualified: int = 0
    converted: int = 0
    opportunity: int = 0
    won: int = 0

    def __add__(self, other: FunnelCounts) -> FunnelCounts:
        return FunnelCounts(*(getattr(self, s) + getattr(other, s) for s in FUNNEL_STEPS))

    def __bool__(self) -> bool:
        return any(getattr(self, s) for s in FUNNEL_STEPS)


def group_key(value: Any) -> str | None:
    if value is None:
        return None
    return str(value.value if isinstance(value, StrEnum) else value)


def funnel_counts_of(lead: LeadFacts, query: FunnelQuery) -> FunnelCounts:
    """Which steps one lead counts in under ``query``."""
    steps = lead.funnel
    if query.basis == PeriodBasis.COHORT:
        if steps.captured is None or not query.in_period(steps.captured):
            return FunnelCounts()
        return FunnelCounts(*(int(getattr(steps, s) is not None) for s in FUNNEL_STEPS))
    reached = [getattr(steps, s) for s in FUNNEL_STEPS]
    return FunnelCounts(*(int(m is not None and query.in_period(m)) for m in reached))


def count_funnel(leads: Iterable[LeadFacts], query: FunnelQuery) -> dict[str | None, FunnelCounts]:
    """The funnel's counts per group, straight from the facts. The repository aggregates the
    same counts in the database; this is the definition it must agree with."""
    totals: dict[str | None, FunnelCounts] = {}
    for lead in leads:
        if not query.selects(lead):
            continue
        counts = funnel_counts_of(lead, query)
        if not counts:
            continue
        key = group_key(getattr(lead, query.group_by.value)) if query.group_by else None
        totals[key] = totals.get(key, FunnelCounts()) + counts
    return totals


def conversion_rate(reached: int, entered: int) -> Decimal | None:
    """reached / entered as a fraction with four decimals; None when nobody entered."""
    if entered == 0:
        return None
    return (Decimal(reached) / Decimal(entered)).quantize(RATE_QUANTUM, rounding=ROUND_HALF_EVEN)


class FunnelRow(BaseModel):
    group: str | None = Field(description="The value of group_by, null for none/unknown.")
    group_name: str | None = Field(description="Display name of the group (campaign name).")
    captured: int
    qualified: int
    converted: int
    opportunities: int
    won: int
    qualified_rate: Decimal | None = Field(description="qualified / captured")
    converted_rate: Decimal | None = Field(description="converted / qualified")
    opportunity_rate: Decimal | None = Field(description="opportunities / converted")
    won_rate: Decimal | None = Field(description="won / opportunities")
    overall_rate: Decimal | None = Field(description="won / captured")

    @classmethod
    def of(cls, group: str | None, counts: FunnelCounts, group_name: str | None = None) -> FunnelRow:
        return cls(
            group=group,
            group_name=group_name,
            captured=counts.captured,
            qualified=counts.qualified,
            converted=counts.converted,
            opportunities=counts.opportunity,
            won=counts.won,
            qualified_rate=conversion_rate(counts.qualified, counts.captured),
            converted_rate=conversion_rate(counts.converted, counts.qualified),
            opportunity_rate=conversion_rate(counts.opportunity, counts.converted),
            won_rate=conversion_rate(counts.won, counts.opportunity),
            overall_rate=conversion_rate(counts.won, counts.captured),
        )


def funnel_rows(
    counts: Mapping[str | None, FunnelCounts],
    query: FunnelQuery,
    group_names: Mapping[str, str] | None = None,
) -> list[FunnelRow]:
    """One row per group (sorted, unknown last), or a single total row when ungrouped."""
    if query.group_by is None:
        total = sum(counts.values(), FunnelCounts())
        return [FunnelRow.of(None, total)]
    names = group_names or {}
    keys = sorted(counts, key=lambda key: (key is None, key or ""))
    return [FunnelRow.of(key, counts[key], names.get(key) if key else None) for key in keys]


# -- pipeline view ----------------------------------------------------------------------------
class PipelineQuery(BaseModel):
    model_config = ConfigDict(frozen=True)

    pipeline_id: str | None = None
    owner_id: str | None = None

    def selects(self, opportunity: OpportunityFacts) -> bool:
        return (
            opportunity.is_open
            and (self.pipeline_id is None or opportunity.pipeline_id == self.pipeline_id)
            and (self.owner_id is None or opportunity.owner_id == self.owner_id)
        )


# (pipeline_id, stage_id, currency): amounts in different currencies are never added up.
PipelineKey = tuple[str, str, str]


@dataclass(frozen=True)
class PipelineCell:
    stage_name: str
    count: int
    amount: Decimal
    weighted_amount: Decimal


def sum_pipeline(
    opportunities: Iterable[OpportunityFacts], query: PipelineQuery
) -> dict[PipelineKey, PipelineCell]:
    """Open opportunities summed per pipeline, stage and currency, straight from the facts
    (the definition the repository's aggregation must agree with). A stage shows the name
    carried by its most recently changed opportunity, so a renamed stage shows its new name."""
    cells: dict[PipelineKey, PipelineCell] = {}
    named_by: dict[PipelineKey, tuple[datetime, str]] = {}
    for opp in opportunities:
        if not query.selects(opp):
            continue
        assert opp.pipeline_id and opp.stage_id and opp.stage_name and opp.currency and opp.as_of
        assert opp.amount is not None and opp.weighted_amount is not None
        key = (opp.pipeline_id, opp.stage_id, opp.currency)
        named_by[key] = max(named_by.get(key, (opp.as_of, opp.stage_name)), (opp.as_of, opp.stage_name))
        held = cells.get(key, PipelineCell("", 0, Decimal(0), Decimal(0)))
        cells[key] = PipelineCell(
            named_by[key][1],
            held.count + 1,
            held.amount + opp.amount,
            held.weighted_amount + opp.weighted_amount,
        )
    return cells


class PipelineRow(BaseModel):
    pipeline_id: str
    stage_id: str
    stage_name: str
    currency: str
    count: int
    amount: Decimal = Field(description="Sum of the open opportunities' amounts.")
    weighted_amount: Decimal = Field(description="Sum of amount * probability / 100.")


def pipeline_rows(cells: Mapping[PipelineKey, PipelineCell]) -> list[PipelineRow]:
    return [
        PipelineRow(
            pipeline_id=pipeline_id,
            stage_id=stage_id,
            stage_name=cell.stage_name,
            currency=currency,
            count=cell.count,
            amount=cell.amount.quantize(AMOUNT_QUANTUM),
            weighted_amount=cell.weighted_amount.quantize(WEIGHTED_QUANTUM),
        )
        for (pipeline_id, stage_id, currency), cell in sorted(cells.items())
    ]
