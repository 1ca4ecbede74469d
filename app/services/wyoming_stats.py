"""Running totals of Wyoming voice commands: written by the Wyoming process, served by the web one at /metrics/.

Voice commands are not jobs, so the job table never counts them. Each one is added to a record in the
``Setting`` table in one IMMEDIATE transaction: the database is already the store both processes share
(the job totals live there too), so the web process needs no channel to the Wyoming process, and the
counters survive restarts as Prometheus counters must.
"""

from __future__ import annotations

from typing import Any

from app.models import Setting, db

KEY = "totals.wyoming"
OUTCOMES = ("ok", "error", "abandoned")  # a transcript; an error event; the client left mid-stream
LATENCY_BUCKETS = (0.1, 0.2, 0.3, 0.5, 0.75, 1.0, 2.0, 5.0, 10.0)  # seconds from audio-stop to transcript


def empty() -> dict[str, Any]:
    """Totals before the first command."""
    return {
        "requests": dict.fromkeys(OUTCOMES, 0),
        "audio_seconds": 0.0,
        "latency_sum": 0.0,
        "latency_buckets": [0] * len(LATENCY_BUCKETS),
    }


def record(outcome: str, latency: float | None = None, audio_seconds: float = 0.0) -> None:
    """Count one command with its outcome; a transcribed one adds its latency and length of audio."""
    if outcome not in OUTCOMES:
        raise ValueError(f"outcome must be one of {', '.join(OUTCOMES)}, not {outcome!r}")
    if db.is_closed():  # the Wyoming process's counting thread: a connection for this write only
        with db.connection_context():
            _add(outcome, latency, audio_seconds)
    else:
        _add(outcome, latency, audio_seconds)


def _add(outcome: str, latency: float | None, audio_seconds: float) -> None:
    with db.atomic("IMMEDIATE"):  # read and write in one transaction: no count is lost to a concurrent one
        value = Setting.read(KEY) or empty()
        value["requests"][outcome] = value["requests"].get(outcome, 0) + 1
        value["audio_seconds"] += audio_seconds
        if latency is not None:
            value["latency_sum"] += latency
            value["latency_buckets"] = [
                n + (latency <= le) for n, le in zip(value["latency_buckets"], LATENCY_BUCKETS, strict=True)
            ]
        Setting.write(KEY, value)


def read() -> dict[str, Any]:
    """The totals: ``requests`` by outcome, ``audio_seconds``, ``latency_sum`` and cumulative ``latency_buckets``."""
    return Setting.read(KEY) or empty()
