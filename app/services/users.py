"""User accounts: creation and registration, passwords, admin management with its last-admin guard, audit."""

from __future__ import annotations

import logging
import secrets
import sys
from collections.abc import Mapping
from datetime import datetime
from typing import Any

from peewee import IntegrityError

from app.errors import AppError, not_found
from app.models import AuditLog, Token, User, db, isoformat
from app.services.credentials import hash_password, verify_password

log = logging.getLogger(__name__)
MIN_PASSWORD = 8
MAX_PASSWORD = 1024  # argon2 hashes anything, but nobody needs more and long inputs cost CPU
ROLES = ("user", "admin")
NETWORK_USERNAME = "anonymous-network"  # who callers from WT_ANONYMOUS_NETWORKS act as
NO_LOGIN_HASH = "!no-login"  # not an argon2 hash: no password ever verifies against it
_UNSET: Any = object()


# ------------------------------------------------------------------ validation


def _username(value: Any) -> str:
    name = value.strip() if isinstance(value, str) else ""
    if not name or len(name) > 150 or not name.isprintable():
        raise AppError(422, "INVALID_USERNAME", "username is required: printable text of at most 150 characters")
    return name


def _password(value: Any, field: str = "password") -> str:
    if not isinstance(value, str) or len(value) < MIN_PASSWORD:
        raise AppError(422, "WEAK_PASSWORD", f"{field} must be at least {MIN_PASSWORD} characters")
    if len(value) > MAX_PASSWORD:
        raise AppError(422, "INVALID_PASSWORD", f"{field} must be at most {MAX_PASSWORD} characters")
    return value


def _email(value: Any) -> str | None:
    if value is None or value == "":
        return None
    if not isinstance(value, str):
        value = ""
    local, _, domain = value.partition("@")
    if len(value) > 254 or not local or not domain or "@" in domain or any(c.isspace() for c in value):
        raise AppError(422, "INVALID_EMAIL", "email must be an address such as user@example.com")
    return value


def _role(value: Any) -> str:
    if value not in ROLES:
        raise AppError(422, "INVALID_ROLE", "role must be 'user' or 'admin'")
    return value


# -------------------------------------------------------------------- accounts


def create_user(username: Any, password: Any, email: Any = None, role: Any = "user") -> User:
    """Create an account; 422 for bad fields or a short password, 409 when the name is taken (any case)."""
    username, password, email, role = _username(username), _password(password), _email(email), _role(role)
    password_hash = hash_password(password)  # slow on purpose: outside the write lock
    try:
        with db.atomic("IMMEDIATE"):
            if User.name_taken(username):
                raise AppError(409, "USER_EXISTS", f"User {username!r} already exists")
            return User.create(username=username, email=email, password_hash=password_hash, role=role)
    except IntegrityError as exc:
        raise AppError(409, "USER_EXISTS", f"User {username!r} already exists") from exc


def register_user(
    cfg: Mapping[str, Any], username: Any, password: Any, email: Any = None, *, ip: str | None = None
) -> User:
    """Self-service sign-up: 403 unless ALLOW_REGISTRATION; always the plain user role."""
    if not cfg.get("ALLOW_REGISTRATION"):
        raise AppError(403, "REGISTRATION_DISABLED", "Registration is disabled on this server")
    user = create_user(username, password, email)
    AuditLog.record("register", user=user, ip=ip)
    return user


def change_password(
    user: User, current_password: Any, new_password: Any, *, keep_jti: str | None = None, ip: str | None = None
) -> None:
    """Check the current password, store the new one and revoke every other token of the user."""
    new_password = _password(new_password, "new_password")
    if not isinstance(current_password, str) or not verify_password(user.password_hash, current_password):
        AuditLog.record("password_change_failed", user=user, ip=ip)
        raise AppError(400, "INVALID_PASSWORD", "current_password is incorrect")
    if new_password == current_password:
        raise AppError(422, "SAME_PASSWORD", "new_password must differ from current_password")
    _set_password(user, new_password, keep_jti=keep_jti)
    AuditLog.record("password_changed", user=user, ip=ip)


def _set_password(user: User, password: str, *, keep_jti: str | None = None) -> None:
    password_hash = hash_password(password)
    with db.atomic("IMMEDIATE"):
        User.update(password_hash=password_hash).where(User.id == user.id).execute()
        Token.revoke_for_user(user, keep_jti=keep_jti)
    user.password_hash = password_hash


# -------------------------------------------------------------- administration


def get_user(user_id: Any) -> User:
    """The user with this id, or 404."""
    try:
        user = User.get_or_none(User.id == int(user_id))
    except (TypeError, ValueError):
        user = None
    if user is None:
        raise not_found("User")
    return user


def list_users(limit: int = 50, offset: int = 0) -> tuple[list[User], int]:
    """A page of users in creation order, and how many there are."""
    query = User.select().order_by(User.id)
    return list(query.limit(limit).offset(offset)), query.count()


def admin_create_user(actor: User, data: Mapping[str, Any], *, ip: str | None = None) -> User:
    """An admin creates an account with any role."""
    user = create_user(data.get("username"), data.get("password"), data.get("email"), data.get("role", "user"))
    AuditLog.record(
        "admin_user_created", user=actor, target=str(user.id), ip=ip, username_created=user.username, role=user.role
    )
    return user


def _guard_last_admin(user: User, role: str, is_active: bool) -> None:
    """409 when the change would leave no active admin. Call inside the write transaction."""
    losing_admin = user.role == "admin" and user.is_active and (role != "admin" or not is_active)
    if losing_admin and not User.active_admins().where(User.id != user.id).exists():
        raise AppError(409, "LAST_ADMIN", "The last active admin cannot be removed, disabled or demoted")


def update_user(
    actor: User,
    user_id: Any,
    *,
    role: Any = _UNSET,
    is_active: Any = _UNSET,
    email: Any = _UNSET,
    password: Any = _UNSET,
    ip: str | None = None,
) -> User:
    """Change a user's role, active flag, email or password; disabling or a new password revokes their tokens."""
    changes: dict[str, Any] = {}
    if role is not _UNSET:
        changes["role"] = _role(role)
    if is_active is not _UNSET:
        if not isinstance(is_active, bool):
            raise AppError(422, "INVALID_FIELD", "is_active must be true or false")
        changes["is_active"] = is_active
    if email is not _UNSET:
        changes["email"] = _email(email)
    if password is not _UNSET:
        changes["password_hash"] = hash_password(_password(password))
    if not changes:
        raise AppError(422, "NO_CHANGES", "Give at least one of role, is_active, email, password")
    with db.atomic("IMMEDIATE"):
        user = get_user(user_id)  # read inside the lock, so two admins cannot demote each other at once
        _guard_last_admin(user, changes.get("role", user.role), changes.get("is_active", user.is_active))
        User.update(**changes).where(User.id == user.id).execute()
        if changes.get("is_active") is False or "password_hash" in changes:
            Token.revoke_for_user(user)
    detail = {k: v for k, v in changes.items() if k != "password_hash"}
    if "password_hash" in changes:
        detail["password_reset"] = True
    AuditLog.record("admin_user_updated", user=actor, target=str(user.id), ip=ip, **detail)
    return get_user(user.id)


def delete_user(actor: User, user_id: Any, *, ip: str | None = None) -> None:
    """Delete an account with its tokens and API keys (its jobs stay, visible to admins)."""
    with db.atomic("IMMEDIATE"):
        user = get_user(user_id)
        _guard_last_admin(user, "user", False)
        user.delete_instance()
    AuditLog.record("admin_user_deleted", user=actor, target=str(user.id), ip=ip, username_deleted=user.username)


# ----------------------------------------------------------------------- audit


def audit_entry(entry: AuditLog) -> dict[str, Any]:
    """The public view of one audit entry."""
    return {
        "id": entry.id,
        "at": isoformat(entry.at),
        "action": entry.action,
        "user_id": None if entry.user_id is None else str(entry.user_id),
        "username": entry.username,
        "target": entry.target,
        "ip": entry.ip,
        "detail": entry.detail,
    }


def audit_page(
    *, action: str | None = None, user_id: Any = None, since: datetime | None = None, limit: int = 50, offset: int = 0
) -> tuple[list[AuditLog], int]:
    """A page of the audit log, newest first, and the total that match."""
    if user_id not in (None, ""):
        try:
            user_id = int(user_id)
        except (TypeError, ValueError) as exc:
            raise AppError(400, "INVALID_PARAMETER", "user_id must be an integer") from exc
    query = AuditLog.search(action=action or None, user_id=user_id or None, since=since)
    return list(query.limit(limit).offset(offset)), query.count()


# ------------------------------------------------- the service account of WT_ANONYMOUS_NETWORKS


def network_service_user() -> User | None:
    """The account that credential-less callers from trusted networks act as, created on first use.

    None (so those callers get a 401) when an admin disabled it, or when the name belongs to an
    account that can log in or is an admin: anonymous callers must never borrow a real account.
    """
    user = User.by_username(NETWORK_USERNAME)
    if user is None and not User.name_taken(NETWORK_USERNAME):
        try:
            with db.atomic("IMMEDIATE"):
                user = User.create(username=NETWORK_USERNAME, password_hash=NO_LOGIN_HASH, role="user")
            AuditLog.record("service_user_created", user=user)
        except IntegrityError:  # a concurrent request created it first
            user = User.by_username(NETWORK_USERNAME)
    if user is None or user.password_hash != NO_LOGIN_HASH or user.role != "user":
        log.warning(
            "anonymous network access refused: the account %r is not the no-login service account; "
            "rename that user or clear WT_ANONYMOUS_NETWORKS",
            NETWORK_USERNAME,
        )
        return None
    return user if user.is_active else None


def record_anonymous_request(user: User, ip: str | None, method: str, path: str) -> None:
    """Audit one credential-less request from a trusted network."""
    AuditLog.record("anonymous_request", user=user, target=path, ip=ip, method=method)


# ------------------------------------------------------------------- bootstrap


def bootstrap_admin(cfg: Mapping[str, Any]) -> None:
    """Create the first admin when there is none; print a generated password exactly once."""
    with db.connection_context():
        if User.select().where(User.role == "admin").exists():
            return
        password = cfg.get("ADMIN_PASSWORD")
        generated = not password
        if generated:
            password = secrets.token_urlsafe(12)
        try:
            create_user(cfg["ADMIN_USERNAME"], password, role="admin")
        except AppError as exc:
            if exc.status == 409:  # another process created it first
                return
            raise
    if generated:
        # Printed once, on the console that started the service; only the hash is stored.
        print(f"\n  Admin account created: {cfg['ADMIN_USERNAME']} / {password}\n", file=sys.stderr, flush=True)
