"""A unit of work: one MongoDB transaction holding a state change and the events it emits."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, TypeVar

from crm_contracts.catalog import EventSpec
from crm_contracts.envelope import CloudEvent
from pydantic import BaseModel
from pymongo.asynchronous.client_session import AsyncClientSession

from .outbox import Outbox

M = TypeVar("M", bound=BaseModel)


@dataclass
class UnitOfWork:
    session: AsyncClientSession
    outbox: Outbox
    emitted: list[CloudEvent[Any]] = field(default_factory=list)

    async def emit(self, spec: EventSpec[M], event: CloudEvent[M]) -> None:
        """Record ``event`` for publication when (and only if) the transaction commits."""
        await self.outbox.add(self.session, spec.topic, event)
        self.emitted.append(event)

    async def emit_many(self, events: list[tuple[EventSpec[Any], CloudEvent[Any]]]) -> None:
        """Record several events with one outbox write, in order (for bulk operations)."""
        await self.outbox.add_many(self.session, [(spec.topic, event) for spec, event in events])
        self.emitted.extend(event for _, event in events)
