"""Chunked uploads (the full API's file management): initialize, send chunks 1 to N, check progress, finalize."""

from __future__ import annotations

from typing import Any

from flask import Blueprint, current_app, g, jsonify, request

from app.errors import AppError, bad_request
from app.models import isoformat
from app.security import login_required
from app.services import chunked
from app.validation import json_body, string_field

bp = Blueprint("chunked_uploads", __name__, url_prefix="/api/chunked-uploads")


def _int_field(data: dict[str, Any], name: str) -> int:
    value = data.get(name)
    if value is None:
        raise AppError(422, "MISSING_FIELD", f"{name} is required")
    if isinstance(value, bool) or not isinstance(value, int):
        raise AppError(422, "INVALID_FIELD", f"{name} must be an integer number of bytes")
    return value


def _upload_url(session_id: str) -> str:
    return f"{request.script_root}{bp.url_prefix}/{session_id}/chunks"


@bp.post("/initialize")
@login_required("jobs:create")
def initialize():
    """Start a chunked upload: JSON ``filename``, ``file_size``, ``chunk_size`` and ``content_type``."""
    data = json_body()
    session = chunked.initialize(
        current_app.config,
        g.user,
        filename=string_field(data, "filename", max_length=255),
        file_size=_int_field(data, "file_size"),
        chunk_size=_int_field(data, "chunk_size"),
        content_type=string_field(data, "content_type", required=False, max_length=255),
    )
    body = chunked.summary(session)
    return jsonify({"session_id": session.id, "upload_url": _upload_url(session.id), **body}), 201


@bp.post("/<session_id>/chunks/<chunk_number>")
@login_required("jobs:create")
def upload_chunk(session_id: str, chunk_number: str):
    """Send chunk ``chunk_number`` (1 to N) as the raw body; sending a chunk again replaces it."""
    session = chunked.get_session(g.user, session_id)
    try:
        number = int(chunk_number)
    except ValueError as exc:
        raise bad_request("chunk_number must be an integer", "INVALID_CHUNK_NUMBER") from exc
    # request.stream, never get_data(): a chunk of up to MAX_CHUNK_SIZE is read in small blocks.
    return jsonify(chunked.receive_chunk(current_app.config, session, number, request.stream, request.content_length))


@bp.get("/<session_id>")
@login_required("jobs:create")
def session_status(session_id: str):
    """The session with the chunks received and missing so far, to resume an interrupted upload."""
    session = chunked.get_session(g.user, session_id)
    return jsonify({**chunked.status(session), "upload_url": _upload_url(session.id)})


@bp.delete("/<session_id>")
@login_required("jobs:create")
def delete_session(session_id: str):
    """Abandon an upload and delete its chunks."""
    session = chunked.get_session(g.user, session_id)
    chunked.discard(current_app.config, session.id)
    return jsonify({"session_id": session.id, "message": "Upload session deleted"})


@bp.post("/<session_id>/finalize")
@login_required("jobs:create")
def finalize(session_id: str):
    """Assemble the chunks and queue a job: ``chunk_checksums`` (sha256 per chunk), ``model``, ``language``..."""
    session = chunked.get_session(g.user, session_id)
    data = json_body()
    checksums = data.get("chunk_checksums")
    if checksums is None:
        raise AppError(422, "MISSING_FIELD", "chunk_checksums is required: the sha256 of every chunk, in order")
    if not isinstance(checksums, list) or not all(isinstance(c, str) for c in checksums):
        raise AppError(422, "INVALID_FIELD", "chunk_checksums must be a list of sha256 hex strings")
    job = chunked.finalize(
        current_app.config,
        g.user,
        session,
        chunk_checksums=checksums,
        model=string_field(data, "model", required=False, max_length=100),
        language=string_field(data, "language", required=False, max_length=16),
        task=string_field(data, "task", required=False, max_length=16),
        prompt=string_field(data, "prompt", required=False, max_length=2000),
        dub=string_field(data, "dub", required=False, max_length=16),
    )
    return jsonify(
        {
            "job_id": job.id,
            "status": job.status,
            "message": "File uploaded successfully and transcription queued",
            "filename": job.original_filename,
            "model": job.model,
            "created_at": isoformat(job.created_at),
        }
    ), 201
