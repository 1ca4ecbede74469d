"""Authentication: password hashing, JWTs, API keys, cookies with CSRF, and route guards."""

from __future__ import annotations

import hmac
import ipaddress
import uuid
from calendar import timegm
from collections.abc import Callable
from datetime import datetime
from functools import wraps
from typing import Any

import jwt
from flask import Blueprint, current_app, g, request
from werkzeug.wrappers import Response

from app import login_limits
from app.errors import AppError
from app.models import ApiKey, Token, User, db, token_expiry, utcnow
from app.services import users
from app.services.credentials import (
    API_KEY_PREFIX,
    SCOPES,
    USER_SCOPES,
    Principal,
    authenticate_password,
    hash_api_key,
)

SESSION_COOKIE = "wt_session"
CSRF_COOKIE = "wt_csrf"
CSRF_HEADER = "X-CSRF-Token"
ALGORITHM = "HS256"  # fixed: never read from the token


def unauthorized(detail: str = "Authentication required") -> AppError:
    """The 401 every authentication failure answers with."""
    return AppError(401, "UNAUTHORIZED", detail, {"WWW-Authenticate": "Bearer"})


BASIC_CHALLENGE = 'Basic realm="Whisper Transcriber", charset="UTF-8"'


def offer_basic(response: Response) -> Response:
    """After-request hook: a 401 also offers Basic (the Dubarr dialect's scheme), so a browser asks for it.

    Not for a request with a session cookie: the dashboard's own scripts send it and take the user to
    the login page on a 401, where a browser's password prompt would only get in the way.
    """
    if response.status_code == 401 and SESSION_COOKIE not in request.cookies:
        response.headers.add("WWW-Authenticate", BASIC_CHALLENGE)  # a second challenge, beside Bearer
    return response


# ----------------------------------------------------------------------- JWT


def issue_token(user: User) -> dict[str, Any]:
    """A signed access token, recorded so that it can be revoked."""
    lifetime = int(current_app.config["JWT_EXPIRES_SECONDS"])
    now = utcnow()
    jti = uuid.uuid4().hex
    expires = token_expiry(lifetime)
    Token.purge_expired()  # the denylist only needs tokens that could still be used
    with db.atomic("IMMEDIATE"):
        Token.create(jti=jti, user=user, expires_at=expires)
    claims = {"sub": str(user.id), "jti": jti, "iat": _epoch(now), "exp": _epoch(expires), "role": user.role}
    token = jwt.encode(claims, current_app.config["SECRET_KEY"], algorithm=ALGORITHM)
    return {"access_token": token, "token_type": "bearer", "expires_in": lifetime}


def _epoch(value: datetime) -> int:
    return timegm(value.utctimetuple())


def decode_token(token: str) -> tuple[User, dict[str, Any]]:
    """Verify a JWT and return its user; any problem is a 401."""
    try:
        claims = jwt.decode(
            token,
            current_app.config["SECRET_KEY"],
            algorithms=[ALGORITHM],
            options={"require": ["exp", "iat", "sub", "jti"]},
        )
    except jwt.ExpiredSignatureError as exc:
        raise unauthorized("Token has expired") from exc
    except jwt.PyJWTError as exc:
        raise unauthorized("Invalid token") from exc
    record = Token.find_live(claims["jti"])
    # Tokens are recorded when issued, so an unknown jti is treated like a revoked one.
    if record is None or record.user_id != _int(claims["sub"]):
        raise unauthorized("Token has been revoked")
    user = User.get_or_none(User.id == record.user_id)
    if user is None or not user.is_active:
        raise unauthorized("User is disabled or no longer exists")
    return user, claims


def _int(value: Any) -> int:
    try:
        return int(value)
    except (TypeError, ValueError) as exc:
        raise unauthorized("Invalid token") from exc


# ------------------------------------------------------------------- API keys


def principal_from_api_key(secret: str) -> Principal:
    """Check a key; an unknown, revoked, expired or orphaned key is a 401."""
    key = ApiKey.by_hash(hash_api_key(secret))
    if key is None or not key.is_active:
        raise unauthorized("Invalid or revoked API key")
    if key.expires_at and key.expires_at < utcnow():
        raise unauthorized("API key has expired")
    if not key.user.is_active:
        raise unauthorized("User is disabled")
    allowed = set(SCOPES) if key.user.role == "admin" else set(USER_SCOPES)
    with db.atomic("IMMEDIATE"):
        ApiKey.update(last_used=utcnow(), usage_count=ApiKey.usage_count + 1).where(
            ApiKey.key_id == key.key_id
        ).execute()
    return Principal(key.user, frozenset(set(key.permissions) & allowed), "api_key", api_key=key)


# --------------------------------------------------------------- per request


def _user_scopes(user: User) -> frozenset[str]:
    return frozenset(SCOPES) if user.role == "admin" else USER_SCOPES


def _bearer() -> str | None:
    header = request.headers.get("Authorization", "")
    scheme, _, value = header.partition(" ")
    return value.strip() if scheme.lower() == "bearer" and value.strip() else None


def api_user_account(username: str, password: str) -> User | None:
    """The first active admin when these are the Dubarr ``API_USER``/``API_PASS`` credentials, else None.

    A 401 when they match but no active admin is left to act as.
    """
    cfg = current_app.config
    api_user, api_pass = cfg.get("API_USER") or "", cfg.get("API_PASS") or ""
    if not (
        api_user
        and api_pass
        and hmac.compare_digest(username.encode(), api_user.encode())
        and hmac.compare_digest(password.encode(), api_pass.encode())
    ):
        return None
    admin = User.active_admins().order_by(User.id).first()
    if admin is None:
        raise unauthorized("No active admin account to act as")
    return admin


def principal_from_basic(username: str, password: str) -> Principal:
    """HTTP Basic: Dubarr's ``API_USER``/``API_PASS`` account (acting as the first admin) or a user's password.

    Failures count against the same failed-login limit as ``/auth/login``.
    """
    login_limits.check_login_allowed(username)
    admin = api_user_account(username, password)
    if admin is not None:
        return Principal(admin, frozenset(SCOPES), "basic")
    user = authenticate_password(username, password)
    if user is None:
        login_limits.record_login_failure(username)
        raise unauthorized("Invalid username or password")
    return Principal(user, _user_scopes(user), "basic")


def _is_websocket_handshake() -> bool:
    return request.headers.get("Upgrade", "").lower() == "websocket"


def _principal_from_bearer(token: str) -> Principal:
    """A bearer credential: an API key (``wt_…``) or a JWT."""
    if token.startswith(API_KEY_PREFIX):
        return principal_from_api_key(token)
    user, claims = decode_token(token)
    return Principal(user, _user_scopes(user), "jwt", claims=claims)


def authenticate() -> Principal | None:
    """Resolve the caller from the headers or the session cookie; None when anonymous.

    WebSocket handshakes may also carry ``?token=`` (a JWT or an API key): browsers cannot set headers on them.
    """
    query_token = request.args.get("token", "").strip() if _is_websocket_handshake() else ""
    if query_token:
        return _principal_from_bearer(query_token)
    api_key = request.headers.get("X-API-Key")
    bearer = _bearer()
    basic = request.authorization if request.authorization and request.authorization.type == "basic" else None
    if basic is not None:
        return principal_from_basic(basic.username or "", basic.password or "")
    if api_key:
        return principal_from_api_key(api_key.strip())
    if bearer:
        return _principal_from_bearer(bearer)
    cookie = request.cookies.get(SESSION_COOKIE)
    if cookie:
        user, claims = decode_token(cookie)
        return Principal(user, _user_scopes(user), "cookie", claims=claims)
    return None


def still_valid(principal: Principal) -> bool:
    """True while the credentials a long-lived connection was opened with still hold (re-read from the database)."""
    user = User.get_or_none(User.id == principal.user.id)
    if user is None or not user.is_active:
        return False
    if principal.api_key is not None:
        key = ApiKey.get_or_none(ApiKey.key_id == principal.api_key.key_id)
        return key is not None and key.is_active and not (key.expires_at and key.expires_at < utcnow())
    if principal.claims:
        expired = principal.claims.get("exp", 0) < _epoch(utcnow())
        return not expired and Token.find_live(principal.claims["jti"]) is not None
    return True  # HTTP Basic: the password was checked at the handshake


def current_principal(optional: bool = False) -> Principal | None:
    """The authenticated caller, cached for the request; 401 unless ``optional``."""
    if "principal" not in g:
        g.principal = authenticate() or network_principal()
    if g.principal is None and not optional:
        raise unauthorized()
    return g.principal


def check_csrf(principal: Principal) -> None:
    """Cookie-authenticated requests that change state must echo the CSRF cookie in a header."""
    if principal.via != "cookie" or request.method in ("GET", "HEAD", "OPTIONS"):
        return
    cookie = request.cookies.get(CSRF_COOKIE, "")
    header = request.headers.get(CSRF_HEADER, "")
    if not cookie or not hmac.compare_digest(cookie, header):
        raise AppError(403, "CSRF_FAILED", f"Missing or wrong {CSRF_HEADER} header for a cookie session")


def require(scope: str | None = None) -> Principal:
    """Authenticate the request and check one scope; 401 or 403 otherwise."""
    principal = current_principal()
    check_csrf(principal)
    if scope and scope not in principal.scopes:
        if scope == "admin":
            raise AppError(403, "FORBIDDEN", "Administrator access required")
        raise AppError(403, "INSUFFICIENT_SCOPE", f"This API key lacks the {scope!r} permission")
    if principal.via == "network":
        _audit_network_request(principal)
    return principal


def login_required(scope: str | None = None) -> Callable:
    """Route decorator: authenticate, check ``scope``, and put the user in ``g.user``."""

    def decorator(view: Callable) -> Callable:
        @wraps(view)
        def wrapped(*args: Any, **kwargs: Any) -> Any:
            principal = require(scope)
            g.user = principal.user
            if principal.user.role == "admin" and not principal.is_admin:
                # An admin's key without the admin scope sees only the admin's own jobs and files:
                # services decide visibility by role, so the role is lowered for this request only.
                g.user = User.get_by_id(principal.user.id)
                g.user.role = "user"
            return view(*args, **kwargs)

        return wrapped

    return decorator


admin_required = login_required("admin")


def require_session() -> Principal:
    """Authenticate a signed-in user (JWT or cookie): API keys may not manage accounts or keys."""
    principal = require()
    if principal.api_key is not None:
        raise AppError(403, "FORBIDDEN", "API keys cannot manage accounts or API keys; sign in as the user")
    return principal


# ------------------------------------------- trusted networks: dialects whose documents define no auth

NETWORK_SCOPES = frozenset({"jobs:read", "jobs:create", "export:download"})
_OPEN_BLUEPRINTS: set[str] = set()
_READS = ("GET", "HEAD", "OPTIONS")


def open_to_anonymous_networks(bp: Blueprint) -> Blueprint:
    """Let callers from ``ANONYMOUS_NETWORKS`` use ``bp``'s routes without credentials (one line per dialect).

    Only for dialects whose API documents define no authentication, so their clients send none.
    """
    _OPEN_BLUEPRINTS.add(bp.name)
    return bp


def from_anonymous_network() -> bool:
    """True when the client address (after ``TRUSTED_PROXIES``) is in one of ``ANONYMOUS_NETWORKS``."""
    networks = current_app.config.get("ANONYMOUS_NETWORKS") or ()
    if not networks:
        return False
    try:
        address = ipaddress.ip_address(request.remote_addr or "")
    except ValueError:
        return False
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped:
        address = address.ipv4_mapped  # a dual-stack socket reports IPv4 clients as ::ffff:a.b.c.d
    return any(address in network for network in networks)


def network_principal() -> Principal | None:
    """The service principal for a credential-less request to an opened dialect from a trusted network."""
    if request.blueprint not in _OPEN_BLUEPRINTS or not from_anonymous_network():
        return None

    user = users.network_service_user()
    return None if user is None else Principal(user, NETWORK_SCOPES, "network")


def _audit_network_request(principal: Principal) -> None:
    # One row per request that changes something (an upload, a job), not per status poll or download,
    # so that polling clients do not flood the audit log; it runs after the rate limits let the request in.
    if request.method in _READS or g.get("network_audited"):
        return

    g.network_audited = True
    users.record_anonymous_request(principal.user, request.remote_addr, request.method, request.path)
