"""Authentication routes: log in and out, and who am I."""

from __future__ import annotations

import secrets

from flask import Blueprint, current_app, jsonify

from app.errors import AppError
from app.models import AuditLog, Token, utcnow
from app.security import (
    CSRF_COOKIE,
    SESSION_COOKIE,
    authenticate_password,
    issue_token,
    login_required,
    require,
)
from app.validation import form_or_json

bp = Blueprint("auth", __name__, url_prefix="/auth")


def login_response(data: dict) -> tuple:
    """Check credentials and answer with a token, the session cookie and the CSRF cookie."""
    from flask import request

    username = data.get("username")
    password = data.get("password")
    if not isinstance(username, str) or not isinstance(password, str) or not username or not password:
        raise AppError(422, "MISSING_CREDENTIALS", "username and password are required")
    user = authenticate_password(username, password)
    if user is None:
        AuditLog.record("login_failed", username=username[:150], ip=request.remote_addr)
        raise AppError(401, "INVALID_CREDENTIALS", "Incorrect username or password")
    AuditLog.record("login", user=user, ip=request.remote_addr)
    token = issue_token(user)
    body = {**token, "user": {"id": str(user.id), "username": user.username, "email": user.email}}
    response = jsonify(body)
    secure = current_app.config["ENV"] == "production"
    response.set_cookie(SESSION_COOKIE, token["access_token"], max_age=token["expires_in"], httponly=True,
                        samesite="Lax", secure=secure)
    response.set_cookie(CSRF_COOKIE, secrets.token_urlsafe(24), max_age=token["expires_in"], httponly=False,
                        samesite="Lax", secure=secure)
    return response, 200


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
        Token.update(revoked_at=utcnow()).where(Token.jti == jti).execute()
    response = jsonify({"message": "Successfully logged out"})
    response.delete_cookie(SESSION_COOKIE)
    response.delete_cookie(CSRF_COOKIE)
    return response


@bp.get("/me")
@login_required()
def me():
    """The current user."""
    from flask import g

    return jsonify(g.user.to_dict())
