"""Rate limits: who a request counts against, how much each kind of caller may do, and failed logins.

Every request (except health probes) passes these application-wide flask-limiter limits:

- ``principal``: anonymous callers ``RATELIMIT_ANON`` per client address, users ``RATELIMIT_USER``
  per user, API keys their own ``requests_per_minute`` and ``daily_quota`` per key;
- ``admin``: ``/admin/*`` additionally ``RATELIMIT_ADMIN`` per caller;
- ``chunks``: chunks of a chunked upload count against ``RATELIMIT_CHUNKS`` per caller instead of
  ``principal``, because a big file sent in small chunks is one upload, not hundreds of requests' worth of work.

Callers from ``ANONYMOUS_NETWORKS`` without credentials act as a service user but count as anonymous
callers here, per client address, so that one busy machine cannot use up the others' requests.

A dialect may add one limit of its own, shared by all its routes, per client address (:func:`dialect_limit`);
its responses report that limit in ``X-RateLimit-*``, unless another limit is the one that refused the request.

Failed logins are counted apart from those, in :mod:`app.login_limits`.

Refusals are logged once per client address and limit per minute, with the count of the others
(:class:`RejectionSummary`): a client hammering a limit must not flood the system log and its live sockets.
"""

from __future__ import annotations

import logging
import math
import threading
import time
from collections.abc import Callable

from flask import Blueprint, Flask, Response, current_app, g, has_request_context, request
from flask.blueprints import BlueprintSetupState
from flask_limiter import ApplicationLimit, Limiter
from limits import parse_many

from app.errors import AppError
from app.login_limits import OVERRIDE_HEADERS
from app.security import current_principal
from app.services.credentials import Principal

LIMIT_SETTINGS = ("RATELIMIT_ANON", "RATELIMIT_USER", "RATELIMIT_ADMIN", "RATELIMIT_CHUNKS", "RATELIMIT_LOGIN_FAILURES")
CHUNK_ENDPOINT = "chunked_uploads.upload_chunk"
ADMIN_PREFIX = "/admin"


# ------------------------------------------------------------------ who and how much


def _principal() -> Principal | None:
    """The caller; bad credentials (401 later) and trusted-network callers count as anonymous here."""
    if "rate_principal" not in g:
        try:
            principal = current_principal(optional=True)
        except AppError:
            principal = None
        g.rate_principal = None if principal is not None and principal.via == "network" else principal
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
    ApplicationLimit(
        limit_provider=admin_limit,
        key_function=rate_limit_key,
        scope="admin",
        exempt_when=lambda: not is_admin_path(),
        error_message="Rate limit for administration endpoints exceeded; see Retry-After",
    ),
    ApplicationLimit(
        limit_provider=chunk_limit,
        key_function=rate_limit_key,
        scope="chunks",
        exempt_when=lambda: not is_chunk_upload(),
        error_message="Too many upload chunks; retry after the number of seconds in Retry-After",
    ),
    ApplicationLimit(
        limit_provider=principal_limit,
        key_function=rate_limit_key,
        scope="principal",
        exempt_when=is_chunk_upload,
        error_message=_breach_message,
    ),
]

# One limiter for the process. ``init_app`` (once per app) builds a fresh storage from
# RATELIMIT_STORAGE_URI, so every app, and so every test, starts with empty counters.
limiter = Limiter(
    key_func=rate_limit_key,
    headers_enabled=True,
    default_limits=[],
    application_limits=APPLICATION_LIMITS,
    strategy="fixed-window",
)


# ------------------------------------------------------------ dialect limits

_DIALECT_SCOPES: dict[str, str] = {}  # blueprint name -> scope of its own limit, the one its headers report


def dialect_limit(bp: Blueprint, setting: str, scope: str, error_message: str) -> None:
    """One limit (the setting, read per request) shared by every route of ``bp``, per client address.

    It applies on top of the app-wide limits and is the one ``bp``'s ``X-RateLimit-*`` headers describe.
    """
    limiter.shared_limit(
        lambda: current_app.config[setting],
        scope=scope,
        key_func=lambda: f"{scope}:{request.remote_addr}",
        error_message=error_message,
    )(bp)
    _DIALECT_SCOPES[bp.name] = scope

    @bp.record_once
    def _check_setting(state: BlueprintSetupState) -> None:
        value = state.app.config.get(setting)
        try:
            parse_many(str(value))
        except ValueError as exc:
            raise RuntimeError(f"{setting}={value!r} is not a rate limit such as '30 per minute'") from exc


def _report_dialect_limit(response: Response) -> None:
    """Put the dialect's own limit in the headers: flask-limiter reports the first app-wide limit instead."""
    scope = _DIALECT_SCOPES.get(request.blueprint or "")
    current = limiter.current_limit if scope else None
    if current is None or (current.breached and current.request_args[-1] != scope):
        return  # not a dialect route, not limited, or refused by another limit, which the 429 must name
    own = [limit for limit in limiter.current_limits if limit.request_args[-1] == scope]
    if own:
        limit = next((item for item in own if item.breached), own[0])  # shortest window first
        response.headers["X-RateLimit-Limit"] = str(limit.limit.amount)
        response.headers["X-RateLimit-Remaining"] = str(limit.remaining)
        response.headers["X-RateLimit-Reset"] = str(limit.reset_at)


# ------------------------------------------------------------------- logging refusals


_log = logging.getLogger(__name__)


class RejectionSummary(logging.Filter):
    """Keeps one "ratelimit … exceeded" line per client address, limit and minute, and logs the count of the rest.

    It sits on flask-limiter's logger; the count is written once the minute is over (by the next request).
    """

    WINDOW = 60.0  # seconds

    def __init__(self, clock: Callable[[], float] = time.monotonic):
        super().__init__()
        self.clock = clock
        self._lock = threading.Lock()
        self._windows: dict[tuple[str, str], list] = {}  # (address, limit) -> [window start, suppressed]
        self._due = math.inf  # when the oldest window ends

    def reset(self) -> None:
        """Forget every window (a new app starts with empty counters)."""
        with self._lock:
            self._windows.clear()
            self._due = math.inf

    def filter(self, record: logging.LogRecord) -> bool:
        """False for a repeated refusal within its minute; every other record passes untouched."""
        if not (isinstance(record.msg, str) and record.msg.startswith("ratelimit ") and record.args):
            return True
        address = (request.remote_addr if has_request_context() else None) or "-"
        limit = str(record.args[0] if isinstance(record.args, tuple) else record.args)
        self.flush()  # first, so a minute's summary comes before the next minute's first line
        now = self.clock()
        with self._lock:
            window = self._windows.get((address, limit))
            if window is not None and now - window[0] < self.WINDOW:
                window[1] += 1
                return False
            self._windows[(address, limit)] = [now, 0]
            self._due = min(self._due, now + self.WINDOW)
        record.remote_addr = address
        return True

    def flush(self) -> None:
        """Log how many refusals each finished minute suppressed; cheap when no minute has ended."""
        now = self.clock()
        if now < self._due:
            return
        with self._lock:
            ended = [(key, window[1]) for key, window in self._windows.items() if now - window[0] >= self.WINDOW]
            for key, _ in ended:
                del self._windows[key]
            self._due = min((window[0] + self.WINDOW for window in self._windows.values()), default=math.inf)
        for (address, limit), suppressed in ended:
            if suppressed:
                _log.info(
                    "ratelimit %s refused %s %d more times within a minute of the first refusal (not logged "
                    "one by one)",
                    limit,
                    address,
                    suppressed,
                    extra={"remote_addr": address, "suppressed": suppressed},
                )


rejections = RejectionSummary()


# ------------------------------------------------------------------------ setup


def _finish_headers(response: Response) -> Response:
    """Runs after flask-limiter's own header hook: the dialect's limit, Retry-After only where it means something."""
    _report_dialect_limit(response)
    rejections.flush()  # a minute that ended since the last refusal is summarised even if no refusal follows
    if response.status_code == 429:
        for name, value in (g.pop(OVERRIDE_HEADERS, None) or {}).items():
            response.headers[name] = value  # replaces what flask-limiter added for the request-wide limit
        retry = response.headers.get("Retry-After", "")
        if not retry.isdigit() or int(retry) < 1:
            response.headers["Retry-After"] = "1"
    elif response.status_code != 503:
        # flask-limiter writes Retry-After on every limited response; it only belongs on 429 (and 503).
        response.headers.pop("Retry-After", None)
    return response


def setup_rate_limits(app: Flask) -> None:
    """Check the limit settings and order the hooks around the limiter's."""
    for name in LIMIT_SETTINGS:
        try:
            parse_many(str(app.config[name]))
        except ValueError as exc:
            raise RuntimeError(f"{name}={app.config[name]!r} is not a rate limit such as '60 per minute'") from exc
    rejections.reset()
    limiter_log = logging.getLogger("flask-limiter")
    if rejections not in limiter_log.filters:
        limiter_log.addFilter(rejections)
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
