"""Events as the leads, opportunities and campaigns services publish them, for the reporting
tests: small builders with sensible defaults."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal
from typing import Any

from crm_contracts import catalog
from crm_contracts.envelope import CloudEvent
from crm_contracts.events.campaigns import (
    CampaignCostRecorded,
    CampaignCreated,
    CampaignMemberAdded,
    CampaignPurpose,
    CampaignSnapshot,
    CampaignStatus,
    CampaignStatusChanged,
    CampaignType,
    CostEntry,
    MemberType,
)
from crm_contracts.events.common import Actor
from crm_contracts.events.leads import (
    Company,
    ConvertedAccount,
    ConvertedContact,
    ConvertedOpportunity,
    LeadConverted,
    LeadCreated,
    LeadDisqualified,
    LeadOrigin,
    LeadQualified,
    LeadRating,
    LeadSnapshot,
    LeadSource,
    LeadStatus,
    LeadUpdated,
    Person,
    Utm,
)
from crm_contracts.events.opportunities import (
    ForecastCategory,
    OpportunityClosed,
    OpportunityCreated,
    OpportunityFigures,
    OpportunityStageChanged,
    OpportunityUpdated,
    PipelineDefined,
    PipelineStage,
    StageKind,
)
from crm_runtime import make_event

BY = Actor(id="rep-1")
START = datetime(2026, 3, 2, 9, 0, 0, 123000, tzinfo=UTC)


def at(minutes: float) -> datetime:
    """``minutes`` after 2 March 2026 09:00:00.123 UTC (a Monday)."""
    return START + timedelta(minutes=minutes)


def days(n: float) -> float:
    return n * 1440


# -- leads ------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Lead:
    lead_id: str
    captured: datetime = START
    source: LeadSource = LeadSource.WEB
    origin: LeadOrigin = LeadOrigin.API
    campaign: str | None = None
    owner: str | None = None
    utm: Utm | None = None

    def snapshot(self, status: LeadStatus, rating: LeadRating | None = None) -> LeadSnapshot:
        return LeadSnapshot(
            lead_id=self.lead_id,
            status=status,
            rating=rating,
            source_system="webforms",
            external_id=f"ext-{self.lead_id}",
            person=Person(first_name="Ada"),
            company=Company(name="Engines"),
            lead_source=self.source,
            origin=self.origin,
            campaign_id=self.campaign,
            owner_id=self.owner,
            captured_at=self.captured,
            utm=self.utm,
        )

    def created(self) -> CloudEvent[LeadCreated]:
        data = LeadCreated(lead=self.snapshot(LeadStatus.NEW))
        return make_event(
            catalog.LEAD_CREATED,
            data,
            source="/crm/leads",
            subject=self.lead_id,
            version=1,
            time=self.captured,
        )

    def updated(
        self,
        version: int,
        when: datetime,
        status: LeadStatus = LeadStatus.WORKING,
        rating: LeadRating | None = None,
    ) -> CloudEvent[LeadUpdated]:
        data = LeadUpdated(lead=self.snapshot(status, rating), changed_fields=["status"])
        return make_event(
            catalog.LEAD_UPDATED, data, source="/crm/leads", subject=self.lead_id, version=version, time=when
        )

    def qualified(
        self, version: int, when: datetime, rating: LeadRating = LeadRating.HOT
    ) -> CloudEvent[LeadQualified]:
        data = LeadQualified(
            lead_id=self.lead_id,
            rating=rating,
            lead_source=self.source,
            campaign_id=self.campaign,
            qualified_at=when,
            qualified_by=BY,
        )
        return make_event(
            catalog.LEAD_QUALIFIED,
            data,
            source="/crm/leads",
            subject=self.lead_id,
            version=version,
            time=when,
        )

    def disqualified(self, version: int, when: datetime) -> CloudEvent[LeadDisqualified]:
        data = LeadDisqualified(
            lead_id=self.lead_id,
            reason="no budget",
            lead_source=self.source,
            campaign_id=self.campaign,
            disqualified_at=when,
            disqualified_by=BY,
        )
        return make_event(
            catalog.LEAD_DISQUALIFIED,
            data,
            source="/crm/leads",
            subject=self.lead_id,
            version=version,
            time=when,
        )

    def converted(
        self,
        version: int,
        when: datetime,
        opportunity_id: str | None,
        with_capture: bool = False,
        with_utm: bool = True,
    ) -> CloudEvent[LeadConverted]:
        # with_utm=False: as published before conversions carried UTM (the field absent).
        carried: dict[str, Any] = {"utm": self.utm} if with_utm else {}
        data = LeadConverted(
            **carried,
            lead_id=self.lead_id,
            account=ConvertedAccount(account_id=f"acc-{self.lead_id}", is_new=True),
            contact=ConvertedContact(contact_id=f"con-{self.lead_id}", is_new=True),
            opportunity=ConvertedOpportunity(opportunity_id=opportunity_id, name="Deal")
            if opportunity_id
            else None,
            lead_source=self.source,
            campaign_id=self.campaign,
            converted_at=when,
            converted_by=BY,
            captured_at=self.captured if with_capture else None,
        )
        return make_event(
            catalog.LEAD_CONVERTED,
            data,
            source="/crm/leads",
            subject=self.lead_id,
            version=version,
            time=when,
        )


# -- opportunities ----------------------------------------------------------------------------
@dataclass(frozen=True)
class Stage:
    stage_id: str
    name: str
    kind: StageKind
    probability: int
    category: ForecastCategory
    order: int


PROSPECTING = Stage("prospecting", "Prospecting", StageKind.OPEN, 10, ForecastCategory.PIPELINE, 0)
QUALIFICATION = Stage("qualification", "Qualification", StageKind.OPEN, 20, ForecastCategory.PIPELINE, 1)
PROPOSAL = Stage("proposal", "Proposal", StageKind.OPEN, 50, ForecastCategory.BEST_CASE, 2)
NEGOTIATION = Stage("negotiation", "Negotiation", StageKind.OPEN, 80, ForecastCategory.COMMIT, 3)
WON = Stage("closed_won", "Closed Won", StageKind.CLOSED_WON, 100, ForecastCategory.CLOSED, 4)
LOST = Stage("closed_lost", "Closed Lost", StageKind.CLOSED_LOST, 0, ForecastCategory.OMITTED, 5)
OPEN_STAGES = (PROSPECTING, QUALIFICATION, PROPOSAL, NEGOTIATION)


@dataclass(frozen=True)
class Deal:
    """An opportunity's steady figures; stage and amount are given per event."""

    opportunity_id: str
    created: datetime = START
    amount: str = "1000.00"
    currency: str = "EUR"
    pipeline: str = "default"
    owner: str | None = "rep-1"
    team: str | None = None
    region: str | None = None
    industry: str | None = None
    products: tuple[str, ...] = ()
    lead_id: str | None = None
    source: LeadSource | None = None
    campaign: str | None = None
    close_date: date | None = date(2026, 6, 30)

    def figures(self, stage: Stage, amount: str | None = None) -> OpportunityFigures:
        return OpportunityFigures(
            opportunity_id=self.opportunity_id,
            name="Deal",
            account_id="acc-1",
            owner_id=self.owner,
            pipeline_id=self.pipeline,
            stage_id=stage.stage_id,
            stage_name=stage.name,
            stage_kind=stage.kind,
            probability=stage.probability,
            forecast_category=stage.category,
            amount=Decimal(amount or self.amount),
            currency=self.currency,
            expected_close_date=self.close_date,
            lead_id=self.lead_id,
            lead_source=self.source,
            campaign_id=self.campaign,
            created_at=self.created,
            stage_order=stage.order,
            sales_team_id=self.team,
            sales_region=self.region,
            account_industry=self.industry,
            product_ids=list(self.products),
        )

    def created_event(self, stage: Stage = PROSPECTING, version: int = 1) -> CloudEvent[OpportunityCreated]:
        data = OpportunityCreated(opportunity=self.figures(stage), created_by=BY)
        return make_event(
            catalog.OPPORTUNITY_CREATED,
            data,
            source="/crm/opps",
            subject=self.opportunity_id,
            version=version,
            time=self.created,
        )

    def updated(
        self, version: int, when: datetime, stage: Stage, amount: str
    ) -> CloudEvent[OpportunityUpdated]:
        data = OpportunityUpdated(
            opportunity=self.figures(stage, amount), changed_fields=["amount"], updated_at=when, updated_by=BY
        )
        return make_event(
            catalog.OPPORTUNITY_UPDATED,
            data,
            source="/crm/opps",
            subject=self.opportunity_id,
            version=version,
            time=when,
        )

    def moved(
        self, version: int, when: datetime, previous: Stage, stage: Stage, amount: str | None = None
    ) -> CloudEvent[OpportunityStageChanged]:
        now = self.figures(stage, amount)
        data = OpportunityStageChanged(
            opportunity_id=self.opportunity_id,
            pipeline_id=self.pipeline,
            previous_stage_id=previous.stage_id,
            previous_stage_name=previous.name,
            previous_stage_kind=previous.kind if previous.kind != StageKind.OPEN else None,
            stage_id=stage.stage_id,
            stage_name=stage.name,
            stage_kind=stage.kind,
            probability=stage.probability,
            forecast_category=stage.category,
            amount=now.amount,
            currency=self.currency,
            expected_close_date=self.close_date,
            changed_at=when,
            changed_by=BY,
            opportunity=now,
        )
        return make_event(
            catalog.OPPORTUNITY_STAGE_CHANGED,
            data,
            source="/crm/opps",
            subject=self.opportunity_id,
            version=version,
            time=when,
        )

    def closed(
        self, version: int, when: datetime, won: bool, reason: str | None = None, amount: str | None = None
    ) -> CloudEvent[OpportunityClosed]:
        stage = WON if won else LOST
        now = self.figures(stage, amount)
        data = OpportunityClosed(
            opportunity_id=self.opportunity_id,
            won=won,
            amount=now.amount,
            currency=self.currency,
            loss_reason=None if won else (reason or "price"),
            closed_at=when,
            closed_by=BY,
            opportunity=now,
        )
        return make_event(
            catalog.OPPORTUNITY_CLOSED,
            data,
            source="/crm/opps",
            subject=self.opportunity_id,
            version=version,
            time=when,
        )

    def close(
        self, version: int, when: datetime, previous: Stage, won: bool, reason: str | None = None
    ) -> list[CloudEvent[Any]]:
        """What the opportunities service publishes for a move to a closed stage: the stage
        change and the closing, at the same version."""
        return [
            self.moved(version, when, previous, WON if won else LOST),
            self.closed(version, when, won, reason),
        ]


# -- campaigns --------------------------------------------------------------------------------
def campaign_created(
    campaign_id: str,
    name: str,
    when: datetime = START,
    *,
    currency: str = "EUR",
    status: CampaignStatus = CampaignStatus.ACTIVE,
    type: CampaignType = CampaignType.WEBINAR,
    budget: str | None = None,
    actual_cost: str = "0.00",
) -> CloudEvent[CampaignCreated]:
    data = CampaignCreated(
        campaign=CampaignSnapshot(
            campaign_id=campaign_id,
            name=name,
            type=type,
            purpose=CampaignPurpose.LEAD_GENERATION,
            status=status,
            currency=currency,
            budgeted_cost=Decimal(budget) if budget else None,
            actual_cost=Decimal(actual_cost),
        ),
        created_at=when,
        created_by=BY,
    )
    return make_event(
        catalog.CAMPAIGN_CREATED, data, source="/crm/campaigns", subject=campaign_id, version=1, time=when
    )


def campaign_status_changed(
    campaign_id: str, version: int, when: datetime, previous: CampaignStatus, status: CampaignStatus
) -> CloudEvent[CampaignStatusChanged]:
    data = CampaignStatusChanged(
        campaign_id=campaign_id, previous_status=previous, status=status, changed_at=when, changed_by=BY
    )
    return make_event(
        catalog.CAMPAIGN_STATUS_CHANGED,
        data,
        source="/crm/campaigns",
        subject=campaign_id,
        version=version,
        time=when,
    )


def cost_recorded(
    campaign_id: str,
    version: int,
    when: datetime,
    entry_id: str,
    amount: str,
    total: str,
    currency: str = "EUR",
) -> CloudEvent[CampaignCostRecorded]:
    entry = CostEntry(
        entry_id=entry_id,
        amount=Decimal(amount),
        currency=currency,
        incurred_on=when.date(),
        recorded_at=when,
        recorded_by=BY,
    )
    data = CampaignCostRecorded(
        campaign_id=campaign_id, entry=entry, actual_cost=Decimal(total), currency=currency
    )
    return make_event(
        catalog.CAMPAIGN_COST_RECORDED,
        data,
        source="/crm/campaigns",
        subject=campaign_id,
        version=version,
        time=when,
    )


def member_added(campaign_id: str, lead_id: str, when: datetime) -> CloudEvent[CampaignMemberAdded]:
    data = CampaignMemberAdded(
        campaign_id=campaign_id,
        member_id=f"lead:{lead_id}",
        member_type=MemberType.LEAD,
        lead_id=lead_id,
        added_at=when,
        added_via="lead.created",
    )
    return make_event(
        catalog.CAMPAIGN_MEMBER_ADDED, data, source="/crm/campaigns", subject=campaign_id, time=when
    )


def pipeline_defined(
    stages: tuple[Stage, ...], when: datetime, *, version: int = 1, pipeline: str = "default"
) -> CloudEvent[PipelineDefined]:
    """``pipeline.created`` (version 1) or ``pipeline.updated`` with ``stages`` in this order."""
    data = PipelineDefined(
        pipeline_id=pipeline,
        name="Sales",
        stages=[
            PipelineStage(
                stage_id=stage.stage_id,
                name=stage.name,
                kind=stage.kind,
                probability=stage.probability,
                forecast_category=stage.category,
                position=position,
            )
            for position, stage in enumerate(stages)
        ],
        loss_reasons=["price"],
        defined_at=when,
    )
    spec = catalog.PIPELINE_CREATED if version == 1 else catalog.PIPELINE_UPDATED
    return make_event(spec, data, source="/crm/opportunities", subject=pipeline, version=version, time=when)
