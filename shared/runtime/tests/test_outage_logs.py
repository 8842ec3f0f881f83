"""The outage throttle: a component's outage is one ERROR line, a summary at most once per
interval and one INFO line when it ends; the Kafka clients' own loggers show their first
line of an outage and hold back the repeats."""

from __future__ import annotations

import importlib
import logging
import sys

import pytest
from aiokafka.errors import KafkaConnectionError
from crm_runtime.logs import (
    AIOKAFKA_LOGGERS,
    KafkaClientLogThrottle,
    OutageLog,
    Outages,
    describe_duration,
)
from prometheus_client import CollectorRegistry


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def lines(caplog: pytest.LogCaptureFixture) -> pytest.LogCaptureFixture:
    caplog.set_level(logging.DEBUG, logger="crm.outage")
    return caplog


def outage_lines(caplog: pytest.LogCaptureFixture) -> list[tuple[str, str]]:
    return [(r.levelname, r.getMessage()) for r in caplog.records if r.name == "crm.outage"]


@pytest.mark.parametrize(
    ("seconds", "text"),
    [(0.4, "0s"), (45, "45s"), (120, "2m"), (192, "3m12s"), (3600, "1h"), (3900, "1h5m")],
)
def test_durations_read_like_people_write_them(seconds: float, text: str) -> None:
    assert describe_duration(seconds) == text


def test_an_outage_is_one_error_then_summaries_per_interval_then_one_info(
    clock: FakeClock, lines: pytest.LogCaptureFixture
) -> None:
    outage = OutageLog("outbox relay", summary_seconds=60, clock=clock)
    assert outage.failed(KafkaConnectionError("Connection at 127.0.0.1:9092 closed")) is True
    for _ in range(1233):  # 8 a second for about two and a half minutes
        clock.now += 0.125
        assert outage.failed(KafkaConnectionError("closed")) is False
    clock.now += 40.875
    outage.recovered()
    assert outage_lines(lines) == [
        (
            "ERROR",
            "outbox relay: kafka unreachable: KafkaConnectionError: Connection at 127.0.0.1:9092 closed",
        ),
        ("WARNING", "outbox relay: kafka unreachable for 1m, 481 failed attempts"),
        ("WARNING", "outbox relay: kafka unreachable for 2m, 961 failed attempts"),
        ("INFO", "outbox relay: kafka reachable again after 3m15s, 1,234 failed attempts"),
    ]
    first = next(r for r in lines.records if r.levelname == "ERROR")
    assert first.__dict__["component"] == "outbox relay" and first.__dict__["resource"] == "kafka"
    assert "Connection at 127.0.0.1:9092 closed" in first.__dict__["error"]
    assert not outage.down


def test_the_next_outage_logs_its_first_error_again_and_success_alone_logs_nothing(
    clock: FakeClock, lines: pytest.LogCaptureFixture
) -> None:
    outage = OutageLog("lag monitor", summary_seconds=5, clock=clock)
    outage.recovered()  # never down: nothing to say
    outage.failed("first outage")
    clock.now += 10
    outage.recovered()
    clock.now += 100
    outage.failed("second outage")
    outage.failed("again")
    assert [level for level, _ in outage_lines(lines)] == ["ERROR", "INFO", "ERROR"]
    assert outage_lines(lines)[2][1] == "lag monitor: kafka unreachable: second outage"


def record(name: str, level: int, message: str, exc: BaseException | None = None) -> logging.LogRecord:
    exc_info = (type(exc), exc, None) if exc is not None else None
    return logging.LogRecord(name, level, __file__, 1, message, (), exc_info)


def test_kafka_client_loggers_show_the_first_line_of_an_outage_and_hold_back_repeats(
    clock: FakeClock, lines: pytest.LogCaptureFixture
) -> None:
    throttle = KafkaClientLogThrottle(Outages(summary_seconds=10, clock=clock))
    shown = []
    for n in range(500):
        clock.now += 0.0625
        for name in ("aiokafka", "aiokafka.consumer.fetcher"):
            if throttle.filter(record(name, logging.ERROR, f"Unable connect to node with id 1 ({n})")):
                shown.append((name, n))
    assert shown == [("aiokafka", 0), ("aiokafka.consumer.fetcher", 0)]
    # Informational lines are never held back, nor warnings of other loggers.
    assert throttle.filter(record("aiokafka.consumer.group_coordinator", logging.INFO, "joined group"))
    assert throttle.filter(record("crm_leads.api", logging.WARNING, "something else"))
    throttle.recovered()  # Kafka answers, but the clients failed a moment ago: not settled yet
    assert [m for level, m in outage_lines(lines) if level == "INFO"] == []
    clock.now += 5
    throttle.recovered()
    summaries = [m for level, m in outage_lines(lines) if level == "WARNING" and m.startswith("aiokafka:")]
    assert summaries == [
        "aiokafka: kafka unreachable for 10s, 161 failed attempts",
        "aiokafka: kafka unreachable for 20s, 321 failed attempts",
        "aiokafka: kafka unreachable for 30s, 481 failed attempts",
    ]
    assert [m for level, m in outage_lines(lines) if level == "INFO"] == [
        "aiokafka: kafka reachable again after 31s, 500 failed attempts",
        "aiokafka.consumer.fetcher: kafka reachable again after 31s, 500 failed attempts",
    ]
    # A new outage shows its first line again.
    assert throttle.filter(record("aiokafka", logging.ERROR, "Unable connect to node with id 1"))
    assert not throttle.filter(record("aiokafka", logging.ERROR, "Unable connect to node with id 1"))


def test_a_single_client_warning_ends_without_a_recovery_line(
    clock: FakeClock, lines: pytest.LogCaptureFixture
) -> None:
    throttle = KafkaClientLogThrottle(Outages(summary_seconds=10, clock=clock))
    assert throttle.filter(record("aiokafka.consumer.group_coordinator", logging.WARNING, "rebalancing"))
    clock.now += 5
    throttle.recovered()
    assert outage_lines(lines) == []
    assert throttle.filter(record("aiokafka.consumer.group_coordinator", logging.WARNING, "rebalancing"))


def test_a_relapse_before_the_outage_settles_is_the_same_outage(
    clock: FakeClock, lines: pytest.LogCaptureFixture
) -> None:
    """A broker coming back answers one request and fails the next: still one ERROR line."""
    outage = OutageLog("outbox relay", summary_seconds=60, settle_seconds=5, clock=clock)
    assert outage.failed("broker away")
    for _ in range(29):  # a retry a second
        clock.now += 1
        outage.failed("broker away")
    clock.now += 0.5
    outage.recovered()  # a first answer
    clock.now += 0.5
    assert not outage.failed("GroupCoordinatorNotAvailableError")  # and a relapse
    clock.now += 0.5
    outage.recovered()  # the first success after the last failure: the outage ends here
    clock.now += 3
    outage.recovered()  # not quiet long enough yet
    assert outage.down
    clock.now += 2
    outage.recovered()
    assert not outage.down
    assert outage_lines(lines) == [
        ("ERROR", "outbox relay: kafka unreachable: broker away"),
        ("INFO", "outbox relay: kafka reachable again after 30s, 31 failed attempts"),
    ]


def test_without_settling_the_first_success_ends_the_outage(
    clock: FakeClock, lines: pytest.LogCaptureFixture
) -> None:
    outage = OutageLog("consumer", "mongodb", settle_seconds=0, clock=clock)
    outage.failed("no primary")
    clock.now += 12
    outage.recovered()
    assert outage_lines(lines)[-1] == (
        "INFO",
        "consumer: mongodb reachable again after 12s, 1 failed attempts",
    )


def test_only_kafka_errors_on_faststreams_logger_are_held_back(clock: FakeClock) -> None:
    throttle = KafkaClientLogThrottle(Outages(clock=clock))
    kafka_error = KafkaConnectionError("broker away")
    assert throttle.filter(record("crm.kafka", logging.ERROR, "Kafka error occurred", kafka_error))
    assert not throttle.filter(record("crm.kafka", logging.ERROR, "Kafka error occurred", kafka_error))
    # A handler's failure is not an outage symptom: it always shows.
    for _ in range(3):
        assert throttle.filter(record("crm.kafka", logging.ERROR, "handler failed", ValueError("bad")))


def test_installing_again_replaces_the_previous_throttle() -> None:
    first, second = KafkaClientLogThrottle(), KafkaClientLogThrottle()
    try:
        first.install(["crm.kafka"])
        second.install(["crm.kafka"])
        for name in (*AIOKAFKA_LOGGERS, "crm.kafka"):
            throttles = [f for f in logging.getLogger(name).filters if isinstance(f, KafkaClientLogThrottle)]
            assert throttles == [second], name
    finally:
        for name in (*AIOKAFKA_LOGGERS, "crm.kafka"):
            logging.getLogger(name).removeFilter(second)


def test_every_aiokafka_logger_is_throttled() -> None:
    """aiokafka creates its loggers at import; a new module's logger must not slip through."""
    for package in ("aiokafka.admin", "aiokafka.consumer", "aiokafka.producer"):
        importlib.import_module(package)
    names = {
        module.log.name
        for name, module in list(sys.modules.items())
        if name.startswith("aiokafka") and isinstance(getattr(module, "log", None), logging.Logger)
    }
    assert names and names <= set(AIOKAFKA_LOGGERS), names - set(AIOKAFKA_LOGGERS)


def test_open_outages_show_as_a_gauge_until_they_end(clock: FakeClock) -> None:
    registry = CollectorRegistry()
    outages = Outages(registry, clock=clock)
    relay = outages.log("outbox relay", "mongodb")

    def active() -> float | None:
        labels = {"component": "outbox relay", "resource": "mongodb"}
        return registry.get_sample_value("crm_outage_active", labels)

    assert active() == 0.0  # known before anything fails, so an alert has a series to watch
    relay.failed("no primary")
    assert active() == 1.0
    clock.now += 10
    relay.recovered()
    assert active() == 0.0
