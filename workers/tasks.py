"""Huey tasks. They stay thin: load the job, call the pipeline, record the result."""

from __future__ import annotations

import logging

from huey import crontab

from workers.queue import huey

log = logging.getLogger(__name__)


@huey.task()
def process_job(job_id: str) -> None:
    """Run one job through the pipeline."""
    from workers import pipeline

    pipeline.run(job_id)


@huey.periodic_task(crontab(minute="*"))
def reconcile() -> None:
    """Every minute, give jobs of dead workers back to the queue."""
    from workers import pipeline

    pipeline.reconcile()
