"""Taking files off a request: multipart uploads land in ``tmp/`` and are claimed by rename."""

from __future__ import annotations

from pathlib import Path

from flask import g, request

from app.errors import AppError


def take_multipart_file(field: str = "file") -> tuple[Path, str]:
    """The uploaded file's temp path and client file name; 400 when it is missing or empty.

    The caller owns the returned file: it must rename it into place or delete it.
    """
    storage = request.files.get(field)
    if storage is None:
        raise AppError(400, "MISSING_FILE", f"multipart field {field!r} with a file is required")
    stream = storage.stream
    path = Path(getattr(stream, "name", "") or "")
    stream.flush()
    if path.parent.name != "tmp" or not path.exists():
        raise AppError(400, "MISSING_FILE", "the upload could not be read")
    stream.close()
    temps = g.get("upload_temps", [])
    if path in temps:
        temps.remove(path)  # ownership passes to the caller
    if path.stat().st_size == 0:
        path.unlink(missing_ok=True)
        raise AppError(400, "EMPTY_FILE", "The uploaded file is empty")
    return path, storage.filename or "upload"
