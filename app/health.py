"""Health probes, open to anyone."""

from __future__ import annotations

import time

from flask import Blueprint, jsonify
from huey.constants import EmptyData

from app.models import Job, db
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
    })
