"""Health probes, open to anyone."""

from __future__ import annotations

import shutil

from flask import Blueprint, current_app, jsonify

from app.models import Job, db
from app.ratelimit import limiter
from app.services import analysis, disk, dubs
from app.services.breaker import engine_breaker, retry_after
from workers import modelstore
from workers.queue import consumer_alive

bp = Blueprint("health", __name__)
limiter.exempt(bp)  # probes must answer however busy the caller is


@bp.before_app_request
def guard_disk_space() -> None:
    """Uploads answer 507 while the data disk is below ``MIN_FREE_MB``, before their body is read."""
    disk.before_request()


@bp.get("/health")
def health():
    """``{"status": "ok"}`` plus database, disk, queue and worker checks; ``degraded`` (still 200) when one fails.

    A liveness probe reads 200; ``status``, ``database`` and ``disk`` say whether the appliance can do its work.
    """
    try:
        db.execute_sql("SELECT 1")
        database = "ok"
    except Exception as exc:
        database = f"error: {exc}"
    disk_state, free_mb = disk.status(current_app.config)
    counts = Job.counts_by_status() if database == "ok" else {}
    return jsonify(
        {
            "status": "ok" if database == "ok" and disk_state == "ok" else "degraded",
            "database": database,
            "disk": disk_state,  # "low" below WT_MIN_FREE_MB: uploads are refused
            "disk_free_mb": free_mb,
            "worker_alive": consumer_alive(),
            "queue_depth": counts.get("queued", 0),
            "jobs": counts,
            # Dubarr's names for the same figures.
            "queue_stats": queue_stats(counts),
            "engine_statuses": engine_statuses(),
        }
    )


def queue_stats(counts: dict[str, int]) -> dict[str, int]:
    """Dubarr's four counts. A cancelled job did not fail, and Dubarr has no name for it: it is in ``jobs`` only."""
    return {
        "QUEUED": counts.get("queued", 0),
        "PROCESSING": counts.get("processing", 0),
        "DONE": counts.get("completed", 0),
        "ERROR": counts.get("failed", 0),
    }


def engine_statuses() -> dict[str, str]:
    """READY, LOADING, ERROR, NOT_CONFIGURED or NOT_AVAILABLE for each engine Dubarr names, and ffmpeg and VAD.

    ``tts``: espeak-ng installed, or the ``WT_TTS_BASE_URL`` server answering; ``llm``: the chat model at
    ``OPENAI_BASE_URL`` answering (NOT_CONFIGURED when none is set up); ``diarization`` does not exist yet.
    """
    cfg = current_app.config
    installed = modelstore.installed(cfg["MODELS_DIR"])
    if retry_after(engine_breaker) is not None:
        whisper = "ERROR"
    elif cfg["DEFAULT_MODEL"] not in installed:
        whisper = "NOT_CONFIGURED"
    elif not consumer_alive():
        whisper = "LOADING"  # no worker has reported in yet (starting, or restarting after a crash)
    else:
        whisper = "READY"
    ffmpeg = "READY" if shutil.which("ffmpeg") and shutil.which("ffprobe") else "ERROR"
    vad = "READY" if any(name.startswith("silero") for name in installed) else "NOT_CONFIGURED"
    return {
        "whisper": whisper,
        "tts": dubs.tts_state(cfg),
        "llm": dubs.llm_state(cfg, retry_after(analysis.analysis_breaker) is not None),
        "diarization": "NOT_AVAILABLE",
        "ffmpeg": ffmpeg,
        "vad": vad,
    }
