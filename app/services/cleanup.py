"""Retention rules and a disk-usage ceiling, saved by admins and applied by a periodic Huey task.

- ``uploads_days``: uploaded media older than this is removed; the job keeps its transcript.
- ``transcripts_days``: finished jobs whose transcript file is older are deleted with the transcript,
  the upload, the job log and the database rows (the transcript lives in both places).
- ``logs_days``: log files (system, access and job logs, rotated ones too) older than this are removed.
- ``max_disk_percent``: while the data dir's disk is fuller than this, the uploads of finished jobs
  are removed, oldest job first.

0 means "keep forever" (or, for the ceiling, "no ceiling"). Ages are file modification times.
Files of queued or processing jobs are never removed.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import psutil

from app.errors import AppError
from app.models import FINISHED, Job, Setting
from app.services import jobs
from workers.timestamps import utc_iso

log = logging.getLogger(__name__)

CLEANUP_KEY = "cleanup"
LAST_RUN_KEY = "cleanup_last_run"
DEFAULTS = {"uploads_days": 30, "transcripts_days": 0, "logs_days": 30, "max_disk_percent": 0}
LIMITS = {"uploads_days": (0, 3650), "transcripts_days": (0, 3650), "logs_days": (0, 3650), "max_disk_percent": (0, 99)}
ACTIVE = ("queued", "processing")
DAY = 86400


def get_config() -> dict[str, int]:
    """The saved rules, with defaults for anything never set."""
    return {**DEFAULTS, **(Setting.read(CLEANUP_KEY) or {})}


def set_config(changes: dict[str, Any]) -> dict[str, int]:
    """Validate and save some of the rules; 422 for unknown names or values out of range."""
    unknown = sorted(set(changes) - set(DEFAULTS))
    if unknown:
        raise AppError(422, "INVALID_FIELD", f"Unknown setting(s): {', '.join(unknown)}; known: {', '.join(DEFAULTS)}")
    if not changes:
        raise AppError(422, "MISSING_FIELD", f"Give at least one of {', '.join(DEFAULTS)}")
    for name, value in changes.items():
        lo, hi = LIMITS[name]
        if isinstance(value, bool) or not isinstance(value, int) or not lo <= value <= hi:
            raise AppError(422, "INVALID_FIELD", f"{name} must be an integer from {lo} to {hi}")
    config = {**get_config(), **changes}
    Setting.write(CLEANUP_KEY, config)
    return config


def _older(root: Path, days: int, now: float) -> list[Path]:
    """Regular files under ``root`` (no symlinks followed) last modified more than ``days`` ago."""
    if days <= 0 or not root.is_dir():
        return []
    cutoff = now - days * DAY
    found = []
    for dirpath, _dirs, names in os.walk(root):
        for name in names:
            path = Path(dirpath) / name
            try:
                st = path.lstat()
            except OSError:
                continue
            if not path.is_symlink() and st.st_mtime < cutoff:
                found.append(path)
    return sorted(found)


def _remove(path: Path, why: str, removed: list[str], root: Path) -> None:
    try:
        size = path.stat().st_size
        path.unlink()
    except FileNotFoundError:
        return  # another worker's run got there first
    name = path.relative_to(root).as_posix()
    removed.append(name)
    log.info("cleanup removed %s (%d bytes): %s", name, size, why)


def _disk_percent(data_dir: str) -> float:
    return psutil.disk_usage(data_dir).percent


def run_cleanup(
    cfg: Mapping[str, Any], *, now: float | None = None, disk_percent: Callable[[str], float] = _disk_percent
) -> dict[str, Any]:
    """Apply the saved rules once; return (and log) what was removed."""
    rules = get_config()
    now = time.time() if now is None else now
    data = Path(cfg["DATA_DIR"])
    active = list(Job.select(Job.id, Job.upload_path).where(Job.status.in_(ACTIVE)))
    active_ids = {job.id for job in active}
    active_uploads = {job.upload_path for job in active if job.upload_path}
    removed: list[str] = []
    jobs_deleted: list[str] = []

    for path in _older(data / "uploads", rules["uploads_days"], now):
        relative = path.relative_to(data).as_posix()
        if relative not in active_uploads and path.stem not in active_ids:
            _remove(path, f"upload older than {rules['uploads_days']} days", removed, data)

    for path in _older(data / "transcripts", rules["transcripts_days"], now):
        job = Job.get_or_none(Job.id == path.stem)
        if job is None:
            _remove(path, f"transcript older than {rules['transcripts_days']} days", removed, data)
        elif job.status in FINISHED:
            jobs.delete_job(cfg, job)
            jobs_deleted.append(job.id)
            removed.append(path.relative_to(data).as_posix())
            log.info("cleanup deleted job %s: its transcript is older than %d days", job.id, rules["transcripts_days"])

    for path in _older(data / "logs", rules["logs_days"], now):
        if not (path.parent.name == "jobs" and path.stem in active_ids):
            _remove(path, f"log older than {rules['logs_days']} days", removed, data)

    disk = _apply_ceiling(cfg, rules["max_disk_percent"], disk_percent, removed)
    if removed:
        log.info("cleanup removed %d file(s) and %d job(s)", len(removed), len(jobs_deleted))
    report = {"removed": removed, "jobs_deleted": jobs_deleted, "disk_percent": disk, "rules": rules}
    Setting.write(
        LAST_RUN_KEY,
        {"at": utc_iso(), "files_removed": len(removed), "jobs_deleted": len(jobs_deleted), "disk_percent": disk},
    )
    return report


def last_run() -> dict[str, Any] | None:
    """When the periodic task last ran and what it removed."""
    return Setting.read(LAST_RUN_KEY)


def _apply_ceiling(
    cfg: Mapping[str, Any], ceiling: int, disk_percent: Callable[[str], float], removed: list[str]
) -> float:
    """Remove uploads of finished jobs, oldest first, until the disk is at or below the ceiling."""
    data_dir = str(cfg["DATA_DIR"])
    usage = disk_percent(data_dir)
    if ceiling <= 0 or usage <= ceiling:
        return usage
    log.warning("disk %.1f%% full, above the %d%% ceiling: removing uploads of finished jobs", usage, ceiling)
    candidates = (
        Job.select()
        .where(Job.status.in_(FINISHED) & Job.upload_path.is_null(False))
        .order_by(Job.completed_at, Job.created_at)
    )  # SQLite sorts NULL first
    for job in candidates:
        path = Path(data_dir) / job.upload_path
        if not path.is_file() or path.is_symlink():
            continue
        _remove(path, f"disk above {ceiling}%", removed, Path(data_dir))
        usage = disk_percent(data_dir)
        if usage <= ceiling:
            return usage
    log.warning("disk still %.1f%% full after removing every finished upload", usage)
    return usage
