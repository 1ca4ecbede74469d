"""The admin API (the legacy API's "Admin", the full API's "Administration"): every route here is admin only.

Accounts and the audit log (``/admin/users``, ``/admin/audit``) live in ``app/api/user_routes.py``.
"""

from __future__ import annotations

from datetime import UTC, datetime

from flask import Blueprint, Response, current_app, g, jsonify, request

from app.models import AuditLog
from app.security import admin_required
from app.services import admin_settings, admin_stats, draining, files, server_control
from app.validation import json_body, string_field

bp = Blueprint("admin", __name__, url_prefix="/admin")


def _data_dir() -> str:
    return current_app.config["DATA_DIR"]


@bp.get("/stats")
@admin_required
def stats():
    """Jobs, users, storage and performance (as in the full API) plus system, processes, queue and folders."""
    return jsonify(admin_stats.stats(current_app.config))


@bp.get("/health")
@admin_required
def health():
    """Status of the database, Redis, whisper and storage, with uptime and load figures."""
    return jsonify(admin_stats.health(current_app.config))


@bp.get("/files")
@admin_required
def list_files():
    """Log, upload and transcript files with sizes and modification times."""
    return jsonify(files.list_files(_data_dir()))


@bp.delete("/files")
@admin_required
def delete_file():
    """Delete one file: ``{"folder": "logs", "filename": "foo.log"}``."""
    data = json_body()
    folder, filename = string_field(data, "folder", max_length=64), string_field(data, "filename")
    deleted = files.delete_file(_data_dir(), folder, filename)
    AuditLog.record(
        "admin_file_deleted",
        user=g.user,
        target=f"{folder}/{deleted['filename']}",
        ip=request.remote_addr,
        size=deleted["size"],
        job_id=deleted["job_id"],
    )
    return jsonify({"message": "File deleted", **deleted})


@bp.get("/browse")
@admin_required
def browse():
    """One directory of uploads, transcripts, logs or cache: ``folder`` and optional ``path``."""
    return jsonify(files.browse(_data_dir(), request.args.get("folder", ""), request.args.get("path")))


@bp.post("/reset")
@admin_required
def reset():
    """Remove all jobs, files and queue entries (not users or keys); needs ``{"confirm": "RESET"}``."""
    result = server_control.reset(current_app.config, json_body().get("confirm"), actor=g.user, ip=request.remote_addr)
    return jsonify({"message": "All jobs, files and queue entries were removed", **result})


@bp.get("/download-all")
@admin_required
def download_all():
    """A zip of every log and transcript, streamed as it is written."""
    members = files.archive_members(_data_dir())
    name = f"whisper-transcriber-{datetime.now(UTC):%Y%m%d-%H%M%S}.zip"
    return Response(
        files.stream_zip(members),
        mimetype="application/zip",
        headers={"Content-Disposition": f'attachment; filename="{name}"'},
    )


# Settings pairs: each GET body can be posted back as it is (read-only fields are ignored on POST).


@bp.get("/cleanup-config")
@admin_required
def get_cleanup_config():
    """Retention days for uploads, transcripts and logs, and the disk-usage ceiling (0 = off)."""
    return jsonify(admin_settings.get_cleanup())


@bp.post("/cleanup-config")
@admin_required
def set_cleanup_config():
    """Change some of the cleanup rules; the periodic task applies them. ``last_run`` is ignored."""
    return jsonify(admin_settings.set_cleanup(json_body(), actor=g.user, ip=request.remote_addr))


@bp.get("/concurrency")
@admin_required
def get_concurrency():
    """Saved worker processes and threads per worker, and the workers running now."""
    return jsonify(admin_settings.get_concurrency(current_app.config))


@bp.post("/concurrency")
@admin_required
def set_concurrency():
    """Save ``workers`` and/or ``threads_per_worker``; workers follow without losing queued jobs."""
    return jsonify(
        admin_settings.set_concurrency(current_app.config, json_body(), actor=g.user, ip=request.remote_addr)
    )


@bp.get("/workers")
@admin_required
def list_workers():
    """Every box's workers (name, host, pid, last heartbeat), and which are drained."""
    return jsonify(draining.workers())


@bp.post("/workers/<name>/drain")
@admin_required
def drain_worker(name: str):
    """A worker on any box finishes its running job and takes no more, until resumed."""
    return jsonify(draining.set_drained(name, True, actor=g.user, ip=request.remote_addr))


@bp.post("/workers/<name>/resume")
@admin_required
def resume_worker(name: str):
    """A drained worker takes jobs again."""
    return jsonify(draining.set_drained(name, False, actor=g.user, ip=request.remote_addr))


@bp.get("/settings")
@admin_required
def get_settings():
    """Model aliases in force (``{"medium": "base"}``), where they come from, and the installed models."""
    return jsonify(admin_settings.get_settings(current_app.config))


@bp.post("/settings")
@admin_required
def set_settings():
    """Save ``model_aliases``: a map, ``"medium=base, small=base"``, or null for ``WT_MODEL_ALIASES``."""
    return jsonify(admin_settings.set_settings(current_app.config, json_body(), actor=g.user, ip=request.remote_addr))


@bp.post("/restart")
@admin_required
def restart():
    """Graceful reload of the web server and the workers (needs ENABLE_SERVER_CONTROL)."""
    body, action = server_control.restart(current_app.config, actor=g.user, ip=request.remote_addr)
    response = jsonify(body)
    response.call_on_close(action)  # signal once the answer is on its way
    return response


@bp.post("/shutdown")
@admin_required
def shutdown():
    """Stop the appliance cleanly (needs ENABLE_SERVER_CONTROL)."""
    body, action = server_control.shutdown(current_app.config, actor=g.user, ip=request.remote_addr)
    response = jsonify(body)
    response.call_on_close(action)
    return response
