"""An in-memory ``FactStore``: folds a stream of events into facts without a database, e.g.
to check what the stored read models must contain (tests, rebuild verification)."""

from __future__ import annotations

from collections.abc import Coroutine, Iterable
from dataclasses import dataclass, field
from typing import Any, TypeVar

from crm_contracts.envelope import CloudEvent

from .domain import CampaignFacts, LeadFacts, OpportunityFacts
from .projection import project

T = TypeVar("T")


@dataclass
class MemoryFactStore:
    leads: dict[str, LeadFacts] = field(default_factory=dict)
    opportunities: dict[str, OpportunityFacts] = field(default_factory=dict)
    campaigns: dict[str, CampaignFacts] = field(default_factory=dict)
    writes: int = 0

    async def lead(self, lead_id: str) -> LeadFacts | None:
        return self.leads.get(lead_id)

    async def save_lead(self, lead: LeadFacts) -> None:
        self.leads[lead.lead_id] = lead
        self.writes += 1

    async def opportunity(self, opportunity_id: str) -> OpportunityFacts | None:
        return self.opportunities.get(opportunity_id)

    async def save_opportunity(self, opportunity: OpportunityFacts) -> None:
        self.opportunities[opportunity.opportunity_id] = opportunity
        self.writes += 1

    async def campaign(self, campaign_id: str) -> CampaignFacts | None:
        return self.campaigns.get(campaign_id)

    async def save_campaign(self, campaign: CampaignFacts) -> None:
        self.campaigns[campaign.campaign_id] = campaign
        self.writes += 1

    def fold(self, events: Iterable[CloudEvent[Any]]) -> MemoryFactStore:
        """Project ``events`` in the given order; returns self."""
        for event in events:
            _run_now(project(event, self))
        return self


def _run_now(coroutine: Coroutine[Any, Any, T]) -> T:
    """This store never suspends, so a projection over it completes in one step and needs no
    event loop."""
    try:
        coroutine.send(None)
    except StopIteration as done:
        result: T = done.value
        return result
    coroutine.close()
    raise RuntimeError("a projection over the in-memory store suspended")
