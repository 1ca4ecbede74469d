"""Progress throttling, cancellation and crash recovery of the pipeline (stub engine)."""

from __future__ import annotations

import os

import pytest

from app.models import Job
from workers import pipeline

pytestmark = pytest.mark.database  # scripts/test runs these on PostgreSQL too


class Clock:
    """A clock the test moves by hand."""

    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_progress_writes_at_most_once_per_second():
    """Many reports within a second give a single database write."""
    clock, writes = Clock(), []
    progress = pipeline.Progress(lambda *args: writes.append(args), lambda: False, clock=clock)
    for i in range(10):
        clock.now = i * 0.1
        progress.report(float(i), i)
    assert writes == [(0.0, 0, None)]
    clock.now = 1.05
    progress.report(11.0, 11, 40)
    assert writes[-1] == (11.0, 11, 40)


def test_a_held_back_report_is_written_by_the_next_tick_not_dropped():
    """The last values of a burst (a whole window's segments at once) are the ones the job shows."""
    clock, writes = Clock(), []
    progress = pipeline.Progress(lambda *args: writes.append(args), lambda: False, clock=clock)
    for i in range(8):
        progress.report(10.0 + i, i + 1)
    assert writes == [(10.0, 1, None)]
    clock.now = 0.5
    progress.tick()
    assert len(writes) == 1  # still within the interval
    clock.now = 1.0
    progress.tick()
    assert writes[-1] == (17.0, 8, None)
    progress.report(20.0, 9, 30)
    progress.report(19.0, 8, 28)  # a stale snapshot from the other thread: ignored
    progress.flush()
    assert writes[-1] == (20.0, 9, 30)


def test_cancel_checks_are_throttled_and_sticky():
    """The database is polled at most every half second, and a cancel stays set."""
    clock, polls = Clock(), []

    def cancelled() -> bool:
        polls.append(clock.now)
        return clock.now >= 1.0

    progress = pipeline.Progress(lambda *a: None, cancelled, clock=clock)
    for step in range(30):
        clock.now = step * 0.05
        progress.should_abort()
    assert len(polls) == 3  # at 0.0, 0.5 and 1.0
    assert progress.should_abort() is True


def test_pipeline_stores_segments_and_marks_completed(client, admin_headers, stub_engine, drain, uploaded_job):
    """A queued job runs through decode, transcribe and finalize."""
    job_id = uploaded_job(client, admin_headers)["job_id"]
    drain()
    body = client.get(f"/api/jobs/{job_id}", headers=admin_headers).get_json()
    assert body["status"] == "completed" and body["progress"] == 100.0 and body["stage"] == "completed"
    assert len(body["transcript"]["segments"]) == 11  # the stub makes one per second of audio
    assert body["transcript"]["confidence"] == 0.9


def test_cancelled_job_never_completes_with_partial_text(client, admin_headers, stub_engine, drain, app, uploaded_job):
    """A cancel request seen mid-run discards the partial segments."""
    job_id = uploaded_job(client, admin_headers)["job_id"]
    with app.app_context():
        # The flag a cancel of a running job sets; the status is still queued, so the worker claims it.
        Job.update(cancel_requested=True).where(Job.id == job_id).execute()
    drain()
    body = client.get(f"/api/jobs/{job_id}", headers=admin_headers).get_json()
    assert body["status"] == "cancelled"
    assert "transcript" not in body and body["transcript_preview"] is None


def test_reconcile_requeues_job_of_dead_worker_and_fails_after_three_attempts(
    app, client, admin_headers, stub_engine, uploaded_job
):
    """A job left in processing by a dead worker goes back to the queue; the third death fails it."""
    job_id = uploaded_job(client, admin_headers)["job_id"]
    pipeline.configure(dict(app.config))
    dead = "999999:1.00"
    with app.app_context():
        Job.update(status="processing", worker_id=dead, attempts=1).where(Job.id == job_id).execute()
        assert pipeline.reconcile() == [job_id]
        assert Job.get_by_id(job_id).status == "queued"
        Job.update(status="processing", worker_id=dead, attempts=3).where(Job.id == job_id).execute()
        assert pipeline.reconcile() == []
        job = Job.get_by_id(job_id)
    assert job.status == "failed" and "3 times" in job.error


def test_reconcile_leaves_jobs_of_live_workers_alone(app, client, admin_headers, stub_engine, uploaded_job):
    """A job whose worker still runs is not taken from it."""
    job_id = uploaded_job(client, admin_headers)["job_id"]
    pipeline.configure(dict(app.config))
    with app.app_context():
        Job.update(status="processing", worker_id=pipeline.worker_id(), attempts=1).where(Job.id == job_id).execute()
        assert pipeline.reconcile() == []
        assert Job.get_by_id(job_id).status == "processing"


def test_worker_identity_survives_pid_reuse():
    """The identity includes the process start time, so a recycled pid is not alive."""
    me = pipeline.worker_id()
    assert pipeline.worker_alive(me)
    pid, _ = me.split(":")
    assert not pipeline.worker_alive(f"{pid}:1.00")
    assert not pipeline.worker_alive("garbage")
    assert str(os.getpid()) == pid


def test_progress_tick_updates_job_and_stage_together_and_skips_finished_jobs(app, client, admin_headers, uploaded_job):
    """One write sets the overall percent, the segment count and the running stage's percent."""
    from app.services import transitions

    job_id = uploaded_job(client, admin_headers)["job_id"]
    with app.app_context():
        assert Job.claim(job_id, pipeline.worker_id())
        transitions.record_progress(job_id, "transcribing", 47.5, "transcribe", 50.0, 3)
        job = Job.get_by_id(job_id)
        assert (job.stage, job.progress, job.segments_done) == ("transcribing", 47.5, 3)
        assert job.stages["transcribe"]["progress"] == 50.0
        Job.update(status="cancelled").where(Job.id == job_id).execute()
        transitions.record_progress(job_id, "transcribing", 60.0, "transcribe", 70.0, 4)
        assert Job.get_by_id(job_id).progress == 47.5  # a late tick never revives a finished job's progress
