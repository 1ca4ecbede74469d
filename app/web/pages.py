"""The browser dashboard: server-rendered pages (Jinja) with small vanilla JS from ``app/web/static``.

Pages need the cookie session that ``POST /auth/login`` sets (``wt_session``); without one they
redirect to ``/login``. Admin pages answer other users with a readable 403 page. Everything a page
does after loading goes through the JSON API from JavaScript, so this module only renders pages and
streams a job's own media for the audio player. Nothing is loaded from another origin: the pages
carry a Content-Security-Policy that allows this origin only.
"""

from __future__ import annotations

import mimetypes
from collections.abc import Callable
from functools import wraps
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from flask import (
    Blueprint,
    Response,
    current_app,
    g,
    make_response,
    redirect,
    render_template,
    request,
    send_file,
    url_for,
)

from app.errors import AppError, not_found
from app.models import User
from app.security import SESSION_COOKIE, decode_token
from app.services import dubs, jobs
from app.services.credentials import SCOPES, USER_SCOPES
from workers import dubbing, modelstore

bp = Blueprint("dashboard", __name__)

CHUNK_THRESHOLD = 25 * 1024**2  # files above this go through the chunked-upload API
CHUNK_SIZE = 8 * 1024**2  # bytes per chunk: small enough to retry cheaply after a dropped connection
CSP = (
    "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; media-src 'self'; "
    "connect-src 'self'; object-src 'none'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'"
)
LANGUAGES = (
    ("en", "English"),
    ("de", "German"),
    ("fr", "French"),
    ("es", "Spanish"),
    ("it", "Italian"),
    ("nl", "Dutch"),
    ("pt", "Portuguese"),
    ("pl", "Polish"),
    ("sv", "Swedish"),
    ("da", "Danish"),
    ("no", "Norwegian"),
    ("fi", "Finnish"),
    ("cs", "Czech"),
    ("uk", "Ukrainian"),
    ("ru", "Russian"),
    ("tr", "Turkish"),
    ("ar", "Arabic"),
    ("hi", "Hindi"),
    ("zh", "Chinese"),
    ("ja", "Japanese"),
    ("ko", "Korean"),
)


# ------------------------------------------------------------------ sessions


def session_user() -> User | None:
    """The user of a valid session cookie, or None (pages never accept bearer tokens or API keys)."""
    token = request.cookies.get(SESSION_COOKIE)
    if not token:
        return None
    try:
        user, _ = decode_token(token)
    except AppError:
        return None  # expired or revoked: the login page explains nothing, it just asks again
    return user


def safe_next(target: str | None) -> str:
    """A same-site path to go to after logging in; anything else becomes ``/``."""
    if not target or not target.startswith("/") or target.startswith("//") or "\\" in target:
        return "/"
    parts = urlsplit(target)
    return target if not parts.scheme and not parts.netloc else "/"


def page(admin: bool = False) -> Callable:
    """Page decorator: redirect to ``/login`` without a session, a 403 page for non-admins on admin pages."""

    def decorator(view: Callable) -> Callable:
        @wraps(view)
        def wrapped(*args: Any, **kwargs: Any) -> Any:
            user = session_user()
            if user is None:
                return redirect(url_for("dashboard.login", next=request.full_path.rstrip("?")))
            g.user = user
            if admin and user.role != "admin":
                return render(
                    "error.html",
                    403,
                    title="Administrators only",
                    message="This page is for administrators. Ask an admin to change your role.",
                )
            return view(*args, **kwargs)

        return wrapped

    return decorator


def render(template: str, status: int = 200, **context: Any) -> Response:
    """Render a page with the signed-in user and settings every page needs."""
    context.setdefault("user", g.get("user"))
    context.setdefault("server_control", bool(current_app.config.get("ENABLE_SERVER_CONTROL")))
    return make_response(render_template(template, **context), status)


@bp.after_request
def page_headers(response: Response) -> Response:
    """No caching of pages (they show private data) and nothing from other origins."""
    if response.mimetype == "text/html":
        response.headers["Cache-Control"] = "no-store"
        response.headers["Content-Security-Policy"] = CSP
        response.headers["X-Frame-Options"] = "DENY"
        response.headers["Referrer-Policy"] = "same-origin"
    return response


@bp.app_template_global()
def asset(filename: str) -> str:
    """URL of a static file with its modification time, so browsers fetch a new version after an upgrade."""
    path = Path(current_app.static_folder or "") / filename
    version = int(path.stat().st_mtime) if path.is_file() else 0
    return url_for("static", filename=filename, v=version)


@bp.app_template_filter("clock")
def clock(seconds: float | None) -> str:
    """Seconds as ``m:ss`` or ``h:mm:ss``."""
    total = int(seconds or 0)
    hours, rest = divmod(total, 3600)
    minutes, secs = divmod(rest, 60)
    return f"{hours}:{minutes:02d}:{secs:02d}" if hours else f"{minutes}:{secs:02d}"


# --------------------------------------------------------------------- pages


@bp.get("/login")
def login():
    """The login page; a signed-in user goes straight on."""
    target = safe_next(request.args.get("next"))
    if session_user() is not None:
        return redirect(target)
    return render(
        "login.html", user=None, next_url=target, registration=bool(current_app.config.get("ALLOW_REGISTRATION"))
    )


@bp.get("/ui/register")
def register_page():
    """Create an account, when ALLOW_REGISTRATION is on; a signed-in user goes straight on."""
    if not current_app.config.get("ALLOW_REGISTRATION"):
        return render(
            "error.html",
            404,
            user=None,
            title="Registration is off",
            message="Accounts on this appliance are created by an administrator.",
        )
    if session_user() is not None:
        return redirect("/")
    return render("register.html", user=None)


@bp.get("/ui/account")
@page()
def account_page():
    """The signed-in user's account: who they are, and a password change."""
    return render("account.html")


@bp.get("/")
@page()
def home():
    """The dashboard: upload files and follow the jobs table."""
    cfg = current_app.config
    models = [m for m in modelstore.installed(cfg["MODELS_DIR"]) if modelstore.is_whisper_name(m)]
    chunk_size = min(CHUNK_SIZE, int(cfg["MAX_CHUNK_SIZE"]))
    return render(
        "dashboard.html",
        models=models,
        default_model=cfg["DEFAULT_MODEL"],
        languages=LANGUAGES,
        # Offline, whisper translates into English only; a chat model (OPENAI_BASE_URL) dubs into any language.
        dub_languages=[(c, n) for c, n in LANGUAGES if c == "en" or dubs.llm_configured(cfg)],
        chunk_threshold=CHUNK_THRESHOLD,
        chunk_size=chunk_size,
        max_upload=int(cfg.get("MAX_CONTENT_LENGTH") or 0),
        highlight=request.args.get("job", ""),
    )


@bp.get("/ui/jobs/<job_id>")
@page()
def job_page(job_id: str):
    """One job: metadata, live progress and log, the transcript with timestamps that seek the player."""
    try:
        job = jobs.get_job(g.user, job_id)
    except AppError:
        return render("error.html", 404, title="Job not found", message="This job does not exist or was deleted.")
    detail = jobs.detail(job)
    has_media = _media_path(job) is not None
    video = bool((job.media_info or {}).get("has_video"))
    has_dub = dubs.dub_audio(current_app.config, job) is not None
    return render("job.html", job=detail, has_media=has_media, video=video, has_dub=has_dub)


@bp.get("/ui/jobs/<job_id>/media")
def job_media(job_id: str):
    """The job's input file for the audio player, with Range support (owner or admin; 404 otherwise)."""
    job = _player_job(job_id)
    path = _media_path(job)
    if path is None:
        raise not_found("Media file")
    mimetype = mimetypes.guess_type(job.original_filename)[0] or mimetypes.guess_type(path.name)[0]
    return _player_file(path, mimetype=mimetype or "application/octet-stream", download_name=path.name)


@bp.get("/ui/jobs/<job_id>/dub")
def job_dub(job_id: str):
    """The job's dubbed audio track for the player (Range support), or as a download with ``?download=1``."""
    job = _player_job(job_id)
    path = dubs.dub_audio(current_app.config, job)
    if path is None:
        raise not_found("Dub")
    return _player_file(
        path,
        mimetype="audio/mp4",
        as_attachment=bool(request.args.get("download")),
        download_name=dubbing.dub_file_name(job.original_filename, job.options["dub"]),
    )


def _player_job(job_id: str) -> Any:
    """The job whose file a player asks for: the signed-in user's own, or any for an admin (401 signed out)."""
    user = session_user()
    if user is None:
        raise AppError(401, "UNAUTHORIZED", "Sign in to play this file")
    return jobs.get_job(user, job_id)


def _player_file(path: Path, **send: Any) -> Response:
    """A file for the page's players: Range requests answered, and kept out of shared caches."""
    response = send_file(path, conditional=True, **send)
    response.headers["Cache-Control"] = "private, no-cache"
    return response


def _media_path(job: Any) -> Path | None:
    """The file the job was made from, when it still exists."""
    path = job.source_file(current_app.config["DATA_DIR"])
    return path if path is not None and path.is_file() else None


@bp.get("/ui/keys")
@page()
def keys_page():
    """The signed-in user's API keys: create, list, revoke."""
    scopes = SCOPES if g.user.role == "admin" else tuple(s for s in SCOPES if s in USER_SCOPES)
    return render("keys.html", scopes=scopes)


@bp.get("/ui/admin")
@page(admin=True)
def admin_page():
    """Admin overview: statistics, CPU and memory history, workers, the system log, server control."""
    return render("admin.html", section="overview")


@bp.get("/ui/admin/files")
@page(admin=True)
def admin_files():
    """Admin: uploads, transcripts and logs on disk."""
    return render("admin_files.html", section="files")


@bp.get("/ui/admin/settings")
@page(admin=True)
def admin_settings():
    """Admin: cleanup rules and worker concurrency."""
    return render("admin_settings.html", section="settings")


@bp.get("/ui/admin/users")
@page(admin=True)
def admin_users():
    """Admin: accounts."""
    return render("admin_users.html", section="users")
