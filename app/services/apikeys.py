"""API keys: create (the secret is shown once, only its hash is kept), list, revoke."""

from __future__ import annotations

import secrets
from datetime import timedelta
from typing import Any

from app.errors import AppError, not_found
from app.models import ApiKey, AuditLog, db, isoformat, utcnow
from app.services.credentials import SCOPES, Principal, hash_api_key, new_api_key

MAX_EXPIRES_DAYS = 3650
MAX_PER_MINUTE = 100_000
MAX_DAILY_QUOTA = 100_000_000


def _int_field(value: Any, name: str, hi: int) -> int | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= hi:
        raise AppError(422, "INVALID_FIELD", f"{name} must be an integer from 1 to {hi}, or null")
    return value


def _name(value: Any) -> str:
    name = value.strip() if isinstance(value, str) else ""
    if not name or len(name) > 200:
        raise AppError(422, "INVALID_FIELD", "name is required: text of at most 200 characters")
    return name


def _permissions(value: Any, principal: Principal) -> list[str]:
    if not isinstance(value, list) or not value or not all(isinstance(p, str) for p in value):
        raise AppError(422, "INVALID_FIELD", f"permissions must be a non-empty list drawn from {', '.join(SCOPES)}")
    unknown = sorted(set(value) - set(SCOPES))
    if unknown:
        raise AppError(
            422, "INVALID_PERMISSION", f"Unknown permission(s) {', '.join(unknown)}; choose from {', '.join(SCOPES)}"
        )
    beyond = sorted(set(value) - principal.scopes)
    if beyond:
        raise AppError(403, "FORBIDDEN", f"You cannot grant permissions you do not have: {', '.join(beyond)}")
    return list(dict.fromkeys(value))


def create_key(
    principal: Principal,
    name: Any,
    permissions: Any,
    expires_days: Any = None,
    rate_limit: Any = None,
    *,
    ip: str | None = None,
) -> tuple[ApiKey, str]:
    """A new key for the caller and its secret (the only time the secret exists outside the caller)."""
    name = _name(name)
    permissions = _permissions(permissions, principal)
    days = _int_field(expires_days, "expires_days", MAX_EXPIRES_DAYS)
    if rate_limit is None:
        rate_limit = {}
    if not isinstance(rate_limit, dict):
        raise AppError(422, "INVALID_FIELD", "rate_limit must be an object with requests_per_minute and daily_quota")
    per_minute = _int_field(rate_limit.get("requests_per_minute"), "rate_limit.requests_per_minute", MAX_PER_MINUTE)
    daily = _int_field(rate_limit.get("daily_quota"), "rate_limit.daily_quota", MAX_DAILY_QUOTA)
    secret, preview = new_api_key()
    with db.atomic("IMMEDIATE"):
        key = ApiKey.create(
            key_id=f"key_{secrets.token_hex(8)}",
            user=principal.user,
            name=name,
            secret_hash=hash_api_key(secret),
            preview=preview,
            permissions=permissions,
            expires_at=utcnow() + timedelta(days=days) if days else None,
            requests_per_minute=per_minute,
            daily_quota=daily,
        )
    AuditLog.record(
        "api_key_created",
        user=principal.user,
        target=key.key_id,
        ip=ip,
        name=name,
        permissions=permissions,
        expires_days=days,
    )
    return key, secret


def key_dict(key: ApiKey, *, with_owner: bool = False) -> dict[str, Any]:
    """The public view of a key: never the secret."""
    body = {
        "key_id": key.key_id,
        "name": key.name,
        "key_preview": key.preview,
        "permissions": key.permissions,
        "created_at": isoformat(key.created_at),
        "expires_at": isoformat(key.expires_at),
        "last_used": isoformat(key.last_used),
        "usage_count": key.usage_count,
        "is_active": key.is_active and not (key.expires_at and key.expires_at < utcnow()),
        "rate_limit": {"requests_per_minute": key.requests_per_minute, "daily_quota": key.daily_quota},
    }
    if with_owner:
        body["user_id"] = str(key.user_id)
        body["username"] = key.user.username
    return body


def list_keys(principal: Principal, everyone: bool = False) -> list[ApiKey]:
    """The caller's keys, newest first; every user's for an admin who asks for ``everyone``."""
    return list(ApiKey.visible_to(principal.user, everyone=everyone and principal.is_admin))


def get_key(principal: Principal, key_id: str) -> ApiKey:
    """A key the caller owns (or any, for an admin); 404 otherwise, never 403."""
    key = ApiKey.visible_to(principal.user, everyone=principal.is_admin).where(ApiKey.key_id == key_id).first()
    if key is None:
        raise not_found("API key")
    return key


def revoke_key(principal: Principal, key_id: str, *, ip: str | None = None) -> ApiKey:
    """Deactivate a key for good; revoking twice is harmless."""
    key = get_key(principal, key_id)
    with db.atomic("IMMEDIATE"):
        ApiKey.update(is_active=False).where(ApiKey.key_id == key.key_id).execute()
    key.is_active = False
    AuditLog.record("api_key_revoked", user=principal.user, target=key.key_id, ip=ip, owner_id=key.user_id)
    return key
