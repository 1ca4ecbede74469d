"""Credentials without the web: scopes, who a caller is, password hashes and API key secrets.

Flask-free, so services (users, API keys) use it without importing request handling (app/security.py).
"""

from __future__ import annotations

import hashlib
import secrets
from dataclasses import dataclass, field
from typing import Any

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError

from app.models import ApiKey, User

SCOPES = ("jobs:read", "jobs:create", "jobs:delete", "export:download", "admin")
USER_SCOPES = frozenset(SCOPES) - {"admin"}
API_KEY_PREFIX = "wt_"

_hasher = PasswordHasher()


@dataclass
class Principal:
    """Who is calling, how, and what they may do."""

    user: User
    scopes: frozenset[str]
    via: str  # "jwt", "cookie", "api_key", "basic" or "network" (no credentials, a trusted network)
    api_key: ApiKey | None = None
    claims: dict[str, Any] = field(default_factory=dict)

    @property
    def is_admin(self) -> bool:
        """True for an admin user (and, for keys, only with the admin scope)."""
        return self.user.role == "admin" and "admin" in self.scopes


# ------------------------------------------------------------------ passwords


def hash_password(password: str) -> str:
    """An argon2id hash."""
    return _hasher.hash(password)


def verify_password(password_hash: str, password: str) -> bool:
    """True when the password matches the hash."""
    try:
        return _hasher.verify(password_hash, password)
    except (VerificationError, InvalidHashError):
        return False


def authenticate_password(username: str, password: str) -> User | None:
    """The active user with these credentials, or None."""
    user = User.by_username(username or "")
    if user is None:
        _hasher.hash("timing-equaliser")  # answer as slowly as for a real user
        return None
    # Verify before looking at is_active, so a disabled account answers as slowly as any other.
    if not verify_password(user.password_hash, password or "") or not user.is_active:
        return None
    return user


# ------------------------------------------------------------------- API keys


def hash_api_key(secret: str) -> str:
    """SHA-256 of a key: keys are long and random, so a fast hash is enough."""
    return hashlib.sha256(secret.encode()).hexdigest()


def new_api_key() -> tuple[str, str]:
    """A fresh key and its preview: ``wt_<random>`` and ``wt_****_<last four>``."""
    secret = API_KEY_PREFIX + secrets.token_urlsafe(32)
    return secret, f"{API_KEY_PREFIX}****_****_{secret[-4:]}"
