"""Transactional outbox and its relay.

A service writes its state change and the events it emits in one MongoDB transaction: the
events go to the ``outbox`` collection as the exact bytes to publish. The relay publishes them
in insertion order with the idempotent producer and deletes them only once Kafka acknowledged
them, so a crash or a Kafka outage loses nothing; a crash between publish and delete republishes,
which idempotent consumers absorb. Only the holder of a short lease relays, so replicas of a
service never publish the same backlog concurrently and per-aggregate order is kept.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

from bson import ObjectId
from crm_contracts.envelope import CloudEvent
from faststream.kafka import KafkaBroker
from opentelemetry import context as otel_context
from opentelemetry import propagate
from prometheus_client import CollectorRegistry, Counter, Gauge
from pymongo import ASCENDING
from pymongo.asynchronous.client_session import AsyncClientSession
from pymongo.asynchronous.database import AsyncDatabase
from pymongo.errors import DuplicateKeyError, PyMongoError

from .events import encode
from .logs import Outages
from .mongo import Document
from .settings import ServiceSettings

log = logging.getLogger(__name__)

OUTBOX = "outbox"
LEASES = "leases"
LEASE_SECONDS = 15


def _current_trace_carrier() -> dict[str, str]:
    carrier: dict[str, str] = {}
    propagate.inject(carrier)
    return carrier


class Outbox:
    """Appends events to the outbox inside the caller's transaction."""

    def __init__(self, db: AsyncDatabase[Document], settings: ServiceSettings) -> None:
        self._collection = db[OUTBOX]
        self._settings = settings
        self._wake = asyncio.Event()

    async def add(self, session: AsyncClientSession, topic: str, event: CloudEvent[Any]) -> None:
        await self._collection.insert_one(self.entry(topic, event), session=session)

    async def add_many(self, session: AsyncClientSession, entries: list[tuple[str, CloudEvent[Any]]]) -> None:
        """Several events in one write (bulk operations), in the given order."""
        trace = _current_trace_carrier()
        await self.add_entries(session, [self._entry(topic, event, trace) for topic, event in entries])

    def entry(self, topic: str, event: CloudEvent[Any]) -> Document:
        """The outbox entry of ``event`` under the current trace context, to be written later
        with ``add_entries`` (a batch whose events each continue their own trace)."""
        return self._entry(topic, event, _current_trace_carrier())

    async def add_entries(self, session: AsyncClientSession, entries: list[Document]) -> None:
        """Entries made by ``entry``, in one write, in the given order."""
        if entries:
            await self._collection.insert_many(entries, ordered=True, session=session)

    def _entry(self, topic: str, event: CloudEvent[Any], trace: dict[str, str]) -> Document:
        return {
            "_id": ObjectId(),
            "topic": self._settings.topic(topic),
            "key": event.subject or event.id,
            "event_id": event.id,
            "payload": encode(event),
            "created_at": datetime.now(UTC),
            # The writer's trace context, so the relayed event continues the request's trace.
            "trace": trace,
        }

    def notify(self) -> None:
        """Tell the relay that new events were committed, so it need not wait for its poll."""
        self._wake.set()

    async def wait(self, seconds: float) -> bool:
        """Wait for a commit notice or ``seconds``; True when woken by a commit."""
        woken = False
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._wake.wait(), seconds)
            woken = True
        self._wake.clear()
        return woken

    async def pending(self) -> int:
        return await self._collection.count_documents({})


class OutboxRelay:
    """Publishes committed outbox entries to Kafka, in order, until Kafka has them."""

    def __init__(
        self,
        db: AsyncDatabase[Document],
        broker: KafkaBroker,
        outbox: Outbox,
        settings: ServiceSettings,
        registry: CollectorRegistry,
        *,
        outages: Outages | None = None,
        on_kafka_reachable: Callable[[], None] = lambda: None,
    ) -> None:
        self._db = db
        self._broker = broker
        self._outbox = outbox
        self._settings = settings
        self._owner = f"{socket.gethostname()}:{os.getpid()}:{id(self)}"
        self._task: asyncio.Task[None] | None = None
        self._stopping = asyncio.Event()
        self.published = Counter(
            "crm_outbox_published", "Events the outbox relay published", registry=registry
        )
        self.backlog = Gauge(
            "crm_outbox_backlog", "Committed events not yet acknowledged by Kafka", registry=registry
        )
        self.last_error: str | None = None
        self._lease_until: datetime | None = None
        # A failure is either the database's or Kafka's; each outage is logged once.
        outages = outages or Outages(summary_seconds=settings.log_outage_summary_seconds)
        self._outages = {resource: outages.log("outbox relay", resource) for resource in ("kafka", "mongodb")}
        self._on_kafka_reachable = on_kafka_reachable

    async def ensure_indexes(self) -> None:
        await self._db[OUTBOX].create_index([("created_at", ASCENDING)])

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="outbox-relay")

    async def stop(self) -> None:
        """Flush what can be flushed quickly, then stop and give the lease back."""
        self._stopping.set()
        self._outbox.notify()
        if self._task is not None:
            try:
                await asyncio.wait_for(self._task, timeout=10)
            except TimeoutError:
                self._task.cancel()
        with contextlib.suppress(PyMongoError):
            await self._db[LEASES].delete_one({"_id": "outbox-relay", "owner": self._owner})

    async def _run(self) -> None:
        backoff = 0.1
        while True:
            try:
                published = await self.relay_once() if await self._hold_lease() else 0
                self.last_error = None
                backoff = 0.1
                for outage in self._outages.values():
                    outage.recovered()
                if published:
                    self._on_kafka_reachable()
            except Exception as exc:  # Kafka or Mongo away: keep everything, try again.
                self.last_error = f"{type(exc).__name__}: {exc}"
                self._outages["mongodb" if isinstance(exc, PyMongoError) else "kafka"].failed(exc)
                published = 0
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, 5.0)
            if self._stopping.is_set() and not published:
                return  # flushed (or Kafka is away: what is left waits for the next start)
            if not published and await self._outbox.wait(self._settings.outbox_poll_seconds):
                # Let the commits of the next few milliseconds join this batch: one find, one
                # publish round and one delete then serve many events instead of one each.
                await asyncio.sleep(self._settings.outbox_linger_seconds)

    async def _hold_lease(self) -> bool:
        now = datetime.now(UTC)
        if self._lease_until is not None and now < self._lease_until - timedelta(seconds=LEASE_SECONDS / 3):
            return True  # renewing on every batch would cost a write per batch
        try:
            await self._db[LEASES].find_one_and_update(
                {"_id": "outbox-relay", "$or": [{"owner": self._owner}, {"expires_at": {"$lt": now}}]},
                {"$set": {"owner": self._owner, "expires_at": now + timedelta(seconds=LEASE_SECONDS)}},
                upsert=True,
            )
        except DuplicateKeyError:
            self._lease_until = None
            return False  # another replica holds a live lease
        self._lease_until = now + timedelta(seconds=LEASE_SECONDS)
        return True

    async def relay_once(self) -> int:
        """Publish one batch in insertion order; returns how many were published."""
        batch = await (
            self._db[OUTBOX]
            .find({}, sort=[("_id", ASCENDING)], limit=self._settings.outbox_batch_size)
            .to_list()
        )
        self.backlog.set(len(batch))
        if not batch:
            return 0
        # Send the whole batch before awaiting acks: the producer keeps per-partition order.
        futures = []
        for entry in batch:
            token = otel_context.attach(propagate.extract(entry.get("trace") or {}))
            try:
                futures.append(
                    await self._broker.publish(
                        entry["payload"],
                        topic=entry["topic"],
                        key=entry["key"].encode(),
                        headers={"content-type": "application/cloudevents+json", "ce_id": entry["event_id"]},
                        no_confirm=True,
                    )
                )
            finally:
                otel_context.detach(token)
        await asyncio.gather(*futures)
        await self._db[OUTBOX].delete_many({"_id": {"$in": [entry["_id"] for entry in batch]}})
        self.published.inc(len(batch))
        return len(batch)
