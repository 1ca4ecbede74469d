"""Free space in the data dir: below ``MIN_FREE_MB`` uploads are refused and ``/health`` says the disk is low.

The floor keeps room for what must still work on a nearly full disk: the database (logins record their
token), the logs and the jobs already queued. An upload is refused before its body is read, from its
``Content-Length`` where it has one, so a client does not send gigabytes only to hear 507 at the end.

When something else fills the disk to the last byte, SQLite can still write as long as it reuses its WAL
file instead of growing it: below the floor, a request that may write first checkpoints the WAL, so the
next transaction starts again at the beginning of the file (space the file already has).
"""

from __future__ import annotations

import logging
import shutil
from collections.abc import Mapping
from typing import Any

import peewee
from flask import current_app, request

from app.db import on_postgresql
from app.errors import AppError
from app.models import db

log = logging.getLogger(__name__)

MB = 1024**2
# Routes whose request body is stored in the data dir (or that assemble stored chunks into one file).
UPLOAD_ENDPOINTS = frozenset(
    {
        "jobs.create_job",  # full API
        "compat_v1.create_job",
        "compat_legacy.create_job",  # v1 and legacy
        "chunked_uploads.initialize",
        "chunked_uploads.upload_chunk",
        "chunked_uploads.finalize",
        "dubarr.upload",  # Dubarr
        "voxis.upload",  # VOXIS
        "openai.transcriptions",
        "openai.translations",  # OpenAI
        "asr.asr",
        "asr.detect_language",  # whisper-asr-webservice (Bazarr)
    }
)


def free_bytes(data_dir: str) -> int:
    """Bytes free for the appliance on the data dir's filesystem."""
    return shutil.disk_usage(data_dir).free


def floor_bytes(cfg: Mapping[str, Any]) -> int:
    """The free space that must stay free (``MIN_FREE_MB``); 0 turns the floor off."""
    return max(0, int(cfg.get("MIN_FREE_MB") or 0)) * MB


def status(cfg: Mapping[str, Any]) -> tuple[str, int]:
    """``("ok" | "low", free MB)`` for ``/health``."""
    free = free_bytes(cfg["DATA_DIR"])
    return ("low" if free < floor_bytes(cfg) else "ok"), free // MB


def ensure_room(cfg: Mapping[str, Any], incoming: int = 0) -> None:
    """507 when storing ``incoming`` more bytes would leave less than the floor free."""
    free, floor = free_bytes(cfg["DATA_DIR"]), floor_bytes(cfg)
    if free - incoming >= floor:
        return
    size = f" for an upload of {max(1, incoming // MB)} MB" if incoming else ""
    raise AppError(
        507,
        "INSUFFICIENT_STORAGE",
        f"Not enough free disk space{size}: {free // MB} MB free, and {floor // MB} MB must stay free "
        "(WT_MIN_FREE_MB). Delete old jobs or files, or free space on the data disk.",
    )


def reuse_wal() -> None:
    """Checkpoint the database's WAL without waiting, so the next write reuses the file's space."""
    if on_postgresql():
        return  # PostgreSQL's files are on its own box and disk
    try:
        db.execute_sql("PRAGMA wal_checkpoint(PASSIVE)")
    except (peewee.DatabaseError, OSError) as exc:  # busy, or the main file cannot grow: the write will tell
        log.debug("WAL checkpoint on a low disk failed: %s", exc)


def before_request() -> None:
    """507 for an upload while the data disk is below the floor; below it, make room for other writes."""
    cfg = current_app.config
    if request.endpoint in UPLOAD_ENDPOINTS:
        ensure_room(cfg, request.content_length or 0)
    elif request.method not in ("GET", "HEAD", "OPTIONS") and free_bytes(cfg["DATA_DIR"]) < floor_bytes(cfg):
        reuse_wal()
