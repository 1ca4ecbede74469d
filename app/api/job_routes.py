"""Job routes of the canonical dialect (the full API): create, list, inspect, cancel, restart, delete."""

from __future__ import annotations

from flask import Blueprint, current_app, g, jsonify, request

from app.models import Job
from app.security import login_required
from app.services import jobs
from app.services.uploads import take_multipart_file
from app.validation import datetime_arg, int_arg

bp = Blueprint("jobs", __name__)


def create_from_request(**overrides):
    """Create a job from a multipart request (shared by every dialect's upload route)."""
    path, filename = take_multipart_file()
    form = request.form
    params = {
        "model": form.get("model"),
        "language": form.get("language"),
        "task": form.get("task"),
        "prompt": form.get("prompt"),
        "dub": form.get("dub"),  # a target language (or true): video jobs gain a spoken track
    }
    params.update(overrides)
    return jobs.create_job(current_app.config, g.user, path, filename, **params)


# Both spellings, answered directly: a 308 from one to the other makes clients send a large upload twice.
@bp.post("/api/jobs")
@bp.post("/api/jobs/")
@login_required("jobs:create")
def create_job():
    """Upload a file (multipart ``file``) with optional model, language, prompt and task."""
    job = create_from_request()
    body = jobs.summary(job)
    return jsonify({k: body[k] for k in ("job_id", "status", "filename", "model", "created_at")}), 201


@bp.get("/api/jobs/")
@login_required("jobs:read")
def list_jobs():
    """The caller's jobs, newest first: ``limit``, ``offset``, ``status``, ``created_after``."""
    limit = int_arg("limit", 50, 1, 100)
    offset = int_arg("offset", 0, 0, 10**9)
    found, total = jobs.list_jobs(
        g.user,
        status=request.args.get("status"),
        created_after=datetime_arg("created_after"),
        search=request.args.get("search"),
        limit=limit,
        offset=offset,
    )
    return jsonify({"jobs": [jobs.summary(j) for j in found], "total": total, "limit": limit, "offset": offset})


@bp.get("/api/jobs/<job_id>")
@login_required("jobs:read")
def get_job(job_id: str):
    """A job with its transcript (completed) or error (failed).

    ``wait=N`` (seconds, up to 60) holds the answer until the job finishes or N seconds pass.
    """
    return jsonify(jobs.detail(_waited(jobs.get_job(g.user, job_id))))


@bp.delete("/api/jobs/<job_id>")
@login_required("jobs:delete")
def delete_job(job_id: str):
    """Delete a job and its files."""
    jobs.delete_job(current_app.config, jobs.get_job(g.user, job_id))
    return jsonify({"message": "Job deleted successfully", "job_id": job_id})


@bp.post("/api/jobs/<job_id>/restart")
@login_required("jobs:create")
def restart_job(job_id: str):
    """Queue a failed, cancelled or purged job again."""
    job = jobs.restart_job(jobs.get_job(g.user, job_id))
    return jsonify({"job_id": job.id, "status": job.status, "message": "Job re-queued"})


@bp.post("/api/jobs/<job_id>/cancel")
@login_required("jobs:create")
def cancel_job(job_id: str):
    """Cancel a queued or running job."""
    job = jobs.cancel_job(jobs.get_job(g.user, job_id))
    return jsonify({"job_id": job.id, "status": job.status, "cancel_requested": True})


@bp.get("/api/progress/<job_id>")
@login_required("jobs:read")
def job_progress(job_id: str):
    """Stage, percent, time remaining and segment counts.

    ``estimated_time_remaining`` is in seconds (``estimated_time_remaining_text`` the same as "1m 30s"):
    null while unknown, 0 once finished; once known it never grows (it holds while the percent stands
    still, so no two readings show more time left at a higher percent). ``current_segment``
    counts the segments transcribed so far; ``total_segments`` is null until the first one, an estimate
    while transcribing (extrapolated from the audio transcribed so far) and the exact count afterwards.
    ``wait=N`` (seconds, up to 60) holds the answer until the job finishes or N seconds pass.
    """
    return jsonify(jobs.progress(_waited(jobs.get_job(g.user, job_id))))


def _waited(job: Job) -> Job:
    """The job after the long poll the ``wait`` query parameter asks for (none by default)."""
    return jobs.wait_for(job, int_arg("wait", 0, 0, jobs.MAX_WAIT_SECONDS))
