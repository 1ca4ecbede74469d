"""Rate limits: who a request counts against, how much each kind of caller may do, and failed logins.

Every request (except health probes) passes these application-wide flask-limiter limits:

- ``principal``: anonymous callers ``RATELIMIT_ANON`` per client address, users ``RATELIMIT_USER``
  per user, API keys their own ``requests_per_minute`` and ``daily_quota`` per key;
- ``admin``: ``/admin/*`` additionally ``RATELIMIT_ADMIN`` per caller;
- ``chunks``: chunks of a chunked upload count against ``RATELIMIT_CHUNKS`` per caller instead of
  ``principal``, because a big file sent in small chunks is one upload, not hundreds of requests' worth of work.

Failed logins are counted apart from those, per client address and username (``RATELIMIT_LOGIN_FAILURES``);
only failures count, and once they are used up even the right password gets a 429 until the window ends.
"""

from __future__ import annotations

import hashlib
import math
import time
from typing import TYPE_CHECKING

from flask import Flask, Response, current_app, g, request
from flask_limiter import ApplicationLimit
from limits import RateLimitItem, parse_many

from app.errors import AppError
from app.security import Principal, current_principal

if TYPE_CHECKING:
    from flask_limiter import Limiter

LIMIT_SETTINGS = ("RATELIMIT_ANON", "RATELIMIT_USER", "RATELIMIT_ADMIN", "RATELIMIT_CHUNKS", "RATELIMIT_LOGIN_FAILURES")
CHUNK_ENDPOINT = "chunked_uploads.upload_chunk"
ADMIN_PREFIX = "/admin"
_LOGIN_SCOPE = "login-failures"
_OVERRIDE = "rate_limit_headers"  # g key: headers of a 429 this module raised itself


# ------------------------------------------------------------------ who and how much


def _principal() -> Principal | None:
    """The caller; bad credentials count as anonymous here (the route answers 401 for them later)."""
    if "rate_principal" not in g:
        try:
            g.rate_principal = current_principal(optional=True)
        except AppError:
            g.rate_principal = None
    return g.rate_principal


def rate_limit_key() -> str:
    """Who a request counts against: the API key, the user, or the client address."""
    principal = _principal()
    if principal is None:
        return f"ip:{request.remote_addr}"
    if principal.api_key is not None:
        return f"key:{principal.api_key.key_id}"
    return f"user:{principal.user.id}"


def principal_limit() -> str:
    """The caller's limit: anonymous, user, or the API key's own per-minute limit and daily quota."""
    cfg = current_app.config
    principal = _principal()
    if principal is None:
        return cfg["RATELIMIT_ANON"]
    key = principal.api_key
    if key is None:
        return cfg["RATELIMIT_USER"]
    parts = [f"{key.requests_per_minute} per minute" if key.requests_per_minute else cfg["RATELIMIT_USER"]]
    if key.daily_quota:
        parts.append(f"{key.daily_quota} per day")
    return ";".join(parts)


def admin_limit() -> str:
    """The extra limit on administration endpoints."""
    return current_app.config["RATELIMIT_ADMIN"]


def chunk_limit() -> str:
    """The limit on chunks of chunked uploads."""
    return current_app.config["RATELIMIT_CHUNKS"]


def is_chunk_upload() -> bool:
    """True for a request that sends one chunk of a chunked upload."""
    return request.endpoint == CHUNK_ENDPOINT


def is_admin_path() -> bool:
    """True for ``/admin`` and everything below it."""
    return request.path == ADMIN_PREFIX or request.path.startswith(ADMIN_PREFIX + "/")


def _breach_message() -> str:
    principal = _principal()
    who = "address" if principal is None else "API key" if principal.api_key is not None else "user"
    return f"Rate limit exceeded for this {who}; retry after the number of seconds in Retry-After"


# Order matters: flask-limiter reports the first limit of the shortest window in the X-RateLimit
# headers, so on /admin/* those describe the tighter admin limit.
APPLICATION_LIMITS = [
    ApplicationLimit(limit_provider=admin_limit, key_function=rate_limit_key, scope="admin",
                     exempt_when=lambda: not is_admin_path(),
                     error_message="Rate limit for administration endpoints exceeded; see Retry-After"),
    ApplicationLimit(limit_provider=chunk_limit, key_function=rate_limit_key, scope="chunks",
                     exempt_when=lambda: not is_chunk_upload(),
                     error_message="Too many upload chunks; retry after the number of seconds in Retry-After"),
    ApplicationLimit(limit_provider=principal_limit, key_function=rate_limit_key, scope="principal",
                     exempt_when=is_chunk_upload, error_message=_breach_message),
]


# --------------------------------------------------------------- failed logins


def _limiter() -> Limiter | None:
    from app.extensions import limiter  # late: extensions imports this module to build the limiter

    return limiter if current_app.config.get("RATELIMIT_ENABLED", True) and limiter.initialized else None


def _login_buckets(username: str) -> tuple[list[RateLimitItem], list[str]]:
    items = parse_many(current_app.config["RATELIMIT_LOGIN_FAILURES"])
    # Hashed: storage keys stay short and no user input ends up in them verbatim.
    who = hashlib.sha256(username.strip().lower().encode()).hexdigest()[:32]
    return items, [_LOGIN_SCOPE, f"{request.remote_addr}|{who}"]


def check_login_allowed(username: str) -> None:
    """429 once this client address has used up its failed logins for ``username`` in the window."""
    limiter = _limiter()
    if limiter is None:
        return
    items, args = _login_buckets(username)
    for item in items:
        if limiter.limiter.test(item, *args):
            continue
        reset_at, _ = limiter.limiter.get_window_stats(item, *args)
        headers = {
            "X-RateLimit-Limit": str(item.amount),
            "X-RateLimit-Remaining": "0",
            "X-RateLimit-Reset": str(math.ceil(reset_at)),
            "Retry-After": str(max(1, math.ceil(reset_at - time.time()))),
        }
        setattr(g, _OVERRIDE, headers)
        raise AppError(429, "RATE_LIMITED", "Too many failed login attempts; retry after the seconds in Retry-After",
                       headers)


def record_login_failure(username: str) -> None:
    """Count one failed login for this client address and username."""
    limiter = _limiter()
    if limiter is not None:
        items, args = _login_buckets(username)
        for item in items:
            limiter.limiter.hit(item, *args)


# ------------------------------------------------------------------------ setup


def _finish_headers(response: Response) -> Response:
    """Runs after flask-limiter's own header hook: Retry-After only where it means something."""
    if response.status_code == 429:
        for name, value in (g.pop(_OVERRIDE, None) or {}).items():
            response.headers[name] = value  # replaces what flask-limiter added for the request-wide limit
        retry = response.headers.get("Retry-After", "")
        if not retry.isdigit() or int(retry) < 1:
            response.headers["Retry-After"] = "1"
    elif response.status_code != 503:
        # flask-limiter writes Retry-After on every limited response; it only belongs on 429 (and 503).
        response.headers.pop("Retry-After", None)
    return response


def setup_rate_limits(app: Flask) -> None:
    """Check the limit settings, exempt health probes, and order the hooks around the limiter's."""
    from app import health
    from app.extensions import limiter

    for name in LIMIT_SETTINGS:
        try:
            parse_many(str(app.config[name]))
        except ValueError as exc:
            raise RuntimeError(f"{name}={app.config[name]!r} is not a rate limit such as '60 per minute'") from exc
    limiter.exempt(health.bp)
    # The limiter registered its check before the app's own hooks; run it after them, so that a 429
    # carries the request id and the database connection is open when the key function authenticates.
    before = app.before_request_funcs.setdefault(None, [])
    for func in [f for f in before if getattr(f, "__self__", None) is limiter]:
        before.remove(func)
        before.append(func)
    # After-request hooks run last-registered first: index 0 runs after flask-limiter's header hook.
    after = app.after_request_funcs.setdefault(None, [])
    if _finish_headers not in after:
        after.insert(0, _finish_headers)
