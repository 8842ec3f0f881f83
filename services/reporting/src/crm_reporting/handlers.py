"""Kafka handlers of the reporting service: other services' events folded into its facts."""

from __future__ import annotations

from typing import Any

from crm_contracts import catalog
from crm_contracts.catalog import EventSpec
from crm_contracts.envelope import CloudEvent
from crm_runtime import EventConsumer, UnitOfWork

from .projection import project_many
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
    catalog.CAMPAIGN_UPDATED,
    catalog.CAMPAIGN_STATUS_CHANGED,
    catalog.CAMPAIGN_COST_RECORDED,
    catalog.CAMPAIGN_MEMBER_ADDED,
    catalog.PIPELINE_CREATED,
    catalog.PIPELINE_UPDATED,
    catalog.PICKLIST_REVISED,
)


def register_handlers(consumer: EventConsumer, repo: ReportingRepository) -> None:
    """Every projected event type goes through the same fold, inside the consumer's
    transaction: the inbox entries, the changed facts and their counter differences commit
    together, into whichever generation is live at that moment. A fetched batch is folded at
    once: its facts are loaded in three queries and written with one delta document."""

    async def fold_batch(events: list[CloudEvent[Any]], uow: UnitOfWork) -> None:
        generation = await repo.live(uow.session)
        store = generation.facts(uow.session)
        await project_many(events, store)
        await store.flush(events=len(events))

    async def fold(event: CloudEvent[Any], uow: UnitOfWork) -> None:
        await fold_batch([event], uow)

    for spec in PROJECTED_EVENTS:
        consumer.subscribe(spec, fold)
    consumer.handle_batches_with(fold_batch)
