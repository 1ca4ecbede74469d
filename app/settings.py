"""Settings: defaults from ``config/defaults.py``, then a config file, then the environment, then overrides.

The web app and the workers both call :func:`load_settings`, so they always agree on paths.
"""

from __future__ import annotations

import os
import runpy
import secrets
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
DEFAULTS_FILE = ROOT / "config" / "defaults.py"

# Environment variable -> setting. The seed documents use the bare names.
ENV_NAMES = {
    "WT_ENV": "ENV",
    "WT_DATA_DIR": "DATA_DIR",
    "WT_MODELS_DIR": "MODELS_DIR",
    "WT_HOST": "HOST",
    "WT_PORT": "PORT",
    "SECRET_KEY": "SECRET_KEY",
    "WT_JWT_EXPIRES_SECONDS": "JWT_EXPIRES_SECONDS",
    "WT_ADMIN_USERNAME": "ADMIN_USERNAME",
    "WT_ADMIN_PASSWORD": "ADMIN_PASSWORD",
    "ALLOW_REGISTRATION": "ALLOW_REGISTRATION",
    "ENABLE_SERVER_CONTROL": "ENABLE_SERVER_CONTROL",
    "WT_MAX_CONTENT_LENGTH": "MAX_CONTENT_LENGTH",
    "MAX_CONTENT_LENGTH": "MAX_CONTENT_LENGTH",
    "WT_MAX_CHUNK_SIZE": "MAX_CHUNK_SIZE",
    "WT_CHUNK_SESSION_TTL_SECONDS": "CHUNK_SESSION_TTL_SECONDS",
    "WT_MAX_UPLOAD_SESSIONS_PER_USER": "MAX_UPLOAD_SESSIONS_PER_USER",
    "WT_MAX_MEDIA_SECONDS": "MAX_MEDIA_SECONDS",
    "WT_FFMPEG_TIMEOUT_SECONDS": "FFMPEG_TIMEOUT_SECONDS",
    "WT_DEFAULT_MODEL": "DEFAULT_MODEL",
    "WT_ENGINE_THREADS": "ENGINE_THREADS",
    "WT_WORKERS": "WORKERS",
    "WT_MAX_ATTEMPTS": "MAX_ATTEMPTS",
    "WT_QUEUE_POLL_SECONDS": "QUEUE_POLL_SECONDS",
    "WT_RATELIMIT_STORAGE_URI": "RATELIMIT_STORAGE_URI",
    "WT_RATELIMIT_ENABLED": "RATELIMIT_ENABLED",
    "WT_RATELIMIT_ANON": "RATELIMIT_ANON",
    "WT_RATELIMIT_USER": "RATELIMIT_USER",
    "WT_RATELIMIT_ADMIN": "RATELIMIT_ADMIN",
    "WT_RATELIMIT_CHUNKS": "RATELIMIT_CHUNKS",
    "WT_RATELIMIT_LOGIN_FAILURES": "RATELIMIT_LOGIN_FAILURES",
    "WT_RATELIMIT_VOXIS": "RATELIMIT_VOXIS",
    "WT_TRUSTED_PROXIES": "TRUSTED_PROXIES",
    "WT_OPENAI_TIMEOUT_SECONDS": "OPENAI_TIMEOUT_SECONDS",
    "OPENAI_API_KEY": "OPENAI_API_KEY",
    "OPENAI_BASE_URL": "OPENAI_BASE_URL",
    "OPENAI_MODEL": "OPENAI_MODEL",
    "WT_ANALYSIS_TIMEOUT_SECONDS": "ANALYSIS_TIMEOUT_SECONDS",
    "WT_BREAKER_FAIL_MAX": "BREAKER_FAIL_MAX",
    "WT_BREAKER_RESET_SECONDS": "BREAKER_RESET_SECONDS",
    "WT_SIDECAR_OVERWRITE": "SIDECAR_OVERWRITE",
    "WT_MEDIA_ROOTS": "MEDIA_ROOTS",
    "WT_COOKIE_SECURE": "COOKIE_SECURE",
    "WT_WATCH_DIRS": "WATCH_DIRS",
    "API_USER": "API_USER",
    "API_PASS": "API_PASS",
}
MIN_SECRET_LENGTH = 32


def _coerce(value: str, default: Any) -> Any:
    """Parse an environment string into the type of the default it overrides."""
    if isinstance(default, bool):
        return value.strip().lower() in {"1", "true", "yes", "on"}
    if isinstance(default, int):
        return int(value)
    if isinstance(default, float):
        return float(value)
    return value


def load_settings(overrides: dict[str, Any] | None = None) -> dict[str, Any]:
    """Combine defaults, ``WT_CONFIG`` file, environment and ``overrides`` into one dict."""
    settings = {k: v for k, v in runpy.run_path(str(DEFAULTS_FILE)).items() if k.isupper()}
    config_file = os.environ.get("WT_CONFIG")
    if config_file:
        settings.update({k: v for k, v in runpy.run_path(config_file).items() if k.isupper()})
    for env_name, key in ENV_NAMES.items():
        if env_name in os.environ:
            settings[key] = _coerce(os.environ[env_name], settings.get(key))
    settings.update(overrides or {})
    data_dir = Path(settings["DATA_DIR"]).expanduser().resolve()
    settings["DATA_DIR"] = str(data_dir)
    settings["MODELS_DIR"] = str(Path(settings["MODELS_DIR"] or data_dir / "models").expanduser().resolve())
    return settings


def ensure_secret_key(settings: dict[str, Any]) -> str:
    """Return the configured secret, or one generated once and kept under the data dir."""
    if settings.get("SECRET_KEY"):
        return settings["SECRET_KEY"]
    path = Path(settings["DATA_DIR"]) / "secret_key"
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        except FileExistsError:  # another process won the race; use its key
            pass
        else:
            with os.fdopen(fd, "w") as f:
                f.write(secrets.token_urlsafe(48))
    return path.read_text().strip()
