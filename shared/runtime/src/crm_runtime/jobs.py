"""Background jobs: long work (rescoring every lead, importing a file) done in batches by
whichever replica holds the job's lease, with progress anyone can read.

A job is a document in the service's own ``jobs`` collection: its kind, its state (queued,
running, done, failed, cancelled), its counters (total, processed, applied, failed), the
position the next batch starts from, and its times. A replica's runner claims a queued job, or
a running one whose lease expired (its replica crashed), and works it batch by batch. Each
batch runs in one transaction together with the job's new counters and position, written only
while this replica still owns the job: a batch is applied exactly once even if a replica dies
mid-batch or a stalled one loses its lease to another, and a job resumes where it stopped.
A kind's step function does one batch inside that transaction (events it emits go through the
outbox like any other change) and says how far it got.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from enum import StrEnum
from typing import Any, Self

from crm_contracts.envelope import utcnow
from pydantic import AwareDatetime, BaseModel, ConfigDict, Field
from pymongo import ASCENDING, DESCENDING, AsyncMongoClient, ReturnDocument
from pymongo.asynchronous.client_session import AsyncClientSession
from pymongo.asynchronous.database import AsyncDatabase
from pymongo.errors import ConnectionFailure, DuplicateKeyError, PyMongoError

from .logs import Outages
from .mongo import Document, in_transaction, to_bson
from .outbox import Outbox
from .settings import ServiceSettings
from .unit_of_work import UnitOfWork

log = logging.getLogger(__name__)

JOBS = "jobs"
# One document per exclusive kind while it has an active job, keyed by the kind: a second one
# cannot be inserted. (An ``_id`` rather than a unique secondary index: SecantusDB's Rust
# server keeps a unique index's old key after an update changes or unsets the field.)
JOB_LOCKS = "job_locks"
JOB_RETENTION_SECONDS = 30 * 24 * 3600  # finished jobs stay readable for a month
FAILED_BATCH_ATTEMPTS = 5


def _unowned(now: datetime) -> Document:
    """No replica works the job: never leased, handed back, or the lease ran out (a crash)."""
    return {"$or": [{"lease_until": None}, {"lease_until": {"$lt": now}}]}


class JobState(StrEnum):
    QUEUED = "queued"
    RUNNING = "running"
    DONE = "done"
    FAILED = "failed"
    CANCELLED = "cancelled"


ACTIVE_STATES = frozenset({JobState.QUEUED, JobState.RUNNING})
_ACTIVE = sorted(state.value for state in ACTIVE_STATES)


class JobFinished(Exception):
    """The job has ended already (done, failed or cancelled): there is nothing to cancel."""


class RedoBatch(Exception):
    """Raised by a step that learned something that changes its batch (e.g. a row that cannot
    be applied and must be left out): the batch's transaction is aborted and the batch runs
    again at once, not counted as a failed attempt. The step must make progress each time."""


class LeaseLost(Exception):
    """Another replica owns the job now (this one's lease expired): its batch is not applied."""


@dataclass(frozen=True)
class JobStep:
    """What one batch did: items read (``processed``), of which ``applied`` changed something
    and ``failed`` were refused; where the next batch starts; the total when the step knows
    it better than before; and whether the job is complete."""

    processed: int
    applied: int = 0
    failed: int = 0
    position: Any = None
    total: int | None = None
    done: bool = False


class Job(BaseModel):
    """A job as stored (runner bookkeeping such as the lease is left out)."""

    model_config = ConfigDict(frozen=True, extra="ignore")

    id: str
    kind: str
    state: JobState
    params: dict[str, Any] = Field(default_factory=dict)
    total: int | None = None
    processed: int = 0
    applied: int = 0
    failed: int = 0
    position: Any = None
    error: str | None = None
    cancel_requested: bool = False
    created_at: datetime
    started_at: datetime | None = None
    updated_at: datetime
    finished_at: datetime | None = None

    @property
    def finished(self) -> bool:
        return self.state not in ACTIVE_STATES

    @property
    def running_seconds(self) -> float | None:
        """From the start to the last progress (or the end)."""
        if self.started_at is None:
            return None
        return max(0.0, ((self.finished_at or self.updated_at) - self.started_at).total_seconds())

    @property
    def rate(self) -> float | None:
        """Items processed per second of the job's life so far."""
        seconds = self.running_seconds
        if seconds is None or seconds <= 0:
            return None
        return self.processed / seconds

    @property
    def eta_seconds(self) -> float | None:
        """Seconds left at the rate so far; 0 once done; unknown without a total or a rate."""
        if self.state is JobState.DONE:
            return 0.0
        rate = self.rate
        if self.finished or self.total is None or not rate:
            return None
        return max(0, self.total - self.processed) / rate

    def advanced(self, step: JobStep, now: datetime) -> Job:
        """The job after one batch of a running job."""
        self._require(JobState.RUNNING)
        return self.model_copy(
            update={
                "processed": self.processed + step.processed,
                "applied": self.applied + step.applied,
                "failed": self.failed + step.failed,
                "position": step.position,
                "total": step.total if step.total is not None else self.total,
                "state": JobState.DONE if step.done else JobState.RUNNING,
                "updated_at": now,
                "finished_at": now if step.done else None,
            }
        )

    def cancelled(self, now: datetime) -> Job:
        self._require(*ACTIVE_STATES)
        return self.model_copy(
            update={
                "state": JobState.CANCELLED,
                "cancel_requested": True,
                "updated_at": now,
                "finished_at": now,
            }
        )

    def failed_with(self, error: str, now: datetime) -> Job:
        self._require(*ACTIVE_STATES)
        return self.model_copy(
            update={"state": JobState.FAILED, "error": error[:1000], "updated_at": now, "finished_at": now}
        )

    def _require(self, *states: JobState) -> None:
        if self.state not in states:
            raise JobFinished(f"job {self.id} is {self.state.value}")


def _to_document(job: Job) -> Document:
    doc: Document = to_bson(job.model_dump(exclude={"id"}, exclude_none=True))
    doc["_id"] = job.id
    return doc


def _to_job(doc: Document) -> Job:
    return Job.model_validate({**doc, "id": doc["_id"]})


class JobView(BaseModel):
    """A background job as the HTTP API shows it."""

    id: str
    kind: str
    state: JobState = Field(description="queued, running, done, failed or cancelled")
    total: int | None = Field(description="Items the job goes through, once known")
    processed: int = Field(description="Items read so far")
    applied: int = Field(description="Items that changed something")
    rejected: int = Field(
        description="Items refused, each for a reason it was given (an import's rejected rows, "
        "listed by `GET /imports/{id}/rejections`); not to be confused with state `failed`"
    )
    failed: int = Field(
        description="Deprecated alias of `rejected` (same value), kept for existing clients",
        json_schema_extra={"deprecated": True},
    )
    rate_per_second: float | None = Field(description="Items processed per second so far")
    eta_seconds: float | None = Field(description="Estimated seconds left at that rate; 0 once done")
    cancel_requested: bool = Field(description="Cancellation asked for; a running job stops after its batch")
    error: str | None = Field(description="Why the job failed")
    created_at: AwareDatetime
    started_at: AwareDatetime | None
    updated_at: AwareDatetime = Field(description="When the job last made progress")
    finished_at: AwareDatetime | None

    @classmethod
    def of(cls, job: Job) -> Self:
        rate, eta = job.rate, job.eta_seconds
        return cls(
            **job.model_dump(include=set(cls.model_fields) & set(Job.model_fields)),
            rejected=job.failed,  # stored under its first name, shown under the one word for it
            rate_per_second=round(rate, 2) if rate is not None else None,
            eta_seconds=round(eta, 1) if eta is not None else None,
        )


Step = Callable[[Job, UnitOfWork], Awaitable[JobStep]]


@dataclass(frozen=True)
class _Kind:
    step: Step
    exclusive: bool
    on_cancel: Step | None = None


@dataclass(frozen=True)
class _Claim:
    """A job this replica took, with the token its writes are fenced by (fresh per claim)."""

    job: Job
    token: str


class JobRunner:
    """Submits, reads and cancels the service's jobs, and works them: up to ``concurrency``
    at a time in this replica, each under a lease renewed by every batch."""

    def __init__(
        self,
        client: AsyncMongoClient[Document],
        db: AsyncDatabase[Document],
        outbox: Outbox,
        settings: ServiceSettings,
        *,
        concurrency: int = 2,
        outages: Outages | None = None,
    ) -> None:
        self._client = client
        self._jobs = db[JOBS]
        self._locks = db[JOB_LOCKS]
        self._outbox = outbox
        self._lease = timedelta(seconds=settings.jobs_lease_seconds)
        self._poll_seconds = settings.jobs_poll_seconds
        self._concurrency = concurrency
        self._owner = f"{socket.gethostname()}:{os.getpid()}:{id(self)}"
        self._kinds: dict[str, _Kind] = {}
        self._wake = asyncio.Event()
        self._stopping = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._workers: dict[str, asyncio.Task[None]] = {}  # by job id
        outages = outages or Outages(summary_seconds=settings.log_outage_summary_seconds)
        self._outage = outages.log("job runner", "mongodb")

    # -- composition ------------------------------------------------------------------------
    def register(
        self, kind: str, step: Step, *, exclusive: bool = False, on_cancel: Step | None = None
    ) -> None:
        """Let this replica work jobs of ``kind`` with ``step``. An ``exclusive`` kind has at
        most one queued or running job: submitting another returns that one. ``on_cancel``
        tidies up after a running job stopped by a cancellation, in its last transaction."""
        self._kinds[kind] = _Kind(step, exclusive, on_cancel)

    @property
    def kinds(self) -> list[str]:
        return sorted(self._kinds)

    async def ensure_indexes(self) -> None:
        await self._jobs.create_index([("kind", ASCENDING), ("created_at", DESCENDING)])
        await self._jobs.create_index([("state", ASCENDING), ("created_at", ASCENDING)])
        await self._jobs.create_index("finished_at", expireAfterSeconds=JOB_RETENTION_SECONDS)

    # -- what the API calls ------------------------------------------------------------------
    async def submit(
        self, kind: str, params: dict[str, Any] | None = None, *, job_id: str | None = None
    ) -> tuple[Job, bool]:
        """Queue a job; ``(job, True)`` when it is new. Idempotent: the same ``job_id`` again,
        or an exclusive kind that has an active job, answers ``(that job, False)``."""
        exclusive = self._kinds[kind].exclusive
        for _ in range(5):
            now = utcnow()
            job = Job(
                id=job_id or str(uuid.uuid4()),
                kind=kind,
                state=JobState.QUEUED,
                params=params or {},
                created_at=now,
                updated_at=now,
            )
            doc = _to_document(job)

            async def queue(session: AsyncClientSession, doc: Document = doc) -> None:
                if exclusive:
                    await self._locks.insert_one({"_id": kind, "job_id": doc["_id"]}, session=session)
                await self._jobs.insert_one(doc, session=session)

            try:
                await in_transaction(self._client, queue)
            except DuplicateKeyError:
                existing = await self._existing(kind, job_id, exclusive, now)
                if existing is not None:
                    return existing, False
                continue  # the active one ended in between: queue a new one
            self._wake.set()
            return job, True
        raise RuntimeError(f"could not submit a {kind} job")  # pragma: no cover - endless races

    async def _existing(self, kind: str, job_id: str | None, exclusive: bool, now: datetime) -> Job | None:
        if job_id is not None:
            doc = await self._jobs.find_one({"_id": job_id})
            if doc is not None:
                if doc["kind"] != kind:
                    raise ValueError(f"job id {job_id} belongs to a {doc['kind']} job")
                return _to_job(doc)
        if not exclusive:
            return None
        lock = await self._locks.find_one({"_id": kind})
        if lock is None:
            return None
        # A write to the active job: if its batch is committing right now, the two conflict
        # and the batch runs again, so it sees whatever the caller committed before asking.
        doc = await self._jobs.find_one_and_update(
            {"_id": lock["job_id"], "state": {"$in": _ACTIVE}},
            {"$set": {"requested_at": now}},
            return_document=ReturnDocument.AFTER,
        )
        if doc is None:  # the job ended without releasing its kind (a crash between the two)
            await self._locks.delete_one({"_id": kind, "job_id": lock["job_id"]})
            return None
        return _to_job(doc)

    async def _unlock(self, job: Job, session: AsyncClientSession | None = None) -> None:
        """An ended job no longer holds its kind (a no-op for kinds that are not exclusive)."""
        await self._locks.delete_one({"_id": job.kind, "job_id": job.id}, session=session)

    async def get(self, job_id: str, kind: str | None = None) -> Job | None:
        query: Document = {"_id": job_id} | ({"kind": kind} if kind else {})
        doc = await self._jobs.find_one(query)
        return _to_job(doc) if doc is not None else None

    async def recent(self, kind: str, limit: int = 20) -> list[Job]:
        docs = await self._jobs.find({"kind": kind}, sort=[("created_at", DESCENDING)], limit=limit).to_list()
        return [_to_job(doc) for doc in docs]

    async def cancel(self, job_id: str, kind: str | None = None) -> Job | None:
        """Cancel a job: at once if no replica works it (queued, or its lease expired), else
        after the batch in hand. None if there is no such job; ``JobFinished`` if it ended."""
        job = await self.get(job_id, kind)
        if job is None:
            return None
        if job.finished:
            raise JobFinished(f"job {job_id} is {job.state.value}")
        now = utcnow()
        idle = {"_id": job_id, "state": {"$in": _ACTIVE}} | _unowned(now)
        ended = job.cancelled(now)

        async def end(session: AsyncClientSession) -> int:
            result = await self._jobs.update_one(
                idle,
                {
                    "$set": to_bson(
                        ended.model_dump(include={"state", "cancel_requested", "updated_at", "finished_at"})
                    ),
                    "$unset": {"owner": "", "lease_until": ""},
                },
                session=session,
            )
            if result.modified_count:
                await self._unlock(job, session)
            return result.modified_count

        if not await in_transaction(self._client, end):
            await self._jobs.update_one(
                {"_id": job_id, "state": {"$in": _ACTIVE}}, {"$set": {"cancel_requested": True}}
            )
        return await self.get(job_id)

    # -- lifecycle ---------------------------------------------------------------------------
    def start(self) -> None:
        """Start working jobs of the registered kinds (nothing to do without any)."""
        if not self._kinds or (self._task is not None and not self._task.done()):
            return
        self._stopping.clear()
        self._task = asyncio.create_task(self._run(), name="job-runner")

    async def stop(self, timeout: float = 20.0) -> None:
        """Finish the batches in hand and hand their jobs back (another replica, or this one
        after a restart, resumes them at once instead of waiting for the lease)."""
        self._stopping.set()
        self._wake.set()
        if self._task is not None:
            await self._task
            self._task = None
        if self._workers:
            _, pending = await asyncio.wait(self._workers.values(), timeout=timeout)
            for worker in pending:
                worker.cancel()
            await asyncio.gather(*pending, return_exceptions=True)
            self._workers.clear()

    async def _run(self) -> None:
        while not self._stopping.is_set():
            self._workers = {job_id: task for job_id, task in self._workers.items() if not task.done()}
            claim = None
            if len(self._workers) < self._concurrency:
                try:
                    claim = await self._claim()
                except PyMongoError as exc:
                    self._outage.failed(exc)
                except Exception:  # e.g. a job document this version cannot read: keep serving
                    log.exception("could not claim a job")
                else:
                    self._outage.recovered()
            if claim is not None:
                job = claim.job
                self._workers[job.id] = asyncio.create_task(
                    self._work(claim), name=f"job-{job.kind}-{job.id}"
                )
                continue
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), self._poll_seconds)
            self._wake.clear()

    async def _claim(self) -> _Claim | None:
        """Take the oldest job nobody works: queued, or running under an expired lease."""
        now = utcnow()
        token = f"{self._owner}:{uuid.uuid4().hex[:12]}"
        doc = await self._jobs.find_one_and_update(
            # Not one this replica still works: a stalled batch here must not be doubled by us.
            {"_id": {"$nin": list(self._workers)}, "kind": {"$in": self.kinds}, "state": {"$in": _ACTIVE}}
            | _unowned(now),
            {
                "$set": {
                    "state": JobState.RUNNING.value,
                    "owner": token,
                    "lease_until": now + self._lease,
                },
                "$min": {"started_at": now},  # sets it on the first claim only
            },
            sort=[("created_at", ASCENDING)],
            return_document=ReturnDocument.AFTER,
        )
        if doc is None:
            return None
        job = _to_job(doc)
        log.info(
            "working job",
            extra={"job_id": job.id, "kind": job.kind, "resumed_at": job.processed or None},
        )
        return _Claim(job, token)

    async def _work(self, claim: _Claim) -> None:
        job = claim.job
        attempts = 0
        owned = True
        try:
            while not self._stopping.is_set():
                try:
                    finished = await in_transaction(self._client, lambda s: self._batch(claim, s))
                except RedoBatch:
                    continue
                except LeaseLost:
                    owned = False
                    log.warning("another replica took the job over", extra={"job_id": job.id})
                    return
                except ConnectionFailure as exc:  # the database is away: not the batch's fault
                    self._outage.failed(exc)
                    await asyncio.sleep(1.0)
                    continue
                except Exception as exc:
                    attempts += 1
                    log.warning(
                        "job batch failed",
                        exc_info=attempts == FAILED_BATCH_ATTEMPTS,
                        extra={
                            "job_id": job.id,
                            "kind": job.kind,
                            "attempt": attempts,
                            "error": str(exc)[:300],
                        },
                    )
                    if attempts >= FAILED_BATCH_ATTEMPTS:
                        owned = not await self._fail(claim, f"{type(exc).__name__}: {exc}")
                        return
                    await asyncio.sleep(0.2 * attempts)
                    continue
                attempts = 0
                self._outage.recovered()
                self._outbox.notify()
                if finished:
                    owned = False
                    return
        finally:
            if owned:
                with contextlib.suppress(PyMongoError):
                    await self._jobs.update_one(
                        {"_id": job.id, "owner": claim.token, "state": {"$in": _ACTIVE}},
                        {"$unset": {"owner": "", "lease_until": ""}},
                    )
            self._wake.set()

    async def _batch(self, claim: _Claim, session: AsyncClientSession) -> bool:
        """One batch and the job's progress, in the caller's transaction; True once finished."""
        doc = await self._jobs.find_one({"_id": claim.job.id, "owner": claim.token}, session=session)
        if doc is None or JobState(doc["state"]) not in ACTIVE_STATES:
            raise LeaseLost(claim.job.id)
        job = _to_job(doc)
        now = utcnow()
        if job.cancel_requested:
            after = job.cancelled(now)
            on_cancel = self._kinds[job.kind].on_cancel
            if on_cancel is not None:
                await on_cancel(job, UnitOfWork(session, self._outbox))
        else:
            step = await self._kinds[job.kind].step(job, UnitOfWork(session, self._outbox))
            after = job.advanced(step, now)
        await self._save(after, claim.token, now, session)
        if after.finished:
            log.info(
                "job finished",
                extra={
                    "job_id": job.id,
                    "kind": job.kind,
                    "state": after.state.value,
                    "processed": after.processed,
                },
            )
        return after.finished

    async def _save(
        self, job: Job, token: str, now: datetime, session: AsyncClientSession | None = None
    ) -> None:
        fields = to_bson(job.model_dump(exclude={"id", "kind", "params", "created_at", "started_at"}))
        unset: dict[str, str] = {name: "" for name, value in fields.items() if value is None}
        update: Document = {"$set": {name: value for name, value in fields.items() if value is not None}}
        if job.finished:
            unset |= {"owner": "", "lease_until": ""}
        else:
            update["$set"]["lease_until"] = now + self._lease
        if unset:
            update["$unset"] = unset
        result = await self._jobs.update_one({"_id": job.id, "owner": token}, update, session=session)
        if result.matched_count != 1:
            raise LeaseLost(job.id)  # aborts the transaction: the batch is not applied
        if job.finished:
            await self._unlock(job, session)

    async def _fail(self, claim: _Claim, error: str) -> bool:
        """Mark the job failed (if this claim still owns it); whether it did."""
        doc = await self._jobs.find_one({"_id": claim.job.id, "owner": claim.token})
        if doc is None:
            return False
        now = utcnow()
        try:
            await self._save(_to_job(doc).failed_with(error, now), claim.token, now)
        except (LeaseLost, JobFinished):
            return False
        log.error("job failed", extra={"job_id": claim.job.id, "error": error[:300]})
        return True
