"""The pipeline a worker runs for one job: its stages in order, with progress, cancellation and failures."""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import psutil
from pybreaker import CircuitBreakerError

from app.models import Job, User, db
from app.services import media, plans, transitions
from app.services.breaker import engine_breaker, retry_after
from app.services.storage import Layout
from workers import audio, dub_stages, engine, recovery, stages
from workers.queue import pending_job_ids
from workers.timestamps import utc_iso

log = logging.getLogger(__name__)

_settings: dict[str, Any] = {}
PROGRESS_INTERVAL = 1.0  # seconds between progress writes
ABORT_POLL_INTERVAL = 0.5  # seconds between cancel checks
TICK_SECONDS = 0.5  # how often a running stage's live progress is polled (and held-back reports written)
monotonic = time.monotonic  # the clock of progress and time-left estimates (tests move it by hand)


def configure(settings: dict[str, Any]) -> None:
    """Give the pipeline the worker's settings (called once per worker process)."""
    _settings.clear()
    _settings.update(settings)
    dub_stages.register_stages()


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
        with open(self.path, "a", encoding="utf-8") as f:
            f.write(f"{utc_iso()} {level} job={self.job_id} {message}\n")
        self.processing.log(logging.getLevelName(level), message, extra={"job_id": self.job_id})


class Progress:
    """Turns engine callbacks into throttled progress writes and cancel checks.

    A report that comes too soon after the last write is held back, not dropped: ``tick`` (called every
    ``TICK_SECONDS`` by the runner) writes it once the interval has passed, so the last values of a
    burst (whisper.cpp hands over a whole window's segments at once) are the ones the job shows.
    """

    def __init__(
        self, write: Callable[..., None], cancelled: Callable[[], bool], *, clock: Callable[[], float] = time.monotonic
    ):
        self._write, self._cancelled, self.clock = write, cancelled, clock
        self.percent = 0.0
        self._last_write = float("-inf")
        self._last_poll = float("-inf")
        self._cancel = False
        self._pending: tuple[float, int, int | None] | None = None
        self._source: Callable[[], tuple[float, int, int | None]] | None = None
        self._lock = threading.Lock()  # reports come from the engine's thread, ticks from the runner's

    def report(self, percent: float, segments: int, total: int | None = None) -> None:
        """Note the current stage's percent (and segment counts); write at most once per interval."""
        self._offer(percent, segments, total)

    def follow(self, source: Callable[[], tuple[float, int, int | None]]) -> None:
        """Poll ``source`` on every tick: the stage's live (percent, segments, total) between its own reports."""
        self._source = source

    def tick(self) -> None:
        """Report the followed stage's live progress, or write a held-back report whose time has come."""
        if self._source is not None:
            self._offer(*self._source())
        else:
            self._offer(None)

    def flush(self) -> None:
        """Write a held-back report now (the stage has ended)."""
        with self._lock:
            if self._pending is not None:
                self._last_write = self.clock()
                self._write(*self._pending)
                self._pending = None

    def _offer(self, percent: float | None, segments: int = 0, total: int | None = None) -> None:
        with self._lock:
            # A stage's percent never goes back; a lower one is a snapshot that lost a race between threads.
            if percent is not None and percent >= self.percent:
                self.percent = percent
                self._pending = (percent, segments, total)
            now = self.clock()
            if self._pending is not None and now - self._last_write >= PROGRESS_INTERVAL:
                self._last_write = now
                self._write(*self._pending)
                self._pending = None

    def should_abort(self) -> bool:
        """Poll the database for a cancel request, at most every ``ABORT_POLL_INTERVAL``."""
        now = self.clock()
        if not self._cancel and now - self._last_poll >= ABORT_POLL_INTERVAL:
            self._last_poll = now
            self._cancel = self._cancelled()
        return self._cancel


class Eta:
    """Seconds left for the whole job, from the running stage's pace; once known, it never grows.

    Stage weights say how long stages take compared with each other, so the running stage's seconds per
    unit of weight, times the weight still to do, estimate the rest. Stages before the transcription
    (decoding, audio cleanup) say nothing about whisper.cpp's speed: until the transcription has a pace
    the estimate is None (unknown). The raw estimate is smoothed and the shown one only ever falls: it
    follows the smoothed one down while the percent rises, and holds while the percent stands still. So
    any two readings a client takes, however far apart, never show more time left at a higher percent.
    When the work slows down, the estimate stops falling until the work catches up with it.
    """

    SMOOTHING = 0.3  # share of a new raw estimate in the shown one

    def __init__(self, weights: list[float], anchor: int, clock: Callable[[], float] = time.monotonic):
        self.weights, self.anchor, self.clock = weights, anchor, clock
        self.index, self.stage_started = 0, clock()
        self.pace: float | None = None  # seconds per unit of weight, of the latest stage that had one
        self.smoothed: float | None = None
        self.shown: float | None = None
        self.percent = float("-inf")

    def start_stage(self, index: int) -> None:
        """The stage at ``index`` of the plan starts now."""
        self.index, self.stage_started = index, self.clock()

    def update(self, stage_percent: float, overall: float) -> float | None:
        """The estimate to write with this progress (running stage's percent, job's overall percent)."""
        raw = None
        if self.index >= self.anchor:
            done = self.weights[self.index] * stage_percent / 100.0
            spent = self.clock() - self.stage_started
            if done > 0 and spent > 0:
                self.pace = spent / done
            if self.pace is not None:
                raw = (sum(self.weights[self.index :]) - done) * self.pace
        rising = overall > self.percent
        self.percent = max(self.percent, overall)
        if raw is None or (self.shown is not None and not rising):
            return self.shown  # a stall tells nothing new about the pace; the estimate holds
        self.smoothed = raw if self.smoothed is None else self.smoothed + self.SMOOTHING * (raw - self.smoothed)
        if self.shown is None:
            self.shown = max(0.0, self.smoothed)
        else:
            self.shown = max(0.0, min(self.shown, self.smoothed))
        return self.shown


@contextmanager
def _ticking(progress: Progress) -> Iterator[None]:
    """Call ``progress.tick`` every ``TICK_SECONDS`` from a thread while the body runs (whisper.cpp frees the GIL)."""
    stop = threading.Event()

    def loop() -> None:
        failed = False
        try:
            while not stop.wait(TICK_SECONDS):
                try:
                    progress.tick()
                except Exception:  # progress is informative: a failed write must not end the job
                    if not failed:
                        log.exception("progress update failed")
                    failed = True
        finally:
            if not db.is_closed():
                db.close()  # this thread's own connection

    thread = threading.Thread(target=loop, daemon=True, name="progress")
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join()


def _stamp() -> str:
    return utc_iso()


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
    if not Job.claim(job_id, worker_id(), cfg.get("WORKER_NAME"), float(cfg.get("LEASE_SECONDS", 60))):
        return
    job = Job.get_by_id(job_id)
    joblog = JobLog(Layout(cfg["DATA_DIR"]).job_log(job_id), job_id)
    joblog.write("INFO", f"started attempt {job.attempts} of {job.original_filename!r} with model {job.model}")
    plan = plans.plan_for(job)
    weights = [stages.STAGES[name].weight for name in plan]
    total = sum(weights)
    started = time.monotonic()
    clock = monotonic
    eta = Eta(weights, plan.index("transcribe") if "transcribe" in plan else 0, clock)
    first_write = {"segments_done": 0, "total_segments": None}  # counts of an earlier attempt are stale
    try:
        done_weight = 0.0
        for index, name in enumerate(plan):
            stage = stages.STAGES[name]

            def write(
                percent: float,
                segments: int,
                segments_total: int | None = None,
                stage: stages.Stage = stage,
                base: float = done_weight,
            ) -> None:
                overall = min(99.0, 100.0 * (base + stage.weight * percent / 100.0) / total)
                transitions.record_progress(
                    job_id,
                    stage.label,
                    overall,
                    stage.name,
                    round(percent, 1),
                    segments,
                    eta_seconds=eta.update(percent, overall),
                    total_segments=segments_total,
                )

            progress = Progress(write, lambda: transitions.cancel_requested(job_id), clock=clock)
            ctx = stages.StageContext(
                job, cfg, joblog.write, progress.report, progress.should_abort, progress.follow, clock
            )
            if stages.is_cached(ctx, name):
                joblog.write("INFO", f"stage {name}: cached output reused")
            else:
                eta.start_stage(index)
                overall = 100.0 * done_weight / total
                transitions.set_progress(
                    job_id, stage.label, overall, eta_seconds=eta.update(0.0, overall), **first_write
                )
                first_write = {}
                job.stages = transitions.update_stage(
                    job_id, name, status="running", progress=0.0, started_at=_stamp(), finished_at=None, error=None
                )
                with _ticking(progress):
                    output = stage.run(ctx)
                progress.flush()
                if progress.should_abort():
                    raise engine.Aborted()
                job.stages = transitions.update_stage(
                    job_id, name, status="done", progress=100.0, finished_at=_stamp(), output=_relative(cfg, output)
                )
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
        recovery.requeue(job_id, delay=wait)
        joblog.write("WARNING", f"engine paused after repeated failures; job re-queued, retry in {wait} s")
    except audio.MediaError as exc:
        _fail_stage(job_id, job, str(exc))
        joblog.write("ERROR", f"failed: {transitions.public_reason(str(exc))}")  # its owner reads this log
    except Exception as exc:  # the job must never stay in processing
        log.exception("job %s failed", job_id)
        _fail_stage(job_id, job, f"Internal error while processing: {exc}")
        joblog.write("ERROR", f"failed: internal error: {transitions.public_reason(str(exc))}")


def _fail_stage(job_id: str, job: Job, reason: str) -> None:
    running = [name for name, record in (job.stages or {}).items() if record.get("status") == "running"]
    for name in running:
        transitions.update_stage(job_id, name, status="failed", error=reason, finished_at=_stamp())
    transitions.fail(job_id, reason)


def reconcile() -> list[str]:
    """Give jobs of dead workers back to the queue (worker start-up and every minute)."""
    requeued = recovery.requeue_orphans(_settings, worker_alive, pending_job_ids())
    for job_id in requeued:
        log.warning("job=%s re-queued: its worker died", job_id)
    return requeued


def renew_leases() -> int:
    """Extend the lease of the job this worker runs (the lease thread calls it a few times per lease)."""
    return Job.renew_leases(worker_id(), _settings.get("WORKER_NAME"), float(_settings.get("LEASE_SECONDS", 60)))


def scan_watch_dirs() -> list[str]:
    """Queue new library media from the watch folders, owned by the first admin."""
    if not _settings.get("WATCH_DIRS"):
        return []
    return media.scan_watch_dirs(_settings, User.active_admins().first())
