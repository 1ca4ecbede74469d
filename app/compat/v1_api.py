"""The v1 API's routes: ``POST /jobs/`` and ``GET /jobs/`` (``skip``/``limit``), thin adapters over the job service.

``GET /health`` and ``POST /auth/login`` are the canonical routes; ``GET /jobs/{job_id}`` is shared with
the legacy API and lives in app/compat/legacy_api.py; ``GET /metrics/`` is in app/api/metric_routes.py.
"""

from __future__ import annotations

from flask import Blueprint, g, jsonify

from app.api.job_routes import create_from_request
from app.security import login_required
from app.services import jobs
from app.validation import int_arg

bp = Blueprint("compat_v1", __name__)


@bp.post("/jobs/")
@login_required("jobs:create")
def create_job():
    """Upload a file (multipart ``file``, optional ``model`` and ``language``) and queue it (v1 API)."""
    job = create_from_request()
    return jsonify(
        {
            "job_id": job.id,
            "status": job.status,
            "message": "Job created successfully",
            "queue_job_id": f"queue-{job.id}",
        }
    ), 201


@bp.get("/jobs/")
@login_required("jobs:read")
def list_jobs():
    """The caller's jobs, newest first, paged by ``skip`` (default 0) and ``limit`` (default 100)."""
    skip = int_arg("skip", 0, 0, 10**9)
    limit = int_arg("limit", 100, 1, 1000)
    found, total = jobs.list_jobs(g.user, limit=limit, offset=skip)
    response = jsonify([jobs.summary(job) for job in found])
    response.headers["X-Total-Count"] = str(total)
    return response
