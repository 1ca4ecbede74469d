"""The transcription pipeline a worker runs for one job: decode, transcribe, finalize."""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import psutil

from app.models import Job
from app.services import jobs as lifecycle
from app.services.storage import Layout
from workers import audio, engine, modelstore
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
    """Appends timestamped lines to the job's own log file and to the worker's log."""

    def __init__(self, path: Path, job_id: str):
        self.path, self.job_id = path, job_id
        path.parent.mkdir(parents=True, exist_ok=True)

    def write(self, level: str, message: str) -> None:
        """Append one line."""
        stamp = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime())
        with open(self.path, "a", encoding="utf-8") as f:
            f.write(f"{stamp}Z {level} job={self.job_id} {message}\n")
        log.log(logging.getLevelName(level), "job=%s %s", self.job_id, message)


class Progress:
    """Turns engine callbacks into throttled progress writes and cancel checks."""

    def __init__(self, job_id: str, duration: float, *, clock: Callable[[], float] = time.monotonic,
                 write: Callable[..., None] = lifecycle.set_progress,
                 cancelled: Callable[[str], bool] = lifecycle.cancel_requested):
        self.job_id, self.duration, self.clock = job_id, max(duration, 0.001), clock
        self._write, self._cancelled = write, cancelled
        self.segments = 0
        self.percent = 0.0
        self._last_write = float("-inf")
        self._last_poll = float("-inf")
        self._cancel = False

    def on_segment(self, segment: engine.EngineSegment) -> None:
        """Advance to the end of the newest segment; write at most once per interval."""
        self.segments += 1
        self.percent = min(99.0, 100.0 * segment.end / self.duration)
        now = self.clock()
        if now - self._last_write >= PROGRESS_INTERVAL:
            self._last_write = now
            self._write(self.job_id, "transcribing", self.percent, segments_done=self.segments)

    def should_abort(self) -> bool:
        """Poll the database for a cancel request, at most every ``ABORT_POLL_INTERVAL``."""
        now = self.clock()
        if not self._cancel and now - self._last_poll >= ABORT_POLL_INTERVAL:
            self._last_poll = now
            self._cancel = self._cancelled(self.job_id)
        return self._cancel


def run(job_id: str) -> None:
    """Process one job if it is still queued and this worker wins the claim."""
    cfg = _settings
    if not Job.claim(job_id, worker_id()):
        return
    job = Job.get_by_id(job_id)
    layout = Layout(cfg["DATA_DIR"])
    joblog = JobLog(layout.job_log(job_id), job_id)
    joblog.write("INFO", f"started attempt {job.attempts} of {job.original_filename!r} with model {job.model}")
    started = time.monotonic()
    try:
        source = Path(job.source_path) if job.source_path else Path(cfg["DATA_DIR"]) / job.upload_path
        samples = audio.decode(source, timeout=cfg["FFMPEG_TIMEOUT_SECONDS"], expected_seconds=job.duration)
        duration = samples.size / audio.SAMPLE_RATE
        joblog.write("INFO", f"decoded {duration:.1f} s of audio")
        lifecycle.set_progress(job_id, "transcribing", 0.0)
        progress = Progress(job_id, duration)
        model_file = modelstore.model_path(cfg["MODELS_DIR"], job.model)
        if not model_file.exists():
            raise audio.MediaError(f"model {job.model} is no longer installed")
        result = engine.load_engine(model_file, cfg["ENGINE_THREADS"]).transcribe(
            samples, language=job.language, translate=job.task == "translate", prompt=job.prompt,
            on_segment=progress.on_segment, should_abort=progress.should_abort,
        )
        lifecycle.set_progress(job_id, "finalizing", 99.0)
        segments = [{"start": s.start, "end": s.end, "text": s.text, "confidence": s.confidence}
                    for s in result.segments]
        elapsed = time.monotonic() - started
        lifecycle.complete(cfg, job, segments, language=result.language, processing_seconds=elapsed)
        joblog.write("INFO", f"completed: {len(segments)} segments, language {result.language}, "
                             f"{elapsed:.2f} s (real-time factor {elapsed / max(duration, 0.001):.3f})")
    except engine.Aborted:
        lifecycle.mark_cancelled(job_id)
        joblog.write("WARNING", "cancelled; partial output discarded")
    except audio.MediaError as exc:
        lifecycle.fail(job_id, str(exc))
        joblog.write("ERROR", f"failed: {exc}")
    except Exception as exc:  # the job must never stay in processing
        log.exception("job %s failed", job_id)
        lifecycle.fail(job_id, f"Internal error while processing: {exc}")
        joblog.write("ERROR", f"failed: internal error: {exc}")


def reconcile() -> list[str]:
    """Give jobs of dead workers back to the queue (worker start-up and every minute)."""
    requeued = lifecycle.requeue_orphans(_settings, worker_alive, pending_job_ids())
    for job_id in requeued:
        log.warning("job=%s re-queued: its worker died", job_id)
    return requeued
