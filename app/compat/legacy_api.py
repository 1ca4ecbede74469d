"""The legacy API's routes at their exact paths: thin adapters over the job, export, analysis and user services.

``GET /jobs/{job_id}`` is shared with the v1 API (app/compat/v1_api.py): it answers with the legacy fields
(``id``, ``original_filename``, ``model``, ``created_at``, ``updated``, ``status``) merged with the
canonical job detail (``job_id``, ``transcript`` ...). ``POST /jobs`` and ``GET /jobs`` are distinct
rules from the v1 API's ``POST /jobs/`` and ``GET /jobs/``; neither redirects to the other.
"""

from __future__ import annotations

from typing import Any

from flask import Blueprint, current_app, g, jsonify, request

from app.api import auth_routes
from app.api.export_routes import download_response
from app.api.job_routes import create_from_request
from app.models import Job, isoformat
from app.security import login_required
from app.services import analysis, jobs
from app.validation import form_or_json, int_arg

bp = Blueprint("compat_legacy", __name__)

DEFAULT_DOWNLOAD_FORMAT = "srt"


def legacy_fields(job: Job) -> dict[str, Any]:
    """The legacy API's own names for a job."""
    return {
        "id": job.id,
        "original_filename": job.original_filename,
        "model": job.model,
        "created_at": isoformat(job.created_at),
        "updated": isoformat(job.updated_at),
        "status": job.status,
    }


# ------------------------------------------------------------------------ jobs


@bp.post("/jobs")
@login_required("jobs:create")
def create_job():
    """Upload a file (multipart ``file``, optional ``model``) and queue it; returns the job id (legacy API)."""
    job = create_from_request()
    return jsonify({"id": job.id, "job_id": job.id, "status": job.status}), 201


@bp.get("/jobs")
@login_required("jobs:read")
def list_jobs():
    """The caller's jobs, newest first, filtered by ``search`` (file name and transcript) and ``status``."""
    limit = int_arg("limit", 100, 1, 1000)
    offset = int_arg("offset", 0, 0, 10**9)
    found, total = jobs.list_jobs(
        g.user,
        status=request.args.get("status") or None,
        search=request.args.get("search") or None,
        limit=limit,
        offset=offset,
    )
    response = jsonify([{**legacy_fields(job), **jobs.summary(job)} for job in found])
    response.headers["X-Total-Count"] = str(total)
    return response


@bp.get("/jobs/<job_id>")
@login_required("jobs:read")
def get_job(job_id: str):
    """A job (legacy and v1 APIs): the legacy fields plus the full detail, with the transcript once completed."""
    job = jobs.get_job(g.user, job_id)
    return jsonify({**legacy_fields(job), **jobs.detail(job)})


@bp.delete("/jobs/<job_id>")
@login_required("jobs:delete")
def delete_job(job_id: str):
    """Remove a job and its files (legacy API)."""
    job = jobs.get_job(g.user, job_id)
    jobs.delete_job(current_app.config, job)
    return jsonify({"message": "Job deleted successfully", "id": job.id, "job_id": job.id})


@bp.post("/jobs/<job_id>/restart")
@login_required("jobs:create")
def restart_job(job_id: str):
    """Queue a failed, cancelled or purged job again (the legacy API)."""
    job = jobs.restart_job(jobs.get_job(g.user, job_id))
    return jsonify({"id": job.id, "job_id": job.id, "status": job.status, "message": "Job re-queued"})


@bp.get("/jobs/<job_id>/download")
@login_required("export:download")
def download(job_id: str):
    """Download the transcript; ``format`` is srt (default), txt or vtt (json and tsv work too)."""
    fmt = request.args.get("format") or DEFAULT_DOWNLOAD_FORMAT
    return download_response(jobs.get_job(g.user, job_id), fmt)


@bp.get("/metadata/<job_id>")
@login_required("jobs:read")
def metadata(job_id: str):
    """Duration, language, model, word and segment counts, speed, input format and keywords of a completed job."""
    return jsonify(analysis.metadata(jobs.get_job(g.user, job_id)))


@bp.post("/jobs/<job_id>/analyze")
@login_required("jobs:read")
def analyze(job_id: str):
    """Summarise and analyse a transcript: the OpenAI-compatible endpoint if configured, else locally."""
    return jsonify(analysis.analyze(current_app.config, jobs.get_job(g.user, job_id)))


# ------------------------------------------------------------------------ auth


@bp.post("/register")
def register():
    """Create an account when ALLOW_REGISTRATION is on (same rules and answer as /auth/register)."""
    return auth_routes.register()


@bp.post("/token")
def token():
    """Exchange ``username`` and ``password`` (OAuth2 password form or JSON) for a bearer token."""
    return auth_routes.login_response(form_or_json())


@bp.post("/change-password")
def change_password():
    """Replace the caller's password (``current_password``, ``new_password``), as /auth/change-password."""
    return auth_routes.change_password()
