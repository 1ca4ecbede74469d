"""The engine circuit breaker's state, kept in the database (or Redis) so the web process sees what the workers'
engine did.

pybreaker keeps state in memory per process by default; a worker's failures would then never
reach the web process that must refuse new work with 503.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import pybreaker

from app.errors import AppError
from app.models import Setting, db
from workers.audio import MediaError
from workers.engine import Aborted

KEY = "engine_breaker"
_EMPTY = {"state": pybreaker.STATE_CLOSED, "counter": 0, "success_counter": 0, "opened_at": None}


class SettingStorage(pybreaker.CircuitBreakerStorage):
    """pybreaker storage backed by one row of the ``setting`` table."""

    def __init__(self, name: str):
        super().__init__(name)

    def _read(self) -> dict[str, Any]:
        try:
            return {**_EMPTY, **(Setting.read(KEY) or {})}
        except Exception:  # no database bound yet (import time): behave as a closed breaker
            return dict(_EMPTY)

    def _change(self, **fields: Any) -> None:
        with db.atomic("IMMEDIATE"):
            Setting.write(KEY, {**self._read(), **fields})

    def _bump(self, key: str, delta: int | None) -> None:
        with db.atomic("IMMEDIATE"):
            data = self._read()
            data[key] = 0 if delta is None else data[key] + delta
            Setting.write(KEY, data)

    @property
    def state(self) -> str:
        return self._read()["state"]

    @state.setter
    def state(self, state: str) -> None:
        self._change(state=state)

    def increment_counter(self) -> None:
        self._bump("counter", 1)

    def reset_counter(self) -> None:
        self._bump("counter", None)

    def increment_success_counter(self) -> None:
        self._bump("success_counter", 1)

    def reset_success_counter(self) -> None:
        self._bump("success_counter", None)

    @property
    def counter(self) -> int:
        return self._read()["counter"]

    @property
    def success_counter(self) -> int:
        return self._read()["success_counter"]

    @property
    def opened_at(self) -> datetime | None:
        raw = self._read()["opened_at"]
        return datetime.fromisoformat(raw) if raw else None

    @opened_at.setter
    def opened_at(self, value: datetime) -> None:
        self._change(opened_at=value.isoformat())


def retry_after(breaker: pybreaker.CircuitBreaker) -> int | None:
    """Seconds until an open breaker lets a trial call through; None when work is accepted."""
    if breaker.current_state != pybreaker.STATE_OPEN:
        return None
    opened = breaker._state_storage.opened_at  # pybreaker has no public accessor for it
    if opened is None:
        return None
    remaining = breaker.reset_timeout - (datetime.now(UTC) - opened).total_seconds()
    return max(1, int(remaining + 0.999)) if remaining > 0 else None


def ensure_accepting(breaker: pybreaker.CircuitBreaker) -> None:
    """503 with Retry-After while the engine's breaker is open."""
    wait = retry_after(breaker)
    if wait is not None:
        raise AppError(
            503,
            "ENGINE_UNAVAILABLE",
            f"The transcription engine failed repeatedly; new work is paused for {wait} s",
            {"Retry-After": str(wait)},
        )


# Opens after repeated engine failures; a trial call after the timeout closes it again. Its state
# lives in SQLite so the web process (which refuses new work) sees what the workers' engine did.
# Cancellation and bad media are not engine failures.
engine_breaker = pybreaker.CircuitBreaker(
    fail_max=3,
    reset_timeout=60,
    name="engine",
    state_storage=SettingStorage("engine"),
    exclude=[Aborted, MediaError],
    throw_new_error_on_trip=False,  # the tripping job fails with the real error
)


def configure_breaker(settings: dict) -> None:
    """Apply the configured failure count and pause, and the storage, to the engine breaker.

    ``BREAKER_STORAGE_URL`` redis://... (by default the Redis of ``QUEUE_URL``) keeps the state in Redis with
    pybreaker's own ``CircuitRedisStorage``; otherwise it stays in the database, which every process shares too.
    """
    engine_breaker.fail_max = int(settings["BREAKER_FAIL_MAX"])
    engine_breaker.reset_timeout = float(settings["BREAKER_RESET_SECONDS"])
    url = str(settings.get("BREAKER_STORAGE_URL") or "")
    previous = engine_breaker._state_storage
    if isinstance(previous, pybreaker.CircuitRedisStorage):
        previous._redis.close()  # replaced below either way; its connections are not left to the collector
    if url.startswith(("redis://", "rediss://")):
        import redis  # late: only a Redis setup loads the client

        engine_breaker._state_storage = pybreaker.CircuitRedisStorage(
            pybreaker.STATE_CLOSED, redis.Redis.from_url(url), namespace="whisper-transcriber:engine"
        )
    elif not isinstance(previous, SettingStorage):
        engine_breaker._state_storage = SettingStorage("engine")
