"""The merger: keeps folding the live generation's deltas into its counters, in the background,
and never lets one delta hold up the others.

While events stream in, it lets deltas gather for up to ``gather_seconds`` (or until
``MERGE_AFTER_EVENTS`` events are pending), so that many events' differences to the same
counters become one update; views trail consumption by about that long.

A merge that fails because of the database or the network is tried again after a pause. A
merge that fails for any other reason is retried one delta at a time, oldest first; a delta
that fails alone (while the database answers) is *set aside* (``Generation.set_aside``: kept
with the reason in ``view_deltas_set_aside``, its events counted as handled) and merging goes
on. ``python -m crm_reporting.set_aside retry`` puts set-aside deltas back after a fix.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from datetime import UTC, datetime
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge
from pymongo.errors import ConnectionFailure, ExecutionTimeout, OperationFailure, PyMongoError, WTimeoutError

from .repository import (
    MERGE_AFTER_EVENTS,
    MERGE_BATCH,
    MERGE_MAX_KEYS,
    Generation,
    Merged,
    ReportingRepository,
)

log = logging.getLogger(__name__)

# Server error codes of a database that is away, busy or changing primaries, not of a delta.
TRANSIENT_CODES = frozenset({6, 7, 50, 89, 91, 112, 189, 251, 262, 9001, 10107, 11600, 11602, 13435, 13436})
TRANSIENT_LABELS = ("TransientTransactionError", "UnknownTransactionCommitResult", "RetryableWriteError")
SET_ASIDE_CENSUS_SECONDS = 10.0  # how often the set-aside gauge is recounted (the CLI changes it)
RETRY_PAUSE_SECONDS = 1.0


def is_transient(exc: BaseException) -> bool:
    """Whether a failure is the database's or the network's (try again later) rather than the
    delta's (no retry will help)."""
    if isinstance(exc, ConnectionFailure | ExecutionTimeout | WTimeoutError | OSError):
        return True  # ConnectionFailure covers AutoReconnect, NetworkTimeout, server selection
    if isinstance(exc, PyMongoError) and any(exc.has_error_label(label) for label in TRANSIENT_LABELS):
        return True
    return isinstance(exc, OperationFailure) and exc.code in TRANSIENT_CODES


class Merger:
    def __init__(
        self,
        repo: ReportingRepository,
        registry: CollectorRegistry,
        max_keys: int = MERGE_MAX_KEYS,
        gather_seconds: float = 1.0,
        idle_seconds: float = 0.2,
    ) -> None:
        self._repo = repo
        self._max_keys = max_keys
        self._gather = gather_seconds
        self._idle = idle_seconds
        self._task: asyncio.Task[None] | None = None
        self._singles = 0  # deltas still to merge one at a time after a batch failed
        self._failing_since: datetime | None = None
        self._last_error: str | None = None
        self._last_merge: datetime | None = None
        self._pending = 0
        self._set_aside = 0
        self.deltas_merged = Counter(
            "crm_reporting_deltas_merged", "View deltas folded into the counters", registry=registry
        )
        self.counter_updates = Counter(
            "crm_reporting_counter_updates",
            "Counter documents written by merges (the views' write load)",
            registry=registry,
        )
        self.merge_failures = Counter(
            "crm_reporting_merge_failures",
            "Merges that failed: transient (database, network: retried) or permanent (a delta)",
            ["kind"],
            registry=registry,
        )
        for kind in ("transient", "permanent"):
            self.merge_failures.labels(kind)
        self.deltas_set_aside = Counter(
            "crm_reporting_deltas_set_aside",
            "View deltas the merger could not apply and set aside",
            registry=registry,
        )
        self.set_aside_gauge = Gauge(
            "crm_reporting_set_aside_deltas",
            "View deltas set aside now (python -m crm_reporting.set_aside list)",
            registry=registry,
        )
        self.last_merge_gauge = Gauge(
            "crm_reporting_last_merge_timestamp_seconds",
            "When a merge last succeeded (Unix time; 0: not yet)",
            registry=registry,
        )
        self.pending_gauge = Gauge(
            "crm_reporting_pending_events",
            "Events folded into the facts whose differences are not merged into the views yet",
            registry=registry,
        )

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="reporting-merger")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    async def health(self) -> dict[str, Any]:
        """The merger's state for ``/health/ready`` (detail only: reads work regardless)."""
        if self._task is not None and self._task.done():
            status = "stopped"
        elif self._failing_since is not None:
            status = "failing"
        else:
            status = "deltas_set_aside" if self._set_aside else "ok"
        state: dict[str, Any] = {
            "status": status,
            "last_merge": _iso(self._last_merge),
            "pending_events": self._pending,
            "set_aside_deltas": self._set_aside,
        }
        if self._failing_since is not None:
            state["failing_since"] = _iso(self._failing_since)
            state["last_error"] = self._last_error
        return state

    # -- one merge ----------------------------------------------------------------------------
    async def step(self, generation: Generation) -> Merged:
        """One merge of ``generation``'s oldest deltas. A batch that fails for a reason other
        than the database is followed by merges of one delta at a time; a delta that fails
        alone is set aside. Transient failures are raised (the caller pauses and retries)."""
        client = self._repo.client
        if not self._singles:
            try:
                merged = await generation.merge(client, max_keys=self._max_keys)
            except Exception as exc:
                if is_transient(exc):
                    raise
                self._failed("permanent", exc)
                log.warning("a merge failed: merging its deltas one at a time", extra=_error(exc))
                self._singles = MERGE_BATCH
                return Merged(0, 0)
            return self._succeeded(merged)
        oldest = await generation.oldest_delta()
        if oldest is None:
            self._singles = 0
            return Merged(0, 0)
        try:
            merged = await generation.merge(client, max_keys=self._max_keys, only=oldest)
        except Exception as exc:
            if is_transient(exc) or not await self._database_answers():
                raise
            self._failed("permanent", exc)
            self._singles = 0
            if await generation.set_aside(client, oldest, exc):
                self.deltas_set_aside.inc()
                log.error(
                    "a view delta could not be applied and was set aside",
                    extra={**_error(exc), "delta_id": str(oldest), "generation": generation.number},
                )
            await self._count_set_aside(generation)
            return Merged(0, 0)
        self._singles -= 1
        return self._succeeded(merged)

    def _succeeded(self, merged: Merged) -> Merged:
        self.deltas_merged.inc(merged.deltas)
        self.counter_updates.inc(merged.counter_updates)
        self._last_merge = datetime.now(UTC)
        self.last_merge_gauge.set(time.time())
        self._failing_since = self._last_error = None
        return merged

    def _failed(self, kind: str, exc: BaseException) -> None:
        self.merge_failures.labels(kind).inc()
        if self._failing_since is None:
            self._failing_since = datetime.now(UTC)
        self._last_error = type(exc).__name__

    async def _database_answers(self) -> bool:
        try:
            await self._repo.db.command("ping")
        except PyMongoError:
            return False
        return True

    async def _count_set_aside(self, generation: Generation) -> None:
        self._set_aside = await generation.set_aside_count()
        self.set_aside_gauge.set(self._set_aside)

    # -- the loop -----------------------------------------------------------------------------
    async def _run(self) -> None:
        waiting_since: float | None = None
        loop = asyncio.get_running_loop()
        next_census = 0.0
        while True:
            try:
                generation = await self._repo.live()
                if loop.time() >= next_census:
                    await self._count_set_aside(generation)
                    next_census = loop.time() + SET_ASIDE_CENSUS_SECONDS
                self._pending = await generation.pending()
                self.pending_gauge.set(self._pending)
                if self._pending and waiting_since is None:
                    waiting_since = loop.time()
                if (
                    self._singles
                    or self._pending >= MERGE_AFTER_EVENTS
                    or (waiting_since is not None and loop.time() - waiting_since >= self._gather)
                ):
                    await self.step(generation)
                    waiting_since = None
                    continue
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # the database away: try again after a pause
                self._failed("transient", exc)
                log.warning("merging view deltas failed", extra=_error(exc))
                await asyncio.sleep(RETRY_PAUSE_SECONDS)
            await asyncio.sleep(self._idle)


def _error(exc: BaseException) -> dict[str, str]:
    return {"error": type(exc).__name__, "reason": str(exc)[:300]}


def _iso(moment: datetime | None) -> str | None:
    return moment.isoformat(timespec="seconds") if moment else None
