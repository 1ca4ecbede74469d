"""Flask extensions, created unbound here and bound to the app in ``create_app``."""

from __future__ import annotations

import threading

import pybreaker
from flask_limiter import Limiter
from flask_sock import Sock

from app.models import db  # noqa: F401  (the database proxy, bound by open_database)
from app.ratelimit import APPLICATION_LIMITS, rate_limit_key
from app.services.breaker import SettingStorage
from workers.audio import MediaError
from workers.engine import Aborted

# One limiter for the process. ``init_app`` (once per app) builds a fresh storage from
# RATELIMIT_STORAGE_URI, so every app, and so every test, starts with empty counters.
# The limits are application-wide and chosen per request in app/ratelimit.py.
limiter = Limiter(key_func=rate_limit_key, headers_enabled=True, default_limits=[],
                  application_limits=APPLICATION_LIMITS, strategy="fixed-window")
sock = Sock()


class SocketReaderThread(threading.Thread):
    """simple_websocket's per-socket reader. A daemon: after the server closes a socket it waits for the
    client's reply for up to a ping interval, and a stopping web worker must not wait for a silent client."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, daemon=True, **kwargs)


# Set when Gunicorn asks this worker to stop (config/gunicorn.conf.py): log sockets and long polls
# end at once instead of holding the shutdown for graceful_timeout (30 s).
stopping = threading.Event()
# Opens after repeated engine failures; a trial call after the timeout closes it again. Its state
# lives in SQLite so the web process (which refuses new work) sees what the workers' engine did.
# Cancellation and bad media are not engine failures.
engine_breaker = pybreaker.CircuitBreaker(
    fail_max=3, reset_timeout=60, name="engine", state_storage=SettingStorage("engine"),
    exclude=[Aborted, MediaError], throw_new_error_on_trip=False,  # the tripping job fails with the real error
)


def configure_breaker(settings: dict) -> None:
    """Apply the configured failure count and pause to the engine breaker."""
    engine_breaker.fail_max = int(settings["BREAKER_FAIL_MAX"])
    engine_breaker.reset_timeout = float(settings["BREAKER_RESET_SECONDS"])
