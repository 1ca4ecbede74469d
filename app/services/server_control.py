"""Administration: reset and server control (restart, shutdown).

Server control and systemd: restart sends SIGHUP to the Gunicorn master (it starts a new worker and
stops the old one gracefully) and to every registered Huey worker (it finishes the running job, then
re-executes itself), which is what ``systemctl reload`` does too. Shutdown under ``whisper-transcriber
run`` asks the supervisor to stop (SIGTERM: workers finish their job, Gunicorn stops, ``run`` exits 0).
Under systemd there is no supervisor: workers get SIGINT and the Gunicorn master SIGTERM, but
``Restart=always`` brings the workers back; the clean way there is
``systemctl stop whisper-transcriber.target``.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import psutil

from app import models
from app.errors import AppError
from app.models import AuditLog, Job, Segment, User, db
from app.services import admin_stats
from app.services.storage import Layout
from app.supervisor import gunicorn_master, live_workers, supervisor_process
from workers.queue import huey

RESET_FOLDERS = ("uploads", "transcripts", "logs", "cache", "tmp")


# ------------------------------------------------------------------ reset


def _empty(root: Path, keep_logs_open: bool) -> int:
    """Remove everything inside ``root`` without following symlinks; live ``*.log`` files are emptied."""
    removed = 0
    if not root.is_dir() or root.is_symlink():
        return 0
    for entry in os.scandir(root):
        try:
            if entry.is_dir(follow_symlinks=False):
                removed += sum(len(names) for _, _, names in os.walk(entry.path))
                shutil.rmtree(entry.path, ignore_errors=True)
            elif keep_logs_open and entry.name.endswith(".log") and entry.is_file(follow_symlinks=False):
                os.truncate(entry.path, 0)  # processes keep appending to the same (now empty) file
                removed += 1
            else:
                os.unlink(entry.path)
                removed += 1
        except FileNotFoundError:
            continue
    return removed


def reset(cfg: Mapping[str, Any], confirm: Any, *, actor: User, ip: str | None) -> dict[str, Any]:
    """Remove every job, file and queue entry; keep users, keys, settings and the audit log."""
    if confirm != "RESET":
        raise AppError(400, "CONFIRMATION_REQUIRED", 'Send {"confirm": "RESET"} to remove all jobs and files')
    with db.atomic("IMMEDIATE"):
        # A running worker sees its row gone, aborts at the next check and writes nothing.
        segments = Segment.delete().execute()
        jobs = Job.delete().execute()
        for name in ("UploadChunk", "UploadSession"):
            if hasattr(models, name):
                getattr(models, name).delete().execute()
    queued = admin_stats.queue_depth()
    huey.storage.flush_queue()
    huey.storage.flush_schedule()  # the key-value store (worker registry, heartbeats) stays
    data = Path(cfg["DATA_DIR"])
    removed = sum(_empty(data / name, keep_logs_open=name == "logs") for name in RESET_FOLDERS)
    Layout(data).ensure()
    result = {
        "jobs_deleted": jobs,
        "segments_deleted": segments,
        "queue_entries_removed": queued,
        "files_removed": removed,
    }
    AuditLog.record("admin_reset", user=actor, ip=ip, **result)
    return result


# ------------------------------------------------------------------ server control


def _control(cfg: Mapping[str, Any]) -> psutil.Process:
    """The Gunicorn master, when server control is enabled and the appliance runs under Gunicorn."""
    if not cfg.get("ENABLE_SERVER_CONTROL"):
        raise AppError(
            403, "SERVER_CONTROL_DISABLED", "Server control is disabled; set ENABLE_SERVER_CONTROL=true to allow it"
        )
    master = gunicorn_master(cfg["DATA_DIR"])
    if master is None:
        raise AppError(
            503,
            "SERVER_CONTROL_UNAVAILABLE",
            "No running Gunicorn master found ($DATA_DIR/gunicorn.pid is missing or stale); "
            "server control works under `whisper-transcriber run` or `serve`",
        )
    return master


def _send(pid: int, sig: signal.Signals) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, sig)


def _targets(cfg: Mapping[str, Any], action: str, actor: User, ip: str | None) -> tuple[Any, Any, list[int], str]:
    """The processes a server-control action signals (Gunicorn master, supervisor, workers), audited."""
    master = _control(cfg)
    supervisor = supervisor_process(cfg["DATA_DIR"])
    workers = [w["pid"] for w in live_workers()]
    mode = "supervisor" if supervisor else "direct"
    AuditLog.record(action, user=actor, ip=ip, mode=mode, web_master_pid=master.pid, workers=workers)
    return master, supervisor, workers, mode


def restart(cfg: Mapping[str, Any], *, actor: User, ip: str | None) -> tuple[dict[str, Any], Callable[[], None]]:
    """Graceful reload: SIGHUP to Gunicorn and to each worker. Returns the body and the action to run.

    Under ``run`` the supervisor forwards the SIGHUP, so workers it is retiring are not restarted.
    """
    master, supervisor, workers, mode = _targets(cfg, "admin_restart", actor, ip)

    def action() -> None:
        for pid in [supervisor.pid] if supervisor else [master.pid, *workers]:
            _send(pid, signal.SIGHUP)

    return {
        "message": "Restart initiated: the web server reloads, workers restart after their running job",
        "mode": mode,
        "web_master_pid": master.pid,
        "workers": workers,
    }, action


def shutdown(cfg: Mapping[str, Any], *, actor: User, ip: str | None) -> tuple[dict[str, Any], Callable[[], None]]:
    """Clean stop: workers finish their running job, queued jobs stay queued, the web server stops."""
    master, supervisor, workers, mode = _targets(cfg, "admin_shutdown", actor, ip)

    def action() -> None:
        if supervisor is not None:
            _send(supervisor.pid, signal.SIGTERM)  # it stops the workers (SIGINT) and Gunicorn, then exits 0
            return
        for pid in workers:
            _send(pid, signal.SIGINT)
        _send(master.pid, signal.SIGTERM)

    return {
        "message": "Shutdown initiated: running jobs finish first, queued jobs stay queued",
        "mode": mode,
        "web_master_pid": master.pid,
        "workers": workers,
    }, action
