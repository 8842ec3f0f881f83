"""Contracts of the campaigns service."""

from __future__ import annotations

from datetime import date
from enum import StrEnum

from pydantic import AwareDatetime

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
    LEAD_GENERATION = "lead_generation"
    INFORMATION = "information"


class CampaignStatus(StrEnum):
    PLANNED = "planned"
    ACTIVE = "active"
    COMPLETED = "completed"
    ABORTED = "aborted"


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


class CampaignCreated(Contract):
    campaign: CampaignSnapshot
    created_at: AwareDatetime
    created_by: Actor
