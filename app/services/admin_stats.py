"""Administration: statistics and health, read for ``/admin/stats`` and ``/admin/health``."""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Mapping
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import psutil
from limits.storage import storage_from_string
from peewee import fn

from app.models import ApiKey, AuditLog, Job, User, db, utcnow
from app.services import draining, files
from app.services.storage import FOLDERS
from app.supervisor import gunicorn_master, live_workers
from workers import modelstore, tuning
from workers.queue import consumer_alive, huey
from workers.timestamps import utc_iso

MB = 1024**2
GB = 1024**3

_cpu_lock = threading.Lock()
_cpu_last: list = [psutil.cpu_times()]


def cpu_percent() -> float:
    """System CPU use since the previous call, from any thread.

    psutil.cpu_percent(interval=None) keeps its baseline per thread, so under Gunicorn's
    thread pool each new thread read 0.0; one shared baseline fixes that.
    """
    with _cpu_lock:
        now = psutil.cpu_times()
        before, _cpu_last[0] = _cpu_last[0], now
    busy = lambda t: sum(t) - t.idle - getattr(t, "iowait", 0.0)  # noqa: E731
    total = sum(now) - sum(before)
    if total <= 0.05:  # called twice within a few ms: measure a short window instead
        return psutil.cpu_percent(interval=0.1)
    return max(0.0, round(100.0 * (busy(now) - busy(before)) / total, 1))


# ------------------------------------------------------------------ helpers


def _mb(value: float) -> float:
    return round(value / MB, 1)


def duration_text(seconds: float | None) -> str | None:
    """A short human duration: ``2m 15s``, ``5d 12h 30m``."""
    if seconds is None:
        return None
    seconds = int(round(seconds))
    days, rest = divmod(seconds, 86400)
    hours, rest = divmod(rest, 3600)
    minutes, secs = divmod(rest, 60)
    if days:
        return f"{days}d {hours}h {minutes}m"
    if hours:
        return f"{hours}h {minutes}m"
    return f"{minutes}m {secs}s" if minutes else f"{secs}s"


def _rss(proc: psutil.Process | None) -> float | None:
    try:
        return _mb(proc.memory_info().rss) if proc else None
    except psutil.Error:
        return None


def queue_depth() -> int:
    try:
        return huey.pending_count()
    except Exception:
        return 0


def folder_usage(data_dir: str | Path) -> dict[str, dict[str, Any]]:
    """Files and bytes per data-dir folder, plus the database and queue files."""
    usage = {}
    for name in FOLDERS:
        root = Path(os.path.realpath(Path(data_dir) / name))
        sizes = [st.st_size for _, st in files.walk(root)] if root.is_dir() else []
        usage[name] = {"files": len(sizes), "size_mb": _mb(sum(sizes)), "bytes": sum(sizes)}
    dbs = [p for p in Path(data_dir).glob("*.db*") if p.is_file()]
    total = sum(p.stat().st_size for p in dbs)
    usage["database"] = {"files": len(dbs), "size_mb": _mb(total), "bytes": total}
    return usage


# ------------------------------------------------------------------ stats


def _job_stats() -> tuple[dict[str, int], dict[str, Any], float | None]:
    counts = Job.counts_by_status()
    jobs = {"total": sum(counts.values()), **counts}
    done = (
        Job.select(fn.AVG(Job.processing_seconds), fn.SUM(Job.processing_seconds), fn.SUM(Job.duration))
        .where((Job.status == "completed") & Job.processing_seconds.is_null(False) & (Job.duration > 0))
        .scalar(as_tuple=True)
    )
    avg, spent, media = done if done else (None, None, None)
    finished = counts["completed"] + counts["failed"]
    hour_ago = utcnow() - timedelta(hours=1)
    performance = {
        "avg_processing_time": duration_text(avg),
        "avg_processing_seconds": round(avg, 2) if avg is not None else None,
        "success_rate": round(100.0 * counts["completed"] / finished, 1) if finished else None,
        "throughput_per_hour": Job.select().where((Job.status == "completed") & (Job.completed_at >= hour_ago)).count(),
    }
    rtf = round(spent / media, 3) if spent and media else None
    return jobs, performance, rtf


def _user_stats() -> dict[str, int]:
    """Totals; a user is active when they created a job, used a key or appear in the audit log in 24 h."""
    day, week = utcnow() - timedelta(hours=24), utcnow() - timedelta(days=7)
    active = {row.user_id for row in Job.select(Job.user).where((Job.created_at >= day) & Job.user.is_null(False))}
    active |= {row.user_id for row in ApiKey.select(ApiKey.user).where(ApiKey.last_used >= day)}
    active |= {
        row.user_id
        for row in AuditLog.select(AuditLog.user_id).where((AuditLog.at >= day) & AuditLog.user_id.is_null(False))
    }
    return {
        "total": User.select().count(),
        "active_last_24h": len(active),
        "new_last_7d": User.select().where(User.created_at >= week).count(),
    }


def _system(data_dir: str) -> dict[str, Any]:
    memory = psutil.virtual_memory()
    disk = psutil.disk_usage(data_dir)
    return {
        "cpu_percent": cpu_percent(),
        "cpu_count": psutil.cpu_count(),
        "memory": {
            "total_mb": _mb(memory.total),
            "used_mb": _mb(memory.total - memory.available),
            "available_mb": _mb(memory.available),
            "percent": memory.percent,
        },
        "disk": {
            "total_gb": round(disk.total / GB, 2),
            "used_gb": round(disk.used / GB, 2),
            "free_gb": round(disk.free / GB, 2),
            "percent": disk.percent,
        },
        "load_average": [round(x, 2) for x in os.getloadavg()],
    }


def _processes(data_dir: str) -> dict[str, Any]:
    web = psutil.Process()
    master = gunicorn_master(data_dir)
    workers, drained = [], set(draining.drained())
    for entry in live_workers(local_only=False):  # every box's: a worker elsewhere shows its name and beat
        wid = f"{entry['pid']}:{float(entry['created']):.2f}"
        mine = (Job.worker_id == wid) & ((Job.worker_name == entry["name"]) | Job.worker_name.is_null())
        job = Job.select(Job.id, Job.model, Job.engine).where(mine & (Job.status == "processing")).first()
        proc = None
        if entry["local"]:
            try:
                proc = psutil.Process(entry["pid"])
            except psutil.Error:
                continue
        workers.append(
            {
                "name": entry["name"],
                "host": entry.get("host") or entry["name"],
                "local": entry["local"],
                "pid": entry["pid"],
                "rss_mb": _rss(proc) if proc else None,
                "threads": entry.get("threads"),
                "uptime_seconds": round(time.time() - float(entry["created"])),
                "last_heartbeat": utc_iso(datetime.fromtimestamp(float(entry["beat"]), UTC)),
                "job_id": job.id if job else None,
                "model": job.model if job else None,
                "engine": job.engine if job else None,
                "drained": entry["name"] in drained,
            }
        )
    return {
        "web_pid": web.pid,
        "web_rss_mb": _rss(web),
        "web_master_pid": master.pid if master else None,
        "web_master_rss_mb": _rss(master),
        "workers": workers,
    }


def stats(cfg: Mapping[str, Any]) -> dict[str, Any]:
    """The full API's statistics plus system, process, queue and per-folder figures."""
    data_dir = str(cfg["DATA_DIR"])
    jobs, performance, rtf = _job_stats()
    by_folder = folder_usage(data_dir)
    user_files = [by_folder[name] for name in files.LISTED]
    count, size = sum(f["files"] for f in user_files), sum(f["bytes"] for f in user_files)
    return {
        "jobs": jobs,
        "users": _user_stats(),
        "storage": {
            "total_files": count,
            "total_size_gb": round(size / GB, 3),
            "avg_file_size_mb": round(size / count / MB, 2) if count else 0.0,
        },
        "performance": performance,
        "system": _system(data_dir),
        "processes": _processes(data_dir),
        "queue_depth": queue_depth(),
        "real_time_factor": rtf,
        "storage_by_folder": by_folder,
        "engine": engine_choice(cfg),
    }


def engine_choice(cfg: Mapping[str, Any]) -> dict[str, Any]:
    """WT_ENGINE, what the default model runs on for short and long audio, and the calibration behind it."""
    model = cfg["DEFAULT_MODEL"]
    choices: dict[str, str | None] = {}
    for kind, seconds in (("short", 10.0), ("long", 600.0)):
        try:
            choices[kind] = tuning.choose(cfg, model, seconds).label
        except modelstore.ModelError:
            choices[kind] = None
    return {
        "setting": cfg.get("ENGINE", "auto"),
        "default_model": model,
        "choice": choices,
        "calibration": tuning.read_record(cfg),
    }


# ------------------------------------------------------------------ health


def _database() -> str:
    try:
        db.execute_sql("SELECT 1")
        return "healthy"
    except Exception:
        return "unhealthy"


def _redis(cfg: Mapping[str, Any]) -> str:
    """Redis is only used as optional rate-limit storage; say so when it is not configured."""
    if not str(cfg.get("RATELIMIT_STORAGE_URI") or "").startswith("redis"):
        return "not_configured"
    try:
        return "healthy" if storage_from_string(str(cfg["RATELIMIT_STORAGE_URI"])).check() else "unhealthy"
    except Exception:
        return "unhealthy"


def _storage(data_dir: str) -> tuple[str, float]:
    percent = psutil.disk_usage(data_dir).percent
    if not os.access(data_dir, os.W_OK):
        return "unhealthy", percent
    return ("degraded" if percent >= 95 else "healthy"), percent


def health(cfg: Mapping[str, Any]) -> dict[str, Any]:
    """The full API's health body with measured values; services that do not exist are ``not_configured``."""
    data_dir = str(cfg["DATA_DIR"])
    storage, _ = _storage(data_dir)
    database = _database()
    workers = live_workers()
    installed = modelstore.installed(cfg["MODELS_DIR"])
    whisper = "healthy" if installed and (workers or consumer_alive()) else "unhealthy"
    details = {"workers": len(workers), "models": installed}
    if not installed:
        details["whisper"] = "no model is installed"
    elif whisper != "healthy":
        details["whisper"] = "no worker has reported in the last 90 s"
    services = {"database": database, "redis": _redis(cfg), "whisper": whisper, "storage": storage}
    states = {v for v in services.values() if v != "not_configured"}
    status = "unhealthy" if database != "healthy" else "healthy" if states == {"healthy"} else "degraded"
    counts = Job.counts_by_status() if database == "healthy" else {}
    master = gunicorn_master(data_dir)
    started = (master or psutil.Process()).create_time()
    return {
        "status": status,
        "timestamp": utc_iso(),
        "services": services,
        "metrics": {
            "uptime": duration_text(time.time() - started),
            "uptime_seconds": round(time.time() - started),
            "active_jobs": counts.get("processing", 0),
            "queue_size": counts.get("queued", 0),
            "memory_usage": f"{psutil.virtual_memory().percent:.0f}%",
            "cpu_usage": f"{cpu_percent():.0f}%",
        },
        "details": details,
    }
