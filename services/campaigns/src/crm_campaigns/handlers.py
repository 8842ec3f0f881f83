"""Kafka handlers of the campaigns service: leads join the campaigns that reach them (each a
touch), and their conversion and the opportunities they bring are followed."""

from __future__ import annotations

from crm_contracts import catalog
from crm_contracts.envelope import CloudEvent
from crm_contracts.events.leads import LeadConverted, LeadCreated, LeadUpdated
from crm_contracts.events.opportunities import OpportunityClosed, OpportunityCreated, StageKind
from crm_runtime import EventConsumer, UnitOfWork

from .domain import OpportunityState
from .repository import MemberRepository, OpportunityRepository
from .use_cases import add_lead_member, follow_lead_update, follow_opportunity, record_lead_conversion

STATE_OF_STAGE = {
    StageKind.OPEN: OpportunityState.OPEN,
    StageKind.CLOSED_WON: OpportunityState.WON,
    StageKind.CLOSED_LOST: OpportunityState.LOST,
}


def register_handlers(
    consumer: EventConsumer, members: MemberRepository, opportunities: OpportunityRepository
) -> None:
    @consumer.on(catalog.LEAD_CREATED)
    async def on_lead_created(event: CloudEvent[LeadCreated], uow: UnitOfWork) -> None:
        await add_lead_member(members, opportunities, uow, event.data)

    @consumer.on(catalog.LEAD_UPDATED)
    async def on_lead_updated(event: CloudEvent[LeadUpdated], uow: UnitOfWork) -> None:
        await follow_lead_update(members, opportunities, uow, event.data)

    @consumer.on(catalog.LEAD_CONVERTED)
    async def on_lead_converted(event: CloudEvent[LeadConverted], uow: UnitOfWork) -> None:
        await record_lead_conversion(members, opportunities, uow, event.data)

    @consumer.on(catalog.OPPORTUNITY_CREATED)
    async def on_opportunity_created(event: CloudEvent[OpportunityCreated], uow: UnitOfWork) -> None:
        figures = event.data.opportunity
        # An imported opportunity may be created already closed.
        state = STATE_OF_STAGE[figures.stage_kind]
        await follow_opportunity(members, opportunities, uow, figures, state=state, version=event.version)

    @consumer.on(catalog.OPPORTUNITY_CLOSED)
    async def on_opportunity_closed(event: CloudEvent[OpportunityClosed], uow: UnitOfWork) -> None:
        closed = event.data
        # The closing amount is the one that counts (it may differ from the figures'), so take it.
        figures = closed.opportunity.model_copy(update={"amount": closed.amount, "currency": closed.currency})
        state = OpportunityState.WON if closed.won else OpportunityState.LOST
        await follow_opportunity(members, opportunities, uow, figures, state=state, version=event.version)
