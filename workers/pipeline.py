"""The pipeline a worker runs for one job: its stages in order, with progress, cancellation and failures."""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import psutil
from pybreaker import CircuitBreakerError

from app.extensions import engine_breaker
from app.models import Job
from app.services import transitions
from app.services.breaker import retry_after
from app.services.storage import Layout
from workers import audio, engine, stages
from workers.queue import pending_job_ids

log = logging.getLogger(__name__)

_settings: dict[str, Any] = {}
PROGRESS_INTERVAL = 1.0  # seconds between progress writes
ABORT_POLL_INTERVAL = 0.5  # seconds between cancel checks


def configure(settings: dict[str, Any]) -> None:
    """Give the pipeline the worker's settings (called once per worker process)."""
    _settings.clear()
    _settings.update(settings)


def worker_id() -> str:
    """This process, identified so that a reused pid is not mistaken for it."""
    return f"{os.getpid()}:{psutil.Process().create_time():.2f}"


def worker_alive(wid: str) -> bool:
    """True while the worker process named by ``worker_id`` still runs."""
    try:
        pid, created = wid.split(":")
        return f"{psutil.Process(int(pid)).create_time():.2f}" == created
    except (ValueError, psutil.Error):
        return False


class JobLog:
    """Appends readable lines to the job's own log file, and JSON lines with the job id to processing.log."""

    processing = logging.getLogger("processing")  # app/logging_setup.py sends it to logs/processing.log

    def __init__(self, path: Path, job_id: str):
        self.path, self.job_id = path, job_id
        path.parent.mkdir(parents=True, exist_ok=True)

    def write(self, level: str, message: str) -> None:
        """Append one line."""
        stamp = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime())
        with open(self.path, "a", encoding="utf-8") as f:
            f.write(f"{stamp}Z {level} job={self.job_id} {message}\n")
        self.processing.log(logging.getLevelName(level), message, extra={"job_id": self.job_id})


class Progress:
    """Turns engine callbacks into throttled progress writes and cancel checks."""

    def __init__(self, write: Callable[[float, int], None], cancelled: Callable[[], bool], *,
                 clock: Callable[[], float] = time.monotonic):
        self._write, self._cancelled, self.clock = write, cancelled, clock
        self.percent = 0.0
        self._last_write = float("-inf")
        self._last_poll = float("-inf")
        self._cancel = False

    def report(self, percent: float, segments: int) -> None:
        """Note the current stage's percent; write at most once per interval."""
        self.percent = percent
        now = self.clock()
        if now - self._last_write >= PROGRESS_INTERVAL:
            self._last_write = now
            self._write(percent, segments)

    def should_abort(self) -> bool:
        """Poll the database for a cancel request, at most every ``ABORT_POLL_INTERVAL``."""
        now = self.clock()
        if not self._cancel and now - self._last_poll >= ABORT_POLL_INTERVAL:
            self._last_poll = now
            self._cancel = self._cancelled()
        return self._cancel


def _stamp() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


def _relative(cfg: dict[str, Any], output: Path | None) -> str | None:
    if output is None:
        return None
    try:
        return str(output.relative_to(cfg["DATA_DIR"]))
    except ValueError:
        return str(output)  # outside the data dir: a sidecar next to library media


def run(job_id: str) -> None:
    """Process one job if it is still queued and this worker wins the claim."""
    cfg = _settings
    if not Job.claim(job_id, worker_id()):
        return
    job = Job.get_by_id(job_id)
    joblog = JobLog(Layout(cfg["DATA_DIR"]).job_log(job_id), job_id)
    joblog.write("INFO", f"started attempt {job.attempts} of {job.original_filename!r} with model {job.model}")
    plan = stages.plan_for(job)
    total = sum(stages.STAGES[name].weight for name in plan)
    started = time.monotonic()
    try:
        done_weight = 0.0
        for name in plan:
            stage = stages.STAGES[name]

            def write(percent: float, segments: int, stage: stages.Stage = stage, base: float = done_weight) -> None:
                overall = 100.0 * (base + stage.weight * percent / 100.0) / total
                transitions.record_progress(job_id, stage.label, min(overall, 99.0), stage.name, round(percent, 1),
                                            segments)

            progress = Progress(write, lambda: transitions.cancel_requested(job_id))
            ctx = stages.StageContext(job, cfg, joblog.write, progress.report, progress.should_abort)
            if stages.is_cached(ctx, name):
                joblog.write("INFO", f"stage {name}: cached output reused")
            else:
                transitions.set_progress(job_id, stage.label, 100.0 * done_weight / total)
                job.stages = transitions.update_stage(job_id, name, status="running", progress=0.0,
                                                    started_at=_stamp(), finished_at=None, error=None)
                output = stage.run(ctx)
                if progress.should_abort():
                    raise engine.Aborted()
                job.stages = transitions.update_stage(job_id, name, status="done", progress=100.0,
                                                    finished_at=_stamp(), output=_relative(cfg, output))
            done_weight += stage.weight
        elapsed = time.monotonic() - started
        transitions.complete_job(job_id, elapsed)
        joblog.write("INFO", f"completed in {elapsed:.2f} s")
    except engine.Aborted:
        transitions.mark_cancelled(job_id)
        joblog.write("WARNING", "cancelled; partial output discarded")
    except CircuitBreakerError:
        # The engine keeps failing: give the job back and try again when the breaker lets a trial through.
        wait = retry_after(engine_breaker) or 5
        transitions.requeue(job_id, delay=wait)
        joblog.write("WARNING", f"engine paused after repeated failures; job re-queued, retry in {wait} s")
    except audio.MediaError as exc:
        _fail_stage(job_id, job, str(exc))
        joblog.write("ERROR", f"failed: {exc}")
    except Exception as exc:  # the job must never stay in processing
        log.exception("job %s failed", job_id)
        _fail_stage(job_id, job, f"Internal error while processing: {exc}")
        joblog.write("ERROR", f"failed: internal error: {exc}")


def _fail_stage(job_id: str, job: Job, reason: str) -> None:
    running = [name for name, record in (job.stages or {}).items() if record.get("status") == "running"]
    for name in running:
        transitions.update_stage(job_id, name, status="failed", error=reason, finished_at=_stamp())
    transitions.fail(job_id, reason)


def reconcile() -> list[str]:
    """Give jobs of dead workers back to the queue (worker start-up and every minute)."""
    requeued = transitions.requeue_orphans(_settings, worker_alive, pending_job_ids())
    for job_id in requeued:
        log.warning("job=%s re-queued: its worker died", job_id)
    return requeued


def scan_watch_dirs() -> list[str]:
    """Queue new library media from the watch folders, owned by the first admin."""
    from app.models import User
    from app.services import media

    if not _settings.get("WATCH_DIRS"):
        return []
    return media.scan_watch_dirs(_settings, User.active_admins().first())
