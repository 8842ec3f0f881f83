"""At-least-once, idempotent event consumption, a fetched batch per transaction.

Offsets are committed only after the handlers' transaction committed (never ack-first). Each
event's CloudEvents identity, its ``source`` and ``id`` (see ``inbox``), is recorded in the
``inbox`` collection in the same transaction as the state change, so a redelivered or
duplicated event changes nothing, while two publishers reusing each other's ids both apply. The
events of one fetch (up to ``consumer_batch_size``) are applied in offset order inside one
transaction: a transaction's reads see its own writes, so this equals applying them one by one,
minus a commit, an inbox lookup and a round of reads per event. If the batch fails for a reason
other than the database, its events are applied one at a time instead, so one bad event is
retried and dead-lettered alone. Unparseable or invalid messages, and messages whose handler
keeps failing, go to ``<topic>.dlq``; database outages are not the message's fault, so those
are retried by seeking back instead.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from contextlib import AbstractContextManager
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, TypeVar

from crm_contracts.catalog import EventSpec
from crm_contracts.envelope import CloudEvent
from faststream import AckPolicy
from faststream.kafka import KafkaBroker
from faststream.kafka.annotations import KafkaMessage
from faststream.message import StreamMessage
from opentelemetry import context as otel_context
from opentelemetry import propagate, trace
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from pydantic import BaseModel, ValidationError
from pymongo import AsyncMongoClient
from pymongo.asynchronous.client_session import AsyncClientSession
from pymongo.asynchronous.database import AsyncDatabase
from pymongo.errors import ConnectionFailure, PyMongoError

from .dead_letters import SourceLabels, send_to_dead_letters
from .events import decode
from .inbox import inbox_key, legacy_entry_covers, legacy_inbox_key
from .logs import Outages
from .mongo import Document, in_transaction
from .outbox import Outbox
from .settings import ServiceSettings
from .unit_of_work import UnitOfWork

log = logging.getLogger(__name__)

M = TypeVar("M", bound=BaseModel)
Handler = Callable[[CloudEvent[M], UnitOfWork], Awaitable[None]]
# All new events of one fetched batch, in offset order (a service that gains from loading the
# state of many events at once registers one; otherwise each route's handler runs in turn).
BatchHandler = Callable[[list[CloudEvent[Any]], UnitOfWork], Awaitable[None]]

INBOX = "inbox"
INBOX_RETENTION_SECONDS = 90 * 24 * 3600


def _database_unavailable(exc: PyMongoError) -> bool:
    return isinstance(exc, ConnectionFailure) or exc.has_error_label("TransientTransactionError")


class PermanentEventError(Exception):
    """The event is valid but can never be applied (e.g. it contradicts a business rule):
    retrying is pointless, so it goes straight to the dead-letter topic."""


@dataclass(frozen=True)
class Route:
    spec: EventSpec[Any]
    handler: Handler[Any]


@dataclass(frozen=True)
class Delivery:
    """One valid event of a fetched batch, with the Kafka record it came in."""

    route: Route
    event: CloudEvent[Any]
    record: Any  # aiokafka ConsumerRecord


async def _raw_bodies(message: StreamMessage[Any]) -> list[bytes]:
    # Keep the bytes: parsing is ours, so bad input becomes a dead letter, not a crash loop.
    return [record.value or b"" for record in message.raw_message]


def _trace_context(record: Any) -> otel_context.Context:
    """The producer's trace context from a record's headers (W3C ``traceparent``)."""
    carrier = {key: value.decode("latin-1") for key, value in (record.headers or ())}
    return propagate.extract(carrier)


def describe_validation_error(exc: ValidationError) -> str:
    """'field.path: reason' for each problem, so the dead letter says what to fix."""
    parts = []
    for err in exc.errors(include_url=False):
        where = ".".join(str(p) for p in err["loc"]) or "(message)"
        parts.append(f"{where}: {err['msg']}")
    return "; ".join(parts)


class EventConsumer:
    """Registers idempotent handlers for catalogue events on the service's broker."""

    def __init__(
        self,
        broker: KafkaBroker,
        client: AsyncMongoClient[Document],
        db: AsyncDatabase[Document],
        outbox: Outbox,
        settings: ServiceSettings,
        registry: CollectorRegistry,
        *,
        outages: Outages | None = None,
    ) -> None:
        self._broker = broker
        self._client = client
        self._db = db
        self._outbox = outbox
        self._settings = settings
        self.routes: dict[str, Route] = {}
        self._by_physical: dict[str, Route] = {}
        self.batch_handler: BatchHandler | None = None
        self._bound = False
        self._tracer = trace.get_tracer(__name__)
        # Settles at once: the next batch (its next success) may be a long time coming.
        outages = outages or Outages(summary_seconds=settings.log_outage_summary_seconds)
        self._database_outage = outages.log("consumer", "mongodb", settle_seconds=0)
        self.processed = Counter("crm_events_processed", "Events applied", ["topic"], registry=registry)
        self.duplicates = Counter(
            "crm_events_duplicate", "Redelivered events ignored", ["topic"], registry=registry
        )
        self.dead_lettered = Counter(
            "crm_events_dead_lettered",
            "Events sent to a dead-letter topic, by the event's CloudEvents source ('unparseable' "
            "when the message is not a CloudEvent; after 50 distinct sources, 'other')",
            ["topic", "source"],
            registry=registry,
        )
        self._sources = SourceLabels()
        self.batch_sizes = Histogram(
            "crm_consumer_batch_events",
            "Valid events per fetched batch (each batch is applied in one transaction)",
            buckets=(1, 2, 5, 10, 20, 50, 100, 200, 500, 1000),
            registry=registry,
        )
        self.last_applied = Gauge(
            "crm_events_last_applied_timestamp_seconds",
            "Event time of the newest applied event",
            ["topic"],
            registry=registry,
        )

    async def ensure_indexes(self) -> None:
        await self._db[INBOX].create_index("processed_at", expireAfterSeconds=INBOX_RETENTION_SECONDS)

    def on(self, spec: EventSpec[M]) -> Callable[[Handler[M]], Handler[M]]:
        """Decorator: ``@consumer.on(LEAD_CAPTURED) async def handle(event, uow): ...``"""

        def register(handler: Handler[M]) -> Handler[M]:
            self.subscribe(spec, handler)
            return handler

        return register

    def subscribe(self, spec: EventSpec[M], handler: Handler[M]) -> None:
        self.routes[spec.topic] = Route(spec, handler)

    def handle_batches_with(self, handler: BatchHandler) -> None:
        """Apply each batch's new events with ``handler`` (still inside the consumer's
        transaction) instead of calling each route's handler in turn. A batch that fails is
        applied again one event at a time, each as a batch of one through ``handler``. What
        the handler does for one event belongs inside ``with uow.applying(event):``, so the
        events it emits continue that event's trace."""
        self.batch_handler = handler

    def bind(self) -> None:
        """Register one Kafka subscriber for all routed topics. One consumer per service means
        one group join at start (a subscriber per topic would rebalance the group once each)."""
        if not self.routes or self._bound:
            return
        self._bound = True
        self._by_physical = {self._settings.topic(topic): route for topic, route in self.routes.items()}

        async def consume(bodies: list[bytes], msg: KafkaMessage) -> None:
            records: tuple[Any, ...] = msg.raw_message  # a batch subscriber: ConsumerRecords
            await self.handle_batch(records)

        self._broker.subscriber(
            *self._by_physical,
            group_id=self._settings.group_id,
            auto_offset_reset="earliest",
            ack_policy=AckPolicy.NACK_ON_ERROR,  # a batch nack rewinds every partition in it
            batch=True,
            max_records=self._settings.consumer_batch_size,
            batch_timeout_ms=self._settings.consumer_batch_wait_ms,
            decoder=_raw_bodies,
            title=f"crm-{self._settings.service_name}",
            description="Consumes: " + ", ".join(sorted(self.routes)),
        )(consume)

    async def handle_batch(self, records: tuple[Any, ...]) -> None:
        """Dead-letter what cannot be read, apply the rest in one transaction."""
        deliveries: list[Delivery] = []
        for record in records:
            route = self._by_physical[record.topic]
            try:
                event = decode(route.spec, record.value or b"")
            except ValidationError as exc:
                await self._dead_letter(route, record, describe_validation_error(exc), attempts=1)
            except ValueError as exc:  # not JSON, or the wrong event type for the topic
                await self._dead_letter(route, record, exc, attempts=1)
            else:
                deliveries.append(Delivery(route, event, record))
        if not deliveries:
            return
        self.batch_sizes.observe(len(deliveries))
        if len(deliveries) == 1:
            # Straight to its own attempts: a batch try first would be one more than configured.
            await self.handle_event(deliveries[0])
            return
        outcome = await self._try_apply(deliveries)
        if not isinstance(outcome, BaseException):
            for delivery, was_new in zip(deliveries, outcome, strict=True):
                self._count(delivery, was_new)
            return
        log.warning(
            "batch failed, applying its events one at a time",
            extra={"events": len(deliveries), "error": str(outcome)[:300]},
        )
        for delivery in deliveries:
            await self.handle_event(delivery)

    async def _try_apply(self, deliveries: list[Delivery]) -> list[bool] | BaseException:
        """``apply_batch``'s outcome, or the failure to deal with. A database outage is not the
        events' fault: it propagates, the subscriber NACKs and the batch is redelivered."""
        try:
            applied = await self.apply_batch(deliveries)
        except PyMongoError as exc:
            if _database_unavailable(exc):
                self._database_outage.failed(exc)  # logged once per outage; redelivered
                await asyncio.sleep(1.0)
                raise
            return exc
        except Exception as exc:
            return exc
        self._database_outage.recovered()
        return applied

    def _count(self, delivery: Delivery, applied: bool) -> None:
        topic = delivery.route.spec.topic
        (self.processed if applied else self.duplicates).labels(topic).inc()
        self.last_applied.labels(topic).set(delivery.event.time.timestamp())

    async def apply_batch(self, deliveries: list[Delivery]) -> list[bool]:
        """Apply every new event of ``deliveries`` in one transaction; per delivery, whether it
        was new (False: applied before, or earlier in the same batch)."""
        ids = [self._inbox_id(d) for d in deliveries]
        legacy_ids = [self._legacy_inbox_id(d) for d in deliveries]

        async def work(session: AsyncClientSession) -> list[bool]:
            wanted = set(ids)
            found = {
                doc["_id"]: doc
                async for doc in self._db[INBOX].find(
                    {"_id": {"$in": sorted(wanted | set(legacy_ids))}}, {"processed_at": 1}, session=session
                )
            }
            known = {inbox_id for inbox_id in found if inbox_id in wanted}
            for delivery, inbox_id, legacy_id in zip(deliveries, ids, legacy_ids, strict=True):
                # Applied before the inbox keyed by source: the same event, redelivered.
                if legacy_entry_covers(found.get(legacy_id), delivery.event.time):
                    known.add(inbox_id)
            new: list[Delivery] = []
            applied: list[bool] = []
            for delivery, inbox_id in zip(deliveries, ids, strict=True):
                applied.append(inbox_id not in known)
                if inbox_id not in known:
                    known.add(inbox_id)
                    new.append(delivery)
            if not new:
                return applied
            by_event = {id(d.event): d for d in new}
            uow = UnitOfWork(session, self._outbox, event_scope=lambda event: self._span(by_event[id(event)]))
            if self.batch_handler is not None:
                await self.batch_handler([d.event for d in new], uow)
            else:
                for delivery in new:
                    await self._run_handler(delivery, uow)
            now = datetime.now(UTC)
            await self._db[INBOX].insert_many(
                [{"_id": self._inbox_id(d), "processed_at": now} for d in new], session=session
            )
            return applied

        applied = await in_transaction(self._client, work)
        if any(applied):
            self._outbox.notify()
        return applied

    async def _run_handler(self, delivery: Delivery, uow: UnitOfWork) -> None:
        with self._span(delivery):
            await delivery.route.handler(delivery.event, uow)

    def _span(self, delivery: Delivery) -> AbstractContextManager[object]:
        # Each event under its producer's trace, so the events it emits continue that trace.
        return self._tracer.start_as_current_span(
            f"{delivery.route.spec.topic} apply",
            context=_trace_context(delivery.record),
            kind=trace.SpanKind.CONSUMER,
            attributes={
                "messaging.message.id": delivery.event.id,
                "cloudevents.event_source": delivery.event.source,
            },
        )

    async def handle_event(self, delivery: Delivery) -> None:
        """Apply one event in its own transaction, with retries, then the dead-letter topic."""
        route, event, record = delivery.route, delivery.event, delivery.record
        topic = route.spec.topic
        attempts = 0
        while True:
            attempts += 1
            outcome = await self._try_apply([delivery])
            if not isinstance(outcome, BaseException):
                self._count(delivery, outcome[0])
                return
            failure = outcome
            if isinstance(failure, PermanentEventError):
                await self._dead_letter(route, record, failure, attempts=attempts)
                return
            if attempts >= self._settings.consumer_max_attempts:
                log.error(
                    "handler keeps failing",
                    exc_info=failure,
                    extra={"topic": topic, "event_source": event.source, "event_id": event.id},
                )
                await self._dead_letter(route, record, failure, attempts=attempts)
                return
            await asyncio.sleep(self._settings.consumer_retry_backoff_seconds * attempts)

    def _inbox_id(self, delivery: Delivery) -> str:
        event = delivery.event
        return inbox_key(self._settings.group_id, delivery.route.spec.topic, event.source, event.id)

    def _legacy_inbox_id(self, delivery: Delivery) -> str:
        return legacy_inbox_key(self._settings.group_id, delivery.route.spec.topic, delivery.event.id)

    async def _dead_letter(
        self, route: Route, record: Any, error: BaseException | str, *, attempts: int
    ) -> None:
        log.warning(
            "dead-lettering message",
            extra={"topic": route.spec.topic, "offset": record.offset, "error": str(error)[:500]},
        )
        await send_to_dead_letters(
            self._broker, record, group=self._settings.group_id, error=error, attempts=attempts
        )
        self.dead_lettered.labels(route.spec.topic, self._sources.of(record.value)).inc()
