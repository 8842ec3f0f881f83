"""Helpers for tests that drive services against the real broker and database: run a service
in-process behind an HTTP client, publish raw events, read topics back."""

from __future__ import annotations

import asyncio
import csv
import io
import os
import sys
import time
import uuid
from collections.abc import AsyncIterator, Callable, Iterable, Mapping, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import httpx
import orjson
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from asgi_lifespan import LifespanManager
from fastapi import FastAPI
from pymongo import monitoring

from ._proc import free_port, pid_alive, spawn, stop_pid, tail


class InfraLike(Protocol):
    @property
    def kafka_bootstrap(self) -> str: ...
    @property
    def mongo_url(self) -> str: ...
    @property
    def topic_prefix(self) -> str: ...
    @property
    def database_prefix(self) -> str: ...


def service_env(infra: InfraLike, service: str, *, isolation: str = "") -> dict[str, Any]:
    """Settings (as keyword arguments) that point a service at the test infrastructure, with
    its own topic prefix and database so test runs never see each other's data."""
    return {
        "kafka_bootstrap_servers": infra.kafka_bootstrap,
        "mongo_url": infra.mongo_url,
        "topic_prefix": infra.topic_prefix + isolation,
        "mongo_database": f"{infra.database_prefix}{isolation.replace('.', '_')}{service}",
        "consumer_group": f"{infra.topic_prefix}{isolation}crm-{service}",
        "outbox_poll_seconds": 0.2,
        "lag_interval_seconds": 1.0,
        "log_level": "WARNING",
    }


@asynccontextmanager
async def service_client(app: FastAPI) -> AsyncIterator[httpx.AsyncClient]:
    """Start ``app``'s lifespan (broker, relay, consumers) and give an HTTP client to it."""
    async with LifespanManager(app, startup_timeout=60, shutdown_timeout=60) as manager:
        transport = httpx.ASGITransport(app=manager.app)
        async with httpx.AsyncClient(transport=transport, base_url="http://service") as client:
            yield client


def isolation_key() -> str:
    """A fresh namespace for one test's topics, database and consumer groups."""
    return f"i{uuid.uuid4().hex[:8]}."


@dataclass(frozen=True)
class Record:
    topic: str
    key: bytes | None
    value: bytes
    headers: dict[str, bytes]
    offset: int
    partition: int

    def json(self) -> Any:
        return orjson.loads(self.value)


@dataclass(frozen=True)
class Outgoing:
    """One message to publish as it is: raw bytes, a key, headers."""

    value: bytes
    key: bytes | None = None
    headers: Sequence[tuple[str, bytes]] = ()


async def publish_all(bootstrap: str, topic: str, messages: Iterable[Outgoing]) -> None:
    """Publish ``messages`` in order with one idempotent producer; returns once Kafka
    acknowledged every one."""
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, enable_idempotence=True, acks="all")
    await producer.start()
    try:
        for message in messages:
            await producer.send(topic, message.value, key=message.key, headers=list(message.headers))
        await producer.flush()
    finally:
        await producer.stop()


async def publish_raw(bootstrap: str, topic: str, value: bytes, key: bytes | None = None) -> None:
    await publish_all(bootstrap, topic, [Outgoing(value, key)])


async def topic_size(bootstrap: str, topic: str) -> int:
    """How many records ``topic`` holds (its partitions' end offsets); 0 if it does not exist."""
    consumer, producer = (
        AIOKafkaConsumer(bootstrap_servers=bootstrap),
        AIOKafkaProducer(bootstrap_servers=bootstrap),
    )
    await consumer.start()
    await producer.start()
    try:
        if topic not in await consumer.topics():
            return 0
        partitions = [TopicPartition(topic, p) for p in await producer.partitions_for(topic)]
        return sum((await consumer.end_offsets(partitions)).values())
    finally:
        await producer.stop()
        await consumer.stop()


async def read_topic(
    bootstrap: str,
    topic: str,
    *,
    until: Callable[[list[Record]], bool],
    timeout: float = 30.0,
) -> list[Record]:
    """Read ``topic`` from the beginning until ``until(records)`` holds (or fail on timeout)."""
    consumer = AIOKafkaConsumer(
        bootstrap_servers=bootstrap, enable_auto_commit=False, auto_offset_reset="earliest"
    )
    await consumer.start()
    records: list[Record] = []
    deadline = time.monotonic() + timeout
    try:
        while True:
            partitions = consumer.partitions_for_topic(topic)
            if partitions:
                break
            if time.monotonic() > deadline:
                raise AssertionError(f"topic {topic} never appeared")
            # aiokafka has no public "describe this topic" on a consumer: ask its client.
            consumer._client.add_topic(topic)
            await consumer._client.force_metadata_update()
            await asyncio.sleep(0.1)
        consumer.assign([TopicPartition(topic, p) for p in sorted(partitions)])
        await consumer.seek_to_beginning()
        while not until(records):
            if time.monotonic() > deadline:
                raise AssertionError(f"timed out on {topic}; read {len(records)} records")
            batch = await consumer.getmany(timeout_ms=200)
            for messages in batch.values():
                records.extend(
                    Record(
                        topic=m.topic,
                        key=m.key,
                        value=m.value,
                        headers={k: v for k, v in m.headers},
                        offset=m.offset,
                        partition=m.partition,
                    )
                    for m in messages
                )
        return records
    finally:
        await consumer.stop()


def sample_sum(registry: Any, name: str, **labels: str) -> float:
    """The sum of a metric's samples whose labels include ``labels`` (a counter split by more
    labels than the test cares about, e.g. the dead letters' ``source``)."""
    return sum(
        float(sample.value)
        for family in registry.collect()
        for sample in family.samples
        if sample.name == name and labels.items() <= sample.labels.items()
    )


async def eventually(check: Callable[[], Any], *, timeout: float = 30.0, interval: float = 0.2) -> Any:
    """Await ``check()`` until it returns a truthy value without raising AssertionError."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            result = check()
            if asyncio.iscoroutine(result):
                result = await result
            if result:
                return result
        except AssertionError:
            if time.monotonic() > deadline:
                raise
        if time.monotonic() > deadline:
            raise AssertionError("condition not met in time")
        await asyncio.sleep(interval)


IMPORT_ACTIVE = ("queued", "running")


async def started_import(
    http: httpx.AsyncClient, path: str, body: bytes, content_type: str, **params: str
) -> str:
    """Upload ``body`` to an import route (``/imports/<object>``); the job's location (202)."""
    # No params: keep a query string written into ``path`` (httpx replaces it with ``params``).
    response = await http.post(
        path, params=params or None, content=body, headers={"content-type": content_type}
    )
    assert response.status_code == 202, response.text
    location: str = response.headers["location"]
    return location


async def import_ended(http: httpx.AsyncClient, location: str, *, timeout: float = 120) -> dict[str, Any]:
    """The import job at ``location`` once it is no longer queued or running."""

    async def ended() -> dict[str, Any] | None:
        job: dict[str, Any] = (await http.get(location)).json()
        return job if job["state"] not in IMPORT_ACTIVE else None

    job: dict[str, Any] = await eventually(ended, timeout=timeout)
    return job


async def import_rejections(http: httpx.AsyncClient, job: Mapping[str, Any]) -> list[dict[str, str]]:
    """The job's rejected rows as its CSV lists them (row, external_id, column, value, reason)."""
    response = await http.get(job["rejections"])
    assert response.status_code == 200 and response.headers["content-type"].startswith("text/csv")
    return list(csv.DictReader(io.StringIO(response.text)))


@dataclass(frozen=True)
class RunningService:
    name: str
    base_url: str
    pid: int
    log_path: Path


SERVICE_MODULES = {
    "leads": "crm_leads",
    "opportunities": "crm_opportunities",
    "campaigns": "crm_campaigns",
    "reporting": "crm_reporting",
}


@asynccontextmanager
async def running_services(
    infra: InfraLike,
    names: Sequence[str],
    *,
    log_dir: Path,
    isolation: str,
    extra_env: Mapping[str, str] | None = None,
    ready_timeout: float = 90.0,
) -> AsyncIterator[dict[str, RunningService]]:
    """Run services as real processes (``python -m crm_<name>`` with uvicorn on loopback), as
    the README's start command does, and stop each by its pid afterwards."""
    started: dict[str, RunningService] = {}
    try:
        for name in names:
            port = free_port()
            settings = service_env(infra, name, isolation=isolation)
            env = dict(os.environ)
            env.update({f"CRM_{key.upper()}": str(value) for key, value in settings.items()})
            env.update(CRM_HTTP_HOST="127.0.0.1", CRM_HTTP_PORT=str(port), PYTHONUNBUFFERED="1")
            env.update(extra_env or {})
            log_path = log_dir / f"{name}.log"
            proc = spawn(
                [sys.executable, "-m", SERVICE_MODULES[name]],
                log_path=log_path,
                tag=f"crm-test-{isolation}{name}",
                env=env,
            )
            started[name] = RunningService(name, f"http://127.0.0.1:{port}", proc.pid, log_path)
        async with httpx.AsyncClient(timeout=2.0) as client:
            for service in started.values():
                await _wait_ready(client, service, ready_timeout)
        yield started
    finally:
        for service in reversed(list(started.values())):
            await asyncio.to_thread(stop_pid, service.pid)


async def _wait_ready(client: httpx.AsyncClient, service: RunningService, seconds: float) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if not pid_alive(service.pid):
            raise AssertionError(f"{service.name} exited:\n{tail(service.log_path)}")
        try:
            if (await client.get(service.base_url + "/health/ready")).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        await asyncio.sleep(0.3)
    raise AssertionError(f"{service.name} not ready in {seconds}s:\n{tail(service.log_path)}")


TRANSACTION_ENDS = frozenset({"commitTransaction", "abortTransaction", "endSessions"})


class CommandCounter(monitoring.CommandListener):
    """The database commands a client sends, for round-trip tests (a batch of 4 and one of 40
    must send the same commands). With ``collections``, only commands on those collections are
    kept, as ``"<command> <collection>"``; otherwise every command's name not in ``ignore``."""

    def __init__(self, collections: Iterable[str] | None = None, ignore: Iterable[str] = ()) -> None:
        self.collections = frozenset(collections) if collections is not None else None
        self.ignore = frozenset(ignore)
        self.commands: list[str] = []

    def started(self, event: monitoring.CommandStartedEvent) -> None:
        if self.collections is None:
            if event.command_name not in self.ignore:
                self.commands.append(event.command_name)
            return
        target = event.command.get(event.command_name)
        if isinstance(target, str) and target in self.collections:
            self.commands.append(f"{event.command_name} {target}")

    def succeeded(self, event: monitoring.CommandSucceededEvent) -> None:
        pass

    def failed(self, event: monitoring.CommandFailedEvent) -> None:
        pass
