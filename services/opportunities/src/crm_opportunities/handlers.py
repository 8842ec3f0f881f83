"""Kafka handlers of the opportunities service: ``lead.converted`` from the leads service."""

from __future__ import annotations

from crm_contracts import catalog
from crm_contracts.envelope import CloudEvent
from crm_contracts.events.leads import LeadConverted
from crm_runtime import EventConsumer, PermanentEventError, UnitOfWork

from .domain import OpportunityRuleViolation
from .repository import Repositories
from .use_cases import NotFound, apply_lead_conversion


def register_handlers(consumer: EventConsumer, repos: Repositories) -> None:
    @consumer.on(catalog.LEAD_CONVERTED)
    async def on_lead_converted(event: CloudEvent[LeadConverted], uow: UnitOfWork) -> None:
        try:
            await apply_lead_conversion(repos, uow, event.data)
        except (NotFound, OpportunityRuleViolation) as exc:
            # E.g. an unknown pipeline: retrying cannot help, and placing the opportunity
            # elsewhere would be wrong. The dead letter can be replayed once it is fixed.
            raise PermanentEventError(f"opportunity.{exc.field}: {exc}") from exc
