"""Running totals of completed work (audio seconds, real-time factors) that survive deleting jobs.

Prometheus counters must never go down, but retention cleanup deletes old jobs; so each completion
is added to a stored total in the same transaction that marks the job completed. The first use on a
database without totals starts them from the completed jobs already on record.
"""

from __future__ import annotations

from typing import Any

from app.models import Setting, db

KEY = "totals.completed"
RTF_BUCKETS = (0.05, 0.1, 0.2, 0.3, 0.5, 0.75, 1.0, 1.5, 2.0, 5.0)  # upper bounds of the histogram

_FROM_JOBS_SQL = (
    "SELECT COUNT(*), SUM(duration), COUNT(rtf), SUM(rtf), "
    + ", ".join(f"SUM(CASE WHEN rtf <= {le} THEN 1 ELSE 0 END)" for le in RTF_BUCKETS)
    + " FROM (SELECT duration, CASE WHEN duration > 0 AND processing_seconds IS NOT NULL "
    "THEN processing_seconds / duration END AS rtf FROM job WHERE status = 'completed') AS completed"
)  # portable: PostgreSQL neither sums booleans nor takes a subquery without a name


def _from_jobs() -> dict[str, Any]:
    jobs, audio, rtf_count, rtf_sum, *buckets = db.execute_sql(_FROM_JOBS_SQL).fetchone()
    loops = db.execute_sql("SELECT SUM(loops_suppressed) FROM job WHERE status = 'completed'").fetchone()[0]
    return {
        "jobs": jobs or 0,
        "audio_seconds": audio or 0.0,
        "rtf_count": rtf_count or 0,
        "rtf_sum": rtf_sum or 0.0,
        "rtf_buckets": [n or 0 for n in buckets],
        "loops_suppressed": loops or 0,
    }


def _stored() -> dict[str, Any]:
    """The stored totals, started from the jobs on record the first time. Call inside a write transaction."""
    value = Setting.read(KEY)
    if value is None:
        value = _from_jobs()
        Setting.write(KEY, value)
    return value


def before_completion() -> dict[str, Any]:
    """The totals, read (and if need be started) inside the completing transaction before the job is marked."""
    return _stored()


def add_completion(
    value: dict[str, Any], duration: float | None, processing_seconds: float, loops_suppressed: int = 0
) -> None:
    """Count one completed job into ``value`` (from ``before_completion``) and store it, in the same transaction."""
    value["jobs"] += 1
    value["loops_suppressed"] = value.get("loops_suppressed", 0) + loops_suppressed
    value["audio_seconds"] += duration or 0.0
    if duration and duration > 0:
        rtf = processing_seconds / duration
        value["rtf_count"] += 1
        value["rtf_sum"] += rtf
        value["rtf_buckets"] = [n + (rtf <= le) for n, le in zip(value["rtf_buckets"], RTF_BUCKETS, strict=True)]
    Setting.write(KEY, value)


def read() -> dict[str, Any]:
    """The totals: ``jobs``, ``audio_seconds``, ``rtf_count``, ``rtf_sum`` and cumulative ``rtf_buckets``."""
    value = Setting.read(KEY)
    if value is not None:
        return value
    with db.atomic("IMMEDIATE"):
        return _stored()
