"""A unit of work: one MongoDB transaction holding a state change and the events it emits."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from typing import Any, TypeVar

from crm_contracts.catalog import EventSpec
from crm_contracts.envelope import CloudEvent
from pydantic import BaseModel
from pymongo.asynchronous.client_session import AsyncClientSession

from .mongo import Document
from .outbox import Outbox

M = TypeVar("M", bound=BaseModel)
EventScope = Callable[[CloudEvent[Any]], AbstractContextManager[object]]


def _unscoped(event: CloudEvent[Any]) -> AbstractContextManager[object]:
    return contextlib.nullcontext()


@dataclass
class UnitOfWork:
    session: AsyncClientSession
    outbox: Outbox
    emitted: list[CloudEvent[Any]] = field(default_factory=list)
    # Set by the consumer: enters the trace of the consumed event a batch handler applies.
    event_scope: EventScope = _unscoped
    _held: list[Document] | None = None

    async def emit(self, spec: EventSpec[M], event: CloudEvent[M]) -> None:
        """Record ``event`` for publication when (and only if) the transaction commits."""
        if self._held is not None:
            self._held.append(self.outbox.entry(spec.topic, event))
        else:
            await self.outbox.add(self.session, spec.topic, event)
        self.emitted.append(event)

    async def emit_many(self, events: list[tuple[EventSpec[Any], CloudEvent[Any]]]) -> None:
        """Record several events with one outbox write, in order (for bulk operations)."""
        if self._held is not None:
            self._held.extend(self.outbox.entry(spec.topic, event) for spec, event in events)
        else:
            await self.outbox.add_many(self.session, [(spec.topic, event) for spec, event in events])
        self.emitted.extend(event for _, event in events)

    def applying(self, event: CloudEvent[Any]) -> AbstractContextManager[object]:
        """``with uow.applying(event):`` around what a batch handler does for one consumed
        event, so the events emitted there continue that event's trace."""
        return self.event_scope(event)

    @contextlib.asynccontextmanager
    async def one_outbox_write(self) -> AsyncIterator[None]:
        """Hold the events emitted inside the block and write them to the outbox in one
        insert at its end (each keeps the trace context it was emitted under). Nothing is
        written when the block fails: the transaction is aborted anyway."""
        if self._held is not None:  # already held by an enclosing block
            yield
            return
        self._held = []
        try:
            yield
            held, self._held = self._held, None
            await self.outbox.add_entries(self.session, held)
        finally:
            self._held = None
