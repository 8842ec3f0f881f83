"""Kafka + SecantusDB together under one state directory (used by the CLI and the pytest plugin).

Layout of a state dir: ``kafka/`` (config + ``data/``), ``mongo/`` (config + ``data/``),
``logs/`` (kafka.log, kafka.stdout.log, secantusdb.log, <service>.log) and ``pids/``.
"""

from __future__ import annotations

import contextlib
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from crm_localinfra import secantus_rs
from crm_localinfra.kafka import KafkaBroker, KafkaConfig
from crm_localinfra.mongo import MongoConfig, SecantusServer

KAFKA = "kafka"
SECANTUSDB = "secantusdb"


@dataclass(frozen=True)
class Layout:
    """File locations inside one state directory."""

    root: Path

    @property
    def kafka_dir(self) -> Path:
        return self.root / "kafka"

    @property
    def mongo_dir(self) -> Path:
        return self.root / "mongo"

    @property
    def logs(self) -> Path:
        return self.root / "logs"

    @property
    def pids(self) -> Path:
        return self.root / "pids"

    def log_file(self, name: str) -> Path:
        return self.logs / f"{name}.log"

    def pid_file(self, name: str) -> Path:
        return self.pids / f"{name}.pid"

    def service_tag(self, name: str) -> str:
        return f"service:{name}:{self.root.resolve()}"

    def kafka_config(
        self,
        *,
        broker_port: int = 9092,
        controller_port: int = 9093,
        num_partitions: int = 3,
        heap: str = "512m",
    ) -> KafkaConfig:
        return KafkaConfig(
            data_dir=self.kafka_dir,
            broker_port=broker_port,
            controller_port=controller_port,
            num_partitions=num_partitions,
            heap=heap,
            log_file=self.log_file(KAFKA),
            pid_file=self.pid_file(KAFKA),
        )

    def mongo_config(self, *, port: int = 27017, server: secantus_rs.ServerKind = "python") -> MongoConfig:
        return MongoConfig(
            data_dir=self.mongo_dir,
            port=port,
            log_file=self.log_file(SECANTUSDB),
            pid_file=self.pid_file(SECANTUSDB),
            server=server,
        )


class LocalInfra:
    """A Kafka broker and a SecantusDB server that start in parallel and stop in order."""

    def __init__(
        self,
        root: Path,
        *,
        kafka_port: int = 9092,
        kafka_controller_port: int = 9093,
        mongo_port: int = 27017,
        num_partitions: int = 3,
        kafka_heap: str = "512m",
        mongo_server: secantus_rs.ServerKind | None = None,
    ) -> None:
        """``mongo_server`` None: as ``CRM_MONGO_SERVER`` says (``secantus_rs.resolve``)."""
        self.layout = Layout(root)
        self.kafka = KafkaBroker(
            self.layout.kafka_config(
                broker_port=kafka_port,
                controller_port=kafka_controller_port,
                num_partitions=num_partitions,
                heap=kafka_heap,
            )
        )
        self.mongo = SecantusServer(
            self.layout.mongo_config(port=mongo_port, server=mongo_server or secantus_rs.resolve())
        )

    @property
    def kafka_bootstrap(self) -> str:
        return self.kafka.bootstrap

    @property
    def mongo_url(self) -> str:
        return self.mongo.url

    def start(self, timeout: float = 120.0) -> tuple[bool, bool]:
        """Start whatever is not running yet; returns (kafka started now, mongo started now).

        Both start concurrently: the JVM needs seconds, SecantusDB about one, and on two cores
        overlapping them still saves most of the SecantusDB time. If either fails, the other
        one (if we started it here) is stopped again before the error propagates.
        """
        start_kafka = not self.kafka.is_running()
        start_mongo = not self.mongo.is_running()
        with ThreadPoolExecutor(max_workers=2, thread_name_prefix="crm-localinfra") as pool:
            fk = pool.submit(self.kafka.start, timeout) if start_kafka else None
            fm = pool.submit(self.mongo.start, timeout) if start_mongo else None
            errors: list[BaseException] = []
            for fut in (fk, fm):
                if fut is None:
                    continue
                try:
                    fut.result()
                except BaseException as exc:
                    errors.append(exc)
        if errors:
            if start_kafka:
                with contextlib.suppress(Exception):
                    self.kafka.stop()
            if start_mongo:
                with contextlib.suppress(Exception):
                    self.mongo.stop()
            raise errors[0]
        return start_kafka, start_mongo

    def stop(self) -> None:
        """Stop Kafka first (it holds no MongoDB state), then SecantusDB."""
        try:
            self.kafka.stop()
        finally:
            self.mongo.stop()
