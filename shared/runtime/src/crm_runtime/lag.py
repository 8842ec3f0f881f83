"""Consumer lag of the service's group: how many messages of each consumed topic wait to be
applied. Exported as a Prometheus gauge (and used by readers of projections to say how fresh
they are).

Every replica measures the whole group's lag, so each pod exports the same figure: aggregate it
with ``max by (consumergroup, topic)`` (then sum over topics), never by summing over pods, or
N replicas count it N times (the chart's alert and the documented autoscaling query do so)."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable

from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient
from prometheus_client import CollectorRegistry, Gauge

from .kafka import aiokafka_options
from .logs import Outages
from .settings import ServiceSettings


class LagMonitor:
    def __init__(
        self,
        settings: ServiceSettings,
        registry: CollectorRegistry,
        interval: float = 5.0,
        *,
        outages: Outages | None = None,
        on_kafka_reachable: Callable[[], None] = lambda: None,
    ) -> None:
        self._settings = settings
        self._topics: list[str] = []
        self._interval = interval
        self._task: asyncio.Task[None] | None = None
        self.by_topic: dict[str, int] = {}
        # Measuring every few seconds makes the monitor the service's steadiest view of Kafka.
        outages = outages or Outages(summary_seconds=settings.log_outage_summary_seconds)
        self._outage = outages.log("lag monitor")
        self._on_kafka_reachable = on_kafka_reachable
        self.gauge = Gauge(
            "crm_consumer_lag",
            "Messages not yet consumed by the service's group, per logical topic: the whole "
            "group's figure, the same on every replica (aggregate with max by topic, not sum)",
            ["consumergroup", "topic"],
            registry=registry,
        )

    @property
    def total(self) -> int | None:
        return sum(self.by_topic.values()) if self.by_topic else None

    def watch(self, topics: list[str]) -> None:
        """Measure the lag of ``topics`` (logical names) for the service's consumer group."""
        self._topics = topics

    def start(self, topics: list[str]) -> None:
        """Watch ``topics`` every interval in the background."""
        self.watch(topics)
        if topics:
            self._task = asyncio.create_task(self._run(), name="lag-monitor")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    async def _run(self) -> None:
        options = aiokafka_options(self._settings)
        admin = AIOKafkaAdminClient(**options)
        probe = AIOKafkaConsumer(enable_auto_commit=False, **options)
        try:
            await admin.start()
            await probe.start()
            while True:
                try:
                    await self.measure(admin, probe)
                except Exception as exc:  # Kafka away: keep the last figures, try again
                    self._outage.failed(exc)
                else:
                    self._outage.recovered()
                    self._on_kafka_reachable()
                await asyncio.sleep(self._interval)
        finally:
            await probe.stop()
            await admin.close()

    async def measure(self, admin: AIOKafkaAdminClient, probe: AIOKafkaConsumer) -> dict[str, int]:
        committed = await admin.list_consumer_group_offsets(self._settings.group_id)
        partitions: list[TopicPartition] = []
        for topic in self._topics:
            physical = self._settings.topic(topic)
            probe._client.add_topic(physical)  # no public per-topic metadata refresh
            for partition in probe.partitions_for_topic(physical) or ():
                partitions.append(TopicPartition(physical, partition))
        if not partitions:
            await probe._client.force_metadata_update()
            return self.by_topic
        ends = await probe.end_offsets(partitions)
        lag: dict[str, int] = dict.fromkeys(self._topics, 0)
        prefix = len(self._settings.topic_prefix)
        for tp, end in ends.items():
            done = committed.get(tp)
            lag[tp.topic[prefix:]] += max(
                0, end - (done.offset if done is not None and done.offset >= 0 else 0)
            )
        for topic, value in lag.items():
            self.gauge.labels(self._settings.group_id, topic).set(value)
        self.by_topic = lag
        return lag
