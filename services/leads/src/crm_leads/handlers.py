"""Kafka handlers of the leads service: ``lead.captured`` from any other system."""

from __future__ import annotations

from crm_contracts import catalog
from crm_contracts.envelope import CloudEvent
from crm_contracts.events.leads import LeadCaptured
from crm_runtime import EventConsumer, UnitOfWork

from .repository import LeadRepository
from .use_cases import capture_lead


def register_handlers(consumer: EventConsumer, repo: LeadRepository) -> None:
    @consumer.on(catalog.LEAD_CAPTURED)
    async def on_lead_captured(event: CloudEvent[LeadCaptured], uow: UnitOfWork) -> None:
        await capture_lead(repo, uow, event.data, by=f"system:{event.source}")
