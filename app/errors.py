"""The one domain error type, and the handler that turns every error into the standard JSON body."""

from __future__ import annotations

import errno
import logging
import shutil
import sqlite3
from typing import Any

import peewee
from flask import Flask, current_app, g, has_app_context, has_request_context, jsonify, request
from werkzeug.exceptions import HTTPException

from workers.timestamps import utc_iso

log = logging.getLogger(__name__)

DISK_FULL_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT})
SQLITE_FULL = "database or disk is full"  # SQLITE_FULL, as sqlite3 words it
# SQLite reports a failed -shm or -wal allocation as an I/O error: on an (almost) full disk that is what it is.
SQLITE_IOERR = "disk I/O error"
NEARLY_FULL_BYTES = 1024**2


class AppError(Exception):
    """An error a client can act on: status, machine code and a readable message."""

    def __init__(self, status: int, error_code: str, detail: str, headers: dict[str, str] | None = None):
        super().__init__(detail)
        self.status = status
        self.error_code = error_code
        self.detail = detail
        self.headers = headers or {}


def not_found(what: str = "Resource") -> AppError:
    """The 404 used for anything missing or not visible to the caller."""
    return AppError(404, "NOT_FOUND", f"{what} not found")


def bad_request(detail: str, error_code: str = "BAD_REQUEST") -> AppError:
    """A 400 for malformed input."""
    return AppError(400, error_code, detail)


def error_body(status: int, error_code: str, detail: Any) -> dict[str, Any]:
    """The standard error body: detail, error_code, timestamp, request_id."""
    return {
        "detail": detail,
        "error_code": error_code,
        "timestamp": utc_iso(digits=6),
        "request_id": getattr(g, "request_id", None),
    }


def _respond(status: int, error_code: str, detail: Any, headers: dict[str, str] | None = None):
    body = error_body(status, error_code, detail)
    if has_request_context() and request.path.startswith("/v1/"):
        # OpenAI's clients read error.message; the standard keys stay alongside.
        body["error"] = {"message": str(detail), "type": error_code.lower(), "param": None, "code": error_code}
    response = jsonify(body)
    response.status_code = status
    for key, value in (headers or {}).items():
        response.headers[key] = value
    return response


# Werkzeug's names for the statuses, as error codes.
_HTTP_CODES = {
    400: "BAD_REQUEST",
    401: "UNAUTHORIZED",
    403: "FORBIDDEN",
    404: "NOT_FOUND",
    405: "METHOD_NOT_ALLOWED",
    409: "CONFLICT",
    413: "PAYLOAD_TOO_LARGE",
    415: "UNSUPPORTED_MEDIA_TYPE",
    422: "UNPROCESSABLE_ENTITY",
    429: "RATE_LIMITED",
    503: "SERVICE_UNAVAILABLE",
    507: "INSUFFICIENT_STORAGE",
}


def _nearly_full() -> bool:
    if not has_app_context() or "DATA_DIR" not in current_app.config:
        return False
    try:
        return shutil.disk_usage(current_app.config["DATA_DIR"]).free < NEARLY_FULL_BYTES
    except OSError:
        return False


def is_disk_full(exc: BaseException | None) -> bool:
    """True when ``exc``, or an exception it was raised from, says the disk (or the quota) is full."""
    seen: set[int] = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        if isinstance(exc, OSError) and exc.errno in DISK_FULL_ERRNOS:
            return True
        if isinstance(exc, sqlite3.OperationalError | peewee.OperationalError):
            message = str(exc)
            if SQLITE_FULL in message or (SQLITE_IOERR in message and _nearly_full()):
                return True
        exc = exc.__cause__ or exc.__context__
    return False


def register_error_handlers(app: Flask) -> None:
    """Route every exception through one JSON error format."""

    @app.errorhandler(AppError)
    def handle_app_error(exc: AppError):
        return _respond(exc.status, exc.error_code, exc.detail, exc.headers)

    @app.errorhandler(HTTPException)
    def handle_http(exc: HTTPException):
        status = exc.code or 500
        detail = exc.description or exc.name
        if status == 413:
            limit = app.config.get("MAX_CONTENT_LENGTH")
            detail = f"Request body is larger than the upload limit of {limit} bytes"
        headers = {}
        if status == 405 and getattr(exc, "valid_methods", None):
            headers["Allow"] = ", ".join(exc.valid_methods)
        if status == 429:
            retry = getattr(exc, "retry_after", None)
            if retry:
                headers["Retry-After"] = str(retry)
        return _respond(status, _HTTP_CODES.get(status, exc.name.upper().replace(" ", "_")), detail, headers)

    @app.errorhandler(Exception)
    def handle_unexpected(exc: Exception):
        if is_disk_full(exc):  # wherever it happened: an upload, the database, a log or a transcript
            # The text, not the exception: a kept record must not keep the traceback's open files alive.
            log.warning("disk full: %s", str(exc), extra={"request_id": getattr(g, "request_id", None)})
            return _respond(
                507,
                "INSUFFICIENT_STORAGE",
                "The server's disk is full; the request could not be completed. Try again once space is freed",
            )
        log.exception("unhandled error", extra={"request_id": getattr(g, "request_id", None)})
        return _respond(500, "INTERNAL_ERROR", "Internal server error; the request id is in the server log")
