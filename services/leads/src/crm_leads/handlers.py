"""Kafka handlers of the leads service: ``lead.captured`` from any other system."""

from __future__ import annotations

from typing import Any

from crm_contracts import catalog
from crm_contracts.envelope import CloudEvent
from crm_contracts.events.leads import LeadCaptured
from crm_runtime import EventConsumer, PermanentEventError, UnitOfWork

from .domain import timed_capture
from .picklists import UnknownPicklistValue
from .repository import LeadRepository
from .use_cases import capture_lead, capture_leads, now_ms


def _captured_by(event: CloudEvent[Any]) -> str:
    return f"system:{event.source}"


def register_handlers(consumer: EventConsumer, repo: LeadRepository) -> None:
    """A fetched batch of captures is applied set-based (``capture_leads``); a single event,
    and each event of a batch that failed, goes through ``capture_lead`` on its own. A capture
    whose source or origin the organisation's picklists refuse goes to the dead-letter topic
    with the reason (the batch it was in is then applied one event at a time)."""

    async def on_lead_captured(event: CloudEvent[LeadCaptured], uow: UnitOfWork) -> None:
        with uow.applying(event):
            try:
                await capture_lead(repo, uow, event.data, by=_captured_by(event), event_time=event.time)
            except UnknownPicklistValue as exc:
                # Retrying cannot help; once the value (or an alias) is on the list, replay it.
                raise PermanentEventError(str(exc)) from exc

    async def on_captured_batch(events: list[CloudEvent[Any]], uow: UnitOfWork) -> None:
        unexpected = sorted({event.type for event in events if not isinstance(event.data, LeadCaptured)})
        if unexpected:
            raise TypeError(f"no batch handler for {', '.join(unexpected)}")
        if len(events) == 1:
            await on_lead_captured(events[0], uow)
            return
        received_at = now_ms()
        await capture_leads(
            repo,
            uow,
            [
                (
                    timed_capture(event.data, event_time=event.time, received_at=received_at),
                    _captured_by(event),
                )
                for event in events
            ],
            each=lambda index: uow.applying(events[index]),
        )

    consumer.subscribe(catalog.LEAD_CAPTURED, on_lead_captured)
    consumer.handle_batches_with(on_captured_batch)
