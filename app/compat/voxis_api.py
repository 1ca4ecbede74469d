"""VOXIS routes: upload audio, clean it up (denoise, resample, channels), poll, export.

Thin adapters over ``app/services/voxis.py`` and the ordinary job pipeline. Every route shares one
per-address limit, ``RATELIMIT_VOXIS`` (30 per minute, as the VOXIS document says), on top of the app-wide ones,
and reports it in ``X-RateLimit-*``. The VOXIS document defines no authentication, so callers from
``ANONYMOUS_NETWORKS`` may use these routes without credentials (as the no-login service user).
``GET /api/jobs`` (no slash) is this API's list of cleanup jobs; ``/api/jobs/`` stays the canonical list.
"""

from __future__ import annotations

from flask import Blueprint, current_app, g, jsonify, request, send_file

from app.ratelimit import dialect_limit
from app.security import login_required, open_to_anonymous_networks
from app.services import jobs, voxis
from app.services.uploads import take_multipart_file
from app.validation import int_arg, json_body

bp = Blueprint("voxis", __name__)
# One bucket per client address for the whole blueprint: the VOXIS document limits the API, not each route.
# Behind trusted proxies ProxyFix has already put the client's address in remote_addr.
dialect_limit(bp, "RATELIMIT_VOXIS", "voxis", "Rate limit of the VOXIS API exceeded for this address; see Retry-After")
open_to_anonymous_networks(bp)  # the VOXIS document defines no authentication


@bp.get("/api/health")
def health():
    """Service status, running jobs and free disk space."""
    return jsonify(voxis.health(current_app.config))


@bp.post("/api/upload")
@login_required("jobs:create")
def upload():
    """Store an audio file (multipart ``file``: wav, mp3, flac, ogg or m4a) for later processing."""
    path, filename = take_multipart_file()
    media = voxis.store_upload(current_app.config, g.user, path, filename)
    return jsonify(voxis.upload_view(media))


@bp.post("/api/process")
@login_required("jobs:create")
def process():
    """Queue cleanup of an uploaded file: denoise, resample, channels, optional transcription."""
    job = voxis.start_processing(current_app.config, g.user, json_body())
    return jsonify(
        {"success": True, "job_id": job.id, "status": voxis.STATUS[job.status], "message": "Processing started"}
    )


@bp.get("/api/status/<job_id>")
@login_required("jobs:read")
def status(job_id: str):
    """Status, current stage and progress of a job."""
    return jsonify(voxis.status_view(jobs.get_job(g.user, job_id)))


@bp.get("/api/export/<job_id>")
@login_required("export:download")
def export(job_id: str):
    """The cleaned audio as wav (default), mp3 (``quality`` low/medium/high: 128/192/320 kbps) or flac."""
    fmt, quality = voxis.export_options(request.args.get("format"), request.args.get("quality"))
    job = jobs.get_job(g.user, job_id)
    path, mimetype, name = voxis.export_file(current_app.config, job, fmt, quality)
    return send_file(path, mimetype=mimetype, as_attachment=True, download_name=name, conditional=True)


@bp.get("/api/jobs")
@login_required("jobs:read")
def list_jobs():
    """Recent cleanup jobs, newest first: ``limit`` (default 50) and ``status``."""
    limit = int_arg("limit", 50, 1, 100)
    found, total = voxis.list_jobs(g.user, status=request.args.get("status"), limit=limit)
    return jsonify({"jobs": [voxis.job_view(job) for job in found], "total": total, "limit": limit})
