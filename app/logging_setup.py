"""Structured logging: JSON lines under ``$DATA_DIR/logs``, shared safely by the web process and the workers.

Files (one JSON object per line: ts, level, logger, message, job_id, request_id, pid, role, extras):

- ``system.log``: application logs of the web process and of every worker;
- ``processing.log``: every line a worker writes about a job (the ``processing`` logger, with ``job_id``);
- ``access.log``: one line per HTTP request (web process only, when ``ACCESS_LOG`` is on).

Several processes append to the same files, so :class:`SharedRotatingFileHandler` replaces the
standard ``RotatingFileHandler`` (whose rollover in one process leaves the others writing to renamed
or deleted files, and lets two processes rotate the same file twice):

- every line is one ``os.write`` on an ``O_APPEND`` descriptor, so lines never interleave or overwrite;
  on a full disk a line is dropped whole (and counted in a later line), never written in part;
- before each write the handler compares the file's inode with its own descriptor and reopens when the
  file was renamed or removed (what ``WatchedFileHandler`` does), so rotation by anyone is followed;
- whoever finds the file over ``LOG_MAX_BYTES`` rotates it by renaming (``x.log`` → ``x.log.1`` …), under an
  exclusive ``flock`` on ``logs/.rotate.lock``, and re-checks the size once it holds the lock, so a file
  is rotated exactly once no matter how many processes notice. Nothing is ever truncated in place.

A job's own log, ``logs/jobs/<id>.log``, is plain text for people, written by the worker, and never rotated.
"""

from __future__ import annotations

import errno
import fcntl
import json
import logging
import os
import sys
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from flask import Flask, Response, g, has_request_context, request

from workers.timestamps import utc_iso

LOG_FILES = {"system": "system.log", "processing": "processing.log", "access": "access.log"}
PROCESSING_LOGGER = "processing"
ACCESS_LOGGER = "access"
ROTATE_LOCK = ".rotate.lock"
CONSOLE_FORMAT = "%(asctime)s %(levelname)s %(name)s %(message)s"
DISK_FULL = (errno.ENOSPC, errno.EDQUOT)
_FILE_MODE = 0o640
# LogRecord attributes that are not "extra" fields given by the caller.
_STANDARD = set(logging.makeLogRecord({}).__dict__) | {"message", "asctime", "taskName", "role"}
_installed: list[tuple[logging.Logger, logging.Handler]] = []


def logs_dir(settings: Mapping[str, Any]) -> Path:
    """The system logs' folder: ``LOG_DIR``, or the data dir's ``logs`` (job logs always stay in the data dir)."""
    return Path(settings.get("LOG_DIR") or Path(settings["DATA_DIR"]) / "logs")


# ------------------------------------------------------------------ format


class ContextFilter(logging.Filter):
    """Adds ``request_id`` (from ``flask.g`` inside a request) and ``job_id`` to every record."""

    def filter(self, record: logging.LogRecord) -> bool:
        """Fill in the ids the caller did not give; never drops a record."""
        if getattr(record, "request_id", None) is None:
            record.request_id = g.get("request_id") if has_request_context() else None
        if not hasattr(record, "job_id"):
            record.job_id = None
        return True


class JsonFormatter(logging.Formatter):
    """One JSON object per record, with the caller's ``extra`` fields kept."""

    def __init__(self, role: str):
        super().__init__()
        self.role = role

    def format(self, record: logging.LogRecord) -> str:
        """The record as a single line of JSON."""
        body: dict[str, Any] = {
            "ts": utc_iso(record.created, digits=3),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
            "job_id": getattr(record, "job_id", None),
            "request_id": getattr(record, "request_id", None),
            "pid": record.process,
            "role": self.role,
        }
        body.update({k: v for k, v in record.__dict__.items() if k not in _STANDARD and k not in body})
        if record.exc_info:
            body["exc"] = self.formatException(record.exc_info)
        elif record.stack_info:
            body["stack"] = record.stack_info
        # A newline inside a value is escaped by json.dumps, so a record is always exactly one line.
        return json.dumps(body, ensure_ascii=False, default=str)


class _ExcludeLogger(logging.Filter):
    """Drops records of one logger (and its children)."""

    def __init__(self, name: str):
        super().__init__()
        self.excluded = name

    def filter(self, record: logging.LogRecord) -> bool:
        """False for the excluded logger's records."""
        return not (record.name == self.excluded or record.name.startswith(self.excluded + "."))


class QuietPeriodicTasks(logging.Filter):
    """Keeps Huey's routine lines about periodic tasks ("Enqueueing periodic task", "Executing", "executed in")
    out of the logs unless the level is DEBUG: the housekeeping tasks run every minute, and one that did
    something logs that itself. Warnings and errors about them pass.
    """

    def filter(self, record: logging.LogRecord) -> bool:
        """False for an INFO line whose subject is a periodic task (it shows as DEBUG when DEBUG is on)."""
        from huey.api import PeriodicTask

        args = record.args if isinstance(record.args, tuple) else ()
        if record.levelno != logging.INFO or not args or not isinstance(args[0], PeriodicTask):
            return True
        record.levelno, record.levelname = logging.DEBUG, "DEBUG"
        return logging.getLogger().isEnabledFor(logging.DEBUG)


# Where Huey logs them: task execution ("huey") and the consumer's scheduler ("huey.consumer.Scheduler").
HUEY_TASK_LOGGERS = ("huey", "huey.consumer.Scheduler")


# ------------------------------------------------------------------ handler


class SharedRotatingFileHandler(logging.Handler):
    """Appends lines to a file that several processes share, and rotates it by size exactly once."""

    def __init__(self, path: Path | str, max_bytes: int = 0, backups: int = 5):
        super().__init__()
        self.path = Path(path)
        self.max_bytes = int(max_bytes)
        self.backups = max(1, int(backups))
        self._fd: int | None = None
        self._identity: tuple[int, int] | None = None
        self.dropped = 0  # lines not written for want of disk space, reported by the next line that fits
        self.path.parent.mkdir(parents=True, exist_ok=True)

    def emit(self, record: logging.LogRecord) -> None:
        """Write one line; reopen after someone else rotated; rotate when over the size limit."""
        try:
            data = (self.format(record) + "\n").encode("utf-8", "replace")
            self._ensure_open()
            if self.max_bytes and self._over_limit(os.fstat(self._fd).st_size, len(data)):
                self.rotate(len(data))
                self._ensure_open()
            if self.dropped and self._write_whole(self._dropped_line(record)):
                self.dropped = 0
            if not self._write_whole(data):
                self.dropped += 1  # a full disk: the line is lost, never half written, and stderr is not flooded
        except OSError as exc:
            if exc.errno in DISK_FULL:
                self.dropped += 1  # reopening after a rotation can fail the same way
            else:
                self.handleError(record)
        except Exception:
            self.handleError(record)

    def _write_whole(self, data: bytes) -> bool:
        """Append ``data`` with one ``os.write``: all of it, or nothing (False) when the disk is full.

        Near a full disk the kernel writes what fits and returns a short count; that tail is cut off
        again, so readers never see half a JSON line. Lines are far smaller than a block, so a short
        write happens only at the very last free block.
        """
        space = os.fstatvfs(self._fd)
        if space.f_bavail * space.f_frsize < len(data):
            return False  # not even one free block: do not start a line that cannot end
        try:
            written = os.write(self._fd, data)
        except OSError as exc:
            if exc.errno in DISK_FULL:
                return False
            raise
        if written < len(data):
            end = os.lseek(self._fd, 0, os.SEEK_CUR)  # O_APPEND: just after this process's own bytes
            if os.fstat(self._fd).st_size == end:  # nobody appended since: take the fragment back
                os.ftruncate(self._fd, end - written)
            return False
        return True

    def _dropped_line(self, record: logging.LogRecord) -> bytes:
        note = logging.makeLogRecord(
            {
                "name": __name__,
                "levelno": logging.WARNING,
                "levelname": "WARNING",
                "msg": "%d log lines were dropped: the disk was full",
                "args": (self.dropped,),
                "created": record.created,
            }
        )
        return (self.format(note) + "\n").encode("utf-8", "replace")

    def _over_limit(self, size: int, incoming: int) -> bool:
        # An empty file is never rotated, even for a record larger than the limit.
        return size > 0 and size + incoming > self.max_bytes

    def _ensure_open(self) -> None:
        try:
            st = os.stat(self.path)
            current = (st.st_dev, st.st_ino)
        except FileNotFoundError:
            current = None
        if self._fd is not None and current == self._identity:
            return
        self._close_fd()
        self._fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, _FILE_MODE)
        st = os.fstat(self._fd)
        self._identity = (st.st_dev, st.st_ino)

    def rotate(self, incoming: int = 0) -> bool:
        """Rename ``x`` → ``x.1`` → … → ``x.N`` under the shared lock; False when someone else already did."""
        lock_fd = os.open(self.path.parent / ROTATE_LOCK, os.O_WRONLY | os.O_CREAT, _FILE_MODE)
        try:
            fcntl.flock(lock_fd, fcntl.LOCK_EX)
            try:
                size = os.stat(self.path).st_size
            except FileNotFoundError:
                return False
            if incoming and not self._over_limit(size, incoming):
                return False  # another process rotated while this one waited for the lock
            for i in range(self.backups - 1, 0, -1):
                older = self.path.with_name(f"{self.path.name}.{i}")
                if older.exists():
                    os.replace(older, self.path.with_name(f"{self.path.name}.{i + 1}"))
            os.replace(self.path, self.path.with_name(f"{self.path.name}.1"))
            return True
        finally:
            os.close(lock_fd)  # closing releases the flock

    def _close_fd(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd, self._identity = None, None

    def close(self) -> None:
        """Close the file descriptor."""
        with self.lock:
            self._close_fd()
        super().close()


# ------------------------------------------------------------------ setup


def _add(logger: logging.Logger, handler: logging.Handler) -> None:
    logger.addHandler(handler)
    _installed.append((logger, handler))


def _file_handler(settings: Mapping[str, Any], name: str, role: str) -> SharedRotatingFileHandler:
    handler = SharedRotatingFileHandler(
        logs_dir(settings) / LOG_FILES[name],
        settings.get("LOG_MAX_BYTES", 10 * 1024**2),
        settings.get("LOG_BACKUPS", 5),
    )
    handler.setFormatter(JsonFormatter(role))
    handler.addFilter(ContextFilter())
    return handler


def _has_stderr_handler(logger: logging.Logger) -> bool:
    return any(
        isinstance(h, logging.StreamHandler) and getattr(h, "stream", None) is sys.stderr for h in logger.handlers
    )


def console_logging(level: str) -> None:
    """Show every line at ``level`` on stderr (``run`` and the workers; the web process shows warnings only)."""
    logging.basicConfig(level=level.upper(), format=CONSOLE_FORMAT)


def configure_logging(settings: Mapping[str, Any], role: str) -> None:
    """Send this process's logs to the shared JSON files; calling it again replaces the earlier setup."""
    for logger, handler in _installed:
        logger.removeHandler(handler)
        handler.close()
    _installed.clear()
    level = str(settings.get("LOG_LEVEL") or "INFO").upper()
    root = logging.getLogger()
    root.setLevel(level)

    system = _file_handler(settings, "system", role)
    system.addFilter(_ExcludeLogger(PROCESSING_LOGGER))  # job lines have their own file
    _add(root, system)
    if role == "web":
        # Gunicorn's own errors (it does not propagate them) belong in the system log too.
        _add(logging.getLogger("gunicorn.error"), system)
    if not _has_stderr_handler(root):
        # Without it, warnings would only reach the file: Gunicorn does not configure the root logger.
        console = logging.StreamHandler(sys.stderr)
        console.setLevel(logging.WARNING)
        console.setFormatter(logging.Formatter(CONSOLE_FORMAT))
        _add(root, console)

    for name in HUEY_TASK_LOGGERS:  # a logger's filter sees only its own records, and before every handler
        huey_logger = logging.getLogger(name)
        if not any(isinstance(f, QuietPeriodicTasks) for f in huey_logger.filters):
            huey_logger.addFilter(QuietPeriodicTasks())

    # pywhispercpp logs "Transcribing ..." and the inference time at INFO for every call, and the engine
    # calls it once per piece of audio: the job's own log line says the same once.
    logging.getLogger("pywhispercpp").setLevel(logging.WARNING)

    # Job lines go to processing.log and still reach the console through the root logger.
    _add(logging.getLogger(PROCESSING_LOGGER), _file_handler(settings, "processing", role))

    access = logging.getLogger(ACCESS_LOGGER)
    access.propagate = False  # one line per request is for access.log only
    access.setLevel(logging.INFO)
    if role == "web" and settings.get("ACCESS_LOG", True):
        _add(access, _file_handler(settings, "access", role))


# ------------------------------------------------------------------ access log


def _start_timer() -> None:
    g.access_started = time.perf_counter()


def _user_id() -> int | None:
    user = g.get("user")
    if user is None:
        principal = g.get("principal") or g.get("rate_principal")
        user = getattr(principal, "user", None)
    return getattr(user, "id", None)


def _write_access_line(response: Response) -> Response:
    started = g.get("access_started")
    status = response.status_code
    rule = request.url_rule
    if rule is not None and getattr(rule, "websocket", False) and status == 200:
        status = 101  # a WebSocket that was accepted, logged when it ends
    logging.getLogger(ACCESS_LOGGER).info(
        "%s %s %s",
        request.method,
        request.path,
        status,
        # The path only: a WebSocket's ?token= must never reach a log file.
        extra={
            "method": request.method,
            "path": request.path,
            "status": status,
            "duration_ms": None if started is None else round((time.perf_counter() - started) * 1000, 1),
            "remote_addr": request.remote_addr,
            "user_id": _user_id(),
        },
    )
    return response


def log_requests(app: Flask) -> None:
    """When ``ACCESS_LOG`` is on, write a line per request to access.log (``boot`` opened the files)."""
    if not app.config.get("ACCESS_LOG", True):
        return
    # First in line, so the duration also covers the other hooks (rate limits, authentication).
    app.before_request_funcs.setdefault(None, []).insert(0, _start_timer)
    app.after_request(_write_access_line)
