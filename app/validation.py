"""Small helpers that routes use to parse input into clean values or a 400/422."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from flask import request

from app.errors import AppError


def json_body() -> dict[str, Any]:
    """The request's JSON object; 400 when it is missing, malformed or not an object."""
    data = request.get_json(silent=True)
    if not isinstance(data, dict):
        raise AppError(400, "INVALID_JSON", "Request body must be a JSON object")
    return data


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
