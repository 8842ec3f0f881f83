"""Folding one event into reporting's facts: which facts an event touches, in which order.

The folding rules are the pure functions of ``domain``; this module only loads the facts an
event concerns from a ``FactStore`` and saves those that changed. The store turns every saved
change into the counter differences it makes (``aggregates``), in the same transaction. The
Kafka handlers run it inside the consumer's transaction (so the inbox entry, the facts and the
differences commit together); the rebuild runs it over replayed topics; tests run it in memory.

An opportunity's funnel milestones are copied into its lead's facts, so the funnel counts
leads. Every write of such a copy happens in a transaction that also writes the opportunity's
facts (or reads them unchanged), so concurrent handlers conflict on the opportunity's document
and retry instead of leaving a stale copy behind.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from datetime import datetime
from typing import Any, Protocol

from crm_contracts.envelope import CloudEvent
from crm_contracts.events.campaigns import CampaignMemberAdded
from crm_contracts.events.leads import LeadConverted
from crm_contracts.events.opportunities import PipelineDefined
from crm_contracts.events.picklists import PicklistRevised

from .domain import (
    CampaignEvent,
    CampaignFacts,
    LeadEvent,
    LeadFacts,
    OpportunityEvent,
    OpportunityFacts,
    apply_campaign_event,
    apply_lead_event,
    apply_opportunity_event,
    campaign_id_of,
    lead_id_of,
    link_conversion,
    note_opportunity,
    opportunity_id_of,
    to_millis,
)


class FactStore(Protocol):
    """Where facts live for the duration of one event's projection."""

    async def lead(self, lead_id: str) -> LeadFacts | None: ...
    async def save_lead(self, lead: LeadFacts) -> None: ...
    async def opportunity(self, opportunity_id: str) -> OpportunityFacts | None: ...
    async def save_opportunity(self, opportunity: OpportunityFacts) -> None: ...
    async def campaign(self, campaign_id: str) -> CampaignFacts | None: ...
    async def save_campaign(self, campaign: CampaignFacts) -> None: ...
    async def add_member(self, campaign_id: str, member_id: str, at: datetime) -> bool:
        """Record a campaign membership; False if it was known already."""
        ...

    async def define_pipeline(self, pipeline: PipelineDefined) -> None:
        """Note a pipeline's definition (its stage names and order)."""
        ...

    async def define_picklist(self, picklist: PicklistRevised) -> None:
        """Note a picklist's revision (the labels of its values)."""
        ...


class BulkFactStore(FactStore, Protocol):
    """A store that can load the facts of many events at once."""

    async def prefetch(
        self,
        leads: Iterable[str],
        opportunities: Iterable[str],
        campaigns: Iterable[str],
        members: Iterable[tuple[str, str]] = (),
    ) -> None: ...

    async def known_opportunities(self) -> Iterable[OpportunityFacts]:
        """The opportunities loaded so far (their source leads are prefetched next)."""
        ...


async def project_many(events: Sequence[CloudEvent[Any]], store: BulkFactStore) -> None:
    """Fold ``events`` in order, after loading every fact they touch with a constant number of
    queries (one ``$in`` per collection, then one for the leads the loaded opportunities came
    from) instead of a lookup or two per event. The fold itself is ``project``, event by event,
    so a batch ends exactly where folding its events one at a time would."""
    leads: set[str] = set()
    opportunities: set[str] = set()
    campaigns: set[str] = set()
    members: set[tuple[str, str]] = set()
    for event in events:
        more = ids_of(event)
        leads |= more[0]
        opportunities |= more[1]
        campaigns |= more[2]
        if isinstance(event.data, CampaignMemberAdded):
            members.add((event.data.campaign_id, event.data.member_id))
    await store.prefetch(leads, opportunities, campaigns, members)
    # An opportunity event may not name its lead; the stored facts do (from lead.converted).
    sources = {o.source_lead_id for o in await store.known_opportunities() if o.source_lead_id}
    await store.prefetch(sources, (), ())
    for event in events:
        await project(event, store)


async def project(event: CloudEvent[Any], store: FactStore) -> None:
    """Fold ``event`` into the facts it concerns. Duplicates and stale events change nothing."""
    data = event.data
    if isinstance(data, LeadEvent):
        await _project_lead_event(event, data, store)
    elif isinstance(data, OpportunityEvent):
        await _project_opportunity_event(event, data, store)
    elif isinstance(data, CampaignEvent):
        before = await store.campaign(campaign_id_of(data))
        after = apply_campaign_event(before, event)
        if after != before:
            await store.save_campaign(after)
    elif isinstance(data, CampaignMemberAdded):
        await store.add_member(data.campaign_id, data.member_id, to_millis(event.time))
    elif isinstance(data, PipelineDefined):
        await store.define_pipeline(data)
    elif isinstance(data, PicklistRevised):
        await store.define_picklist(data)
    else:
        raise TypeError(f"reporting does not project {type(data).__name__}")


def ids_of(event: CloudEvent[Any]) -> tuple[set[str], set[str], set[str]]:
    """The lead, opportunity and campaign ids an event certainly touches (to fetch them ahead
    in bulk; the projection loads anything else it needs itself)."""
    data = event.data
    leads: set[str] = set()
    opportunities: set[str] = set()
    campaigns: set[str] = set()
    if isinstance(data, LeadEvent):
        leads.add(lead_id_of(data))
        if isinstance(data, LeadConverted) and data.opportunity is not None:
            opportunities.add(data.opportunity.opportunity_id)
    elif isinstance(data, OpportunityEvent):
        opportunities.add(opportunity_id_of(data))
        if data.opportunity.lead_id:
            leads.add(data.opportunity.lead_id)
    elif isinstance(data, CampaignEvent):
        campaigns.add(campaign_id_of(data))
    return leads, opportunities, campaigns


async def _project_lead_event(event: CloudEvent[Any], data: LeadEvent, store: FactStore) -> None:
    lead_id = lead_id_of(data)
    before = await store.lead(lead_id)
    lead = apply_lead_event(before, event)
    if isinstance(data, LeadConverted) and data.opportunity is not None:
        opportunity_id = data.opportunity.opportunity_id
        opportunity_before = await store.opportunity(opportunity_id)
        opportunity = link_conversion(opportunity_before, opportunity_id, data, event)
        if opportunity != opportunity_before:
            await store.save_opportunity(opportunity)
        if opportunity.source_lead_id == lead_id:
            lead = note_opportunity(lead, lead_id, opportunity)
    if lead != before:
        await store.save_lead(lead)


async def _project_opportunity_event(
    event: CloudEvent[Any], data: OpportunityEvent, store: FactStore
) -> None:
    before = await store.opportunity(opportunity_id_of(data))
    opportunity = apply_opportunity_event(before, event)
    if opportunity == before:
        return
    await store.save_opportunity(opportunity)
    lead_id = opportunity.source_lead_id
    if lead_id is None:
        return  # not from a lead (yet): lead.converted links it when it arrives
    lead_before = await store.lead(lead_id)
    lead = note_opportunity(lead_before, lead_id, opportunity)
    if lead != lead_before:
        await store.save_lead(lead)
