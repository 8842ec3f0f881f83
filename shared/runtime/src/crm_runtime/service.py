"""The one runtime every service is built on ("service defaults"): it owns the MongoDB
client, the Kafka broker, the outbox and its relay, the idempotent consumer, health, metrics,
telemetry and logs, and builds the FastAPI app whose lifespan starts and stops them in order."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from contextlib import asynccontextmanager
from typing import Any, TypeVar

import uvicorn
from crm_contracts.catalog import ALL_EVENTS
from fastapi import APIRouter, Depends, FastAPI, Response
from fastapi_offline import FastAPIOffline
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    GC_COLLECTOR,
    PLATFORM_COLLECTOR,
    PROCESS_COLLECTOR,
    CollectorRegistry,
    generate_latest,
)
from pymongo.asynchronous.client_session import AsyncClientSession
from pymongo.errors import ServerSelectionTimeoutError

from .consumer import EventConsumer
from .dead_letters import dlq_topic
from .health import Detail, health_router
from .http import BodySizeLimit, TokenAuth, UnexpectedErrors, install_error_handlers
from .http_metrics import HttpInstrumentation
from .jobs import JobRunner
from .kafka import BROKER_LOGGER, create_broker
from .lag import LagMonitor
from .logs import KafkaClientLogThrottle, Outages, configure_logging
from .mongo import DatabaseUnreachable, create_client, in_transaction
from .openapi import document_error_responses
from .outbox import Outbox, OutboxRelay
from .query_parameters import reject_unknown_query_parameters
from .settings import ServiceSettings
from .telemetry import configure_tracing, instrument_app
from .topics import TopicCheck, ensure_topics
from .unit_of_work import UnitOfWork

log = logging.getLogger(__name__)

T = TypeVar("T")
# Swagger UI's and ReDoc's scripts and styles, served by the service (fastapi-offline ships them).
DOCS_ASSETS = "/docs-assets"
Hook = Callable[[], Awaitable[None]]


class ServiceRuntime:
    def __init__(self, settings: ServiceSettings) -> None:
        self.settings = settings
        configure_logging(settings.service_name, settings.log_level)
        self.registry = CollectorRegistry()
        for collector in (PROCESS_COLLECTOR, PLATFORM_COLLECTOR, GC_COLLECTOR):
            try:
                self.registry.register(collector)
            except ValueError:
                pass
        # Each component logs an outage once (crm_outage_active shows the open ones); the Kafka
        # clients' repeated connection errors are held back, and any success of ours ends it.
        self.outages = Outages(self.registry, summary_seconds=settings.log_outage_summary_seconds)
        self.http_metrics = HttpInstrumentation(self.registry)
        self.kafka_log_throttle = KafkaClientLogThrottle(self.outages)
        self.kafka_log_throttle.install([BROKER_LOGGER])
        kafka_reachable = self.kafka_log_throttle.recovered
        self.tracer_provider = configure_tracing(settings.service_name)
        self.client = create_client(settings)
        self.db = self.client[settings.database_name]
        self.broker = create_broker(settings, tracer_provider=self.tracer_provider, registry=self.registry)
        self.outbox = Outbox(self.db, settings)
        self.relay = OutboxRelay(
            self.db,
            self.broker,
            self.outbox,
            settings,
            self.registry,
            outages=self.outages,
            on_kafka_reachable=kafka_reachable,
        )
        self.consumer = EventConsumer(
            self.broker, self.client, self.db, self.outbox, settings, self.registry, outages=self.outages
        )
        self.lag = LagMonitor(
            settings,
            self.registry,
            interval=settings.lag_interval_seconds,
            outages=self.outages,
            on_kafka_reachable=kafka_reachable,
        )
        self.topic_check = TopicCheck(settings, self.registry)
        self.jobs = JobRunner(self.client, self.db, self.outbox, settings, outages=self.outages)
        self.auth = TokenAuth(settings.api_tokens.get_secret_value() if settings.api_tokens else None)
        self.source = f"/crm/{settings.service_name}"
        # Routes that stream their body (imports): CRM_MAX_IMPORT_BYTES instead of CRM_MAX_BODY_BYTES.
        self.streamed_upload_paths: set[str] = set()
        self._startup: list[Hook] = []
        self._shutdown: list[Hook] = []

    # -- composition ------------------------------------------------------------------------
    def on_startup(self, hook: Hook) -> None:
        self._startup.append(hook)

    def on_shutdown(self, hook: Hook) -> None:
        self._shutdown.append(hook)

    async def transaction(self, work: Callable[[UnitOfWork], Awaitable[T]]) -> T:
        """Run ``work`` atomically with the events it emits, then wake the relay. Transient
        errors (write conflicts, a lost primary) are retried; a database that no server
        answers for is not: that raises DatabaseUnreachable (HTTP answers 503) at once."""

        async def run(session: AsyncClientSession) -> T:
            try:
                return await work(UnitOfWork(session, self.outbox))
            except ServerSelectionTimeoutError as exc:
                raise DatabaseUnreachable(str(exc)) from exc

        result = await in_transaction(self.client, run)
        self.outbox.notify()
        return result

    # -- lifecycle --------------------------------------------------------------------------
    async def start(self) -> None:
        if not self.auth.enabled:
            log.warning("CRM_API_TOKENS is not set: the HTTP API accepts unauthenticated calls")
        await self._wait_for_database()
        await self.relay.ensure_indexes()
        await self.consumer.ensure_indexes()
        if self.jobs.kinds:
            await self.jobs.ensure_indexes()
        for hook in self._startup:
            await hook()
        await ensure_topics(self.settings, self._owned_topics())
        await self.topic_check.run(self._owned_topics())
        self.consumer.bind()
        await self.broker.start()
        self.relay.start()
        self.jobs.start()
        self.lag.start(sorted(self.consumer.routes))
        log.info("service started", extra={"database": self.settings.database_name})

    async def stop(self) -> None:
        # Order matters: stop taking new messages (finish in-flight ones, commit, leave the
        # group), then flush the outbox while the producer still runs, then close the clients.
        await self.lag.stop()
        await asyncio.gather(*(subscriber.stop() for subscriber in self.broker.subscribers))
        await self.jobs.stop()  # the batch in hand commits; its events are flushed next
        await self.relay.stop()
        await self.broker.stop()
        for hook in reversed(self._shutdown):
            await hook()
        await self.client.close()
        log.info("service stopped")

    def _owned_topics(self) -> list[str]:
        """What this service reads (and parks dead letters on) and what it publishes."""
        consumed = list(self.consumer.routes)
        produced = [spec.topic for spec in ALL_EVENTS if spec.producer == self.settings.service_name]
        return consumed + [dlq_topic(topic) for topic in consumed] + produced

    async def _wait_for_database(self, attempts: int = 30) -> None:
        for attempt in range(1, attempts + 1):
            try:
                await self.db.command("ping")
                return
            except Exception:
                if attempt == attempts:
                    raise
                await asyncio.sleep(1.0)

    async def _check_kafka(self) -> None:
        if not await self.broker.ping(timeout=2.0):
            raise ConnectionError("Kafka did not answer")
        self.kafka_log_throttle.recovered()

    async def _check_mongo(self) -> None:
        await self.db.command("ping")

    def create_app(
        self,
        *,
        title: str,
        description: str,
        version: str = "0.1.0",
        routers: Sequence[APIRouter] = (),
        openapi_tags: list[dict[str, Any]] | None = None,
        health_details: dict[str, Detail] | None = None,
    ) -> FastAPI:
        """The service's app; ``health_details`` add informational sections to
        ``/health/ready`` (never a reason to be unready)."""

        @asynccontextmanager
        async def lifespan(_: FastAPI) -> AsyncIterator[None]:
            await self.start()
            try:
                yield
            finally:
                await self.stop()

        # /docs and /redoc with their assets from the service, not a CDN (blank offline).
        app = FastAPIOffline(
            static_url=DOCS_ASSETS,
            title=title,
            description=description,
            version=version,
            lifespan=lifespan,
            openapi_tags=openapi_tags,
            dependencies=[Depends(reject_unknown_query_parameters)],
        )
        install_error_handlers(app)
        app.include_router(
            # Every route needs MongoDB; writes reach Kafka through the outbox later, so a
            # Kafka outage degrades the service without taking it out of its Service.
            health_router(
                {"mongodb": self._check_mongo},
                degrading={"kafka": self._check_kafka},
                auth=self.auth,
                details={"topics": self.topic_check.detail, **(health_details or {})},
                registry=self.registry,
            )
        )
        for router in routers:
            app.include_router(router)
        registry = self.registry

        @app.get("/metrics", tags=["operations"], summary="Prometheus metrics", include_in_schema=False)
        async def metrics() -> Response:
            return Response(generate_latest(registry), media_type=CONTENT_TYPE_LATEST)

        document_error_responses(app)
        instrument_app(app)
        app.add_middleware(
            BodySizeLimit,
            max_bytes=self.settings.max_body_bytes,
            large_paths=frozenset(self.streamed_upload_paths),
            large_max_bytes=self.settings.max_import_bytes,
        )
        self.http_metrics.instrument(app)  # outside the size limit: its 413s count too
        app.add_middleware(UnexpectedErrors)  # added last: outermost, so it sees every failure
        app.state.runtime = self
        return app

    def serve(self, app: FastAPI) -> None:
        """Run the app with uvicorn; SIGTERM triggers the graceful lifespan shutdown."""
        uvicorn.run(
            app,
            host=self.settings.http_host,
            port=self.settings.http_port,
            log_config=None,
            access_log=False,  # crm.access writes each request as JSON fields (http_metrics)
            proxy_headers=True,
            timeout_graceful_shutdown=20,
        )
