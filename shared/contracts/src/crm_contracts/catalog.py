"""The event catalogue: one topic per event type, its CloudEvents ``type``, its data model
and schema version. Producers and consumers look events up here, never by string literals."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar

from pydantic import BaseModel

from .events import campaigns, leads, opportunities, picklists

M = TypeVar("M", bound=BaseModel)

# Turns the ``data`` of version N into the ``data`` of version N + 1 (pure, no I/O).
Upcaster = Callable[[dict[str, Any]], dict[str, Any]]

TYPE_PREFIX = "com.crmsuite"
SCHEMA_URN = "urn:crmsuite:schema"
DLQ_SUFFIX = ".dlq"


@dataclass(frozen=True)
class EventSpec(Generic[M]):
    """One event type: ``topic`` is ``<entity>.<past-tense-verb>``."""

    topic: str
    data_model: type[M]
    version: int = 1
    description: str = ""
    producer: str = ""
    consumers: tuple[str, ...] = ()
    upcasters: Mapping[int, Upcaster] = field(default_factory=dict)
    kafka_key: str = "The aggregate id (the event's subject): one aggregate's events stay in order."

    @property
    def type(self) -> str:
        return f"{TYPE_PREFIX}.{self.topic}.v{self.version}"

    @property
    def dataschema(self) -> str:
        return f"{SCHEMA_URN}:{self.topic}:v{self.version}"

    @property
    def dlq_topic(self) -> str:
        return self.topic + DLQ_SUFFIX

    def type_of_version(self, version: int) -> str:
        return f"{TYPE_PREFIX}.{self.topic}.v{version}"

    def readable_versions(self) -> dict[str, int]:
        """Event types consumers accept on this topic: the current version, and each older
        one from which an unbroken chain of upcasters leads to it."""
        readable = {self.type: self.version}
        version = self.version - 1
        while version >= 1 and version in self.upcasters:
            readable[self.type_of_version(version)] = version
            version -= 1
        return readable

    def upcast(self, data: dict[str, Any], from_version: int) -> dict[str, Any]:
        """Bring the ``data`` of an older version up to the current one."""
        for version in range(from_version, self.version):
            data = self.upcasters[version](data)
        return data


LEAD_CAPTURED = EventSpec(
    "lead.captured",
    leads.LeadCaptured,
    description="A system captured a lead (published by other systems).",
    producer="external systems",
    consumers=("leads",),
    kafka_key=leads.LEAD_CAPTURED_KEY_RULE,
)
LEAD_CREATED = EventSpec(
    "lead.created",
    leads.LeadCreated,
    description="The leads service stored a new lead.",
    producer="leads",
    consumers=("campaigns", "reporting"),
)
LEAD_UPDATED = EventSpec(
    "lead.updated",
    leads.LeadUpdated,
    description="A lead's data changed.",
    producer="leads",
    consumers=("campaigns", "reporting"),
)
LEAD_QUALIFIED = EventSpec(
    "lead.qualified",
    leads.LeadQualified,
    description="A lead was qualified as hot, warm or cold.",
    producer="leads",
    consumers=("reporting",),
)
LEAD_DISQUALIFIED = EventSpec(
    "lead.disqualified",
    leads.LeadDisqualified,
    description="A lead was disqualified with a reason.",
    producer="leads",
    consumers=("reporting",),
)
LEAD_CONVERTED = EventSpec(
    "lead.converted",
    leads.LeadConverted,
    description="A lead became an account, a contact and optionally an opportunity.",
    producer="leads",
    consumers=("opportunities", "campaigns", "reporting"),
)
ACCOUNT_CREATED = EventSpec(
    "account.created",
    opportunities.AccountCreated,
    description="An account was created.",
    producer="opportunities",
    consumers=(),
)
CONTACT_CREATED = EventSpec(
    "contact.created",
    opportunities.ContactCreated,
    description="A contact was created.",
    producer="opportunities",
    consumers=(),
)
OPPORTUNITY_CREATED = EventSpec(
    "opportunity.created",
    opportunities.OpportunityCreated,
    description="An opportunity was opened.",
    producer="opportunities",
    consumers=("campaigns", "reporting"),
)
OPPORTUNITY_UPDATED = EventSpec(
    "opportunity.updated",
    opportunities.OpportunityUpdated,
    description="An opportunity's amount, date, owner or name changed.",
    producer="opportunities",
    consumers=("reporting",),
)
OPPORTUNITY_STAGE_CHANGED = EventSpec(
    "opportunity.stage_changed",
    opportunities.OpportunityStageChanged,
    description="An opportunity moved to another stage.",
    producer="opportunities",
    consumers=("reporting",),
)
OPPORTUNITY_CLOSED = EventSpec(
    "opportunity.closed",
    opportunities.OpportunityClosed,
    description="An opportunity was won or lost.",
    producer="opportunities",
    consumers=("campaigns", "reporting"),
)
CAMPAIGN_CREATED = EventSpec(
    "campaign.created",
    campaigns.CampaignCreated,
    description="A campaign was created.",
    producer="campaigns",
    consumers=("reporting",),
)

CAMPAIGN_UPDATED = EventSpec(
    "campaign.updated",
    campaigns.CampaignUpdated,
    description="A campaign's details (dates, budget, owner, parent, ...) changed.",
    producer="campaigns",
    consumers=("reporting",),
)
CAMPAIGN_STATUS_CHANGED = EventSpec(
    "campaign.status_changed",
    campaigns.CampaignStatusChanged,
    description="A campaign moved along its lifecycle (planned, active, completed, aborted).",
    producer="campaigns",
    consumers=("reporting",),
)
CAMPAIGN_COST_RECORDED = EventSpec(
    "campaign.cost_recorded",
    campaigns.CampaignCostRecorded,
    description="A cost entry was booked in a campaign's ledger; carries the new actual cost.",
    producer="campaigns",
    consumers=("reporting",),
)
CAMPAIGN_MEMBER_ADDED = EventSpec(
    "campaign.member_added",
    campaigns.CampaignMemberAdded,
    description="A lead or contact joined a campaign.",
    producer="campaigns",
    consumers=("reporting",),
)

ACCOUNT_UPDATED = EventSpec(
    "account.updated",
    opportunities.AccountUpdated,
    description="An account changed (edited, re-parented, a prospect became a customer).",
    producer="opportunities",
    consumers=(),
)
CONTACT_UPDATED = EventSpec(
    "contact.updated",
    opportunities.ContactUpdated,
    description="A contact changed (details, account, role, decision-maker or influencer flag).",
    producer="opportunities",
    consumers=(),
)
PIPELINE_CREATED = EventSpec(
    "pipeline.created",
    opportunities.PipelineDefined,
    description="A pipeline was defined: its ordered stages with kind, probability and forecast category.",
    producer="opportunities",
    consumers=("reporting",),
)
PIPELINE_UPDATED = EventSpec(
    "pipeline.updated",
    opportunities.PipelineDefined,
    description="A pipeline was redefined (renamed, stages reordered, re-weighted, added or removed).",
    producer="opportunities",
    consumers=("reporting",),
)

LEAD_MERGED = EventSpec(
    "lead.merged",
    leads.LeadMerged,
    description="A duplicate lead was merged into a surviving lead.",
    producer="leads",
    consumers=("campaigns",),
)

CAMPAIGN_MEMBER_STATUS_CHANGED = EventSpec(
    "campaign.member_status_changed",
    campaigns.CampaignMemberStatusChanged,
    description="A campaign member's status changed (sent, opened, clicked, responded, registered, "
    "attended, unsubscribed); says whether the member has responded.",
    producer="campaigns",
    consumers=(),
)

PICKLIST_REVISED = EventSpec(
    "picklist.revised",
    picklists.PicklistRevised,
    description="An administrator revised one of the organisation's picklists: its full list of "
    "values with labels, aliases and whether each is active. Keyed by the picklist's name; a "
    "picklist never revised has its default values. The leads service publishes lead_source and "
    "lead_origin, the opportunities service loss_reason (each list has one owner).",
    producer="leads, opportunities",
    consumers=("reporting",),
)

ALL_EVENTS: tuple[EventSpec[Any], ...] = (
    LEAD_CAPTURED,
    LEAD_CREATED,
    LEAD_UPDATED,
    LEAD_QUALIFIED,
    LEAD_DISQUALIFIED,
    LEAD_CONVERTED,
    ACCOUNT_CREATED,
    CONTACT_CREATED,
    OPPORTUNITY_CREATED,
    OPPORTUNITY_UPDATED,
    OPPORTUNITY_STAGE_CHANGED,
    OPPORTUNITY_CLOSED,
    CAMPAIGN_CREATED,
    CAMPAIGN_UPDATED,
    CAMPAIGN_STATUS_CHANGED,
    CAMPAIGN_COST_RECORDED,
    CAMPAIGN_MEMBER_ADDED,
    ACCOUNT_UPDATED,
    CONTACT_UPDATED,
    PIPELINE_CREATED,
    PIPELINE_UPDATED,
    LEAD_MERGED,
    CAMPAIGN_MEMBER_STATUS_CHANGED,
    PICKLIST_REVISED,
)

BY_TOPIC: dict[str, EventSpec[Any]] = {spec.topic: spec for spec in ALL_EVENTS}
