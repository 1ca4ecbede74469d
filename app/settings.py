"""Settings: defaults from ``config/defaults.py``, then a config file, then the environment, then overrides.

The web app and the workers both call :func:`load_settings`, so they always agree on paths.
"""

from __future__ import annotations

import ipaddress
import logging
import os
import re
import runpy
import secrets
import socket
from collections.abc import Iterable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
DEFAULTS_FILE = ROOT / "config" / "defaults.py"

# Environment variable -> setting. The API documents (legacy, Dubarr, ...) use the bare names.
ENV_NAMES = {
    "WT_ENV": "ENV",
    "WT_DATA_DIR": "DATA_DIR",
    "WT_MODELS_DIR": "MODELS_DIR",
    "WT_HOST": "HOST",
    "WT_PORT": "PORT",
    "WT_CLIENT_IDLE_SECONDS": "CLIENT_IDLE_SECONDS",
    "WT_WEB_THREADS": "WEB_THREADS",
    "WT_WEB_PROCESSES": "WEB_PROCESSES",
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
    "WT_MIN_FREE_MB": "MIN_FREE_MB",
    "WT_FFMPEG_TIMEOUT_SECONDS": "FFMPEG_TIMEOUT_SECONDS",
    "WT_DEFAULT_MODEL": "DEFAULT_MODEL",
    "WT_MODEL_ALIASES": "MODEL_ALIASES",
    "WT_ENGINE": "ENGINE",
    "WT_TUNE_ON_START": "TUNE_ON_START",
    "WT_ENGINE_THREADS": "ENGINE_THREADS",
    "WT_WORKERS": "WORKERS",
    "WT_WORKER_MAX_RSS_MB": "WORKER_MAX_RSS_MB",
    "WT_WORKER_MAX_JOBS": "WORKER_MAX_JOBS",
    "WT_WORKER_NICE": "WORKER_NICE",
    "WT_WORKER_INDEX": "WORKER_INDEX",
    "WT_MAX_ATTEMPTS": "MAX_ATTEMPTS",
    "WT_QUEUE_POLL_SECONDS": "QUEUE_POLL_SECONDS",
    "WT_DATABASE_URL": "DATABASE_URL",
    "WT_QUEUE_URL": "QUEUE_URL",
    "WT_BREAKER_STORAGE_URL": "BREAKER_STORAGE_URL",
    "WT_WORKER_NAME": "WORKER_NAME",
    "WT_LOG_DIR": "LOG_DIR",
    "WT_LEASE_SECONDS": "LEASE_SECONDS",
    "WT_RATELIMIT_STORAGE_URI": "RATELIMIT_STORAGE_URI",
    "WT_RATELIMIT_ENABLED": "RATELIMIT_ENABLED",
    "WT_RATELIMIT_ANON": "RATELIMIT_ANON",
    "WT_RATELIMIT_USER": "RATELIMIT_USER",
    "WT_RATELIMIT_ADMIN": "RATELIMIT_ADMIN",
    "WT_RATELIMIT_CHUNKS": "RATELIMIT_CHUNKS",
    "WT_RATELIMIT_LOGIN_FAILURES": "RATELIMIT_LOGIN_FAILURES",
    "WT_RATELIMIT_VOXIS": "RATELIMIT_VOXIS",
    "WT_TRUSTED_PROXIES": "TRUSTED_PROXIES",
    "WT_ANONYMOUS_NETWORKS": "ANONYMOUS_NETWORKS",
    "WT_OPENAI_TIMEOUT_SECONDS": "OPENAI_TIMEOUT_SECONDS",
    "WT_ASR_TIMEOUT_SECONDS": "ASR_TIMEOUT_SECONDS",
    "OPENAI_API_KEY": "OPENAI_API_KEY",
    "OPENAI_BASE_URL": "OPENAI_BASE_URL",
    "OPENAI_MODEL": "OPENAI_MODEL",
    "WT_ANALYSIS_TIMEOUT_SECONDS": "ANALYSIS_TIMEOUT_SECONDS",
    "WT_BREAKER_FAIL_MAX": "BREAKER_FAIL_MAX",
    "WT_BREAKER_RESET_SECONDS": "BREAKER_RESET_SECONDS",
    "WT_SIDECAR_OVERWRITE": "SIDECAR_OVERWRITE",
    "WT_DUB_LANGUAGE": "DUB_LANGUAGE",
    "WT_DUB_MAX_TEMPO": "DUB_MAX_TEMPO",
    "WT_DUB_MUX_LIBRARY": "DUB_MUX_LIBRARY",
    "WT_DUBARR_DUB": "DUBARR_DUB",
    "WT_TTS_BASE_URL": "TTS_BASE_URL",
    "WT_TTS_MODEL": "TTS_MODEL",
    "WT_TTS_VOICE": "TTS_VOICE",
    "WT_TTS_API_KEY": "TTS_API_KEY",
    "WT_DUB_TIMEOUT_SECONDS": "DUB_TIMEOUT_SECONDS",
    "WT_MEDIA_ROOTS": "MEDIA_ROOTS",
    "WT_COOKIE_SECURE": "COOKIE_SECURE",
    "WT_WATCH_DIRS": "WATCH_DIRS",
    "WT_WYOMING_ENABLED": "WYOMING_ENABLED",
    "WT_WYOMING_HOST": "WYOMING_HOST",
    "WT_WYOMING_PORT": "WYOMING_PORT",
    "WT_WYOMING_MAX_SECONDS": "WYOMING_MAX_SECONDS",
    "WT_LOG_LEVEL": "LOG_LEVEL",
    "WT_ACCESS_LOG": "GUNICORN_ACCESS_LOG",  # a file for Gunicorn's own access log; access.log is ACCESS_LOG
    "API_USER": "API_USER",
    "API_PASS": "API_PASS",
}
MIN_SECRET_LENGTH = 32
ENGINES = ("auto", "whispercpp", "ctranslate2")  # as workers.tuning.ENGINE_SETTINGS; settings import no workers
_MODEL_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,99}")  # as workers.modelstore.model_path
Network = ipaddress.IPv4Network | ipaddress.IPv6Network


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
    settings["LOG_LEVEL"] = str(settings.get("LOG_LEVEL") or "INFO").upper()
    if settings["LOG_LEVEL"] not in logging.getLevelNamesMapping():
        raise RuntimeError(f"WT_LOG_LEVEL must be one of DEBUG, INFO, WARNING, ERROR, not {settings['LOG_LEVEL']!r}")
    if settings.get("ENGINE") not in ENGINES:
        raise RuntimeError(f"WT_ENGINE must be one of {', '.join(ENGINES)}, not {settings.get('ENGINE')!r}")
    _shared_storage(settings)
    settings["MODEL_ALIASES"] = parse_model_aliases(settings.get("MODEL_ALIASES"), "WT_MODEL_ALIASES")
    settings["ANONYMOUS_NETWORKS"] = parse_networks(settings.get("ANONYMOUS_NETWORKS"), "WT_ANONYMOUS_NETWORKS")
    return settings


def _shared_storage(settings: dict[str, Any]) -> None:
    """Check the database and queue URLs; with a Redis queue, rate limits default to the same Redis."""
    database = str(settings.get("DATABASE_URL") or "")
    if database and not database.startswith(("sqlite:///", "postgres://", "postgresql://")):
        raise RuntimeError("WT_DATABASE_URL must be sqlite:///<path> or postgresql://user:password@host/name")
    queue = str(settings.get("QUEUE_URL") or "")
    if queue and not queue.startswith(("redis://", "rediss://")):
        raise RuntimeError("WT_QUEUE_URL must be empty (the SQLite queue in the data dir) or redis://host:6379/0")
    settings["DATABASE_URL"], settings["QUEUE_URL"] = database, queue
    settings["WORKER_NAME"] = str(settings.get("WORKER_NAME") or "") or socket.gethostname()
    if not settings.get("RATELIMIT_STORAGE_URI"):
        settings["RATELIMIT_STORAGE_URI"] = queue or "memory://"
    if int(settings.get("WEB_PROCESSES") or 1) > 1 and str(settings["RATELIMIT_STORAGE_URI"]).startswith("memory"):
        raise RuntimeError(
            "WT_WEB_PROCESSES above 1 needs rate limits all processes share: WT_QUEUE_URL=redis://... "
            "(or WT_RATELIMIT_STORAGE_URI)"
        )
    breaker = str(settings.get("BREAKER_STORAGE_URL") or "")
    if breaker and breaker != "database" and not breaker.startswith(("redis://", "rediss://")):
        raise RuntimeError("WT_BREAKER_STORAGE_URL must be empty, database or redis://host:6379/0")
    settings["BREAKER_STORAGE_URL"] = "" if breaker == "database" else (breaker or queue)


def parse_networks(value: str | Iterable[str | Network] | None, name: str) -> tuple[Network, ...]:
    """Comma-separated CIDRs (or a list of them) as networks, parsed once; a bad entry stops the start."""
    items = value.split(",") if isinstance(value, str) else list(value or ())
    networks: list[Network] = []
    for item in items:
        if isinstance(item, ipaddress.IPv4Network | ipaddress.IPv6Network):
            networks.append(item)
            continue
        text = str(item).strip()
        if not text:
            continue
        try:
            # strict: "192.168.1.7/24" is refused rather than silently widened to the whole /24
            networks.append(ipaddress.ip_network(text))
        except ValueError as exc:
            raise RuntimeError(
                f"{name}: {text!r} is not a network such as 192.168.1.0/24, 10.0.0.5 or fd00::/8 ({exc})"
            ) from exc
    return tuple(networks)


def parse_model_aliases(value: str | dict[str, str] | None, name: str) -> dict[str, str]:
    """``"medium=base,small=base"`` (or a dict) as {requested name: installed model}, parsed once."""
    if isinstance(value, dict):
        pairs = [(str(k), str(v)) for k, v in value.items()]
    else:
        pairs = []
        for item in (value or "").replace("\n", ",").split(","):
            if not item.strip():
                continue
            if item.count("=") != 1:
                raise RuntimeError(f"{name}: {item.strip()!r} is not an alias such as medium=base")
            alias, target = item.split("=")
            pairs.append((alias, target))
    aliases: dict[str, str] = {}
    for alias, target in pairs:
        alias, target = alias.strip(), target.strip()
        if not _MODEL_NAME.fullmatch(alias) or not _MODEL_NAME.fullmatch(target):
            raise RuntimeError(
                f"{name}: {alias}={target} is not an alias such as medium=base "
                "(names are letters, digits, '.', '-' and '_')"
            )
        if alias in aliases and aliases[alias] != target:
            raise RuntimeError(f"{name}: {alias} is given twice, as {aliases[alias]} and as {target}")
        aliases[alias] = target
    return aliases


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
