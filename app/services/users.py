"""User accounts: the bootstrap admin and account creation."""

from __future__ import annotations

import logging
import secrets
import sys
from collections.abc import Mapping
from typing import Any

from peewee import IntegrityError

from app.errors import AppError
from app.models import User, db
from app.security import hash_password

log = logging.getLogger(__name__)
MIN_PASSWORD = 8


def create_user(username: str, password: str, email: str | None = None, role: str = "user") -> User:
    """Create an account; 422 for a short password or bad role, 409 when the name is taken."""
    username = (username or "").strip()
    if not username or len(username) > 150:
        raise AppError(422, "INVALID_USERNAME", "username is required (at most 150 characters)")
    if not isinstance(password, str) or len(password) < MIN_PASSWORD:
        raise AppError(422, "WEAK_PASSWORD", f"password must be at least {MIN_PASSWORD} characters")
    if role not in ("user", "admin"):
        raise AppError(422, "INVALID_ROLE", "role must be 'user' or 'admin'")
    try:
        with db.atomic("IMMEDIATE"):
            return User.create(username=username, email=email, password_hash=hash_password(password), role=role)
    except IntegrityError as exc:
        raise AppError(409, "USER_EXISTS", f"User {username!r} already exists") from exc


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
