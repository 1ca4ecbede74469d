"""Flask extensions, created unbound here and bound to the app in ``create_app``."""

from __future__ import annotations

import pybreaker
from flask_limiter import Limiter
from flask_sock import Sock

from app.models import db  # noqa: F401  (the database proxy, bound by open_database)


def rate_limit_key() -> str:
    """Who a request counts against: the API key, the user, or the client address."""
    from app.security import limiter_identity

    return limiter_identity()


limiter = Limiter(key_func=rate_limit_key, headers_enabled=True, default_limits=[])
sock = Sock()
# Opens after repeated engine failures; a trial call after the timeout closes it again.
engine_breaker = pybreaker.CircuitBreaker(fail_max=3, reset_timeout=30, name="engine")
