"""Kafka handlers of the reporting service: other services' events folded into its facts."""

from __future__ import annotations

from typing import Any

from crm_contracts import catalog
from crm_contracts.catalog import EventSpec
from crm_contracts.envelope import CloudEvent
from crm_runtime import EventConsumer, UnitOfWork

from .projection import project
from .repository import ReportingRepository

PROJECTED_EVENTS: tuple[EventSpec[Any], ...] = (
    catalog.LEAD_CREATED,
    catalog.LEAD_UPDATED,
    catalog.LEAD_QUALIFIED,
    catalog.LEAD_DISQUALIFIED,
    catalog.LEAD_CONVERTED,
    catalog.OPPORTUNITY_CREATED,
    catalog.OPPORTUNITY_UPDATED,
    catalog.OPPORTUNITY_STAGE_CHANGED,
    catalog.OPPORTUNITY_CLOSED,
    catalog.CAMPAIGN_CREATED,
)


def register_handlers(consumer: EventConsumer, repo: ReportingRepository) -> None:
    """Every projected event type goes through the same fold, inside the consumer's
    transaction (inbox de-duplication and the facts commit together)."""

    async def fold(event: CloudEvent[Any], uow: UnitOfWork) -> None:
        await project(event, repo.facts(uow.session))

    for spec in PROJECTED_EVENTS:
        consumer.subscribe(spec, fold)
