"""A worker's life: a lower CPU priority, no life after its supervisor, and a fresh start once it has grown.

- :func:`lower_priority`: workers run whisper.cpp at ``WT_WORKER_NICE`` so that the web server gets
  the CPU first. Every thread of the process is lowered (numpy may have started some at import),
  and a worker that re-executes itself is not lowered a second time.
- :func:`follow_supervisor`: a process started by ``run`` (which names itself in ``WT_SUPERVISOR_PID``)
  asks Linux for a signal when its parent dies (``PR_SET_PDEATHSIG``), then checks that its parent
  still is the supervisor, which closes the window between the fork and that request. Workers also
  watch their parent from a thread (:func:`watch_supervisor`), for systems without ``prctl``.
- :class:`Recycler`: after each job a worker compares its resident memory with ``WT_WORKER_MAX_RSS_MB``
  and its job count with ``WT_WORKER_MAX_JOBS``. Past either it logs why, takes no more jobs and
  exits with :data:`RECYCLE_EXIT_CODE`; the supervisor starts a new worker at once. Without a
  supervisor (systemd) it re-executes itself in place instead, which frees its memory just the same.
"""

from __future__ import annotations

import ctypes
import logging
import os
import signal
import sys
import threading
import time
from pathlib import Path
from typing import Any

import psutil

from app.models import Job

log = logging.getLogger("worker")

SUPERVISOR_ENV = "WT_SUPERVISOR_PID"  # set by ``run`` for the processes it starts
RECYCLE_EXIT_CODE = 75  # EX_TEMPFAIL: "exited on purpose, start a new one now"
ORPHAN_EXIT_CODE = 70  # the supervisor died; nobody reads this code, but it is not a clean 0
PARENT_CHECK_SECONDS = 0.5
PR_SET_PDEATHSIG = 1
MB = 1024 * 1024
# WT_WORKER_MAX_RSS_MB=0 sizes the limit for the models the worker has run: a tiny.en or base worker stays
# well under 1 GB (measured ~170-300 MB per model, ~600 MB with base on both engines at once), and a larger
# model gets 512 MB plus three times its size.
AUTO_FLOOR_MB = 1024
AUTO_BASE_MB = 512
AUTO_MODEL_FACTOR = 3


# ------------------------------------------------------------------ CPU priority


def lower_priority(niceness: int) -> int:
    """Raise the niceness of every thread of this process to at least ``niceness``; the niceness now."""
    try:
        threads = [int(tid) for tid in os.listdir("/proc/self/task")]
    except OSError:  # no /proc: the calling thread only (threads started later inherit it)
        threads = [0]
    for tid in threads:
        try:
            if os.getpriority(os.PRIO_PROCESS, tid) < niceness:
                os.setpriority(os.PRIO_PROCESS, tid, min(niceness, 19))
        except OSError:  # a thread that ended meanwhile
            continue
    return os.getpriority(os.PRIO_PROCESS, 0)


# ------------------------------------------------------------------ the supervisor's children


def supervisor_pid() -> int | None:
    """The pid of the ``run`` supervisor that started this process, or None."""
    value = os.environ.get(SUPERVISOR_ENV, "")
    return int(value) if value.isdigit() else None


def _parent_death_signal(signum: int) -> bool:
    """Have the kernel send ``signum`` to this process when its parent dies (Linux only)."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        return libc.prctl(PR_SET_PDEATHSIG, int(signum), 0, 0, 0) == 0
    except (OSError, AttributeError):
        return False


def follow_supervisor(signum: int = signal.SIGTERM) -> bool:
    """Get ``signum`` when the supervisor dies; exit now if it is gone already. True when supervised."""
    pid = supervisor_pid()
    if pid is None:
        return False
    _parent_death_signal(signum)
    if os.getppid() != pid:  # it died before the request above: nobody would send the signal
        log.warning("the supervisor %s is gone; exiting", pid)
        os._exit(ORPHAN_EXIT_CODE)
    return True


def leave_with_supervisor(*_: Any) -> None:
    """The supervisor is gone: stop this worker and its children (ffmpeg) now; the next start re-queues the job."""
    log.warning("the supervisor %s is gone; this worker stops now, the next start re-queues its job", supervisor_pid())
    try:
        children = psutil.Process().children(recursive=True)
    except psutil.Error:
        children = []
    for child in children:
        try:
            child.kill()
        except psutil.Error:  # it ended meanwhile
            continue
    os._exit(ORPHAN_EXIT_CODE)


def watch_supervisor(interval: float = PARENT_CHECK_SECONDS) -> bool:
    """A worker of ``run`` exits when the supervisor dies: a signal from the kernel, and a parent check."""
    pid = supervisor_pid()
    if pid is None:
        return False
    # Its own signal, not SIGTERM or SIGINT: those belong to Huey (interrupt, finish the job and stop).
    signal.signal(signal.SIGUSR1, leave_with_supervisor)
    follow_supervisor(signal.SIGUSR1)

    def check() -> None:  # a thread keeps checking while the main thread is busy, and where prctl is missing
        while os.getppid() == pid:
            time.sleep(interval)
        leave_with_supervisor()

    threading.Thread(target=check, daemon=True, name="supervisor-check").start()
    return True


# ------------------------------------------------------------------ recycling


def model_bytes(models_dir: Path | str, engine_label: str | None) -> int:
    """Bytes of the model file (or CTranslate2 folder) named by a job's engine label, ``whispercpp:ggml-base.bin``."""
    name = (engine_label or "").partition(":")[2]
    if not name or "/" in name or name.startswith("."):
        return 0
    path = Path(models_dir) / name
    try:
        if path.is_dir():
            return sum(f.stat().st_size for f in path.iterdir() if f.is_file())
        return path.stat().st_size
    except OSError:
        return 0


class Recycler:
    """Decides after each job whether this worker should make way for a fresh process."""

    def __init__(self, settings: dict[str, Any]):
        self.max_rss_mb = int(settings.get("WORKER_MAX_RSS_MB") or 0)
        self.max_jobs = int(settings.get("WORKER_MAX_JOBS") or 0)
        self.models_dir = settings["MODELS_DIR"]
        self.jobs = 0
        self.largest_model = 0  # bytes: the biggest model this worker has run, for the automatic limit
        self.reason: str | None = None

    def limit_mb(self) -> float | None:
        """The RSS limit in MB: the configured one, or sized for the models run so far; None when off."""
        if self.max_rss_mb < 0:
            return None
        if self.max_rss_mb > 0:
            return float(self.max_rss_mb)
        return max(AUTO_FLOOR_MB, AUTO_BASE_MB + AUTO_MODEL_FACTOR * self.largest_model / MB)

    def after_job(self, engine_label: str | None = None, rss: int | None = None) -> str | None:
        """Count a finished job; why the worker should be recycled now, or None."""
        self.jobs += 1
        self.largest_model = max(self.largest_model, model_bytes(self.models_dir, engine_label))
        rss_mb = (psutil.Process().memory_info().rss if rss is None else rss) / MB
        limit = self.limit_mb()
        if limit is not None and rss_mb > limit:
            setting = f"WT_WORKER_MAX_RSS_MB={self.max_rss_mb}" if self.max_rss_mb else "sized for the model"
            self.reason = f"its memory (RSS {rss_mb:.0f} MB) is over the limit of {limit:.0f} MB ({setting})"
        elif self.max_jobs and self.jobs >= self.max_jobs:
            jobs = f"{self.jobs} job" + ("s" if self.jobs > 1 else "")
            self.reason = f"it has run {jobs} (WT_WORKER_MAX_JOBS={self.max_jobs})"
        return self.reason


def install_recycling(huey: Any, settings: dict[str, Any], supervised: bool) -> Recycler:
    """Check this worker after every job; past a limit, finish cleanly so a fresh process takes over."""
    recycler = Recycler(settings)

    @huey.post_execute(name="recycle")
    def recycle_check(task: Any, value: Any, exc: BaseException | None) -> None:
        if task.name != "process_job" or recycler.reason:
            return
        job_id = task.args[0] if task.args else None
        if not recycler.after_job(_engine_of(job_id)):
            return
        log.warning(
            "recycling worker %s after its job: %s",
            os.getpid(),
            recycler.reason,
            extra={"job_id": job_id, "recycle_reason": recycler.reason, "jobs": recycler.jobs},
        )
        huey.storage.interrupt()  # take no other job meanwhile
        # Huey stops gracefully on SIGINT (the job is done) and re-executes itself in place on SIGHUP.
        os.kill(os.getpid(), signal.SIGINT if supervised else signal.SIGHUP)

    return recycler


def _engine_of(job_id: str | None) -> str | None:
    try:
        row = Job.get_or_none(Job.id == job_id) if job_id else None
        return row.engine if row else None
    except Exception:  # a busy database must not decide anything here; the RSS check still runs
        return None
