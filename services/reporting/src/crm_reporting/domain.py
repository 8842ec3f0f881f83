"""What reporting knows, without I/O: one *fact* per lead, opportunity and campaign, folded
from other services' events so that any order and any number of repetitions end in the same
facts:

- a field stating a current value (status, rating, stage, amount, ...) is a *register*: it
  keeps the value from the event with the highest stamp (aggregate version, then event time,
  then event id) among the events that carry it, and each field remembers its own stamp;
- a milestone that counts once (first qualification, conversion) keeps the earliest time;
- an opportunity's *revisions* (its figures after each of its events) form a set ordered by
  stamp, from which its stage history and its place in the pipeline on any past day follow;
- ``as_of`` keeps the newest event time.

Each rule is commutative, associative and idempotent, which is what makes the projection
order-independent; a fact that one event leaves unchanged is not rewritten. How facts count
in the views is ``aggregates``; how views read the counts is ``views``.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import date, datetime, timedelta
from decimal import Decimal
from enum import StrEnum
from typing import Any, TypeVar

from crm_contracts.envelope import CloudEvent
from crm_contracts.events.campaigns import (
    CampaignCostRecorded,
    CampaignCreated,
    CampaignPurpose,
    CampaignStatus,
    CampaignStatusChanged,
    CampaignType,
    CampaignUpdated,
)
from crm_contracts.events.leads import (
    LeadConverted,
    LeadCreated,
    LeadDisqualified,
    LeadQualified,
    LeadRating,
    LeadStatus,
    LeadUpdated,
    Utm,
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
from crm_contracts.events.picklists import PicklistCode
from pydantic import BaseModel, ConfigDict, Field

# (aggregate version, event time, event id): the order in which register values win.
Stamp = tuple[int, datetime, str]
# Events without a version never beat a versioned one (as crm_runtime.projection.is_newer).
UNVERSIONED = -1

LeadEvent = LeadCreated | LeadUpdated | LeadQualified | LeadDisqualified | LeadConverted
OpportunityEvent = OpportunityCreated | OpportunityUpdated | OpportunityStageChanged | OpportunityClosed
CampaignEvent = CampaignCreated | CampaignUpdated | CampaignStatusChanged | CampaignCostRecorded

WEIGHTED_QUANTUM = Decimal("0.0001")


def to_millis(moment: datetime) -> datetime:
    """BSON dates keep milliseconds: folding times at that precision makes a fact read back
    from the database equal to the same fact folded in memory."""
    return moment.replace(microsecond=moment.microsecond - moment.microsecond % 1000)


def stamp_of(event: CloudEvent[Any]) -> Stamp:
    # The id only orders events about one record, all published by its owning service (one
    # source); whether an event was applied at all is the inbox's (source, id) question.
    version = event.version if event.version is not None else UNVERSIONED
    return (version, to_millis(event.time), event.id)


def earliest(*moments: datetime | None) -> datetime | None:
    known = [moment for moment in moments if moment is not None]
    return min(known) if known else None


def latest(*moments: datetime | None) -> datetime | None:
    known = [moment for moment in moments if moment is not None]
    return max(known) if known else None


def value_of(value: Any) -> str | None:
    """A dimension value as stored and shown: enums by their value, None stays None."""
    if value is None:
        return None
    return str(value.value if isinstance(value, StrEnum) else value)


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
    lead_source: PicklistCode | None = None
    campaign_id: str | None = None
    rating: LeadRating | None = None
    score: int | None = None
    owner_id: str | None = None
    origin: PicklistCode | None = None
    utm_source: str | None = Field(default=None, description="As the lead's capture gave it (case kept).")
    utm_medium: str | None = None
    utm_campaign: str | None = None
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


def utm_registers(utm: Utm | None) -> dict[str, str | None]:
    """The UTM dimensions of the funnel: a lead without UTM has none of them (null)."""
    return {
        "utm_source": utm.source if utm else None,
        "utm_medium": utm.medium if utm else None,
        "utm_campaign": utm.campaign if utm else None,
    }


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
            **utm_registers(snapshot.utm),
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
        if data.utm is not None:  # a conversion without UTM (or published before it was carried) says nothing
            registers.update(utm_registers(data.utm))
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
class Revision(BaseModel):
    """An opportunity's figures right after one of its events, and when that happened in the
    business (creation, update, stage change or closing time)."""

    model_config = ConfigDict(frozen=True)

    stamp: Stamp
    at: datetime
    pipeline_id: str
    stage_id: str
    stage_name: str
    stage_kind: StageKind
    stage_order: int | None = None
    previous_stage_id: str | None = None
    previous_stage_name: str | None = None
    previous_stage_kind: StageKind | None = None
    probability: int
    amount: Decimal
    currency: str

    @property
    def is_open(self) -> bool:
        return self.stage_kind == StageKind.OPEN

    @property
    def weighted_amount(self) -> Decimal:
        return weighted_amount(self.amount, self.probability)


class StageStay(BaseModel):
    """A time an opportunity spent in one stage: from entering it until the next move (None
    while it is still there)."""

    model_config = ConfigDict(frozen=True)

    pipeline_id: str
    stage_id: str
    stage_kind: StageKind
    entered_at: datetime
    left_at: datetime | None = None
    moved_to: str | None = None

    @property
    def duration(self) -> timedelta | None:
        if self.left_at is None:
            return None
        return max(self.left_at - self.entered_at, timedelta(0))


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
    lead_source: PicklistCode | None = None
    campaign_id: str | None = None
    sales_team_id: str | None = None
    sales_region: str | None = None
    account_industry: str | None = None
    product_ids: tuple[str, ...] = ()
    created_at: datetime | None = None
    stage_entered_at: datetime | None = None
    won: bool | None = None
    closed_at: datetime | None = None
    loss_reason: str | None = None
    loss_note: str | None = Field(default=None, description="From opportunity.closed, when lost.")
    competitor: str | None = Field(default=None, description="From opportunity.closed, when lost.")
    forecast_category_overridden: bool | None = Field(
        default=None, description="The rep set forecast_category instead of the stage's default."
    )
    converted_from_lead_id: str | None = Field(
        default=None, description="The lead whose conversion opened it (from lead.converted)."
    )
    converted_lead_source: PicklistCode | None = Field(default=None, description="From lead.converted.")
    converted_campaign_id: str | None = Field(default=None, description="From lead.converted.")
    revisions: tuple[Revision, ...] = Field(default=(), description="One per event, ordered by stamp.")

    @property
    def source_lead_id(self) -> str | None:
        return self.lead_id or self.converted_from_lead_id

    @property
    def attributed_campaign_id(self) -> str | None:
        """Its own campaign, else the one its lead's conversion named (as campaigns does)."""
        return self.campaign_id or self.converted_campaign_id

    @property
    def attributed_lead_source(self) -> PicklistCode | None:
        return self.lead_source or self.converted_lead_source

    @property
    def won_at(self) -> datetime | None:
        if self.stage_kind == StageKind.CLOSED_WON:
            return self.closed_at
        return None

    @property
    def is_open(self) -> bool:
        return self.stage_kind == StageKind.OPEN

    @property
    def is_closed(self) -> bool:
        return self.stage_kind in (StageKind.CLOSED_WON, StageKind.CLOSED_LOST)

    def with_weighted_amount(self) -> OpportunityFacts:
        weighted = None
        if self.amount is not None and self.probability is not None:
            weighted = weighted_amount(self.amount, self.probability)
        return self.model_copy(update={"weighted_amount": weighted})

    def with_revision(self, revision: Revision) -> OpportunityFacts:
        if any(held.stamp == revision.stamp for held in self.revisions):
            return self
        revisions = tuple(sorted([*self.revisions, revision], key=lambda r: r.stamp))
        return self.model_copy(update={"revisions": revisions})

    def state_at(self, moment: datetime) -> Revision | None:
        """The figures in force at ``moment``: of the revisions that had happened by then, the
        newest by stamp (so a late-arriving older event never rewrites the past)."""
        best: Revision | None = None
        for revision in self.revisions:
            if revision.at < moment and (best is None or revision.stamp > best.stamp):
                best = revision
        return best

    def stays(self) -> list[StageStay]:
        """The stages it went through, in version order: it entered its first stage when it
        was created and each later one when it moved there."""
        if not self.revisions or self.created_at is None:
            return []
        first = self.revisions[0]
        if first.previous_stage_id is not None:
            stage, kind = first.previous_stage_id, first.previous_stage_kind or StageKind.OPEN
        else:
            stage, kind = first.stage_id, first.stage_kind
        pipeline, entered = first.pipeline_id, self.created_at
        stays: list[StageStay] = []
        for revision in self.revisions:
            if revision.stage_id == stage:
                continue
            stays.append(
                StageStay(
                    pipeline_id=pipeline,
                    stage_id=stage,
                    stage_kind=kind,
                    entered_at=entered,
                    left_at=revision.at,
                    moved_to=revision.stage_id,
                )
            )
            stage, kind, pipeline, entered = (
                revision.stage_id,
                revision.stage_kind,
                revision.pipeline_id,
                revision.at,
            )
        stays.append(StageStay(pipeline_id=pipeline, stage_id=stage, stage_kind=kind, entered_at=entered))
        return stays


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
        "forecast_category_overridden": figures.forecast_category_overridden,
        "amount": figures.amount,
        "currency": figures.currency,
        "expected_close_date": figures.expected_close_date,
        "lead_id": figures.lead_id,
        "lead_source": figures.lead_source,
        "campaign_id": figures.campaign_id,
        "sales_team_id": figures.sales_team_id,
        "sales_region": figures.sales_region,
        "account_industry": figures.account_industry,
        "product_ids": tuple(figures.product_ids),
        "created_at": to_millis(figures.created_at),
    }


def _revision(event: CloudEvent[Any], data: OpportunityEvent, registers: Mapping[str, Any]) -> Revision:
    if isinstance(data, OpportunityCreated):
        at = data.opportunity.created_at
    elif isinstance(data, OpportunityUpdated):
        at = data.updated_at
    elif isinstance(data, OpportunityStageChanged):
        at = data.changed_at
    else:
        at = data.closed_at
    move = data if isinstance(data, OpportunityStageChanged) else None
    return Revision(
        stamp=stamp_of(event),
        at=to_millis(at),
        pipeline_id=registers["pipeline_id"],
        stage_id=registers["stage_id"],
        stage_name=registers["stage_name"],
        stage_kind=registers["stage_kind"],
        stage_order=data.opportunity.stage_order,
        previous_stage_id=move.previous_stage_id if move else None,
        previous_stage_name=move.previous_stage_name if move else None,
        previous_stage_kind=move.previous_stage_kind if move else None,
        probability=registers["probability"],
        amount=registers["amount"],
        currency=registers["currency"],
    )


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
            registers.update(loss_reason=None, loss_note=None, competitor=None)
    elif isinstance(data, OpportunityClosed):
        # The closing amount is the one that counts (campaigns takes the same).
        registers.update(
            won=data.won,
            closed_at=to_millis(data.closed_at),
            loss_reason=data.loss_reason,
            loss_note=data.loss_note,
            competitor=data.competitor,
            amount=data.amount,
            currency=data.currency,
        )
    folded = fact.folded(at=event.time, stamp=stamp_of(event), registers=registers)
    return folded.with_revision(_revision(event, data, registers)).with_weighted_amount()


def link_conversion(
    opportunity: OpportunityFacts | None,
    opportunity_id: str,
    converted: LeadConverted,
    event: CloudEvent[Any],
) -> OpportunityFacts:
    """Record on the opportunity that ``lead.converted`` opened it, whichever arrives first,
    with the source and campaign the conversion names (the campaign it is attributed to when
    its own figures name none)."""
    fact = opportunity or OpportunityFacts(opportunity_id=opportunity_id)
    registers = {
        "converted_from_lead_id": converted.lead_id,
        "converted_lead_source": converted.lead_source,
        "converted_campaign_id": converted.campaign_id,
    }
    return fact.folded(at=event.time, stamp=stamp_of(event), registers=registers)


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
    parent_campaign_id: str | None = None
    budgeted_cost: Decimal | None = None
    expected_revenue: Decimal | None = None
    actual_cost: Decimal | None = Field(default=None, description="Sum of the cost ledger.")
    currency: str | None = None
    created_at: datetime | None = None


def campaign_id_of(data: CampaignEvent) -> str:
    if isinstance(data, CampaignCreated | CampaignUpdated):
        return data.campaign.campaign_id
    return data.campaign_id


def apply_campaign_event(campaign: CampaignFacts | None, event: CloudEvent[Any]) -> CampaignFacts:
    data: CampaignEvent = event.data
    fact = campaign or CampaignFacts(campaign_id=campaign_id_of(data))
    registers: dict[str, Any]
    if isinstance(data, CampaignCreated | CampaignUpdated):
        snapshot = data.campaign
        registers = {
            "name": snapshot.name,
            "type": snapshot.type,
            "purpose": snapshot.purpose,
            "status": snapshot.status,
            "start_date": snapshot.start_date,
            "end_date": snapshot.end_date,
            "owner_id": snapshot.owner_id,
            "parent_campaign_id": snapshot.parent_campaign_id,
            "budgeted_cost": snapshot.budgeted_cost,
            "expected_revenue": snapshot.expected_revenue,
            "actual_cost": snapshot.actual_cost,
            "currency": snapshot.currency,
        }
        if isinstance(data, CampaignCreated):
            registers["created_at"] = to_millis(data.created_at)
    elif isinstance(data, CampaignStatusChanged):
        registers = {"status": data.status}
    else:
        registers = {"actual_cost": data.actual_cost, "currency": data.currency}
    return fact.folded(at=event.time, stamp=stamp_of(event), registers=registers)
