"""Huey tasks. They stay thin: load the job, call the pipeline, record the result."""

from __future__ import annotations

import logging

from huey import crontab

from workers.queue import huey

log = logging.getLogger(__name__)


@huey.task()
def process_job(job_id: str) -> None:
    """Run one job through the pipeline."""
    from workers import pipeline  # late, like each task here: the web process imports tasks only to queue them

    pipeline.run(job_id)


# The housekeeping tasks below run every few minutes. Huey's own INFO lines about them are kept out of the
# logs (app/logging_setup.py QuietPeriodicTasks), so a run that found nothing to do writes nothing; what a
# run did change is logged where it happens (re-queued jobs, queued watch-folder files, cleanup removals).


@huey.periodic_task(crontab(minute="*"))
def reconcile() -> None:
    """Every minute, give jobs of dead workers back to the queue."""
    from workers import pipeline

    pipeline.reconcile()


@huey.periodic_task(crontab(minute="*/10"))
def cleanup() -> None:
    """Every ten minutes, apply the admin's retention rules and disk ceiling (app/services/cleanup.py)."""
    from app.services import cleanup as rules  # late (see process_job); "cleanup" is this task's own name
    from app.settings import load_settings

    rules.run_cleanup(load_settings())


@huey.periodic_task(crontab(minute="*"))
def watch_folders() -> None:
    """Every minute, queue new media found in WT_WATCH_DIRS (like a webhook would)."""
    from workers import pipeline

    pipeline.scan_watch_dirs()
