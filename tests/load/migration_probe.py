"""What the migration benchmark watches while it runs: the CPU time and resident memory of each
process of the stack, the events on the run's topics, every HTTP request's duration, and the
services' Prometheus metrics."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass, field
from typing import Any

import httpx
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from harness import cpu_seconds, rss_mb
from prometheus_client.parser import text_string_to_metric_families

RSS_SAMPLE_SECONDS = 0.25


@dataclass
class Usage:
    """A phase's share of each process: CPU seconds used and the largest RSS sampled."""

    cpu: dict[str, float] = field(default_factory=dict)
    peak_rss: dict[str, float] = field(default_factory=dict)


class ProcessWatch:
    """Samples the resident memory of the stack's processes (by pid) in the background; a
    phase reads its CPU time and peak from ``phase()``."""

    def __init__(self, pids: Mapping[str, int]) -> None:
        self.pids = dict(pids)
        self._peaks: dict[str, float] = {}

    def _sample(self) -> None:
        for name, pid in self.pids.items():
            mb = rss_mb(pid)
            if mb is not None and mb > self._peaks.get(name, 0.0):
                self._peaks[name] = mb

    @contextlib.asynccontextmanager
    async def running(self) -> AsyncIterator[None]:
        async def sample() -> None:
            while True:
                self._sample()
                await asyncio.sleep(RSS_SAMPLE_SECONDS)

        task = asyncio.create_task(sample(), name="rss-sampler")
        try:
            yield
        finally:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    @contextlib.contextmanager
    def phase(self, usage: Usage) -> Any:
        """Fill ``usage`` with what the processes spent inside the ``with`` block."""
        before = {name: cpu_seconds(pid) for name, pid in self.pids.items()}
        self._sample()
        self._peaks = {}
        try:
            yield usage
        finally:
            self._sample()
            usage.cpu = {name: cpu_seconds(pid) - before[name] for name, pid in self.pids.items()}
            usage.peak_rss = dict(self._peaks)


class TopicCounter:
    """Events on the run's topics (the sum of their partitions' end offsets)."""

    def __init__(self, bootstrap: str, prefix: str) -> None:
        self._consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap)
        self._producer = AIOKafkaProducer(bootstrap_servers=bootstrap)  # it tells partitions
        self.prefix = prefix

    async def __aenter__(self) -> TopicCounter:
        await self._consumer.start()
        await self._producer.start()
        return self

    async def __aexit__(self, *_: object) -> None:
        await self._producer.stop()
        await self._consumer.stop()

    async def partitions(self) -> list[TopicPartition]:
        topics = sorted(t for t in await self._consumer.topics() if t.startswith(self.prefix))
        return [
            TopicPartition(topic, p)
            for topic in topics
            for p in sorted(await self._producer.partitions_for(topic))
        ]

    async def total(self) -> int:
        partitions = await self.partitions()
        return sum((await self._consumer.end_offsets(partitions)).values()) if partitions else 0


@dataclass
class Longest:
    seconds: float = 0.0
    request: str = ""


class TimedHttp:
    """An HTTP client that remembers the longest request of the current phase."""

    def __init__(self, client: httpx.AsyncClient) -> None:
        self.client = client
        self.longest = Longest()

    def reset(self) -> Longest:
        longest, self.longest = self.longest, Longest()
        return longest

    async def request(self, method: str, url: str, **options: Any) -> httpx.Response:
        """The response; raises httpx.TimeoutException (after noting how long it waited) when
        the service did not answer in time."""
        started = time.perf_counter()
        outcome = ""
        try:
            return await self.client.request(method, url, **options)
        except httpx.TimeoutException:
            outcome = " (no answer: timed out)"
            raise
        finally:
            held = time.perf_counter() - started
            if held > self.longest.seconds:
                self.longest = Longest(held, f"{method} {httpx.URL(url).path}{outcome}")


async def metrics(http: TimedHttp, base_url: str) -> dict[str, float]:
    """A service's ``/metrics`` summed per metric name over its labels."""
    response = await http.request("GET", f"{base_url}/metrics")
    response.raise_for_status()
    totals: dict[str, float] = {}
    for family in text_string_to_metric_families(response.text):
        for sample in family.samples:
            totals[sample.name] = totals.get(sample.name, 0.0) + sample.value
    return totals
