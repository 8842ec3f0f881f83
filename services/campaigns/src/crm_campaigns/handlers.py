"""Kafka handlers of the campaigns service: leads join the campaigns that reach them (each a
touch), and their conversion and the opportunities they bring are followed.

A fetched batch is applied set-based: the memberships, conversions and opportunities of every
lead and opportunity it names are read with one query per collection (``batch_store``), the
events applied in offset order by the same use cases over what is held, and the changes stored
with one bulk write per collection and one outbox write. A single event, and each event of a
batch that failed, is applied on its own on the real repositories."""

from __future__ import annotations

from typing import Any

from crm_contracts import catalog
from crm_contracts.envelope import CloudEvent
from crm_contracts.events.leads import LeadConverted, LeadCreated, LeadMerged, LeadUpdated
from crm_contracts.events.opportunities import OpportunityClosed, OpportunityCreated, StageKind
from crm_runtime import EventConsumer, UnitOfWork

from .batch_store import LeadBatch
from .domain import OpportunityState
from .repository import MemberRepository, OpportunityRepository
from .use_cases import (
    add_lead_member,
    follow_lead_update,
    follow_opportunity,
    merge_lead_memberships,
    record_lead_conversion,
)

STATE_OF_STAGE = {
    StageKind.OPEN: OpportunityState.OPEN,
    StageKind.CLOSED_WON: OpportunityState.WON,
    StageKind.CLOSED_LOST: OpportunityState.LOST,
}
FOLLOWED = (
    catalog.LEAD_CREATED,
    catalog.LEAD_UPDATED,
    catalog.LEAD_CONVERTED,
    catalog.LEAD_MERGED,
    catalog.OPPORTUNITY_CREATED,
    catalog.OPPORTUNITY_CLOSED,
)


async def apply_event(
    event: CloudEvent[Any], members: MemberRepository, opportunities: OpportunityRepository, uow: UnitOfWork
) -> None:
    """What one followed event changes."""
    data = event.data
    if isinstance(data, LeadCreated):
        await add_lead_member(members, opportunities, uow, data)
    elif isinstance(data, LeadUpdated):
        await follow_lead_update(members, opportunities, uow, data)
    elif isinstance(data, LeadConverted):
        await record_lead_conversion(members, opportunities, uow, data)
    elif isinstance(data, LeadMerged):
        await merge_lead_memberships(members, opportunities, uow, data)
    elif isinstance(data, OpportunityCreated):
        # An imported opportunity may be created already closed.
        state = STATE_OF_STAGE[data.opportunity.stage_kind]
        await follow_opportunity(
            members, opportunities, uow, data.opportunity, state=state, version=event.version
        )
    elif isinstance(data, OpportunityClosed):
        # The closing amount is the one that counts (it may differ from the figures'), so take it.
        figures = data.opportunity.model_copy(update={"amount": data.amount, "currency": data.currency})
        state = OpportunityState.WON if data.won else OpportunityState.LOST
        await follow_opportunity(members, opportunities, uow, figures, state=state, version=event.version)
    else:
        raise TypeError(f"no handler for {event.type}")


def named_records(events: list[CloudEvent[Any]]) -> tuple[set[str], set[str]]:
    """The leads and the opportunities a batch of followed events names."""
    leads: set[str] = set()
    opportunity_ids: set[str] = set()
    for event in events:
        data = event.data
        if isinstance(data, LeadCreated | LeadUpdated):
            leads.add(data.lead.lead_id)
        elif isinstance(data, LeadConverted):
            leads.add(data.lead_id)
            if data.opportunity is not None:
                opportunity_ids.add(data.opportunity.opportunity_id)
        elif isinstance(data, LeadMerged):
            leads.update((data.merged_lead_id, data.survivor.lead_id))
        elif isinstance(data, OpportunityCreated | OpportunityClosed):
            opportunity_ids.add(data.opportunity.opportunity_id)
            if data.opportunity.lead_id is not None:
                leads.add(data.opportunity.lead_id)
    return leads, opportunity_ids


async def apply_events(
    events: list[CloudEvent[Any]],
    members: MemberRepository,
    opportunities: OpportunityRepository,
    uow: UnitOfWork,
) -> None:
    """Apply a batch in order, set-based (see the module's docstring)."""
    leads, opportunity_ids = named_records(events)
    batch = await LeadBatch.load(
        members, opportunities, uow.session, lead_ids=leads, opportunity_ids=opportunity_ids
    )
    async with uow.one_outbox_write():
        for event in events:
            with uow.applying(event):
                await apply_event(event, batch.members, batch.opportunities, uow)
        await batch.save()


def register_handlers(
    consumer: EventConsumer, members: MemberRepository, opportunities: OpportunityRepository
) -> None:
    async def on_event(event: CloudEvent[Any], uow: UnitOfWork) -> None:
        await apply_event(event, members, opportunities, uow)

    async def on_batch(events: list[CloudEvent[Any]], uow: UnitOfWork) -> None:
        if len(events) == 1:
            with uow.applying(events[0]):
                await apply_event(events[0], members, opportunities, uow)
            return
        await apply_events(events, members, opportunities, uow)

    for spec in FOLLOWED:
        consumer.subscribe(spec, on_event)
    consumer.handle_batches_with(on_batch)
