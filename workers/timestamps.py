"""The one UTC timestamp format of the appliance: ISO 8601 with a ``Z``, as in ``2026-01-11T12:00:00Z``.

Flask-free and app-free, so the models, the error handler, the log formatter and the worker tools share it.
"""

from __future__ import annotations

from datetime import UTC, datetime


def utc_iso(moment: datetime | float | None = None, digits: int = 0) -> str:
    """``moment`` (now when None; a naive datetime is UTC; a float is a Unix time) as ISO 8601 UTC with a Z.

    ``digits`` adds that many digits of the second's fraction (3 for milliseconds, 6 for microseconds),
    truncated, never rounded.
    """
    if moment is None:
        moment = datetime.now(UTC)
    elif isinstance(moment, int | float):
        moment = datetime.fromtimestamp(moment, UTC)
    elif moment.tzinfo is not None:
        moment = moment.astimezone(UTC)
    fraction = moment.strftime(".%f")[: digits + 1] if digits else ""
    return f"{moment.strftime('%Y-%m-%dT%H:%M:%S')}{fraction}Z"
