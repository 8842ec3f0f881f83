"""Contracts of the campaigns service: the campaign, its status changes, its cost ledger, its
members and their statuses (``campaign.created``, ``campaign.updated``,
``campaign.status_changed``, ``campaign.cost_recorded``, ``campaign.member_added``,
``campaign.member_status_changed``)."""

from __future__ import annotations

from decimal import Decimal
from enum import StrEnum
from typing import Annotated

from pydantic import Field

from .common import Actor, Contract, Currency, Id, IsoDate, IsoDateTime, Money, MultiLine, ShortText


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


class MemberStatus(StrEnum):
    """Where a member stands in a campaign. ``sent`` to ``attended`` are steps of growing
    engagement, in this order; ``unsubscribed`` ends it."""

    SENT = "sent"
    OPENED = "opened"
    CLICKED = "clicked"
    RESPONDED = "responded"
    REGISTERED = "registered"
    ATTENDED = "attended"
    UNSUBSCRIBED = "unsubscribed"


class MemberStatusOption(Contract):
    """A member status a campaign offers, and whether reaching it counts as a response."""

    status: MemberStatus
    counts_as_response: bool = False


def default_member_statuses() -> list[MemberStatusOption]:
    """Every status, with responded, registered and attended counting as a response: what a
    campaign offers unless configured otherwise (and what a snapshot without the field means)."""
    responses = {MemberStatus.RESPONDED, MemberStatus.REGISTERED, MemberStatus.ATTENDED}
    return [MemberStatusOption(status=s, counts_as_response=s in responses) for s in MemberStatus]


# Share of members expected to respond, in percent (e.g. 2.50).
ResponsePercent = Annotated[Decimal, Field(ge=0, le=100, max_digits=5, decimal_places=2, examples=["2.50"])]
# A cost entry's amount: negative amounts are corrections (credit notes, refunds).
CostAmount = Annotated[
    Decimal,
    Field(
        max_digits=18,
        decimal_places=2,
        examples=["1200.00", "-150.00"],
        description="A cost, negative to correct earlier ones; Money's bound (below 10^16) in size.",
    ),
]


class CampaignSnapshot(Contract):
    campaign_id: Id
    name: ShortText
    type: CampaignType
    purpose: CampaignPurpose
    status: CampaignStatus
    start_date: IsoDate | None = None
    end_date: IsoDate | None = None
    owner_id: Id | None = None
    parent_campaign_id: Id | None = None
    budgeted_cost: Money | None = None
    expected_revenue: Money | None = None
    currency: Currency = "EUR"
    expected_response: ResponsePercent | None = None
    actual_cost: Money = Field(default=Decimal("0.00"), description="Sum of the cost ledger.")
    member_statuses: list[MemberStatusOption] | None = Field(
        default=None,
        description="The member statuses the campaign offers, in order, and which count as a "
        "response; absent (events from before it was configurable) means default_member_statuses().",
    )


class CampaignCreated(Contract):
    campaign: CampaignSnapshot
    created_at: IsoDateTime
    created_by: Actor


class CampaignUpdated(Contract):
    """The campaign after a change of its details."""

    campaign: CampaignSnapshot
    changed_fields: list[str]
    updated_at: IsoDateTime
    updated_by: Actor


class CampaignStatusChanged(Contract):
    """The campaign moved along its lifecycle."""

    campaign_id: Id
    previous_status: CampaignStatus
    status: CampaignStatus
    reason: Annotated[str, MultiLine(max_length=500)] | None = None
    changed_at: IsoDateTime
    changed_by: Actor


class CostEntry(Contract):
    """One line of a campaign's cost ledger; the actual cost is the sum of the lines."""

    entry_id: Id
    amount: CostAmount
    currency: Currency
    incurred_on: IsoDate
    note: Annotated[str, MultiLine(max_length=500)] | None = None
    recorded_at: IsoDateTime
    recorded_by: Actor


class CampaignCostRecorded(Contract):
    """A cost entry was booked: the entry and the total after it."""

    campaign_id: Id
    entry: CostEntry
    actual_cost: Money
    currency: Currency


class CampaignMemberAdded(Contract):
    """A lead or contact joined a campaign: for a lead, a touch of that campaign."""

    campaign_id: Id
    member_id: Id
    member_type: MemberType
    lead_id: Id | None = None
    contact_id: Id | None = None
    added_at: IsoDateTime = Field(description="When the campaign reached the member (the touch time).")
    added_via: ShortText = Field(description="What added it, e.g. 'lead.created' or 'api'.")
    status: MemberStatus | None = Field(default=None, description="The member's status on joining.")


class CampaignMemberStatusChanged(Contract):
    """A member's status changed (by hand, or to ``responded`` when the lead was captured
    through the campaign). Keyed by the campaign; ``member_version`` orders one member's
    changes."""

    campaign_id: Id
    member_id: Id
    member_type: MemberType
    lead_id: Id | None = None
    contact_id: Id | None = None
    previous_status: MemberStatus
    status: MemberStatus
    responded: bool = Field(
        description="Whether the member has reached a status counting as a response in this campaign."
    )
    member_version: int = Field(ge=1, description="The membership's version after the change.")
    changed_at: IsoDateTime
    changed_by: Actor
