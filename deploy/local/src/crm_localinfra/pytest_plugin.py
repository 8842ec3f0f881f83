"""pytest plugin: a real Kafka and a real MongoDB-compatible server for integration tests.

Loaded for the whole repo with ``-p crm_localinfra.pytest_plugin``, so this module imports only
the standard library and pytest; everything heavy is imported when a test first asks for
``infra`` (pure unit-test runs start nothing).

Where the infrastructure comes from, in this order:

1. ``CRM_TEST_KAFKA_BOOTSTRAP`` and ``CRM_TEST_MONGO_URL`` both set: an existing cluster.
2. A Docker engine answers ``docker info``: testcontainers (``apache/kafka`` KRaft and
   ``mongo:7`` as a one-node replica set).
3. Otherwise local processes: Kafka from Maven Central and SecantusDB, on free loopback ports in
   a pytest temp dir, stopped at the end of the session.

``CRM_TEST_INFRA=external|docker|local`` forces one of them.
"""

from __future__ import annotations

import asyncio
import os
import secrets
import shutil
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

import pytest

if TYPE_CHECKING:
    from crm_localinfra.stack import LocalInfra

# The tag docker-compose.yml uses (known to exist); the local broker is 4.4.0 from Maven Central.
KAFKA_IMAGE = os.environ.get("CRM_TEST_KAFKA_IMAGE", "apache/kafka:4.1.0")
MONGO_IMAGE = os.environ.get("CRM_TEST_MONGO_IMAGE", "mongo:7")


class _Backend(Protocol):
    kind: str

    def stop_kafka(self) -> None: ...

    def start_kafka(self) -> None: ...

    def stop_mongo(self) -> None: ...

    def start_mongo(self) -> None: ...

    def close(self) -> None: ...


@dataclass(frozen=True)
class Infra:
    """Connection details of the session's Kafka and MongoDB, plus per-run name prefixes.

    Every test run gets its own ``run_id``; build topic names with ``topic_prefix`` and
    database names with ``database_prefix`` so runs never see each other's data.
    """

    kafka_bootstrap: str
    mongo_url: str
    run_id: str
    topic_prefix: str
    database_prefix: str
    backend: str = "local"
    _backend: _Backend | None = field(default=None, repr=False, compare=False)

    def topic(self, name: str) -> str:
        return self.topic_prefix + name

    def database(self, name: str) -> str:
        return self.database_prefix + name

    def service_env(self, service: str) -> dict[str, str]:
        """``CRM_*`` variables that point a service at this infra with this run's prefixes."""
        return {
            "CRM_KAFKA_BOOTSTRAP_SERVERS": self.kafka_bootstrap,
            "CRM_MONGO_URL": self.mongo_url,
            "CRM_TOPIC_PREFIX": self.topic_prefix,
            "CRM_MONGO_DATABASE": self.database(f"crm_{service}"),
        }

    def stop_kafka(self) -> None:
        """Stop the broker (graceful SIGTERM); its data dir and ports are kept for restart."""
        self._require_backend().stop_kafka()

    def start_kafka(self) -> None:
        """Start the broker again on the same ports and data; returns once it answers."""
        self._require_backend().start_kafka()

    async def astop_kafka(self) -> None:
        """``stop_kafka`` without blocking the running event loop."""
        await asyncio.to_thread(self.stop_kafka)

    async def astart_kafka(self) -> None:
        """``start_kafka`` without blocking the running event loop."""
        await asyncio.to_thread(self.start_kafka)

    async def astop_mongo(self) -> None:
        """Stop the database server (graceful SIGTERM); its data and port are kept for restart."""
        await asyncio.to_thread(self._require_backend().stop_mongo)

    async def astart_mongo(self) -> None:
        """Start the database server again on the same port and data; returns once it answers."""
        await asyncio.to_thread(self._require_backend().start_mongo)

    def _require_backend(self) -> _Backend:
        if self._backend is None or self.backend == "external":
            pytest.skip("external Kafka and MongoDB cannot be stopped by the tests")
        return self._backend


class _LocalBackend:
    kind = "local"

    def __init__(self, root: Path) -> None:
        from crm_localinfra._proc import free_ports
        from crm_localinfra.stack import LocalInfra

        kafka_port, controller_port, mongo_port = free_ports(3)
        self.stack: LocalInfra = LocalInfra(
            root, kafka_port=kafka_port, kafka_controller_port=controller_port, mongo_port=mongo_port
        )
        self._watchdog: int | None = None

    def start(self) -> None:
        import sys

        from crm_localinfra._proc import spawn

        layout = self.stack.layout
        kafka, mongo = self.stack.kafka.config, self.stack.mongo.config
        # Started first, so even a pytest killed during start-up leaves nothing running.
        self._watchdog = spawn(
            [
                sys.executable,
                "-m",
                "crm_localinfra._watchdog",
                str(os.getpid()),
                f"{kafka.pid_file}={kafka.tag}",
                f"{mongo.pid_file}={mongo.tag}",
            ],
            log_path=layout.log_file("watchdog"),
            tag=f"watchdog:{layout.root.resolve()}",
        ).pid
        self.stack.start(timeout=float(os.environ.get("CRM_TEST_INFRA_TIMEOUT", "180")))

    def stop_kafka(self) -> None:
        self.stack.kafka.stop()

    def start_kafka(self) -> None:
        self.stack.kafka.start()

    def stop_mongo(self) -> None:
        self.stack.mongo.stop()

    def start_mongo(self) -> None:
        self.stack.mongo.start()

    def close(self) -> None:
        from crm_localinfra._proc import stop_pid

        try:
            self.stack.stop()
        finally:
            if self._watchdog is not None:
                stop_pid(self._watchdog, timeout=5.0)


class _DockerBackend:  # pragma: no cover - needs a Docker engine, which CI here lacks
    kind = "docker"

    def __init__(self) -> None:
        self._kafka: Any = None
        self._mongo: Any = None
        self.kafka_bootstrap = ""
        self.mongo_url = ""

    def start(self) -> None:
        from testcontainers.core.container import DockerContainer

        from crm_localinfra._proc import free_port
        from crm_localinfra.kafka import new_cluster_id, wait_for_kafka
        from crm_localinfra.mongo import wait_for_mongo

        host = os.environ.get("TC_HOST", "localhost")
        # Same port inside and outside the container: the advertised listener must be the
        # address the host connects to, and a fixed mapping survives a container restart.
        port = free_port()
        kafka = DockerContainer(KAFKA_IMAGE)
        for key, value in {
            "CLUSTER_ID": new_cluster_id(),
            "KAFKA_NODE_ID": "1",
            "KAFKA_PROCESS_ROLES": "broker,controller",
            "KAFKA_LISTENERS": f"PLAINTEXT://:{port},CONTROLLER://:9093",
            "KAFKA_ADVERTISED_LISTENERS": f"PLAINTEXT://{host}:{port}",
            "KAFKA_CONTROLLER_LISTENER_NAMES": "CONTROLLER",
            "KAFKA_INTER_BROKER_LISTENER_NAME": "PLAINTEXT",
            "KAFKA_LISTENER_SECURITY_PROTOCOL_MAP": "CONTROLLER:PLAINTEXT,PLAINTEXT:PLAINTEXT",
            "KAFKA_CONTROLLER_QUORUM_VOTERS": "1@localhost:9093",
            "KAFKA_NUM_PARTITIONS": "3",
            "KAFKA_AUTO_CREATE_TOPICS_ENABLE": "true",
            "KAFKA_OFFSETS_TOPIC_REPLICATION_FACTOR": "1",
            "KAFKA_OFFSETS_TOPIC_NUM_PARTITIONS": "5",
            "KAFKA_TRANSACTION_STATE_LOG_REPLICATION_FACTOR": "1",
            "KAFKA_TRANSACTION_STATE_LOG_MIN_ISR": "1",
            "KAFKA_SHARE_COORDINATOR_STATE_TOPIC_REPLICATION_FACTOR": "1",
            "KAFKA_SHARE_COORDINATOR_STATE_TOPIC_MIN_ISR": "1",
            "KAFKA_GROUP_INITIAL_REBALANCE_DELAY_MS": "0",
        }.items():
            kafka.with_env(key, value)
        kafka.with_bind_ports(port, port)
        mongo = DockerContainer(MONGO_IMAGE)
        mongo.with_command("--replSet rs0 --bind_ip_all")
        mongo_port = free_port()
        mongo.with_bind_ports(27017, mongo_port)  # fixed, so a restarted container keeps it
        self._kafka = kafka.start()
        self._mongo = mongo.start()
        self.kafka_bootstrap = f"{host}:{port}"
        self.mongo_url = f"mongodb://{host}:{mongo_port}/?directConnection=true"
        wait_for_mongo(self.mongo_url, timeout=60)
        self._initiate_replica_set()
        wait_for_kafka(self.kafka_bootstrap, timeout=120)

    def _initiate_replica_set(self) -> None:
        from pymongo import MongoClient
        from pymongo.errors import OperationFailure

        client: MongoClient[dict[str, Any]] = MongoClient(self.mongo_url)
        try:
            try:
                client.admin.command(
                    "replSetInitiate",
                    {"_id": "rs0", "members": [{"_id": 0, "host": "localhost:27017"}]},
                )
            except OperationFailure as exc:
                if "already initialized" not in str(exc):
                    raise
            deadline = time.monotonic() + 60
            while not client.admin.command("hello").get("isWritablePrimary"):
                if time.monotonic() > deadline:
                    raise RuntimeError("mongo replica set did not elect a primary")
                time.sleep(0.2)
        finally:
            client.close()

    def stop_kafka(self) -> None:
        self._kafka.get_wrapped_container().stop(timeout=30)

    def start_kafka(self) -> None:
        from crm_localinfra.kafka import wait_for_kafka

        self._kafka.get_wrapped_container().start()
        wait_for_kafka(self.kafka_bootstrap, timeout=120)

    def stop_mongo(self) -> None:
        self._mongo.get_wrapped_container().stop(timeout=30)

    def start_mongo(self) -> None:
        from crm_localinfra.mongo import wait_for_mongo

        self._mongo.get_wrapped_container().start()
        wait_for_mongo(self.mongo_url, timeout=60)

    def close(self) -> None:
        for c in (self._kafka, self._mongo):
            if c is not None:
                c.stop()


class _ExternalBackend:
    kind = "external"

    def stop_kafka(self) -> None:
        raise NotImplementedError

    def start_kafka(self) -> None:
        raise NotImplementedError

    def stop_mongo(self) -> None:
        raise NotImplementedError

    def start_mongo(self) -> None:
        raise NotImplementedError

    def close(self) -> None:
        pass


def docker_available(timeout: float = 5.0) -> bool:
    """True if a Docker engine answers ``docker info`` quickly."""
    docker = shutil.which("docker")
    if docker is None:
        return False
    try:
        res = subprocess.run(
            [docker, "info"],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            timeout=timeout,
            check=False,
        )
    except (OSError, subprocess.TimeoutExpired):
        return False
    return res.returncode == 0


def _choose_backend() -> str:
    forced = os.environ.get("CRM_TEST_INFRA", "").strip().lower()
    if forced:
        if forced not in ("external", "docker", "local"):
            raise pytest.UsageError("CRM_TEST_INFRA must be one of external, docker, local")
        return forced
    kafka = os.environ.get("CRM_TEST_KAFKA_BOOTSTRAP")
    mongo = os.environ.get("CRM_TEST_MONGO_URL")
    if kafka and mongo:
        return "external"
    if kafka or mongo:
        raise pytest.UsageError("set both CRM_TEST_KAFKA_BOOTSTRAP and CRM_TEST_MONGO_URL, or neither")
    return "docker" if docker_available() else "local"


def new_run_id() -> str:
    """Short, unique per test run, lower-case alphanumeric (valid in topic and db names)."""
    return f"{int(time.time()) % 100_000:05d}{secrets.token_hex(3)}"


def _make_infra(kafka_bootstrap: str, mongo_url: str, backend: _Backend) -> Infra:
    run_id = new_run_id()
    return Infra(
        kafka_bootstrap=kafka_bootstrap,
        mongo_url=mongo_url,
        run_id=run_id,
        topic_prefix=f"t{run_id}.",
        database_prefix=f"t{run_id}_",
        backend=backend.kind,
        _backend=backend,
    )


@pytest.fixture(scope="session")
def infra(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Infra]:
    """The session's Kafka + MongoDB; started on first use, stopped at the end."""
    kind = _choose_backend()
    if kind == "external":
        from crm_localinfra.kafka import wait_for_kafka
        from crm_localinfra.mongo import wait_for_mongo

        bootstrap = os.environ.get("CRM_TEST_KAFKA_BOOTSTRAP", "")
        url = os.environ.get("CRM_TEST_MONGO_URL", "")
        if not (bootstrap and url):
            raise pytest.UsageError(
                "CRM_TEST_INFRA=external needs CRM_TEST_KAFKA_BOOTSTRAP and CRM_TEST_MONGO_URL"
            )
        wait_for_kafka(bootstrap, timeout=30)
        wait_for_mongo(url, timeout=30)
        yield _make_infra(bootstrap, url, _ExternalBackend())
        return
    yield from _own_servers(kind, tmp_path_factory, "crm-infra")


def _own_servers(kind: str, tmp_path_factory: pytest.TempPathFactory, name: str) -> Iterator[Infra]:
    """Kafka and MongoDB started here (Docker containers or local processes), stopped after."""
    backend: _DockerBackend | _LocalBackend
    if kind == "docker":
        backend = _DockerBackend()
    else:
        backend = _LocalBackend(tmp_path_factory.mktemp(name, numbered=True))
    try:
        backend.start()
        if isinstance(backend, _DockerBackend):
            yield _make_infra(backend.kafka_bootstrap, backend.mongo_url, backend)
        else:
            yield _make_infra(backend.stack.kafka_bootstrap, backend.stack.mongo_url, backend)
    finally:
        backend.close()


@pytest.fixture
def disposable_infra(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Infra]:
    """A Kafka and a MongoDB of this test alone, for a test that stops or restarts them: the
    session's servers are shared by every other test and are never stopped. Local processes
    (or Docker containers where an engine answers); with external infrastructure the test is
    skipped, since nothing here may stop it."""
    kind = _choose_backend()
    if kind == "external":
        pytest.skip("external Kafka and MongoDB cannot be stopped by the tests")
    yield from _own_servers(kind, tmp_path_factory, "crm-disposable-infra")


@pytest.fixture(scope="session")
def kafka_bootstrap(infra: Infra) -> str:
    """``host:port`` of the session's Kafka broker."""
    return infra.kafka_bootstrap


@pytest.fixture(scope="session")
def mongo_url(infra: Infra) -> str:
    """MongoDB connection string of the session's server (``directConnection=true``)."""
    return infra.mongo_url


def local_infra_of(infra: Infra) -> LocalInfra | None:
    """The local process stack behind ``infra`` (None for Docker or external infra)."""
    backend = infra._backend
    return backend.stack if isinstance(backend, _LocalBackend) else None
