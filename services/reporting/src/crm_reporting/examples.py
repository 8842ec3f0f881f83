"""Example answers of each view for the OpenAPI document (JSON and the same rows as CSV);
built from the row models, so they stay valid as the models change."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, date, datetime
from decimal import Decimal
from typing import Any

from crm_contracts.events.campaigns import CampaignStatus, CampaignType
from crm_contracts.events.opportunities import ForecastCategory
from pydantic import BaseModel

from .views import (
    CampaignRoiQuery,
    CampaignRoiRow,
    ForecastQuery,
    ForecastRow,
    FunnelDimension,
    FunnelQuery,
    FunnelRow,
    Grain,
    LeadSourceQuery,
    LeadSourceRow,
    PipelineHistoryQuery,
    PipelineHistoryRow,
    PipelineQuery,
    PipelineRow,
    StageConversionRow,
    StageVelocityRow,
    VelocityQuery,
    WinLossDimension,
    WinLossQuery,
    WinLossRow,
)

AS_OF = datetime(2026, 3, 31, 16, 45, 12, 250000, tzinfo=UTC)


@dataclass(frozen=True)
class Example:
    filters: BaseModel
    rows: list[BaseModel]
    extra: dict[str, Any] = field(default_factory=dict)


D = Decimal

funnel = Example(
    FunnelQuery.model_validate(
        {
            "from": date(2026, 1, 1),
            "to": date(2026, 4, 1),
            "group_by": FunnelDimension.LEAD_SOURCE,
            "period": Grain.MONTH,
        }
    ),
    [
        FunnelRow(
            group="web",
            group_name=None,
            period=date(2026, 3, 1),
            captured=1200,
            qualified=480,
            converted=150,
            opportunities=140,
            won=35,
            qualified_rate=D("0.4000"),
            converted_rate=D("0.3125"),
            opportunity_rate=D("0.9333"),
            won_rate=D("0.2500"),
            overall_rate=D("0.0292"),
            qualified_to_converted_rate=D("0.3125"),
        )
    ],
    {"group_by": "lead_source"},
)
pipeline = Example(
    PipelineQuery(pipeline_id="default"),
    [
        PipelineRow(
            pipeline_id="default",
            stage_id="proposal",
            stage_name="Proposal",
            owner_id=None,
            sales_team_id=None,
            sales_region=None,
            account_industry=None,
            product_id=None,
            currency="EUR",
            count=42,
            amount=D("525000.00"),
            weighted_amount=D("262500.0000"),
            average_age_days=D("23.5012"),
        )
    ],
)
forecast = Example(
    ForecastQuery.model_validate({"from": date(2026, 4, 1), "to": date(2026, 7, 1)}),
    [
        ForecastRow(
            close_month="2026-04",
            forecast_category=ForecastCategory.COMMIT,
            currency="EUR",
            count=9,
            amount=D("180000.00"),
            weighted_amount=D("144000.0000"),
        )
    ],
)
win_loss = Example(
    WinLossQuery.model_validate(
        {
            "from": date(2026, 1, 1),
            "to": date(2026, 4, 1),
            "group_by": WinLossDimension.OWNER,
            "currency": "EUR",
        }
    ),
    [
        WinLossRow(
            group="rep-7",
            period=None,
            opportunities_created=60,
            won=12,
            lost=18,
            win_rate=D("0.4000"),
            currency="EUR",
            won_revenue=D("240000.00"),
            average_deal_size=D("20000.00"),
            won_revenue_in_other_currencies={"USD": D("15000.00")},
            average_cycle_days=D("41.2500"),
            average_won_cycle_days=D("38.0000"),
        )
    ],
)
velocity = Example(
    VelocityQuery(pipeline_id="default"),
    [
        StageVelocityRow(
            pipeline_id="default",
            stage_id="proposal",
            stage_name="Proposal",
            entered=310,
            completed=280,
            average_days=D("9.5000"),
            median_days=D("7.2500"),
        )
    ],
)
conversion = Example(
    VelocityQuery(pipeline_id="default"),
    [
        StageConversionRow(
            pipeline_id="default",
            stage_id="proposal",
            stage_name="Proposal",
            to_stage_id="negotiation",
            to_stage_name="Negotiation",
            entered=310,
            moves=190,
            conversion_rate=D("0.6129"),
        )
    ],
)
lead_sources = Example(
    LeadSourceQuery.model_validate({"from": date(2026, 1, 1), "to": date(2026, 4, 1), "currency": "EUR"}),
    [
        LeadSourceRow(
            lead_source="event",
            label="Event",
            period=None,
            leads=800,
            qualified=320,
            converted=96,
            opportunities=90,
            won=20,
            lost=30,
            currency="EUR",
            won_revenue=D("410000.00"),
            won_revenue_in_other_currencies={},
            qualified_rate=D("0.4000"),
            converted_rate=D("0.1200"),
            win_rate=D("0.4000"),
            lead_conversion_rate=D("0.1200"),
        )
    ],
)
campaign_roi = Example(
    CampaignRoiQuery(status=CampaignStatus.COMPLETED),
    [
        CampaignRoiRow(
            campaign_id="spring-fair",
            name="Spring fair",
            type=CampaignType.TRADE_SHOW,
            status=CampaignStatus.COMPLETED,
            currency="EUR",
            budgeted_cost=D("20000.00"),
            actual_cost=D("18000.00"),
            members=400,
            leads=400,
            converted_leads=48,
            conversion_rate=D("12.00"),
            opportunities=45,
            won_opportunities=12,
            lost_opportunities=20,
            won_revenue=D("96000.00"),
            won_revenue_in_other_currencies={},
            cost_per_lead=D("45.00"),
            roi=D("4.3333"),
            lead_conversion_rate=D("0.1200"),
        )
    ],
)
history = Example(
    PipelineHistoryQuery.model_validate({"from": date(2026, 3, 1), "to": date(2026, 3, 3)}),
    [
        PipelineHistoryRow(
            day=date(2026, 3, 2),
            pipeline_id="default",
            stage_id="proposal",
            stage_name="Proposal",
            currency="EUR",
            count=40,
            amount=D("500000.00"),
            weighted_amount=D("250000.0000"),
        )
    ],
)
