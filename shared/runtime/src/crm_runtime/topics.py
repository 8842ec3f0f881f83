"""The topics a service reads and writes, and what the delivery guarantees need of them: event
topics keep every event (a rebuild replays from offset 0), dead-letter topics keep a parked
message long enough to replay it, and both are replicated as configured.

At start the service creates the missing ones with those settings and checks the existing ones
against them. It never alters a topic (the platform team owns them): a mismatch is logged once,
exported as ``crm_topic_config_mismatch`` and shown in ``/health/ready``'s details."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.admin.config_resource import ConfigResource, ConfigResourceType
from crm_contracts.catalog import DLQ_SUFFIX
from prometheus_client import CollectorRegistry, Gauge
from pydantic import BaseModel

from .kafka import aiokafka_options
from .settings import ServiceSettings

log = logging.getLogger(__name__)

KEEP_FOREVER = -1
# Kafka error codes that mean "another replica got there first" (TOPIC_ALREADY_EXISTS).
_ALREADY_EXISTS = 36
CHECKED_SETTINGS = (
    "exists",
    "partitions",
    "replication.factor",
    "min.insync.replicas",
    "retention.ms",
    "retention.bytes",
    "cleanup.policy",
)


@dataclass(frozen=True)
class TopicRequirement:
    """What one topic (logical name) must offer the service."""

    topic: str
    physical: str
    partitions: int
    replication_factor: int
    min_insync_replicas: int
    retention_ms: int

    @property
    def configs(self) -> dict[str, str]:
        """The topic-level configs set when the service creates the topic."""
        return {
            "cleanup.policy": "delete",
            "retention.ms": str(self.retention_ms),
            "retention.bytes": str(KEEP_FOREVER),
            "min.insync.replicas": str(self.min_insync_replicas),
        }


def requirement(settings: ServiceSettings, topic: str) -> TopicRequirement:
    dead_letters = topic.endswith(DLQ_SUFFIX)
    return TopicRequirement(
        topic=topic,
        physical=settings.topic(topic),
        partitions=settings.kafka_topic_partitions,
        replication_factor=settings.kafka_replication_factor,
        min_insync_replicas=settings.kafka_min_insync_replicas,
        retention_ms=settings.kafka_dlq_retention_ms if dead_letters else settings.kafka_topic_retention_ms,
    )


class TopicMismatch(BaseModel):
    topic: str
    setting: str
    actual: str
    expected: str


@dataclass(frozen=True)
class ObservedTopic:
    """A topic as the cluster describes it (``None``: it does not exist)."""

    partitions: int
    replication_factor: int
    configs: dict[str, str]


def _at_least(setting: str, actual: int, needed: int) -> TopicMismatch | None:
    return (
        None
        if actual >= needed
        else TopicMismatch(topic="", setting=setting, actual=str(actual), expected=f"at least {needed}")
    )


def _retention(actual: str | None, needed: int) -> TopicMismatch | None:
    value = int(actual) if actual is not None and actual.lstrip("-").isdigit() else None
    if needed == KEEP_FOREVER:
        ok = value == KEEP_FOREVER
        expected = "-1 (keep every event)"
    else:
        ok = value is not None and (value == KEEP_FOREVER or value >= needed)
        expected = f"at least {needed} or -1"
    return (
        None if ok else TopicMismatch(topic="", setting="retention.ms", actual=str(actual), expected=expected)
    )


def compare(needed: TopicRequirement, observed: ObservedTopic | None) -> list[TopicMismatch]:
    """Each way ``observed`` falls short of ``needed`` (more replicas, partitions or retention
    than needed is fine)."""
    if observed is None:
        return [TopicMismatch(topic=needed.topic, setting="exists", actual="missing", expected="present")]
    configs = observed.configs
    min_insync = configs.get("min.insync.replicas", "0")
    insync = int(min_insync) if min_insync.isdigit() else 0
    found = [
        _at_least("partitions", observed.partitions, needed.partitions),
        _at_least("replication.factor", observed.replication_factor, needed.replication_factor),
        _at_least("min.insync.replicas", insync, needed.min_insync_replicas),
        _retention(configs.get("retention.ms"), needed.retention_ms),
    ]
    if configs.get("retention.bytes") != str(KEEP_FOREVER):
        found.append(
            TopicMismatch(
                topic="", setting="retention.bytes", actual=str(configs.get("retention.bytes")), expected="-1"
            )
        )
    if configs.get("cleanup.policy") != "delete":
        # Compaction keeps only each key's latest event: a rebuild would miss the others.
        found.append(
            TopicMismatch(
                topic="",
                setting="cleanup.policy",
                actual=str(configs.get("cleanup.policy")),
                expected="delete",
            )
        )
    return [m.model_copy(update={"topic": needed.topic}) for m in found if m is not None]


async def ensure_topics(settings: ServiceSettings, topics: list[str]) -> list[str]:
    """Create the service's topics (logical names) that do not exist yet, with the partitions,
    replication, min.insync.replicas and retention they need, instead of relying on broker
    auto-creation. Returns the physical names it created."""
    if not settings.kafka_create_topics or not topics:
        return []
    admin = AIOKafkaAdminClient(**aiokafka_options(settings))
    await admin.start()
    try:
        existing = set(await admin.list_topics())
        needed = [requirement(settings, t) for t in sorted(set(topics))]
        missing = [r for r in needed if r.physical not in existing]
        if missing:
            response = await admin.create_topics(
                [
                    NewTopic(r.physical, r.partitions, r.replication_factor, topic_configs=r.configs)
                    for r in missing
                ]
            )
            for name, code, *_ in getattr(response, "topic_errors", []):
                if code not in (0, _ALREADY_EXISTS):
                    raise RuntimeError(f"could not create topic {name}: error code {code}")
        return [r.physical for r in missing]
    finally:
        await admin.close()


async def describe(admin: AIOKafkaAdminClient, physical: list[str]) -> dict[str, ObservedTopic]:
    """The partitions, replication factor and topic configs of the existing ``physical`` topics."""
    shapes: dict[str, tuple[int, int]] = {}
    for topic in await admin.describe_topics(physical):
        partitions = topic.get("partitions") or []
        if topic.get("error_code", 0) == 0 and partitions:
            replicas = min(len(p.get("replicas") or ()) for p in partitions)
            shapes[topic["topic"]] = (len(partitions), replicas)
    if not shapes:
        return {}
    responses = await admin.describe_configs(
        [ConfigResource(ConfigResourceType.TOPIC, name) for name in sorted(shapes)]
    )
    configs: dict[str, dict[str, str]] = {}
    for response in responses:
        for resource in response.to_object()["resources"]:
            entries: list[dict[str, Any]] = resource["config_entries"]
            configs[resource["resource_name"]] = {
                e["config_names"]: e["config_value"] for e in entries if e["config_value"] is not None
            }
    return {
        name: ObservedTopic(partitions=p, replication_factor=r, configs=configs.get(name, {}))
        for name, (p, r) in shapes.items()
    }


class TopicCheck:
    """The start-time check of the service's topics, its metric and its health detail."""

    def __init__(self, settings: ServiceSettings, registry: CollectorRegistry) -> None:
        self._settings = settings
        self.mismatches: list[TopicMismatch] | None = None  # None: not checked yet
        self.error: str | None = None
        self.gauge = Gauge(
            "crm_topic_config_mismatch",
            "1 when a topic the service reads or writes falls short of what it needs for a "
            "setting (checked at start), else 0",
            ["topic", "setting"],
            registry=registry,
        )

    async def run(self, topics: list[str]) -> list[TopicMismatch]:
        """Check ``topics`` (logical names); a failure to ask Kafka is logged, never raised."""
        needed = [requirement(self._settings, t) for t in sorted(set(topics))]
        admin = AIOKafkaAdminClient(**aiokafka_options(self._settings))
        try:
            await admin.start()
            observed = await describe(admin, [r.physical for r in needed])
        except Exception as exc:
            self.error = type(exc).__name__
            log.warning("could not check the topics' configuration", extra={"error": f"{exc}"[:300]})
            return []
        finally:
            await admin.close()
        mismatches = [m for r in needed for m in compare(r, observed.get(r.physical))]
        self.record(needed, mismatches)
        return mismatches

    def record(self, needed: list[TopicRequirement], mismatches: list[TopicMismatch]) -> None:
        self.mismatches, self.error = mismatches, None
        for r in needed:
            for setting in CHECKED_SETTINGS:
                self.gauge.labels(r.topic, setting).set(0)
        for m in mismatches:
            self.gauge.labels(m.topic, m.setting).set(1)
            log.warning(
                "topic configuration falls short of what the service needs",
                extra={"topic": m.topic, "setting": m.setting, "actual": m.actual, "expected": m.expected},
            )

    async def detail(self) -> dict[str, Any]:
        """The ``topics`` section of ``/health/ready`` (informational: never unready)."""
        if self.mismatches is None:
            return {"status": "unknown", **({"error": self.error} if self.error else {})}
        return {
            "status": "mismatch" if self.mismatches else "ok",
            "mismatches": [m.model_dump() for m in self.mismatches],
        }
