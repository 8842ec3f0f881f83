"""Structured JSON logs on stdout, each line carrying the current trace and span id; and the
outage throttle that keeps a Kafka (or database) outage to a few lines instead of thousands."""

from __future__ import annotations

import logging
import sys
import time
from collections.abc import Callable, Iterable
from datetime import UTC, datetime
from typing import Any

import orjson
from aiokafka.errors import KafkaError
from opentelemetry import trace
from prometheus_client import CollectorRegistry, Gauge

_STANDARD_ATTRS = frozenset(vars(logging.makeLogRecord({})).keys()) | {"message", "asctime"}


class JsonFormatter(logging.Formatter):
    def __init__(self, service: str) -> None:
        super().__init__()
        self.service = service

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "ts": datetime.fromtimestamp(record.created, UTC).isoformat(),
            "level": record.levelname.lower(),
            "logger": record.name,
            "service": self.service,
            "message": record.getMessage(),
        }
        span = trace.get_current_span().get_span_context()
        if span.is_valid:
            entry["trace_id"] = format(span.trace_id, "032x")
            entry["span_id"] = format(span.span_id, "016x")
        for key, value in vars(record).items():
            if key not in _STANDARD_ATTRS and not key.startswith("_"):
                entry[key] = value
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return orjson.dumps(entry, default=str).decode()


def configure_logging(service: str, level: str) -> None:
    handler = logging.StreamHandler(sys.stdout)
    handler.setFormatter(JsonFormatter(service))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    for noisy in ("aiokafka", "pymongo"):
        logging.getLogger(noisy).setLevel(max(logging.WARNING, logging.getLevelName(level)))
    # uvicorn installs its own handlers; route them through ours.
    for name in ("uvicorn", "uvicorn.error", "uvicorn.access"):
        logging.getLogger(name).handlers[:] = []
        logging.getLogger(name).propagate = True


# -- outages ------------------------------------------------------------------------------------
OUTAGE_LOGGER = logging.getLogger("crm.outage")
Clock = Callable[[], float]


def describe_duration(seconds: float) -> str:
    """``45s``, ``2m``, ``3m12s``, ``1h5m``: how long an outage has lasted, for people."""
    whole = max(0, int(seconds))
    hours, rest = divmod(whole, 3600)
    minutes, secs = divmod(rest, 60)
    if hours:
        return f"{hours}h{minutes}m" if minutes else f"{hours}h"
    if minutes:
        return f"{minutes}m{secs}s" if secs else f"{minutes}m"
    return f"{secs}s"


def describe_error(error: BaseException | str) -> str:
    if isinstance(error, str):
        return error[:500]
    text, name = str(error), type(error).__name__
    # aiokafka's errors already start with their class name.
    return (text if text.startswith(name) else f"{name}: {text}")[:500]


SETTLE_SECONDS = 5.0


class OutageLog:
    """How one component reports the outage of something it depends on without flooding the
    log. The first failure of an outage is one ERROR line with the error; repeats are only
    counted, and summarised at most once per ``summary_seconds`` as a WARNING ("kafka
    unreachable for 2m, 1,234 failed attempts"); a success once nothing has failed for
    ``settle_seconds`` ends it with one INFO line ("kafka reachable again after 3m12s", up to
    the first success after the last failure). The settling keeps a broker that is coming
    back (a request that works, the next that fails) to one outage; a component whose
    successes are not periodic (it may not get another) passes 0. The next failure after the
    end starts a new outage."""

    def __init__(
        self,
        component: str,
        resource: str = "kafka",
        *,
        summary_seconds: float = 60.0,
        settle_seconds: float = SETTLE_SECONDS,
        logger: logging.Logger = OUTAGE_LOGGER,
        clock: Clock = time.monotonic,
        on_change: Callable[[bool], None] | None = None,
    ) -> None:
        self.component = component
        self.resource = resource
        self.summary_seconds = summary_seconds
        self.settle_seconds = settle_seconds
        self._logger = logger
        self._clock = clock
        self._on_change = on_change
        self._since: float | None = None
        self._last_failure = 0.0
        self._last_summary = 0.0
        self._healthy_since: float | None = None  # the first success after the last failure
        self.failures = 0
        self.last_error = ""

    @property
    def down(self) -> bool:
        return self._since is not None

    def failed(self, error: BaseException | str, *, announce: bool = True) -> bool:
        """Count one failure. True when it is the first of an outage, which ``announce`` logs
        as the ERROR line (a caller that shows its own first line passes False)."""
        now = self._clock()
        self.last_error = describe_error(error)
        self._last_failure = now
        self._healthy_since = None
        if self._since is None:
            self._since = self._last_summary = now
            self.failures = 1
            if self._on_change is not None:
                self._on_change(True)
            if announce:
                self._logger.error(
                    "%s: %s unreachable: %s",
                    self.component,
                    self.resource,
                    self.last_error,
                    extra=self._fields(now) | {"error": self.last_error},
                )
            return True
        self.failures += 1
        if now - self._last_summary >= self.summary_seconds:
            self._last_summary = now
            self._logger.warning(
                "%s: %s unreachable for %s, %s failed attempts",
                self.component,
                self.resource,
                describe_duration(now - self._since),
                f"{self.failures:,}",
                extra=self._fields(now) | {"last_error": self.last_error},
            )
        return False

    def recovered(self, *, announce: bool = True) -> None:
        """The component reached the resource: ends the outage once it has settled."""
        if self._since is None:
            return
        now = self._clock()
        if self._healthy_since is None:
            self._healthy_since = now
        if now - self._last_failure < self.settle_seconds:
            return
        if announce:
            self._logger.info(
                "%s: %s reachable again after %s, %s failed attempts",
                self.component,
                self.resource,
                describe_duration(self._healthy_since - self._since),
                f"{self.failures:,}",
                extra=self._fields(self._healthy_since),
            )
        self._since = self._healthy_since = None
        self.failures = 0
        if self._on_change is not None:
            self._on_change(False)

    def _fields(self, now: float) -> dict[str, Any]:
        assert self._since is not None
        return {
            "component": self.component,
            "resource": self.resource,
            "outage_seconds": round(now - self._since, 1),
            "failed_attempts": self.failures,
        }


class Outages:
    """Makes a service's outage logs, and exports which are open as the gauge
    ``crm_outage_active{component, resource}`` (1 while an outage lasts), so a dashboard or an
    alert sees the outage the log reports once."""

    def __init__(
        self,
        registry: CollectorRegistry | None = None,
        *,
        summary_seconds: float = 60.0,
        clock: Clock = time.monotonic,
    ) -> None:
        self.summary_seconds = summary_seconds
        self._clock = clock
        self._gauge = (
            Gauge(
                "crm_outage_active",
                "1 while a component of the service counts an outage of a resource it depends on",
                ["component", "resource"],
                registry=registry,
            )
            if registry is not None
            else None
        )

    def log(
        self, component: str, resource: str = "kafka", *, settle_seconds: float = SETTLE_SECONDS
    ) -> OutageLog:
        gauge = self._gauge.labels(component, resource) if self._gauge is not None else None
        if gauge is not None:
            gauge.set(0)
        return OutageLog(
            component,
            resource,
            summary_seconds=self.summary_seconds,
            settle_seconds=settle_seconds,
            clock=self._clock,
            on_change=(lambda down: gauge.set(int(down))) if gauge is not None else None,
        )


# The loggers of aiokafka's modules (a filter on a logger sees only the records it creates, not
# its children's); ``install`` adds any other ``aiokafka.*`` logger that exists by then.
AIOKAFKA_LOGGERS = (
    "aiokafka",
    "aiokafka.admin.client",
    "aiokafka.cluster",
    "aiokafka.conn",
    "aiokafka.consumer.consumer",
    "aiokafka.consumer.fetcher",
    "aiokafka.consumer.group_coordinator",
    "aiokafka.consumer.subscription_state",
    "aiokafka.coordinator.assignors.abstract",
    "aiokafka.coordinator.assignors.roundrobin",
    "aiokafka.helpers",
    "aiokafka.producer.producer",
    "aiokafka.producer.sender",
)


def _is_kafka_error(record: logging.LogRecord) -> bool:
    return record.exc_info is not None and isinstance(record.exc_info[1], KafkaError)


class KafkaClientLogThrottle(logging.Filter):
    """A ``logging.Filter`` for the Kafka client libraries' loggers, which log every failed
    connect, fetch, heartbeat and produce while the broker is away (about 100 lines a second
    per service). Per logger, the first warning or error of an outage passes unchanged; the
    repeats are held back, counted and summarised through an ``OutageLog``; ``recovered()``,
    called whenever the service reaches Kafka, ends the outage of each logger that has been
    quiet for ``settle_seconds`` (with one INFO line when something was held back), so the
    next outage shows its first line again. On FastStream's
    logger only records carrying a ``KafkaError`` count; everything else passes."""

    def __init__(self, outages: Outages | None = None) -> None:
        super().__init__()
        self._factory = outages or Outages()
        self._outages: dict[str, OutageLog] = {}

    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno < logging.WARNING:
            return True
        if not record.name.startswith("aiokafka") and not _is_kafka_error(record):
            return True
        outage = self._outages.get(record.name)
        if outage is None:
            outage = self._outages[record.name] = self._factory.log(record.name)
        return outage.failed(record.getMessage(), announce=False)

    def recovered(self) -> None:
        for outage in self._outages.values():
            outage.recovered(announce=outage.failures > 1)

    def install(self, extra_loggers: Iterable[str] = ()) -> None:
        """Attach to aiokafka's loggers and ``extra_loggers`` (the broker's), replacing any
        throttle a previous runtime in this process attached."""
        present = [name for name in logging.root.manager.loggerDict if name.startswith("aiokafka")]
        for name in {*AIOKAFKA_LOGGERS, *present, *extra_loggers}:
            logger = logging.getLogger(name)
            for old in [f for f in logger.filters if isinstance(f, KafkaClientLogThrottle)]:
                logger.removeFilter(old)
            logger.addFilter(self)
