"""The ``infra`` fixture: a real Kafka and SecantusDB (or whatever the environment provides)."""

from __future__ import annotations

import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient
from crm_localinfra._proc import live_pid, pid_alive, spawn, stop_pid, write_pid
from crm_localinfra.kafka import fetch_kafka
from crm_localinfra.pytest_plugin import Infra, local_infra_of
from pymongo import AsyncMongoClient


def test_plugin_import_is_cheap() -> None:
    # Loaded by every pytest run of the repo: must not pull in the Kafka/Mongo/Docker clients.
    code = (
        "import sys, crm_localinfra.pytest_plugin\n"
        "heavy = [m for m in ('aiokafka', 'pymongo', 'testcontainers', 'docker') if m in sys.modules]\n"
        "assert not heavy, heavy\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)


def test_stop_pid_terminates_and_tag_guards_pid_files(tmp_path: Path) -> None:
    pid_file = tmp_path / "sleeper.pid"
    proc = spawn(
        [sys.executable, "-c", "import time; time.sleep(60)"],
        log_path=tmp_path / "sleeper.log",
        tag="test:sleeper",
        pid_path=pid_file,
    )
    # Right after fork the child still shows our environment; its own appears once it has exec'd.
    deadline = time.monotonic() + 10
    while live_pid(pid_file, "test:sleeper") is None and time.monotonic() < deadline:
        time.sleep(0.05)
    assert live_pid(pid_file, "test:sleeper") == proc.pid
    # A pid file naming a live process that is not ours must not be trusted.
    assert live_pid(pid_file, "test:someone-else") is None
    assert stop_pid(proc.pid, timeout=10) is True
    assert not pid_alive(proc.pid)
    write_pid(pid_file, proc.pid)
    assert live_pid(pid_file, "test:sleeper") is None


def test_stop_pid_kills_a_process_that_ignores_sigterm(tmp_path: Path) -> None:
    code = (
        "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); "
        "print('up', flush=True); time.sleep(60)"
    )
    log = tmp_path / "stubborn.log"
    proc = spawn([sys.executable, "-c", code], log_path=log, tag="test:stubborn")
    deadline = time.monotonic() + 10
    while "up" not in log.read_text() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert stop_pid(proc.pid, timeout=0.5) is False  # needed SIGKILL
    assert not pid_alive(proc.pid)
    assert proc.wait(timeout=5) == -signal.SIGKILL


def test_watchdog_stops_targets_when_the_owner_dies(tmp_path: Path) -> None:
    sleep = [sys.executable, "-c", "import time; time.sleep(60)"]
    owner = spawn(sleep, log_path=tmp_path / "owner.log", tag="test:owner")
    target_pid_file = tmp_path / "target.pid"
    target = spawn(sleep, log_path=tmp_path / "target.log", tag="test:target", pid_path=target_pid_file)
    watchdog = spawn(
        [sys.executable, "-m", "crm_localinfra._watchdog", str(owner.pid), f"{target_pid_file}=test:target"],
        log_path=tmp_path / "watchdog.log",
        tag="test:watchdog",
    )
    try:
        time.sleep(0.5)
        assert pid_alive(target.pid) and pid_alive(watchdog.pid)
        owner.kill()
        owner.wait(timeout=5)
        assert watchdog.wait(timeout=30) == 0
        assert target.wait(timeout=5) is not None
        assert not target_pid_file.exists()
    finally:
        for p in (owner, target, watchdog):
            stop_pid(p.pid, timeout=2)


@pytest.mark.integration
def test_infra_fixture_starts_kafka_and_mongo(infra: Infra, kafka_bootstrap: str, mongo_url: str) -> None:
    assert infra.kafka_bootstrap == kafka_bootstrap
    assert infra.mongo_url == mongo_url
    assert infra.topic_prefix == f"t{infra.run_id}."
    assert infra.database_prefix == f"t{infra.run_id}_"
    # Lower-case alphanumerics (str.islower is False for all digits: about 6 % of run ids).
    assert re.fullmatch(r"[a-z0-9]{1,12}", infra.run_id), infra.run_id
    stack = local_infra_of(infra)
    if stack is not None:
        assert stack.kafka.pid is not None and stack.mongo.pid is not None
        assert "directConnection=true" in infra.mongo_url


@pytest.mark.integration
def test_kafka_classpath_is_cached(infra: Infra, monkeypatch: pytest.MonkeyPatch) -> None:
    if local_infra_of(infra) is None:
        pytest.skip("Kafka does not run from Maven jars here")

    def no_maven(*args: object, **kwargs: object) -> None:
        raise AssertionError("Maven must not run again once the classpath is cached")

    monkeypatch.setattr(subprocess, "run", no_maven)
    jars = fetch_kafka()
    names = {j.name for j in jars}
    assert any(n.startswith("kafka_2.13-4.") for n in names)
    assert any(n.startswith("log4j-slf4j-impl-") for n in names)


@pytest.mark.integration
async def test_idempotent_produce_and_consumer_group_round_trip(infra: Infra) -> None:
    topic = infra.topic("localinfra.round_trip")
    group = f"{infra.topic_prefix}localinfra-group"
    producer = AIOKafkaProducer(bootstrap_servers=infra.kafka_bootstrap, enable_idempotence=True, acks="all")
    await producer.start()
    try:
        for i in range(20):
            await producer.send_and_wait(topic, f"v{i}".encode(), key=f"k{i % 4}".encode())
    finally:
        await producer.stop()

    async def consume(expected: int) -> list[bytes]:
        consumer = AIOKafkaConsumer(
            topic,
            bootstrap_servers=infra.kafka_bootstrap,
            group_id=group,
            enable_auto_commit=False,
            auto_offset_reset="earliest",
        )
        await consumer.start()
        got: list[bytes] = []
        try:
            deadline = time.monotonic() + 30
            while len(got) < expected and time.monotonic() < deadline:
                batch = await consumer.getmany(timeout_ms=500)
                got += [m.value for msgs in batch.values() for m in msgs if m.value is not None]
            await consumer.commit()
        finally:
            await consumer.stop()
        return got

    first = await consume(20)
    assert sorted(first) == sorted(f"v{i}".encode() for i in range(20))
    # Same group again: committed offsets hold, so only the new message arrives.
    producer = AIOKafkaProducer(bootstrap_servers=infra.kafka_bootstrap, enable_idempotence=True, acks="all")
    await producer.start()
    try:
        await producer.send_and_wait(topic, b"late", key=b"k0")
    finally:
        await producer.stop()
    assert await consume(1) == [b"late"]

    admin = AIOKafkaAdminClient(bootstrap_servers=infra.kafka_bootstrap)
    await admin.start()
    try:
        topics = await admin.describe_topics([topic])
        assert len(topics[0]["partitions"]) == 3  # num.partitions default of the local broker
    finally:
        await admin.close()


@pytest.mark.integration
async def test_mongo_transaction_commits_and_aborts(infra: Infra) -> None:
    client: AsyncMongoClient[dict[str, object]] = AsyncMongoClient(infra.mongo_url)
    db = client[infra.database("localinfra_tx")]
    try:
        async with client.start_session() as session:
            async with await session.start_transaction():
                await db.accounts.insert_one({"_id": "a1", "name": "Acme"}, session=session)
                await db.outbox.insert_one({"_id": "e1", "type": "account.created"}, session=session)
        assert await db.accounts.find_one({"_id": "a1"}) is not None
        assert await db.outbox.find_one({"_id": "e1"}) is not None

        with pytest.raises(RuntimeError):
            async with client.start_session() as session:
                async with await session.start_transaction():
                    await db.accounts.insert_one({"_id": "a2"}, session=session)
                    raise RuntimeError("abort")
        assert await db.accounts.find_one({"_id": "a2"}) is None
    finally:
        await client.drop_database(db.name)
        await client.close()


@pytest.mark.integration
async def test_kafka_restart_keeps_data(disposable_infra: Infra) -> None:
    infra = disposable_infra  # this test restarts its broker: never the shared one
    topic = infra.topic("localinfra.restart")
    producer = AIOKafkaProducer(bootstrap_servers=infra.kafka_bootstrap, enable_idempotence=True, acks="all")
    await producer.start()
    try:
        meta = await producer.send_and_wait(topic, b"before-restart", key=b"k")
    finally:
        await producer.stop()
    stack = local_infra_of(infra)
    old_pid = stack.kafka.pid if stack is not None else None

    await infra.astop_kafka()
    if stack is not None:
        assert stack.kafka.pid is None
        assert old_pid is not None and not pid_alive(old_pid)
    await infra.astart_kafka()
    if stack is not None:
        assert stack.kafka.pid not in (None, old_pid)

    consumer = AIOKafkaConsumer(bootstrap_servers=infra.kafka_bootstrap, enable_auto_commit=False)
    await consumer.start()
    try:
        tp = TopicPartition(topic, meta.partition)
        consumer.assign([tp])
        consumer.seek(tp, meta.offset)
        batch = await consumer.getmany(tp, timeout_ms=10_000)
        assert [m.value for m in batch.get(tp, [])][:1] == [b"before-restart"]
    finally:
        await consumer.stop()


def test_no_stray_processes_from_this_module() -> None:
    # Guard for the unit tests above: their children are reaped, nothing of theirs keeps running.
    for entry in Path("/proc").glob("[0-9]*"):
        try:
            environ = (entry / "environ").read_bytes()
        except OSError:
            continue
        assert b"CRM_LOCALINFRA_TAG=test:" not in environ, f"stray test process {entry.name}"
