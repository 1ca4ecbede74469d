"""Authentication routes: register, log in and out, who am I, change password."""

from __future__ import annotations

import logging
import secrets
from typing import Any

import peewee
from flask import Blueprint, current_app, g, jsonify, request

from app import login_limits
from app.errors import AppError
from app.models import AuditLog, Token
from app.security import (
    CSRF_COOKIE,
    SESSION_COOKIE,
    api_user_account,
    authenticate_password,
    issue_token,
    login_required,
    require,
    require_session,
)
from app.services import users
from app.validation import form_or_json, json_body

bp = Blueprint("auth", __name__, url_prefix="/auth")
log = logging.getLogger(__name__)


def _audit(action: str, **fields: Any) -> None:
    """Record a login in the audit log; when that write fails (a full disk), log it and let the login go on."""
    try:
        AuditLog.record(action, **fields)
    except (peewee.DatabaseError, OSError) as exc:
        user = fields.get("user")
        log.warning(
            "audit log write failed (%s): %s for %s from %s",
            exc,
            action,
            getattr(user, "username", None) or fields.get("username"),
            fields.get("ip"),
        )


def login_response(data: dict) -> tuple:
    """Check credentials and answer with a token, the session cookie and the CSRF cookie."""
    username = data.get("username")
    password = data.get("password")
    if not isinstance(username, str) or not isinstance(password, str) or not username or not password:
        raise AppError(422, "MISSING_CREDENTIALS", "username and password are required")
    login_limits.check_login_allowed(username)
    # The Dubarr API_USER account signs in too, as the admin it acts as over Basic, and so sees its tasks.
    as_api_user = api_user_account(username, password)
    user = as_api_user or authenticate_password(username, password)
    if user is None:
        login_limits.record_login_failure(username)
        _audit("login_failed", username=username[:150], ip=request.remote_addr)
        raise AppError(401, "INVALID_CREDENTIALS", "Incorrect username or password")
    _audit("login", user=user, ip=request.remote_addr, **({"via": "API_USER"} if as_api_user else {}))
    token = issue_token(user)
    body = {**token, "user": {"id": str(user.id), "username": user.username, "email": user.email}}
    response = jsonify(body)
    # Home LANs are mostly plain HTTP; a Secure cookie would make the browser drop the session there.
    secure = bool(current_app.config["COOKIE_SECURE"])
    response.set_cookie(
        SESSION_COOKIE, token["access_token"], max_age=token["expires_in"], httponly=True, samesite="Lax", secure=secure
    )
    response.set_cookie(
        CSRF_COOKIE,
        secrets.token_urlsafe(24),
        max_age=token["expires_in"],
        httponly=False,
        samesite="Lax",
        secure=secure,
    )
    return response, 200


@bp.post("/register")
def register():
    """Create an account (only when ALLOW_REGISTRATION is on)."""
    data = form_or_json()
    user = users.register_user(
        current_app.config, data.get("username"), data.get("password"), data.get("email"), ip=request.remote_addr
    )
    return jsonify({"message": "User registered successfully", "user_id": str(user.id), "username": user.username}), 201


@bp.post("/login")
def login():
    """Exchange username and password for a bearer token (JSON or form)."""
    return login_response(form_or_json())


@bp.post("/logout")
def logout():
    """Revoke the token used for this request and clear the cookies."""
    principal = require()
    jti = principal.claims.get("jti")
    if jti:
        Token.revoke(jti)
        AuditLog.record("logout", user=principal.user, ip=request.remote_addr)
    response = jsonify({"message": "Successfully logged out"})
    response.delete_cookie(SESSION_COOKIE)
    response.delete_cookie(CSRF_COOKIE)
    return response


@bp.get("/me")
@login_required()
def me():
    """The current user."""
    return jsonify(g.user.to_dict())


@bp.post("/change-password")
def change_password():
    """Replace the password (``current_password``, ``new_password``); other sessions are signed out."""
    principal = require_session()
    data = json_body()
    users.change_password(
        principal.user,
        data.get("current_password"),
        data.get("new_password"),
        keep_jti=principal.claims.get("jti"),
        ip=request.remote_addr,
    )
    return jsonify({"message": "Password changed successfully"})
