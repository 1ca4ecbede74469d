"""Log access over HTTP (the legacy API) and live over WebSockets (flask-sock, Dubarr and the Operations issue).

Who may read what:

- a job's own log (``/log/<id>``, ``/ws/logs/<id>``): its owner or an admin; anyone else gets 404;
- the shared logs (``/logs/<name>``, ``/logs/access``, ``/ws/logs/system``, ``/ws/logs``): admins only.
  The legacy API marks ``/logs/<name>`` and ``/logs/access`` "user", but those files hold every user's
  requests, file names and errors, so a user could read other users' activity. Dubarr's ``/ws/logs``
  streams ``processing.log``, the workers' lines about every job: a user follows their own jobs on
  ``/ws/logs/<id>`` instead, which shows the same lines (per-line filtering would leak the worker
  lines that carry no job id, such as an error naming another user's file).

WebSockets authenticate before the handshake, so a refused socket gets the standard JSON error
(401, 403, 404, 503) instead of an accepted connection: ``?token=`` (a JWT or a ``wt_`` API key, for
browsers, which cannot set headers on a WebSocket), the ``Authorization``/``X-API-Key`` headers, or the
session cookie (same-origin only, against cross-site WebSocket hijacking). Each socket sends lines
as text messages, pings every ``WS_PING_INTERVAL`` seconds, follows the file across rotation, and
ends when the client leaves; a job's socket closes with 1000 once the job has finished, any socket
with 1008 once its token or key is revoked or its user disabled (checked every ``RECHECK_SECONDS``).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from flask import Blueprint, Response, current_app, g, request
from simple_websocket import ConnectionClosed, Server

from app.errors import AppError, bad_request
from app.extensions import sock
from app.logging_setup import LOG_FILES, logs_dir
from app.models import FINISHED, Job, utcnow
from app.security import (
    Principal,
    admin_required,
    current_principal,
    login_required,
    still_valid,
)
from app.services import jobs
from app.services.logfiles import LogFollower, confined_log_file, open_range, require_access_log
from app.services.storage import Layout
from app.shutdown import stopping
from app.validation import int_arg

log = logging.getLogger(__name__)
bp = Blueprint("logs", __name__)

POLL_SECONDS = 0.3  # how often a socket looks for new lines
RECHECK_SECONDS = 10.0  # how often a socket checks that its credentials still hold
FINISH_GRACE_SECONDS = 1.5  # the worker writes a job's last line just after it marks the job finished
TAIL_LINES = 50  # lines a shared-log socket sends on connect (as in Dubarr)
MAX_TAIL = 10_000


# ------------------------------------------------------------------ HTTP


def _text(path: Path, tail: int = 0) -> Response:
    chunks, length = open_range(path, tail)
    response = Response(chunks, mimetype="text/plain")
    response.content_length = length
    response.headers["Cache-Control"] = "no-store"
    return response


@bp.get("/log/<job_id>")
@login_required("jobs:read")
def job_log(job_id: str):
    """The job's own log as text (owner or admin); ``tail=N`` keeps the last N lines; empty before it starts."""
    job = jobs.get_job(g.user, job_id)
    path = Layout(current_app.config["DATA_DIR"]).job_log(job.id)
    if not path.exists():
        return Response("", mimetype="text/plain", headers={"Cache-Control": "no-store"})
    return _text(path, int_arg("tail", 0, 0, MAX_TAIL))


@bp.get("/logs/access")
@admin_required
def access_log():
    """The access log (admin only: it lists every user's requests); 404 when ``ACCESS_LOG`` is off."""
    require_access_log(current_app.config.get("ACCESS_LOG", True))
    path = logs_dir(current_app.config) / LOG_FILES["access"]
    if not path.exists():
        return Response("", mimetype="text/plain", headers={"Cache-Control": "no-store"})
    return _text(path, int_arg("tail", 0, 0, MAX_TAIL))


@bp.get("/logs/<filename>")
@admin_required
def log_file(filename: str):
    """A file directly in the logs folder, e.g. ``system.log.1`` (admin only: the files hold every user's activity)."""
    path = confined_log_file(logs_dir(current_app.config), filename)
    return _text(path, int_arg("tail", 0, 0, MAX_TAIL))


# ------------------------------------------------------- WebSocket guards


class _Slots:
    """Counts open log sockets so they can never take every Gunicorn thread away from HTTP."""

    def __init__(self) -> None:
        self.open = 0
        self._lock = threading.Lock()

    def take(self, limit: int) -> None:
        """Reserve one; 503 when ``limit`` are open."""
        with self._lock:
            if limit and self.open >= limit:
                raise AppError(
                    503,
                    "TOO_MANY_CONNECTIONS",
                    f"{limit} live-log connections are open; retry later",
                    {"Retry-After": "5"},
                )
            self.open += 1

    def give_back(self) -> None:
        """Release one."""
        with self._lock:
            self.open -= 1


slots = _Slots()
_guards: dict[str, Callable[..., Any]] = {}


def socket_principal(scope: str) -> Principal:
    """The caller of a WebSocket handshake: ``?token=``, then headers or cookie; 401/403 otherwise."""
    principal = current_principal()
    if principal.via == "cookie":
        # Browsers send cookies on cross-site WebSocket handshakes too, and CSRF tokens do not apply.
        origin = request.headers.get("Origin")
        if origin and urlsplit(origin).netloc.lower() != request.host.lower():
            raise AppError(403, "FORBIDDEN", "Cross-origin WebSocket with a session cookie refused")
    if scope not in principal.scopes:
        if scope == "admin":
            raise AppError(403, "FORBIDDEN", "Administrator access required")
        raise AppError(403, "INSUFFICIENT_SCOPE", f"This API key lacks the {scope!r} permission")
    g.user = principal.user
    return principal


def websocket(path: str, guard: Callable[..., Any]) -> Callable:
    """Register a WebSocket route whose ``guard(**view_args)`` runs before the handshake."""

    def decorator(view: Callable) -> Callable:
        _guards[f"{bp.name}.{view.__name__}"] = guard
        sock.route(path, bp=bp)(view)
        return view

    return decorator


@dataclass
class _Target:
    """What a socket follows: a file, where to start (None: the top), and the job whose end closes it."""

    path: Path
    last: int | None = None
    job_id: str | None = None


@bp.before_request
def _authorize_socket() -> None:
    guard = _guards.get(request.endpoint or "")
    if guard is None:
        return
    target: _Target = guard(**(request.view_args or {}))
    slots.take(int(current_app.config.get("WS_MAX_CONNECTIONS", 0)))
    g.socket_slot = True
    # Opened before the handshake, so every line written after the client sees 101 is sent.
    g.socket_follower = LogFollower(target.path, last=target.last)
    g.socket_job = target.job_id


@bp.teardown_request
def _release_socket(exc: BaseException | None) -> None:
    follower = g.pop("socket_follower", None)
    if follower is not None:
        follower.close()
    if g.pop("socket_slot", False):
        slots.give_back()


def _job_guard(job_id: str) -> _Target:
    job = jobs.get_job(socket_principal("jobs:read").user, job_id)
    return _Target(Layout(current_app.config["DATA_DIR"]).job_log(job.id), None, job.id)


def _shared_guard() -> _Target:
    socket_principal("admin")
    return _Target(logs_dir(current_app.config) / LOG_FILES["processing"], int_arg("lines", TAIL_LINES, 0, MAX_TAIL))


def _system_guard() -> _Target:
    socket_principal("admin")
    which = request.args.get("log", "system")
    if which == "access":
        require_access_log(current_app.config.get("ACCESS_LOG", True))
    elif which != "system":
        raise bad_request("log must be 'system' or 'access'", "INVALID_PARAMETER")
    return _Target(logs_dir(current_app.config) / LOG_FILES[which], int_arg("lines", TAIL_LINES, 0, MAX_TAIL))


# ------------------------------------------------------------- streaming


def _idle(ws: Server, seconds: float) -> None:
    """Wait, discarding anything the client sends; ``ConnectionClosed`` as soon as it leaves."""
    deadline = time.monotonic() + seconds
    while (left := deadline - time.monotonic()) > 0:
        ws.receive(timeout=left)


def _finished_for(job_id: str) -> float | None:
    """Seconds since the job finished (a deleted job counts as long finished); None while it runs."""
    row = Job.select(Job.status, Job.completed_at).where(Job.id == job_id).first()
    if row is None:
        return FINISH_GRACE_SECONDS
    if row.status not in FINISHED:
        return None
    return (utcnow() - (row.completed_at or utcnow())).total_seconds()


def stream(
    ws: Server, follower: LogFollower, job_id: str | None = None, authorized: Callable[[], bool] = lambda: True
) -> None:
    """Send the follower's lines until the client leaves or, for a job, until the job has finished.

    ``authorized`` is asked every ``RECHECK_SECONDS``: a revoked token or key, or a disabled user, ends the socket.
    """
    close_at: float | None = None
    recheck_at = time.monotonic() + RECHECK_SECONDS
    try:
        while True:
            if stopping.is_set():
                ws.close(reason=1001, message="server stopping")
                return
            if time.monotonic() >= recheck_at:
                recheck_at = time.monotonic() + RECHECK_SECONDS
                if not authorized():
                    ws.close(reason=1008, message="credentials revoked")
                    return
            last_round = close_at is not None and time.monotonic() >= close_at
            for line in follower.poll():
                ws.send(line)
            if last_round:
                ws.close(reason=1000, message="job finished")
                return
            if job_id is not None and close_at is None:
                since = _finished_for(job_id)
                if since is not None:
                    close_at = time.monotonic() + max(0.0, FINISH_GRACE_SECONDS - since)
            _idle(ws, POLL_SECONDS)
    except (ConnectionClosed, OSError):
        log.debug("log socket closed by the client")  # leaving is normal; the thread is free again
    except Exception:  # flask-sock would leave the socket open without a close frame
        log.exception("log socket failed")
        ws.close(reason=1011, message="internal error")


def _follow(ws: Server) -> None:
    principal = g.principal
    stream(ws, g.socket_follower, g.socket_job, authorized=lambda: still_valid(principal))


@websocket("/ws/logs/<job_id>", _job_guard)
def ws_job_log(ws: Server, job_id: str) -> None:
    """The job's log: every line so far, then new ones until the job ends (owner or admin)."""
    _follow(ws)


@websocket("/ws/logs/system", _system_guard)
def ws_system_log(ws: Server) -> None:
    """The system log, or the access log with ``?log=access``: the last ``lines`` (50), then new ones (admin)."""
    _follow(ws)


@websocket("/ws/logs", _shared_guard)
def ws_processing_log(ws: Server) -> None:
    """``processing.log``: the last ``lines`` (50) on connect, then every new line (admin)."""
    _follow(ws)
