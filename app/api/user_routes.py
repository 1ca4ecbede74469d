"""Administration of accounts and the audit log: every route here is admin only."""

from __future__ import annotations

from flask import Blueprint, g, jsonify, request

from app.security import admin_required
from app.services import users
from app.validation import datetime_arg, int_arg, json_body

bp = Blueprint("admin_users", __name__, url_prefix="/admin")
_EDITABLE = ("role", "is_active", "email", "password")


@bp.get("/users")
@admin_required
def list_users():
    """Every account, in creation order: ``limit``, ``offset``."""
    limit = int_arg("limit", 50, 1, 500)
    offset = int_arg("offset", 0, 0, 10**9)
    found, total = users.list_users(limit, offset)
    return jsonify({"users": [u.to_dict() for u in found], "total": total, "limit": limit, "offset": offset})


@bp.post("/users")
@admin_required
def create_user():
    """Create an account: ``username``, ``password``, ``email``, ``role``."""
    user = users.admin_create_user(g.user, json_body(), ip=request.remote_addr)
    return jsonify(user.to_dict()), 201


@bp.get("/users/<user_id>")
@admin_required
def get_user(user_id: str):
    """One account."""
    return jsonify(users.get_user(user_id).to_dict())


@bp.patch("/users/<user_id>")
@admin_required
def update_user(user_id: str):
    """Change ``role``, ``is_active``, ``email`` or reset the ``password``; the last admin stays an admin."""
    data = json_body()
    changes = {name: data[name] for name in _EDITABLE if name in data}
    user = users.update_user(g.user, user_id, ip=request.remote_addr, **changes)
    return jsonify(user.to_dict())


@bp.delete("/users/<user_id>")
@admin_required
def delete_user(user_id: str):
    """Delete an account with its tokens and keys; never the last active admin."""
    users.delete_user(g.user, user_id, ip=request.remote_addr)
    return jsonify({"message": "User deleted", "user_id": str(user_id)})


@bp.get("/audit")
@admin_required
def audit():
    """The audit log, newest first: ``limit``, ``offset``, ``action``, ``user_id``, ``since``."""
    limit = int_arg("limit", 50, 1, 500)
    offset = int_arg("offset", 0, 0, 10**9)
    entries, total = users.audit_page(
        action=request.args.get("action"),
        user_id=request.args.get("user_id"),
        since=datetime_arg("since"),
        limit=limit,
        offset=offset,
    )
    return jsonify(
        {"entries": [users.audit_entry(e) for e in entries], "total": total, "limit": limit, "offset": offset}
    )
