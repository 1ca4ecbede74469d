"""Transcript downloads in txt, srt, vtt, json and tsv."""

from __future__ import annotations

from flask import Blueprint, Response, g, jsonify

from app.models import Job
from app.security import login_required
from app.services import exports
from app.services import jobs as service

bp = Blueprint("exports", __name__)


def download_response(job: Job, fmt: str) -> Response:
    """A transcript file download (shared by every dialect's download route)."""
    body, mime = exports.render(service.require_transcript(job), fmt)
    stem = job.original_filename.rsplit(".", 1)[0] or job.id
    response = Response(body, mimetype=None, content_type=mime)
    ascii_stem = stem.encode("ascii", "ignore").decode() or job.id
    response.headers["Content-Disposition"] = f'attachment; filename="{ascii_stem.replace(chr(34), "")}.{fmt.lower()}"'
    return response


@bp.get("/api/export/formats")
@login_required()
def formats():
    """The available export formats."""
    return jsonify({"formats": exports.format_list()})


@bp.get("/api/export/download/<job_id>/<fmt>")
@login_required("export:download")
def download(job_id: str, fmt: str):
    """Download a completed job's transcript in one format."""
    return download_response(service.get_job(g.user, job_id), fmt)
