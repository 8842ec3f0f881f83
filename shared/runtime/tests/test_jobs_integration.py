"""Background jobs on the real database: a job runs in batches to done; a replica that stalls
mid-batch loses the job to another once its lease expires, which resumes where the job stood,
and the stalled batch is never applied; a stopped replica hands its job back at once; jobs
are cancelled queued or running; an exclusive kind has one active job however often asked."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import pytest
from crm_localinfra.testing import eventually, isolation_key, service_env
from crm_runtime import ServiceSettings, UnitOfWork
from crm_runtime.jobs import Job, JobFinished, JobRunner, JobState, JobStep
from crm_runtime.mongo import Document
from crm_runtime.outbox import Outbox
from pymongo import AsyncMongoClient
from pymongo.asynchronous.database import AsyncDatabase

pytestmark = pytest.mark.integration

KIND = "count-items"
ITEMS = 50
BATCH = 10


@dataclass
class CountItems:
    """A job kind that adds one to every item it goes through, in id order: an item applied
    twice, or skipped, shows in its count. ``hold_on`` stalls that batch (1-based) mid-way,
    inside its transaction, until ``release`` is set: a replica that hangs or is paused."""

    db: AsyncDatabase[Document]
    hold_on: int | None = None
    entered: asyncio.Event = field(default_factory=asyncio.Event)
    release: asyncio.Event = field(default_factory=asyncio.Event)
    batches: int = 0
    first_items: list[int] = field(default_factory=list)

    async def step(self, job: Job, uow: UnitOfWork) -> JobStep:
        items = self.db["items"]
        after = job.position if job.position is not None else -1
        total = job.total if job.total is not None else await items.count_documents({}, session=uow.session)
        docs = await items.find(
            {"_id": {"$gt": after}}, sort=[("_id", 1)], limit=BATCH, session=uow.session
        ).to_list()
        self.batches += 1
        if self.batches == self.hold_on:
            self.entered.set()
            await self.release.wait()
        ids = [doc["_id"] for doc in docs]
        if ids:
            self.first_items.append(ids[0])
            await items.update_many({"_id": {"$in": ids}}, {"$inc": {"applied": 1}}, session=uow.session)
        return JobStep(
            processed=len(ids),
            applied=len(ids),
            position=ids[-1] if ids else after,
            total=total,
            done=len(ids) < BATCH,
        )


@dataclass
class Probe:
    client: AsyncMongoClient[Document]
    db: AsyncDatabase[Document]
    settings: ServiceSettings
    runners: list[JobRunner] = field(default_factory=list)

    def runner(self, kind: CountItems, *, exclusive: bool = False, **settings: Any) -> JobRunner:
        own = self.settings.model_copy(update=settings)
        runner = JobRunner(self.client, self.db, Outbox(self.db, own), own)
        runner.register(KIND, kind.step, exclusive=exclusive)
        self.runners.append(runner)
        return runner

    async def counts(self) -> list[int]:
        return [doc["applied"] for doc in await self.db["items"].find({}, sort=[("_id", 1)]).to_list()]

    async def job(self, job_id: str) -> Job:
        job = await JobRunner(self.client, self.db, Outbox(self.db, self.settings), self.settings).get(job_id)
        assert job is not None
        return job

    async def finished(self, job_id: str) -> Job | None:
        job = await self.job(job_id)
        return job if job.finished else None


@pytest.fixture
async def probe(infra: Any) -> AsyncIterator[Probe]:
    env = service_env(infra, "jobs", isolation=isolation_key())
    settings = ServiceSettings(service_name="jobs", **env, jobs_lease_seconds=2, jobs_poll_seconds=0.1)
    client: AsyncMongoClient[Document] = AsyncMongoClient(infra.mongo_url, tz_aware=True)
    db = client[settings.database_name]
    await db["items"].insert_many([{"_id": n, "applied": 0} for n in range(ITEMS)])
    probe = Probe(client, db, settings)
    await JobRunner(client, db, Outbox(db, settings), settings).ensure_indexes()
    yield probe
    for runner in probe.runners:
        await runner.stop(timeout=5)
    await client.close()


async def test_a_job_runs_in_batches_to_done_with_its_progress_stored(probe: Probe) -> None:
    kind = CountItems(probe.db)
    runner = probe.runner(kind)
    job, created = await runner.submit(KIND, {"note": "all items"})
    assert created and job.state is JobState.QUEUED
    runner.start()
    done = await eventually(lambda: probe.finished(job.id))
    assert (done.state, done.total, done.processed, done.applied, done.failed) == (
        JobState.DONE,
        50,
        50,
        50,
        0,
    )
    assert done.params == {"note": "all items"} and done.eta_seconds == 0.0
    assert done.started_at is not None and done.finished_at is not None and done.rate is not None
    assert kind.first_items == [0, 10, 20, 30, 40]
    assert await probe.counts() == [1] * ITEMS


async def test_a_stalled_replica_loses_its_job_to_another_that_resumes_and_its_batch_is_dropped(
    probe: Probe,
) -> None:
    stalled = CountItems(probe.db, hold_on=3)
    a = probe.runner(stalled)
    job, _ = await a.submit(KIND)
    a.start()
    await asyncio.wait_for(stalled.entered.wait(), 60)  # two batches committed, the third hangs

    rescuer = CountItems(probe.db)
    b = probe.runner(rescuer)
    b.start()  # claims the job only once a's lease (2 s) has expired
    done = await eventually(lambda: probe.finished(job.id), timeout=60)
    assert rescuer.first_items[0] == 20  # resumed after the two batches a committed
    assert (done.state, done.processed, done.total) == (JobState.DONE, 50, 50)

    stalled.release.set()  # the stalled replica wakes up and tries to commit its batch
    await a.stop()
    assert await probe.counts() == [1] * ITEMS  # its batch (items 20..29) was not applied again
    assert (await probe.job(job.id)).processed == 50


async def test_a_stopping_replica_hands_its_job_back_and_the_next_resumes_at_once(probe: Probe) -> None:
    first = CountItems(probe.db, hold_on=2)
    lease = 600  # far longer than the test: only the handing back lets the next runner in
    a = probe.runner(first, jobs_lease_seconds=lease)
    job, _ = await a.submit(KIND)
    a.start()
    await asyncio.wait_for(first.entered.wait(), 60)
    stopping = asyncio.create_task(a.stop())  # SIGTERM: the batch in hand commits, then stop
    first.release.set()
    await stopping
    paused = await probe.job(job.id)
    assert (paused.state, paused.processed) == (JobState.RUNNING, 20)

    second = CountItems(probe.db)
    b = probe.runner(second, jobs_lease_seconds=lease)
    b.start()
    done = await eventually(lambda: probe.finished(job.id), timeout=60)
    assert second.first_items[0] == 20 and done.processed == 50
    assert await probe.counts() == [1] * ITEMS


async def test_jobs_are_cancelled_queued_at_once_and_running_after_the_batch_in_hand(probe: Probe) -> None:
    kind = CountItems(probe.db, hold_on=2)
    runner = probe.runner(kind)
    queued, _ = await runner.submit(KIND)
    cancelled = await runner.cancel(queued.id)
    assert cancelled is not None and cancelled.state is JobState.CANCELLED and cancelled.finished_at
    with pytest.raises(JobFinished):
        await runner.cancel(queued.id)
    assert await runner.cancel("no-such-job") is None

    job, _ = await runner.submit(KIND)
    runner.start()  # the cancelled job is never worked: the first batch is the new job's
    await asyncio.wait_for(kind.entered.wait(), 60)
    asked = await runner.cancel(job.id)
    assert asked is not None and asked.state is JobState.RUNNING and asked.cancel_requested
    kind.release.set()
    ended = await eventually(lambda: probe.finished(job.id), timeout=60)
    assert ended.state is JobState.CANCELLED and ended.processed in (10, 20)
    counts = await probe.counts()
    assert counts[:10] == [1] * 10 and counts[20:] == [0] * 30 and set(counts) <= {0, 1}


async def test_an_exclusive_kind_has_one_active_job_however_often_it_is_asked(probe: Probe) -> None:
    kind = CountItems(probe.db)
    runner = probe.runner(kind, exclusive=True)
    first, created = await runner.submit(KIND)
    again, created_again = await runner.submit(KIND)
    assert created and not created_again and again.id == first.id
    runner.start()
    await eventually(lambda: probe.finished(first.id))
    later, created_later = await runner.submit(KIND)
    assert created_later and later.id != first.id  # the first one ended: a new pass


async def test_a_job_submitted_with_its_own_id_is_created_once(probe: Probe) -> None:
    runner = probe.runner(CountItems(probe.db))
    job, created = await runner.submit(KIND, {"file": "a.csv"}, job_id="import-42")
    same, created_again = await runner.submit(KIND, {"file": "a.csv"}, job_id="import-42")
    assert created and not created_again and same.id == job.id == "import-42"
    assert [j.id for j in await runner.recent(KIND)] == ["import-42"]
