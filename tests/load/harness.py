"""What the benchmarks share: the servers they run against (started here, or given), a bound
on their running time, and percentiles.

Each ``bench_*.py`` is run as a script (``./crm bench NAME``), so this module is imported from
the scripts' own directory.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import signal
import sys
import tempfile
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, replace
from pathlib import Path

from crm_localinfra._proc import free_ports
from crm_localinfra.mongo import SecantusServer
from crm_localinfra.stack import LocalInfra


@dataclass(frozen=True)
class BenchInfra:
    """Where a benchmark's services connect (``service_env``/``running_services`` read it);
    ``mongo_pid`` is known when the database was started here, for CPU accounting."""

    kafka_bootstrap: str
    mongo_url: str
    topic_prefix: str = "bench."
    database_prefix: str = "bench_"
    mongo_pid: int | None = None


def percentile(samples: list[float], p: float) -> float:
    """The sample at rank ``p`` percent (nearest rank)."""
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, round(p / 100 * (len(ordered) - 1)))]


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
            bounded(BenchInfra(local.kafka_bootstrap, local.mongo_url, mongo_pid=local.mongo.pid), root)
        finally:
            local.stop()  # by pid
    finally:
        if keep_files:
            print(f"files kept in {root}", file=sys.stderr)
        else:
            shutil.rmtree(root, ignore_errors=True)
