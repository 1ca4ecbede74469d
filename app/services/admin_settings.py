"""Settings admins change at run time: cleanup rules, worker concurrency and model aliases.

Each is a GET/POST pair under ``/admin`` whose GET body can be posted back unchanged (read-modify-write):
a POST applies the writable fields, ignores the read-only ones GET adds (figures, status, what is in
force), and refuses any other name with a 422, so a typo is never silently dropped.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping
from typing import Any

from app.errors import AppError
from app.models import AuditLog, Setting, User
from app.services import cleanup, model_aliases
from app.supervisor import CONCURRENCY_KEY, live_workers, read_concurrency, supervisor_process
from workers import modelstore

MAX_WORKERS = 16
MAX_THREADS = 64

CLEANUP_READ_ONLY = ("last_run",)
CONCURRENCY_FIELDS = ("workers", "threads_per_worker", "threads")  # "threads": the saved name, also accepted
CONCURRENCY_READ_ONLY = ("cpu_count", "running_workers", "running", "supervisor", "limits", "message")
SETTINGS_FIELDS = ("model_aliases",)
SETTINGS_READ_ONLY = (
    "model_aliases_source",
    "environment_model_aliases",
    "installed_models",
    "default_model",
    "message",
)


def writable(data: Mapping[str, Any], fields: Iterable[str], read_only: Iterable[str]) -> dict[str, Any]:
    """The fields a POST may change; read-only ones (as GET shows them) are dropped, unknown names are a 422."""
    fields, read_only = tuple(fields), tuple(read_only)
    unknown = sorted(set(data) - set(fields) - set(read_only))
    if unknown:
        raise AppError(422, "INVALID_FIELD", f"Unknown setting(s): {', '.join(unknown)}; known: {', '.join(fields)}")
    changes = {name: value for name, value in data.items() if name in fields}
    if not changes:
        raise AppError(422, "MISSING_FIELD", f"Give at least one of {', '.join(fields)}")
    return changes


# ------------------------------------------------------------------ cleanup


def get_cleanup() -> dict[str, Any]:
    """The cleanup rules and, read-only, when the periodic task last ran."""
    return {**cleanup.get_config(), "last_run": cleanup.last_run()}


def set_cleanup(data: Mapping[str, Any], *, actor: User, ip: str | None) -> dict[str, Any]:
    """Change some cleanup rules (``last_run`` is ignored, so GET's body can be posted back)."""
    old = cleanup.get_config()
    # cleanup.set_config names the rules in its own 422s; only the read-only field is removed here.
    config = cleanup.set_config({k: v for k, v in data.items() if k not in CLEANUP_READ_ONLY})
    if config != old:
        AuditLog.record("admin_cleanup_config_changed", user=actor, ip=ip, old=old, new=config)
    return get_cleanup()


# ------------------------------------------------------------------ concurrency


def get_concurrency(cfg: Mapping[str, Any]) -> dict[str, Any]:
    """The saved worker count and threads per worker, and what runs now."""
    value = read_concurrency(dict(cfg))
    running = live_workers()
    return {
        "workers": value["workers"],
        "threads_per_worker": value["threads"],
        "cpu_count": os.cpu_count(),
        "running_workers": len(running),
        "running": [{"pid": w["pid"], "threads": w.get("threads")} for w in running],
        "supervisor": "run" if supervisor_process(cfg["DATA_DIR"]) else None,
        "limits": {"workers": [1, MAX_WORKERS], "threads_per_worker": [0, MAX_THREADS]},
    }


def set_concurrency(cfg: Mapping[str, Any], data: Mapping[str, Any], *, actor: User, ip: str | None) -> dict[str, Any]:
    """Save workers (1-16) and threads per worker (0 = all cores, up to 64); the processes apply it."""
    data = writable(data, CONCURRENCY_FIELDS, CONCURRENCY_READ_ONLY)
    if "threads" in data and "threads_per_worker" not in data:
        data = {**data, "threads_per_worker": data["threads"]}
    current = read_concurrency(dict(cfg))
    new = {
        "workers": data.get("workers", current["workers"]),
        "threads": data.get("threads_per_worker", current["threads"]),
    }
    for name, key, hi, lo in (
        ("workers", "workers", MAX_WORKERS, 1),
        ("threads_per_worker", "threads", MAX_THREADS, 0),
    ):
        value = new[key]
        if isinstance(value, bool) or not isinstance(value, int) or not lo <= value <= hi:
            raise AppError(422, "INVALID_FIELD", f"{name} must be an integer from {lo} to {hi}")
    if new != current:  # posting GET's body back changes nothing, so nothing for the workers to redo
        Setting.write(CONCURRENCY_KEY, new)
        AuditLog.record("admin_concurrency_changed", user=actor, ip=ip, old=current, new=new)
    return {**get_concurrency(cfg), "message": "Saved; workers apply it after their running job"}


# ------------------------------------------------------------------ general settings


def get_settings(cfg: Mapping[str, Any]) -> dict[str, Any]:
    """The model aliases in force and, read-only, where they come from and which models are installed."""
    return {
        "model_aliases": model_aliases.current(cfg),
        "model_aliases_source": "admin" if model_aliases.saved() is not None else "environment",
        "environment_model_aliases": model_aliases.environment(cfg),
        "installed_models": modelstore.installed(cfg["MODELS_DIR"]),
        "default_model": cfg["DEFAULT_MODEL"],
    }


def set_settings(cfg: Mapping[str, Any], data: Mapping[str, Any], *, actor: User, ip: str | None) -> dict[str, Any]:
    """Save the model aliases: a map, ``"medium=base, small=base"``, or null for ``WT_MODEL_ALIASES``'s map."""
    changes = writable(data, SETTINGS_FIELDS, SETTINGS_READ_ONLY)
    old = get_settings(cfg)
    model_aliases.save(cfg, changes["model_aliases"])
    new = get_settings(cfg)
    if (old["model_aliases"], old["model_aliases_source"]) != (new["model_aliases"], new["model_aliases_source"]):
        AuditLog.record(
            "admin_settings_changed",
            user=actor,
            ip=ip,
            old={"model_aliases": old["model_aliases"], "source": old["model_aliases_source"]},
            new={"model_aliases": new["model_aliases"], "source": new["model_aliases_source"]},
        )
    return {**new, "message": "Saved; new jobs use it at once"}
