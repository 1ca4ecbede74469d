"""Failed logins, counted per client address and username (``RATELIMIT_LOGIN_FAILURES``).

Only failures count, and once they are used up even the right password gets a 429 until the window ends.
The counters live in their own ``limits`` storage, built from ``RATELIMIT_STORAGE_URI`` for each app, so
authentication can count failures without depending on the request limiter (app/ratelimit.py).
"""

from __future__ import annotations

import hashlib
import math
import time

from flask import Flask, current_app, g, request
from limits import RateLimitItem, parse_many
from limits.storage import storage_from_string
from limits.strategies import FixedWindowRateLimiter

from app.errors import AppError

EXTENSION = "login_limits"
OVERRIDE_HEADERS = "rate_limit_headers"  # g key: a 429's own X-RateLimit-* headers (app/ratelimit.py applies them)
_SCOPE = "login-failures"


def init_app(app: Flask) -> None:
    """Give ``app`` empty failed-login counters in the configured storage."""
    storage = storage_from_string(app.config["RATELIMIT_STORAGE_URI"])
    app.extensions[EXTENSION] = FixedWindowRateLimiter(storage)


def _counter() -> FixedWindowRateLimiter | None:
    if not current_app.config.get("RATELIMIT_ENABLED", True):
        return None
    return current_app.extensions.get(EXTENSION)


def _buckets(username: str) -> tuple[list[RateLimitItem], list[str]]:
    items = parse_many(current_app.config["RATELIMIT_LOGIN_FAILURES"])
    # Hashed: storage keys stay short and no user input ends up in them verbatim.
    who = hashlib.sha256(username.strip().lower().encode()).hexdigest()[:32]
    return items, [_SCOPE, f"{request.remote_addr}|{who}"]


def check_login_allowed(username: str) -> None:
    """429 once this client address has used up its failed logins for ``username`` in the window."""
    counter = _counter()
    if counter is None:
        return
    items, args = _buckets(username)
    for item in items:
        if counter.test(item, *args):
            continue
        reset_at, _ = counter.get_window_stats(item, *args)
        headers = {
            "X-RateLimit-Limit": str(item.amount),
            "X-RateLimit-Remaining": "0",
            "X-RateLimit-Reset": str(math.ceil(reset_at)),
            "Retry-After": str(max(1, math.ceil(reset_at - time.time()))),
        }
        setattr(g, OVERRIDE_HEADERS, headers)
        raise AppError(
            429, "RATE_LIMITED", "Too many failed login attempts; retry after the seconds in Retry-After", headers
        )


def record_login_failure(username: str) -> None:
    """Count one failed login for this client address and username."""
    counter = _counter()
    if counter is not None:
        items, args = _buckets(username)
        for item in items:
            counter.hit(item, *args)
