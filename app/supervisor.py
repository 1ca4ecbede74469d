"""Processes of one appliance: the worker registry, the ``run`` supervisor, and worker self-management.

Workers announce themselves in the queue's key-value store (``worker:<pid>``), so the web process can
report and signal them. The saved concurrency (``Setting`` "concurrency", ``{"workers": N, "threads": T}``)
is applied in two places:

- ``whisper-transcriber run`` (:class:`Supervisor`) polls it and keeps N worker processes, starting new
  ones at once and retiring extra ones with SIGINT (Huey finishes the running job; queued jobs stay queued).
- every worker (:func:`prepare_worker`) starts with T whisper.cpp threads and, when T changes, sends itself
  SIGHUP: Huey finishes the running job and re-executes the worker, which then reads the new T.
  Under systemd a worker unit that sets ``WT_WORKER_INDEX`` (e.g. ``%i``) waits on standby while its
  index is above N, so enabling a few worker units lets the saved N apply there too.

Signals to the supervisor: SIGHUP reloads (Gunicorn reloads its worker, workers restart gracefully);
SIGINT or SIGTERM stop everything cleanly (workers finish their job) and ``run`` exits with 0.
With ``WYOMING_ENABLED`` it also keeps the Wyoming server (``whisper-transcriber wyoming``) running:
restarted after a growing delay when it fails, restarted at once on a reload, stopped with SIGTERM.

Its children never outlive it: each one finds the supervisor's pid in ``WT_SUPERVISOR_PID`` and has the
kernel signal it when the supervisor dies, even by SIGKILL (``workers/lifecycle.py``). A worker that
exits with ``RECYCLE_EXIT_CODE`` (it outgrew ``WT_WORKER_MAX_RSS_MB`` or ``WT_WORKER_MAX_JOBS``) is
replaced at once, without the delay that follows a crash.
"""

from __future__ import annotations

import atexit
import contextlib
import json
import logging
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import psutil

from app.db import database_url, open_database
from app.models import Job, Setting, db
from workers import tuning
from workers.lifecycle import RECYCLE_EXIT_CODE, SUPERVISOR_ENV
from workers.queue import huey

log = logging.getLogger("supervisor")

CONCURRENCY_KEY = "concurrency"
WORKER_KEY_PREFIX = "worker:"
WORKER_MAX_AGE = 90.0  # seconds without a heartbeat before a registry entry is ignored
REMOTE_FORGET_AFTER = 3600.0  # ... and before another box's entry is removed
SUPERVISOR_PIDFILE = "supervisor.pid"
GUNICORN_PIDFILE = "gunicorn.pid"
POLL_SECONDS = 2.0  # how often the supervisor and the workers read the saved concurrency

_threads: int = 0  # whisper.cpp threads of this worker process, reported in its heartbeat
_box = {"name": socket.gethostname()}  # WT_WORKER_NAME, set by boot


# ------------------------------------------------------------------ concurrency


def _in_connection(query: Callable[[], Any]) -> Any:
    """Run a query on this thread's open connection, or on a short-lived one (never closing a request's)."""
    if not db.is_closed():
        return query()
    with db.connection_context():
        return query()


def read_concurrency(settings: dict[str, Any]) -> dict[str, int]:
    """The saved worker count and threads per worker, else the settings, else the calibrated layout."""
    try:
        value = _in_connection(lambda: Setting.read(CONCURRENCY_KEY)) or {}
    except Exception:  # a locked or missing database must not stop a process; use the defaults
        log.exception("could not read the concurrency setting")
        value = {}
    workers, threads = int(settings.get("WORKERS") or 0), int(settings.get("ENGINE_THREADS") or 0)
    if not workers:  # auto: the layout the calibration measured, when the threads are left to it too
        layout: dict[str, Any] = {}
        if not threads:
            layout = (tuning.read_record(settings) or {}).get("layout") or {}
        workers, threads = int(layout.get("workers") or 1), int(layout.get("threads") or threads)
    return {"workers": int(value.get("workers", workers)), "threads": int(value.get("threads", threads))}


# ------------------------------------------------------------------ worker registry


def name_this_box(name: str) -> None:
    """This box's WT_WORKER_NAME: registry entries under it are checked by pid, others only by their beat."""
    _box["name"] = name or socket.gethostname()


def record_worker(proc: psutil.Process | None = None) -> None:
    """Write a worker's registry entry (this process by default): name, host, pid, start time, threads, beat."""
    proc = proc or psutil.Process()
    entry = {
        "pid": proc.pid,
        "created": round(proc.create_time(), 2),
        "beat": time.time(),
        "threads": _threads,
        "name": _box["name"],
        "host": socket.gethostname(),
    }
    huey.storage.put_data(f"{WORKER_KEY_PREFIX}{_box['name']}:{proc.pid}", json.dumps(entry).encode())


def forget_worker(pid: int | None = None, name: str | None = None) -> None:
    """Remove a worker's registry entry (this process by default)."""
    try:
        huey.storage.pop_data(f"{WORKER_KEY_PREFIX}{name or _box['name']}:{pid or os.getpid()}")
    except Exception:
        log.debug("could not remove the registry entry of %s", pid, exc_info=True)


def live_workers(local_only: bool = True) -> list[dict[str, Any]]:
    """Registered workers that beat recently: of this box (whose process still runs), or of every box.

    Each entry says whether it is ``local``. Stale entries are removed: this box's once the process is gone,
    another box's once it stopped beating long ago (a worker on another box cannot be looked up here).
    """
    try:
        items = huey.storage.result_items()
    except Exception:
        return []
    found = []
    for key, raw in items.items():
        if not str(key).startswith(WORKER_KEY_PREFIX):
            continue
        name, _, pid = str(key)[len(WORKER_KEY_PREFIX) :].rpartition(":")
        local = name in ("", _box["name"])  # an entry without a name was written before names, on this box
        try:
            entry = json.loads(bytes(raw))
            age = time.time() - float(entry["beat"])
            if local:
                alive = f"{psutil.Process(int(entry['pid'])).create_time():.2f}" == f"{float(entry['created']):.2f}"
            else:
                alive = age < REMOTE_FORGET_AFTER
        except (ValueError, KeyError, TypeError, psutil.Error):
            alive, entry, age = False, {"pid": pid}, 0.0
        if not alive:
            with contextlib.suppress(Exception):
                huey.storage.pop_data(str(key))
        elif age < WORKER_MAX_AGE and (local or not local_only):
            found.append({**entry, "name": entry.get("name") or _box["name"], "local": local})
    return sorted(found, key=lambda e: (not e["local"], e["name"], e["pid"]))


# ------------------------------------------------------------------ pid files


def _process_from_pidfile(path: Path, looks_right: Callable[[list[str]], bool]) -> psutil.Process | None:
    """The running process named by a pid file, if its command line looks like the expected one."""
    try:
        fields = path.read_text().split()
        proc = psutil.Process(int(fields[0]))
        if len(fields) > 1 and f"{proc.create_time():.2f}" != fields[1]:
            return None  # the pid was reused by another process
        return proc if looks_right(proc.cmdline()) else None
    except (OSError, ValueError, IndexError, psutil.Error):
        return None


def gunicorn_master(data_dir: Path | str) -> psutil.Process | None:
    """The Gunicorn master of this appliance, from ``$DATA_DIR/gunicorn.pid``."""
    return _process_from_pidfile(Path(data_dir) / GUNICORN_PIDFILE, lambda cmd: "gunicorn" in " ".join(cmd))


def supervisor_process(data_dir: Path | str) -> psutil.Process | None:
    """The ``run`` supervisor of this appliance, or None (systemd, or ``serve`` alone)."""
    return _process_from_pidfile(Path(data_dir) / SUPERVISOR_PIDFILE, lambda cmd: cmd[-1:] == ["run"])


# ------------------------------------------------------------------ worker side


def prepare_worker(settings: dict[str, Any]) -> dict[str, int]:
    """Wait on standby while unwanted, then set ENGINE_THREADS from the saved value."""
    global _threads
    index = int(settings.get("WORKER_INDEX") or 0)
    wanted = read_concurrency(settings)
    if index and index > wanted["workers"]:
        log.info("worker %d on standby: %d worker(s) wanted", index, wanted["workers"])
        while index > wanted["workers"]:
            time.sleep(POLL_SECONDS)
            wanted = read_concurrency(settings)
    settings["ENGINE_THREADS"] = _threads = wanted["threads"]
    if sys.argv and sys.argv[0].endswith(os.path.join("app", "cli.py")):
        sys.argv[:1] = ["-m", "app.cli"]  # Huey re-executes ``python *sys.argv``: keep it a module run
    atexit.register(forget_worker)
    return wanted


def watch_concurrency(consumer: Any, settings: dict[str, Any]) -> None:
    """Restart this worker gracefully (SIGHUP to Huey) when its threads change or it is no longer wanted."""
    index = int(settings.get("WORKER_INDEX") or 0)

    def watch() -> None:
        while not consumer.stop_flag.wait(POLL_SECONDS):
            if signal.getsignal(signal.SIGHUP) in (signal.SIG_DFL, None):
                continue  # Huey has not installed its handlers yet; SIGHUP would kill the process
            now = read_concurrency(settings)
            # Never once stopping: a SIGHUP would turn a requested exit (SIGINT) into a restart.
            if not consumer.stop_flag.is_set() and (now["threads"] != _threads or (index and index > now["workers"])):
                log.info("concurrency changed to %s; restarting after the running job", now)
                os.kill(os.getpid(), signal.SIGHUP)
                return

    threading.Thread(target=watch, daemon=True, name="concurrency").start()


# ------------------------------------------------------------------ supervisor


class Supervisor:
    """Runs Gunicorn and N workers, applies the saved worker count, and stops cleanly."""

    def __init__(self, settings: dict[str, Any]):
        self.settings = settings
        self.cmd = [sys.executable, "-m", "app.cli"]
        self.env = {**os.environ, SUPERVISOR_ENV: str(os.getpid())}  # children exit when this process dies
        self.pidfile = Path(settings["DATA_DIR"]) / SUPERVISOR_PIDFILE
        self.active: list[subprocess.Popen] = []
        self.retiring: list[subprocess.Popen] = []
        self.started: dict[int, float] = {}
        self.signals: list[int] = []
        self.backoff = 1.0
        self.next_spawn = 0.0
        self.wanted = 1
        self.tuner: subprocess.Popen | None = None
        self.wyoming: subprocess.Popen | None = None  # the Wyoming server, when WYOMING_ENABLED
        self.wyoming_started = self.wyoming_next = 0.0
        self.wyoming_backoff = 1.0

    def run(self) -> int:
        """Supervise until stopped; 0 after a clean stop, 1 when the web server died."""
        open_database(database_url(self.settings), self.settings["DATA_DIR"])
        proc = psutil.Process()
        self.pidfile.write_text(f"{proc.pid} {proc.create_time():.2f}\n")
        for signum in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
            signal.signal(signum, lambda signum, frame: self.signals.append(signum))
        # Its own process group too: Gunicorn's worker hangs in its thread-pool shutdown when a terminal's
        # Ctrl-C reaches it directly and its master's quit signal arrives on top.
        self.web = subprocess.Popen([*self.cmd, "serve"], process_group=0, env=self.env)
        self.tuner = self._start_tuning()
        code, next_poll = 0, 0.0
        try:
            while True:
                time.sleep(0.2)
                if signal.SIGHUP in self.signals:
                    self.signals.remove(signal.SIGHUP)
                    self.reload()
                if self.signals:
                    break
                if self.web.poll() is not None:
                    log.error("web server exited with %s; stopping", self.web.returncode)
                    code = 1
                    break
                if time.monotonic() >= next_poll:
                    self.wanted = max(0, read_concurrency(self.settings)["workers"])
                    next_poll = time.monotonic() + POLL_SECONDS
                self._reap()
                self._scale()
                self._keep_wyoming()
        finally:
            self.stop()
            self.pidfile.unlink(missing_ok=True)
        return code

    def _start_tuning(self) -> subprocess.Popen | None:
        """First start on this box: calibrate the engines in the background (about 30 s) for WT_ENGINE=auto."""
        if self.settings.get("ENGINE") != "auto" or not self.settings.get("TUNE_ON_START"):
            return None
        if tuning.read_record(self.settings) is not None:
            return None
        log.info("calibrating the engines in the background; jobs run meanwhile on the default engine")
        print("Measuring the engines on this box (about 30 s, once; `whisper-transcriber tune` repeats it)", flush=True)
        return subprocess.Popen([*self.cmd, "tune"], process_group=0, env=self.env)

    def _spawn(self) -> None:
        # Its own process group: a terminal's Ctrl-C reaches the supervisor, which forwards one SIGINT
        # (a second SIGINT would make Huey abandon the running job).
        proc = subprocess.Popen([*self.cmd, "worker"], process_group=0, env=self.env)
        self.started[proc.pid] = time.monotonic()
        self.active.append(proc)
        log.info("worker %s started (%d of %d)", proc.pid, len(self.active), self.wanted)

    def _reap(self) -> None:
        """Forget exited workers; a recycled one is replaced at once, one that failed after a growing delay."""
        self.retiring = [p for p in self.retiring if p.poll() is None]
        for proc in [p for p in self.active if p.poll() is not None]:
            self.active.remove(proc)
            started = self.started.pop(proc.pid, 0.0)
            if proc.returncode == RECYCLE_EXIT_CODE:  # it logged why (memory or job count) before exiting
                log.info("worker %s exited to be recycled; starting a fresh one now", proc.pid)
                continue
            if time.monotonic() - started > 60:
                self.backoff = 1.0
            log.warning("worker %s exited with %s; replacing it in %.0f s", proc.pid, proc.returncode, self.backoff)
            self.next_spawn = time.monotonic() + self.backoff
            self.backoff = min(self.backoff * 2, 30.0)

    def _busy(self) -> set[int]:
        """Pids of workers that are running a job now."""
        try:
            mine = Job.worker_name.is_null() | (Job.worker_name == _box["name"])  # pids of this box only
            rows = _in_connection(lambda: list(Job.select(Job.worker_id).where((Job.status == "processing") & mine)))
            return {int(str(row.worker_id).split(":")[0]) for row in rows if row.worker_id}
        except Exception:
            return set()

    def _scale(self) -> None:
        """Retire extra workers (idle ones first) with SIGINT; start missing ones once retiring workers left."""
        if len(self.active) > self.wanted:
            busy = self._busy()
            self.active.sort(key=lambda p: p.pid in busy, reverse=True)  # idle ones at the end
        while len(self.active) > self.wanted:
            proc = self.active.pop()
            log.info("retiring worker %s after its running job", proc.pid)
            proc.send_signal(signal.SIGINT)
            self.retiring.append(proc)
        while len(self.active) + len(self.retiring) < self.wanted and time.monotonic() >= self.next_spawn:
            self._spawn()

    def _keep_wyoming(self) -> None:
        """WYOMING_ENABLED: keep the Wyoming server running; one that failed comes back after a growing delay."""
        if not self.settings.get("WYOMING_ENABLED"):
            return
        proc = self.wyoming
        if proc is not None and proc.poll() is None:
            return
        if proc is not None:
            self.wyoming = None
            if proc.returncode != 0:  # 0: it was asked to stop (a reload) and comes back at once
                if time.monotonic() - self.wyoming_started > 60:
                    self.wyoming_backoff = 1.0
                log.warning(
                    "the Wyoming server exited with %s; starting it again in %.0f s",
                    proc.returncode,
                    self.wyoming_backoff,
                )
                self.wyoming_next = time.monotonic() + self.wyoming_backoff
                self.wyoming_backoff = min(self.wyoming_backoff * 2, 30.0)
        if time.monotonic() >= self.wyoming_next:
            # Its own process group, like the workers; SIGTERM stops it after the command it is transcribing.
            self.wyoming = subprocess.Popen([*self.cmd, "wyoming"], process_group=0, env=self.env)
            self.wyoming_started = time.monotonic()
            log.info("Wyoming server %s started", self.wyoming.pid)

    def reload(self) -> None:
        """SIGHUP: Gunicorn replaces its worker; each Huey worker restarts after its running job.

        The Wyoming server gets SIGTERM and is started again at once with the current code.
        """
        log.info("reloading: SIGHUP to the web server and %d worker(s)", len(self.active))
        for proc in [self.web, *self.active]:
            if proc.poll() is None:
                proc.send_signal(signal.SIGHUP)
        if self.wyoming is not None and self.wyoming.poll() is None:
            self.wyoming.send_signal(signal.SIGTERM)

    def stop(self) -> None:
        """Workers finish their running job (SIGINT); the web server stops (SIGTERM); wait for all."""
        workers = [*self.active, *self.retiring]
        if self.tuner is not None and self.tuner.poll() is None:
            self.tuner.terminate()  # a calibration cut short saves nothing; the next start runs it again
        # Retiring workers already had their SIGINT: a second one would make Huey abandon the job.
        others = [self.web, *([self.wyoming] if self.wyoming is not None else [])]
        for proc, sig in [*((w, signal.SIGINT) for w in self.active), *((p, signal.SIGTERM) for p in others)]:
            if proc.poll() is None:
                proc.send_signal(sig)
        handled = len(self.signals)
        for proc in [*others, *workers]:
            while proc.poll() is None:
                time.sleep(0.2)
                if len(self.signals) > handled:  # asked again: interrupt; reconcile re-queues the job
                    handled = len(self.signals)
                    for worker in workers:
                        if worker.poll() is None:
                            worker.send_signal(signal.SIGTERM)
