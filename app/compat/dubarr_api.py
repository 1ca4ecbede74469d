"""Dubarr's routes: library webhooks, video uploads and task actions, over the same jobs.

Authentication: Basic with ``API_USER``/``API_PASS`` as in Dubarr's document, or any of the appliance's
own credentials (token, API key, Basic with a user's password). A 401 here offers Basic beside Bearer,
so a browser posting to ``/upload`` asks for the password; ``API_USER`` can also sign in to the dashboard.
"""

from __future__ import annotations

from pathlib import Path

from flask import Blueprint, Response, current_app, g, jsonify, redirect, request, send_file

from app.api.export_routes import download_response
from app.api.job_routes import create_from_request
from app.errors import AppError
from app.security import login_required, offer_basic
from app.services import dubs, jobs, media
from app.validation import json_body

bp = Blueprint("dubarr", __name__)
bp.after_request(offer_basic)


def _wants_html() -> bool:
    # Browsers submitting the dashboard's forms prefer HTML; API clients send */*, nothing, or ask for JSON.
    accept = request.accept_mimetypes
    return accept.accept_html and accept.best_match(["application/json", "text/html"]) == "text/html"


def _done(job_id: str, message: str, **extra) -> Response | tuple:
    if _wants_html():
        return redirect(f"/?job={job_id}", code=303)
    return jsonify({"task_id": job_id, "message": message, **extra})


def _default_dub() -> str | None:
    """What a Dubarr request without ``dub`` asks for: a dub of the video it can make (WT_DUBARR_DUB), else none."""
    return dubs.IF_VIDEO if current_app.config.get("DUBARR_DUB") else None


@bp.post("/upload")
@login_required("jobs:create")
def upload():
    """Upload a video (mp4, mkv, webm, mov, avi) or audio file; 303 to the dashboard."""
    dub = request.form.get("dub", _default_dub())
    job = create_from_request(kind="auto", dub=dub)
    response = redirect(f"/?job={job.id}", code=303)
    response.headers["X-Job-ID"] = job.id
    return response


@bp.post("/webhook")
@login_required("jobs:create")
def webhook():
    """Queue a library file: ``{path, eventType}``, a Sonarr/Radarr import, or a Jellyfin ItemAdded."""
    data = json_body()
    raw, event = media.webhook_path(data)
    if event.lower() == "test" and raw is None:  # Sonarr/Radarr "Test" button
        return jsonify({"status": "ok", "message": "webhook reachable"})
    if raw is None:
        raise AppError(
            400,
            "MISSING_PATH",
            "No media path in the payload (expected 'path', an arr import, or a Jellyfin template with ItemPath)",
        )
    path = media.resolve_library_file(current_app.config, raw)
    dub = data.get("dub", _default_dub())
    job = media.queue_library_file(
        current_app.config, g.user, path, model=data.get("model"), language=data.get("language"), dub=dub
    )
    return jsonify({"status": "queued", "path": str(path), "task_id": job.id, "eventType": event})


@bp.get("/download/<task_id>")
@login_required("export:download")
def download(task_id: str):
    """The processed video, or the transcript (SRT) for audio; 404 until it exists."""
    job = jobs.get_job(g.user, task_id)
    if job.status != "completed":
        raise AppError(404, "NOT_READY", f"Task is {job.status}; there is nothing to download yet")
    if job.kind == "video" or (job.options or {}).get("dub_mux"):  # a library dub muxed on request
        if jobs.outputs_purged(job):
            raise AppError(404, "NOT_FOUND", "The processed video was purged; retry the task to make it again")
        output = (job.stages.get("mux") or {}).get("output")
        path = Path(current_app.config["DATA_DIR"]) / output if output else None
        if path is None or not path.is_file():
            raise AppError(404, "NOT_FOUND", "The processed video is missing; purge and retry the task")
        name = f"{Path(job.original_filename).stem}.subtitled{path.suffix}"
        return send_file(path, as_attachment=True, download_name=name, mimetype="application/octet-stream")
    return download_response(job, "srt")


@bp.post("/retry/<task_id>")
@login_required("jobs:create")
def retry(task_id: str):
    """Re-run a failed, cancelled or purged task, reusing whatever cached stages are left."""
    job = jobs.restart_job(jobs.get_job(g.user, task_id))
    return _done(job.id, "Task re-queued", status=job.status)


@bp.post("/purge/<task_id>")
@login_required("jobs:create")
def purge(task_id: str):
    """Clear a task's cached stages (the subtitled video too) so that a retry runs every stage again."""
    job = jobs.purge_caches(current_app.config, jobs.get_job(g.user, task_id))
    return _done(job.id, "Cached stages cleared")


@bp.post("/delete/<task_id>")
@login_required("jobs:delete")
def delete(task_id: str):
    """Remove a task and its own files; a library file it read is never touched."""
    job = jobs.get_job(g.user, task_id)
    jobs.delete_job(current_app.config, job)
    return _done(job.id, "Task deleted")
