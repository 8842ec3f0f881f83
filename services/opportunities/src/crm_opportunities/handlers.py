"""Kafka handlers of the opportunities service: ``lead.converted`` from the leads service."""

from __future__ import annotations

from typing import Any

from crm_contracts import catalog
from crm_contracts.envelope import CloudEvent
from crm_contracts.events.leads import LeadConverted
from crm_runtime import EventConsumer, PermanentEventError, UnitOfWork

from .domain import OpportunityRuleViolation
from .repository import Repositories
from .use_cases import NotFound, apply_lead_conversion, apply_lead_conversions


def register_handlers(consumer: EventConsumer, repos: Repositories) -> None:
    """A fetched batch of conversions is applied set-based (``apply_lead_conversions``); a
    single event, and each event of a batch that failed, goes through
    ``apply_lead_conversion`` on its own, where a bad one is dead-lettered alone."""

    async def on_lead_converted(event: CloudEvent[LeadConverted], uow: UnitOfWork) -> None:
        with uow.applying(event):
            try:
                await apply_lead_conversion(repos, uow, event.data)
            except (NotFound, OpportunityRuleViolation) as exc:
                # E.g. an unknown pipeline: retrying cannot help, and placing the opportunity
                # elsewhere would be wrong. The dead letter can be replayed once it is fixed.
                raise PermanentEventError(f"opportunity.{exc.field}: {exc}") from exc

    async def on_converted_batch(events: list[CloudEvent[Any]], uow: UnitOfWork) -> None:
        unexpected = sorted({event.type for event in events if not isinstance(event.data, LeadConverted)})
        if unexpected:
            raise TypeError(f"no batch handler for {', '.join(unexpected)}")
        if len(events) == 1:
            await on_lead_converted(events[0], uow)
            return
        await apply_lead_conversions(
            repos, uow, [event.data for event in events], each=lambda index: uow.applying(events[index])
        )

    consumer.subscribe(catalog.LEAD_CONVERTED, on_lead_converted)
    consumer.handle_batches_with(on_converted_batch)
