"""What the benchmarks share: the servers they run against (started here, or given), a bound
on their running time, and percentiles.

Each ``bench_*.py`` is run as a script (``./crm bench NAME``), so this module is imported from
the scripts' own directory.
"""

from __future__ import annotations

import asyncio
import os
import re
import shutil
import signal
import sys
import tempfile
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, replace
from pathlib import Path

from aiokafka import AIOKafkaProducer
from crm_localinfra._proc import free_ports
from crm_localinfra.mongo import SecantusServer
from crm_localinfra.stack import LocalInfra
from crm_localinfra.testing import read_topic

CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


@dataclass(frozen=True)
class BenchInfra:
    """Where a benchmark's services connect (``service_env``/``running_services`` read it);
    ``mongo_pid`` and ``kafka_pid`` are known when the servers were started here, for CPU
    accounting."""

    kafka_bootstrap: str
    mongo_url: str
    topic_prefix: str = "bench."
    database_prefix: str = "bench_"
    mongo_pid: int | None = None
    kafka_pid: int | None = None


def percentile(samples: list[float], p: float) -> float:
    """The sample at rank ``p`` percent (nearest rank)."""
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, round(p / 100 * (len(ordered) - 1)))]


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process so far (fields 14 and 15 of /proc/<pid>/stat)."""
    stat = Path(f"/proc/{pid}/stat").read_text()
    fields = stat[stat.rindex(")") + 2 :].split()  # the command name may hold spaces
    return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS


def _status_mb(pid: int, field: str) -> float | None:
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return None
    match = re.search(rf"{field}:\s+(\d+) kB", status)
    return int(match.group(1)) / 1024 if match else None


def peak_rss_mb(pid: int) -> float | None:
    """The process's peak resident memory so far (VmHWM), None once it is gone."""
    return _status_mb(pid, "VmHWM")


def rss_mb(pid: int) -> float | None:
    """The process's resident memory now (VmRSS), None once it is gone."""
    return _status_mb(pid, "VmRSS")


async def produce_and_consume(bootstrap: str, messages: list[tuple[bytes, bytes]]) -> float:
    """Seconds to produce ``messages`` (key, value) to a new bare topic, acks from all replicas
    and idempotent as the services' producers are, and read them all back."""
    topic = f"bench.scratch.{uuid.uuid4().hex[:8]}"
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, enable_idempotence=True, acks="all")
    await producer.start()
    try:
        started = time.perf_counter()
        sent = [await producer.send(topic, value, key=key) for key, value in messages]
        await asyncio.gather(*sent)
        await read_topic(bootstrap, topic, until=lambda records: len(records) >= len(messages), timeout=300)
        return time.perf_counter() - started
    finally:
        await producer.stop()


def run_bounded(
    name: str,
    work: Callable[[BenchInfra, Path], Awaitable[None]],
    *,
    deadline_seconds: float,
    mongo_cache: str | None = None,
    keep_files: bool = False,
) -> None:
    """Run ``work`` against ``CRM_TEST_KAFKA_BOOTSTRAP``/``CRM_TEST_MONGO_URL`` when both are
    set, else against Apache Kafka and SecantusDB started here on free loopback ports and
    stopped by pid afterwards, whatever happens. ``work`` gets the servers and a scratch
    directory (for logs); it is cancelled after ``deadline_seconds``."""

    def bounded(infra: BenchInfra, root: Path) -> None:
        asyncio.run(asyncio.wait_for(work(infra, root), deadline_seconds))

    # A SIGTERM (e.g. from timeout) unwinds like Ctrl-C, so the servers are stopped all the same.
    signal.signal(signal.SIGTERM, lambda *_: (_ for _ in ()).throw(KeyboardInterrupt()))

    external_kafka, external_mongo = (
        os.environ.get("CRM_TEST_KAFKA_BOOTSTRAP"),
        os.environ.get("CRM_TEST_MONGO_URL"),
    )
    root = Path(tempfile.mkdtemp(prefix=f"crm-bench-{name}-"))
    (root / "logs").mkdir()
    try:
        if external_kafka and external_mongo:
            bounded(BenchInfra(external_kafka, external_mongo), root)
            return
        kafka_port, controller_port, mongo_port = free_ports(3)
        local = LocalInfra(
            root, kafka_port=kafka_port, kafka_controller_port=controller_port, mongo_port=mongo_port
        )
        if mongo_cache is not None:
            local.mongo = SecantusServer(replace(local.mongo.config, cache_size=mongo_cache))
        print("starting Kafka and SecantusDB on loopback ...", file=sys.stderr)
        try:
            local.start()
            bounded(
                BenchInfra(
                    local.kafka_bootstrap,
                    local.mongo_url,
                    mongo_pid=local.mongo.pid,
                    kafka_pid=local.kafka.pid,
                ),
                root,
            )
        finally:
            local.stop()  # by pid
    finally:
        if keep_files:
            print(f"files kept in {root}", file=sys.stderr)
        else:
            shutil.rmtree(root, ignore_errors=True)
