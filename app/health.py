"""Health probes, open to anyone."""

from __future__ import annotations

import shutil
import time

from flask import Blueprint, current_app, jsonify
from huey.constants import EmptyData

from app.extensions import engine_breaker
from app.models import Job, db
from app.services.breaker import retry_after
from workers import modelstore
from workers.queue import huey

bp = Blueprint("health", __name__)
HEARTBEAT_KEY = "worker-heartbeat"
HEARTBEAT_MAX_AGE = 90  # seconds; workers beat every 30


def worker_alive() -> bool:
    """True when a worker wrote its heartbeat recently."""
    try:
        raw = huey.storage.peek_data(HEARTBEAT_KEY)
    except Exception:
        return False
    if raw is EmptyData or not raw:
        return False
    return time.time() - float(raw) < HEARTBEAT_MAX_AGE


@bp.get("/health")
def health():
    """``{"status": "ok"}`` plus database, queue and worker checks."""
    try:
        db.execute_sql("SELECT 1")
        database = "ok"
    except Exception as exc:
        database = f"error: {exc}"
    counts = Job.counts_by_status() if database == "ok" else {}
    return jsonify({
        "status": "ok",
        "database": database,
        "worker_alive": worker_alive(),
        "queue_depth": counts.get("queued", 0),
        "jobs": counts,
        # Dubarr's names (seed 003) for the same figures.
        "queue_stats": {"QUEUED": counts.get("queued", 0), "PROCESSING": counts.get("processing", 0),
                        "DONE": counts.get("completed", 0),
                        "ERROR": counts.get("failed", 0) + counts.get("cancelled", 0)},
        "engine_statuses": engine_statuses(),
    })


def engine_statuses() -> dict[str, str]:
    """READY, LOADING, ERROR or NOT_CONFIGURED for whisper, ffmpeg and voice-activity detection."""
    cfg = current_app.config
    installed = modelstore.installed(cfg["MODELS_DIR"])
    if retry_after(engine_breaker) is not None:
        whisper = "ERROR"
    elif cfg["DEFAULT_MODEL"] not in installed:
        whisper = "NOT_CONFIGURED"
    elif not worker_alive():
        whisper = "LOADING"  # no worker has reported in yet (starting, or restarting after a crash)
    else:
        whisper = "READY"
    ffmpeg = "READY" if shutil.which("ffmpeg") and shutil.which("ffprobe") else "ERROR"
    vad = "READY" if any(name.startswith("silero") for name in installed) else "NOT_CONFIGURED"
    return {"whisper": whisper, "ffmpeg": ffmpeg, "vad": vad}
