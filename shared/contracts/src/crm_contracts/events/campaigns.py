"""Contracts of the campaigns service: the campaign, its status changes, its cost ledger and
its members. Only ``campaign.created`` has a topic in the catalogue so far; the other models
are the proposed payloads of ``campaign.updated``, ``campaign.status_changed``,
``campaign.cost_recorded`` and ``campaign.member_added``."""

from __future__ import annotations

from datetime import date
from decimal import Decimal
from enum import StrEnum
from typing import Annotated

from pydantic import AwareDatetime, Field

from .common import Actor, Contract, Currency, Id, Money, ShortText


class CampaignType(StrEnum):
    EMAIL = "email"
    NEWSLETTER = "newsletter"
    WEBINAR = "webinar"
    EVENT = "event"
    TRADE_SHOW = "trade_show"
    WEB = "web"
    PAID_SEARCH = "paid_search"
    SOCIAL = "social"
    ADVERTISEMENT = "advertisement"
    DIRECT_MAIL = "direct_mail"
    TELEMARKETING = "telemarketing"
    REFERRAL_PROGRAMME = "referral_programme"
    OTHER = "other"


class CampaignPurpose(StrEnum):
    """A campaign either gathers information (generates leads) or provides it."""

    LEAD_GENERATION = "lead_generation"
    INFORMATION = "information"


class CampaignStatus(StrEnum):
    PLANNED = "planned"
    ACTIVE = "active"
    COMPLETED = "completed"
    ABORTED = "aborted"


class MemberType(StrEnum):
    LEAD = "lead"
    CONTACT = "contact"


# Share of members expected to respond, in percent (e.g. 2.50).
ResponsePercent = Annotated[Decimal, Field(ge=0, le=100, max_digits=5, decimal_places=2, examples=["2.50"])]
# A cost entry's amount: negative amounts are corrections (credit notes, refunds).
CostAmount = Annotated[Decimal, Field(max_digits=18, decimal_places=2, examples=["1200.00", "-150.00"])]


class CampaignSnapshot(Contract):
    campaign_id: Id
    name: ShortText
    type: CampaignType
    purpose: CampaignPurpose
    status: CampaignStatus
    start_date: date | None = None
    end_date: date | None = None
    owner_id: Id | None = None
    parent_campaign_id: Id | None = None
    budgeted_cost: Money | None = None
    expected_revenue: Money | None = None
    currency: Currency = "EUR"
    expected_response: ResponsePercent | None = None
    actual_cost: Money = Field(default=Decimal("0.00"), description="Sum of the cost ledger.")


class CampaignCreated(Contract):
    campaign: CampaignSnapshot
    created_at: AwareDatetime
    created_by: Actor


class CampaignUpdated(Contract):
    """Proposed payload of ``campaign.updated``: the campaign after a change of its details."""

    campaign: CampaignSnapshot
    changed_fields: list[str]
    updated_at: AwareDatetime
    updated_by: Actor


class CampaignStatusChanged(Contract):
    """Proposed payload of ``campaign.status_changed``."""

    campaign_id: Id
    previous_status: CampaignStatus
    status: CampaignStatus
    reason: str | None = Field(default=None, max_length=500)
    changed_at: AwareDatetime
    changed_by: Actor


class CostEntry(Contract):
    """One line of a campaign's cost ledger; the actual cost is the sum of the lines."""

    entry_id: Id
    amount: CostAmount
    currency: Currency
    incurred_on: date
    note: str | None = Field(default=None, max_length=500)
    recorded_at: AwareDatetime
    recorded_by: Actor


class CampaignCostRecorded(Contract):
    """Proposed payload of ``campaign.cost_recorded``: the entry and the total after it."""

    campaign_id: Id
    entry: CostEntry
    actual_cost: Money
    currency: Currency


class CampaignMemberAdded(Contract):
    """Proposed payload of ``campaign.member_added``: a lead or contact joined a campaign."""

    campaign_id: Id
    member_id: Id
    member_type: MemberType
    lead_id: Id | None = None
    contact_id: Id | None = None
    added_at: AwareDatetime
    added_via: ShortText = Field(description="What added it, e.g. 'lead.created' or 'api'.")
