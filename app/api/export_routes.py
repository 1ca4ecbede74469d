"""Transcript downloads in txt, srt, vtt, json and tsv."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from flask import Blueprint, Response, g, jsonify, request

from app.models import Job
from app.security import login_required
from app.services import exports, jobs

bp = Blueprint("exports", __name__)


def subtitle_args() -> dict[str, str]:
    """The subtitle options among the query parameters: ``max_line_width``, ``max_line_count``,
    ``max_cue_seconds``, ``highlight_words`` (the export service checks their values)."""
    return {name: request.args[name] for name in exports.SUBTITLE_OPTIONS if name in request.args}


def download_response(job: Job, fmt: str, layout: Mapping[str, Any] | None = None) -> Response:
    """A transcript file download (shared by every dialect's download route).

    ``layout`` holds the subtitle options for srt and vtt; without it they come from the query string.
    """
    options = subtitle_args() if layout is None else dict(layout)
    subtitle = (fmt or "").lower() in exports.SUBTITLE_FORMATS
    body, mime = exports.render(jobs.require_transcript(job, words=True if subtitle else None), fmt, **options)
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
    """Download a completed job's transcript in one format.

    Query (srt, vtt): `max_line_width` (42; 0 keeps one cue per segment), `max_line_count` (2; 0: no limit),
    `max_cue_seconds` (7), `highlight_words` (karaoke: VTT timestamp tags, SRT underlined words).
    """
    return download_response(jobs.get_job(g.user, job_id), fmt)
