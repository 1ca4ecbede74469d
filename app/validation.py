"""Small helpers that routes use to parse input into clean values or a 400/422."""

from __future__ import annotations

import json
import re
from datetime import UTC, datetime
from typing import Any

from flask import request

from app.errors import AppError

MAX_JSON_DEPTH = 64  # arrays and objects inside each other: far more than any route takes
# A string (possessive, and unterminated ones run to the end, so the scan stays linear) or a bracket.
_JSON_TOKENS = re.compile(r'"(?:[^"\\]|\\.)*+(?:"|\Z)|[\[\]{}]', re.DOTALL)


def json_body() -> dict[str, Any]:
    """The request's JSON object; 400 when it is missing, malformed, nested too deeply or not an object.

    Every route reads JSON through here, never ``request.get_json()`` itself: the depth is checked on the raw
    text before parsing, because the parser recurses and a body like ``[[[[...`` 10,000 deep raises
    RecursionError (a 500) instead of a ValueError.
    """
    if request.is_json and too_deep(request.get_data(cache=True), MAX_JSON_DEPTH):
        raise AppError(400, "INVALID_JSON", f"Request body is nested more than {MAX_JSON_DEPTH} levels deep")
    data = request.get_json(silent=True)
    if not isinstance(data, dict):
        raise AppError(400, "INVALID_JSON", "Request body must be a JSON object")
    return data


def too_deep(raw: bytes, limit: int) -> bool:
    """True when JSON text nests arrays and objects more than ``limit`` deep; brackets inside strings do not count.

    It never recurses, and it takes malformed text too (the parser refuses that afterwards).
    """
    if raw.count(b"[") + raw.count(b"{") <= limit:
        return False  # the usual small body: cannot be that deep
    try:
        text = raw.decode(json.detect_encoding(raw))
    except (UnicodeDecodeError, LookupError):
        return False  # not JSON text at all; the parser refuses it
    depth = 0
    for match in _JSON_TOKENS.finditer(text):
        token = match.group()
        if token in ("[", "{"):
            depth += 1
            if depth > limit:
                return True
        elif token in ("]", "}"):
            depth -= 1
    return False


def form_or_json() -> dict[str, Any]:
    """Credentials and the like may come as JSON or as a form."""
    if request.is_json:
        return json_body()
    return request.form.to_dict()


def int_arg(name: str, default: int, lo: int, hi: int) -> int:
    """An integer query parameter within [lo, hi]."""
    raw = request.args.get(name)
    if raw is None or raw == "":
        return default
    try:
        value = int(raw)
    except ValueError as exc:
        raise AppError(400, "INVALID_PARAMETER", f"{name} must be an integer") from exc
    if not lo <= value <= hi:
        raise AppError(400, "INVALID_PARAMETER", f"{name} must be between {lo} and {hi}")
    return value


def datetime_arg(name: str) -> datetime | None:
    """An ISO 8601 query parameter as a naive UTC datetime."""
    raw = request.args.get(name)
    if not raw:
        return None
    try:
        value = datetime.fromisoformat(raw.replace("Z", "+00:00"))
    except ValueError as exc:
        raise AppError(400, "INVALID_PARAMETER", f"{name} must be an ISO 8601 timestamp") from exc
    if value.tzinfo is not None:
        value = value.astimezone(UTC).replace(tzinfo=None)
    return value


def string_field(data: dict[str, Any], name: str, *, required: bool = True, max_length: int = 1000) -> str | None:
    """A string field of a JSON body."""
    value = data.get(name)
    if value is None or value == "":
        if required:
            raise AppError(422, "MISSING_FIELD", f"{name} is required")
        return None
    if not isinstance(value, str) or len(value) > max_length:
        raise AppError(422, "INVALID_FIELD", f"{name} must be a string of at most {max_length} characters")
    return value
