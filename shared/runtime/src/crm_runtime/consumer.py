"""At-least-once, idempotent event consumption.

Offsets are committed only after the handler's transaction committed (never ack-first). Each
event id is recorded in the ``inbox`` collection in the same transaction as the state change,
so a redelivered or duplicated event changes nothing. Unparseable or invalid messages, and
messages whose handler keeps failing, go to ``<topic>.dlq``; database outages are not the
message's fault, so those are retried by seeking back instead.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, TypeVar

from crm_contracts.catalog import EventSpec
from crm_contracts.envelope import CloudEvent
from faststream import AckPolicy
from faststream.kafka import KafkaBroker
from faststream.kafka.annotations import KafkaMessage
from faststream.message import StreamMessage
from prometheus_client import CollectorRegistry, Counter, Gauge
from pydantic import BaseModel, ValidationError
from pymongo import AsyncMongoClient
from pymongo.asynchronous.client_session import AsyncClientSession
from pymongo.asynchronous.database import AsyncDatabase
from pymongo.errors import ConnectionFailure, PyMongoError

from .dead_letters import send_to_dead_letters
from .events import decode
from .mongo import Document, in_transaction
from .outbox import Outbox
from .settings import ServiceSettings
from .unit_of_work import UnitOfWork

log = logging.getLogger(__name__)

M = TypeVar("M", bound=BaseModel)
Handler = Callable[[CloudEvent[M], UnitOfWork], Awaitable[None]]

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


async def _raw_body(message: StreamMessage[Any]) -> bytes:
    # Keep the bytes: parsing is ours, so bad input becomes a dead letter, not a crash loop.
    return bytes(message.body)


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
    ) -> None:
        self._broker = broker
        self._client = client
        self._db = db
        self._outbox = outbox
        self._settings = settings
        self.routes: dict[str, Route] = {}
        self._bound = False
        self.processed = Counter("crm_events_processed", "Events applied", ["topic"], registry=registry)
        self.duplicates = Counter(
            "crm_events_duplicate", "Redelivered events ignored", ["topic"], registry=registry
        )
        self.dead_lettered = Counter(
            "crm_events_dead_lettered", "Events sent to a dead-letter topic", ["topic"], registry=registry
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

    def bind(self) -> None:
        """Register one Kafka subscriber for all routed topics. One consumer per service means
        one group join at start (a subscriber per topic would rebalance the group once each)."""
        if not self.routes or self._bound:
            return
        self._bound = True
        by_physical = {self._settings.topic(topic): route for topic, route in self.routes.items()}

        async def consume(body: bytes, msg: KafkaMessage) -> None:
            record: Any = msg.raw_message  # one ConsumerRecord: this subscriber is not batched
            await self.handle_record(by_physical[record.topic], body, record)

        self._broker.subscriber(
            *by_physical,
            group_id=self._settings.group_id,
            auto_offset_reset="earliest",
            ack_policy=AckPolicy.NACK_ON_ERROR,
            decoder=_raw_body,
            max_poll_records=100,
            title=f"crm-{self._settings.service_name}",
            description="Consumes: " + ", ".join(sorted(self.routes)),
        )(consume)

    async def handle_record(self, route: Route, body: bytes, record: Any) -> None:
        topic = route.spec.topic
        try:
            event = decode(route.spec, body)
        except ValidationError as exc:
            await self._dead_letter(route, record, describe_validation_error(exc), attempts=1)
            return
        except ValueError as exc:  # not JSON, or the wrong event type for the topic
            await self._dead_letter(route, record, exc, attempts=1)
            return

        attempts = 0
        while True:
            attempts += 1
            try:
                applied = await self.apply(route, event)
            except PermanentEventError as exc:
                await self._dead_letter(route, record, exc, attempts=attempts)
                return
            except PyMongoError as exc:
                if _database_unavailable(exc):
                    # Not the message's fault: seek back (NACK) and let it be redelivered.
                    log.warning("database unavailable, will redeliver", extra={"topic": topic})
                    await asyncio.sleep(1.0)
                    raise
                failure: BaseException = exc
            except Exception as exc:
                failure = exc
            else:
                (self.processed if applied else self.duplicates).labels(topic).inc()
                self.last_applied.labels(topic).set(event.time.timestamp())
                return
            if attempts >= self._settings.consumer_max_attempts:
                log.error(
                    "handler keeps failing",
                    exc_info=failure,
                    extra={"topic": topic, "event_id": event.id},
                )
                await self._dead_letter(route, record, failure, attempts=attempts)
                return
            await asyncio.sleep(self._settings.consumer_retry_backoff_seconds * attempts)

    async def apply(self, route: Route, event: CloudEvent[Any]) -> bool:
        """Apply ``event`` once; returns False when it had been applied before."""
        inbox_id = f"{self._settings.group_id}|{route.spec.topic}|{event.id}"

        async def work(session: AsyncClientSession) -> bool:
            if await self._db[INBOX].find_one({"_id": inbox_id}, {"_id": 1}, session=session):
                return False
            uow = UnitOfWork(session, self._outbox)
            await route.handler(event, uow)
            await self._db[INBOX].insert_one(
                {"_id": inbox_id, "processed_at": datetime.now(UTC)}, session=session
            )
            return True

        applied = await in_transaction(self._client, work)
        if applied:
            self._outbox.notify()
        return applied

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
        self.dead_lettered.labels(route.spec.topic).inc()
