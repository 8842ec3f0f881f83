"""The background job's state machine and the progress figures derived from it."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from crm_runtime.jobs import Job, JobFinished, JobState, JobStep, JobView

T0 = datetime(2026, 3, 1, 9, 0, tzinfo=UTC)


def running(**fields: object) -> Job:
    base: dict[str, object] = {
        "id": "job-1",
        "kind": "lead-rescoring",
        "state": JobState.RUNNING,
        "created_at": T0,
        "started_at": T0,
        "updated_at": T0,
    }
    return Job.model_validate(base | fields)


def test_batches_add_up_and_the_last_one_finishes_the_job() -> None:
    job = running()
    job = job.advanced(
        JobStep(processed=200, applied=150, failed=3, position=200, total=1000), T0 + timedelta(seconds=10)
    )
    job = job.advanced(JobStep(processed=200, applied=20, position=400), T0 + timedelta(seconds=20))
    assert (job.state, job.total, job.processed, job.applied, job.failed, job.position) == (
        JobState.RUNNING,
        1000,  # kept from the batch that knew it
        400,
        170,
        3,
        400,
    )
    assert job.finished_at is None and not job.finished
    done = job.advanced(JobStep(processed=5, position=405, done=True), T0 + timedelta(seconds=21))
    assert done.state is JobState.DONE and done.finished_at == T0 + timedelta(seconds=21)
    assert done.processed == 405


def test_rate_and_time_left_follow_from_the_counters_and_times() -> None:
    job = running(total=1000).advanced(JobStep(processed=250), T0 + timedelta(seconds=50))
    assert job.rate == 5.0
    assert job.eta_seconds == 150.0  # 750 left at 5 a second
    view = JobView.of(job)
    assert (view.rate_per_second, view.eta_seconds, view.state) == (5.0, 150.0, JobState.RUNNING)


@pytest.mark.parametrize(
    ("job", "eta"),
    [
        (running(), None),  # no total, no progress
        (running(processed=10, updated_at=T0 + timedelta(seconds=5)), None),  # total unknown
        (running(total=10, processed=0, updated_at=T0 + timedelta(seconds=5)), None),  # no rate yet
        (running(total=10, processed=12, updated_at=T0 + timedelta(seconds=4)), 0.0),  # total outgrown
    ],
)
def test_time_left_is_unknown_until_there_is_a_total_and_a_rate(job: Job, eta: float | None) -> None:
    assert job.eta_seconds == eta


def test_a_queued_job_has_no_rate_and_a_done_one_nothing_left() -> None:
    queued = running(state=JobState.QUEUED, started_at=None)
    assert queued.rate is None and queued.eta_seconds is None
    done = running(total=3, processed=3, state=JobState.DONE, finished_at=T0 + timedelta(seconds=3))
    assert done.eta_seconds == 0.0 and done.rate == 1.0


def test_cancelling_and_failing_end_an_active_job_and_nothing_moves_a_finished_one() -> None:
    job = running(processed=10)
    cancelled = job.cancelled(T0 + timedelta(seconds=1))
    assert cancelled.state is JobState.CANCELLED and cancelled.finished and cancelled.cancel_requested
    failed = job.failed_with("ValueError: bad row", T0 + timedelta(seconds=1))
    assert failed.state is JobState.FAILED and failed.error == "ValueError: bad row"
    queued = running(state=JobState.QUEUED, started_at=None)
    assert queued.cancelled(T0).state is JobState.CANCELLED
    for finished in (cancelled, failed, cancelled.model_copy(update={"state": JobState.DONE})):
        with pytest.raises(JobFinished):
            finished.advanced(JobStep(processed=1), T0)
        with pytest.raises(JobFinished):
            finished.cancelled(T0)
    with pytest.raises(JobFinished):
        queued.advanced(JobStep(processed=1), T0)  # a batch needs the job claimed first


def test_refused_items_are_shown_as_rejected_and_still_as_the_deprecated_failed() -> None:
    job = running().advanced(JobStep(processed=10, applied=7, failed=3), T0 + timedelta(seconds=1))
    shown = JobView.of(job).model_dump(mode="json")
    assert (shown["applied"], shown["rejected"], shown["failed"]) == (7, 3, 3)
    schema = JobView.model_json_schema()["properties"]
    assert schema["failed"]["deprecated"] is True and "rejected" in schema["failed"]["description"]
    assert "deprecated" not in schema["rejected"]
