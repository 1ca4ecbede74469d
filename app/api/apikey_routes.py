"""API key routes (the full API): create, list and revoke the caller's keys."""

from __future__ import annotations

from flask import Blueprint, jsonify, request

from app.security import require_session
from app.services import apikeys
from app.validation import json_body

bp = Blueprint("apikeys", __name__, url_prefix="/api/api-keys")


@bp.post("/")
def create_key():
    """Create a key: ``name``, ``permissions``, ``expires_days``, ``rate_limit``; the secret is shown once."""
    principal = require_session()
    data = json_body()
    key, secret = apikeys.create_key(
        principal,
        data.get("name"),
        data.get("permissions"),
        data.get("expires_days"),
        data.get("rate_limit"),
        ip=request.remote_addr,
    )
    body = apikeys.key_dict(key)
    return jsonify(
        {
            "key_id": key.key_id,
            "api_key": secret,
            "name": key.name,
            "permissions": key.permissions,
            "expires_at": body["expires_at"],
            "rate_limit": body["rate_limit"],
            "message": "API key created successfully. Store this key securely - it cannot be retrieved again.",
        }
    ), 201


@bp.get("/")
def list_keys():
    """The caller's keys without their secrets; admins may add ``?all=true`` for every user's."""
    principal = require_session()
    everyone = request.args.get("all", "").lower() in ("1", "true", "yes")
    keys = apikeys.list_keys(principal, everyone=everyone)
    return jsonify({"api_keys": [apikeys.key_dict(k, with_owner=everyone and principal.is_admin) for k in keys]})


@bp.delete("/<key_id>")
def revoke_key(key_id: str):
    """Revoke one of the caller's keys (admins: anyone's)."""
    principal = require_session()
    key = apikeys.revoke_key(principal, key_id, ip=request.remote_addr)
    return jsonify({"message": "API key revoked", "key_id": key.key_id, "is_active": False})
