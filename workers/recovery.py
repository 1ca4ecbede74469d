"""Re-queue decisions, made by the worker runtime: give back a job the engine could not take, and
recover jobs whose worker died. Services only record state; what goes back on the queue is decided here.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from app.models import Job, db, utcnow
from app.services import queueing, transitions


def requeue(job_id: str, delay: float = 0) -> None:
    """Put a processing job back in the queue without counting the attempt (the engine was paused)."""
    with db.atomic("IMMEDIATE"):
        Job.update(
            status="queued", stage="queued", worker_id=None, attempts=Job.attempts - 1, updated_at=utcnow()
        ).where((Job.id == job_id) & (Job.status == "processing")).execute()
    queueing.submit(job_id, delay=delay)


def orphaned(job: Job, cfg: Mapping[str, Any], is_alive: Callable[[str], bool]) -> bool:
    """True when the worker of a processing job is gone.

    A worker of this box (its name, or a row from before names) is checked by its pid at once; a worker on
    another box by its lease, which it renews while it lives: an expired lease means it died or lost the network.
    """
    if job.worker_name in (None, cfg.get("WORKER_NAME")) and job.worker_id:
        return not is_alive(job.worker_id)
    if job.lease_expires_at is None:
        return not job.worker_id
    return job.lease_expires_at < utcnow()


def requeue_orphans(cfg: Mapping[str, Any], is_alive: Callable[[str], bool], pending_ids: set[str]) -> list[str]:
    """Re-queue jobs whose worker died (:func:`orphaned`); fail those that already used up their attempts.

    The next claim counts the new attempt. Queued jobs missing from the queue (``pending_ids``) are submitted
    again: Huey drops a task taken by a consumer that is then killed. Claiming is atomic, so a duplicate is harmless.
    """
    requeued: list[str] = []
    for job in Job.in_status("processing"):
        if not orphaned(job, cfg, is_alive):
            continue
        if job.attempts >= cfg["MAX_ATTEMPTS"]:
            transitions.fail(job.id, f"The worker stopped {job.attempts} times while processing this job; giving up")
            continue
        same_run = Job.worker_id.is_null() if job.worker_id is None else Job.worker_id == job.worker_id
        with db.atomic("IMMEDIATE"):  # only if it is still the same run: another worker may have re-queued it
            Job.update(
                status="queued",
                stage="queued",
                progress=0.0,
                worker_id=None,
                lease_expires_at=None,
                updated_at=utcnow(),
            ).where((Job.id == job.id) & (Job.status == "processing") & same_run).execute()
        requeued.append(job.id)
    for job in Job.in_status("queued"):
        if job.id not in pending_ids:
            queueing.submit(job.id)
    return requeued
