"""Transcript search (the full API's Export & Search): ``POST /api/search/``."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

from flask import Blueprint, g, jsonify

from app.errors import AppError
from app.security import login_required
from app.services import search
from app.validation import json_body, string_field

bp = Blueprint("search", __name__)
MAX_FILTER_VALUES = 50


def _invalid(detail: str) -> AppError:
    return AppError(422, "INVALID_FIELD", detail)


def _bounded_int(data: dict[str, Any], name: str, default: int, lo: int, hi: int) -> int:
    value = data.get(name)
    if value is None:
        return default
    if isinstance(value, bool) or not isinstance(value, int) or not lo <= value <= hi:
        raise _invalid(f"{name} must be an integer between {lo} and {hi}")
    return value


def _string_list(filters: dict[str, Any], name: str) -> list[str]:
    value = filters.get(name)
    if value is None:
        return []
    if (
        not isinstance(value, list)
        or len(value) > MAX_FILTER_VALUES
        or not all(isinstance(v, str) and 0 < len(v) <= 100 for v in value)
    ):
        raise _invalid(f"filters.{name} must be a list of at most {MAX_FILTER_VALUES} names")
    return value


def _moment(value: Any, name: str, end: bool) -> datetime | None:
    """A date or ISO 8601 time as naive UTC; a bare end date includes that whole day."""
    if value is None or value == "":
        return None
    if not isinstance(value, str):
        raise _invalid(f"filters.date_range.{name} must be an ISO 8601 date or time")
    try:
        moment = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError as exc:
        raise _invalid(f"filters.date_range.{name} must be an ISO 8601 date or time") from exc
    if moment.tzinfo is not None:
        moment = moment.astimezone(UTC).replace(tzinfo=None)
    if end:  # the service compares with "<", so make the end inclusive
        moment += timedelta(days=1) if len(value) == 10 else timedelta(microseconds=1)
    return moment


def _date_range(filters: dict[str, Any]) -> tuple[datetime | None, datetime | None]:
    value = filters.get("date_range")
    if value is None:
        return None, None
    if not isinstance(value, dict):
        raise _invalid("filters.date_range must be an object with start and/or end")
    start, end = _moment(value.get("start"), "start", False), _moment(value.get("end"), "end", True)
    if start and end and start >= end:
        raise _invalid("filters.date_range.start must be before its end")
    return start, end


@bp.post("/api/search/", endpoint="search")
@login_required("jobs:read")
def search_transcripts():
    """Search transcripts: ``query``, ``filters`` (``date_range``, ``models``, ``languages``), ``limit``, ``offset``."""
    data = json_body()
    query = string_field(data, "query", max_length=500)
    filters = data.get("filters")
    filters = {} if filters is None else filters
    if not isinstance(filters, dict):
        raise _invalid("filters must be an object")
    start, end = _date_range(filters)
    return jsonify(
        search.search(
            g.user,
            query,
            start=start,
            end=end,
            models=_string_list(filters, "models"),
            languages=_string_list(filters, "languages"),
            limit=_bounded_int(data, "limit", 20, 1, 100),
            offset=_bounded_int(data, "offset", 0, 0, 10**9),
        )
    )
