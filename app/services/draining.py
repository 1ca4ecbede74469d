"""Draining workers by name, on any box: a drained worker finishes its running job and takes no more.

The names live in one ``Setting`` row that every worker reads with its lease heartbeat, so an admin on the
web box can drain a worker on another box; ``POST /admin/concurrency`` stays about this box's processes.
"""

from __future__ import annotations

import re
from typing import Any

from app.errors import AppError
from app.models import AuditLog, Setting, User, db
from app.supervisor import live_workers

KEY = "drained_workers"
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,99}")  # a host name, or what WT_WORKER_NAME holds


def drained() -> list[str]:
    """The names of the drained workers."""
    return sorted(Setting.read(KEY) or [])


def is_drained(name: str) -> bool:
    """True when the worker of this name must take no more jobs."""
    return name in drained()


def workers() -> dict[str, Any]:
    """Every box's live workers (name, host, pid, beat, local or not) with whether each is drained."""
    names = set(drained())
    found = [{**entry, "drained": entry["name"] in names} for entry in live_workers(local_only=False)]
    return {"workers": found, "drained": sorted(names)}


def set_drained(name: str, drain: bool, *, actor: User, ip: str | None) -> dict[str, Any]:
    """Drain (or resume) the worker of this name; it need not be running now (a box that is off stays drained)."""
    if not _NAME.fullmatch(name):
        raise AppError(422, "INVALID_FIELD", "a worker name is letters, digits, '.', '-' and '_' (at most 100)")
    with db.atomic("IMMEDIATE"):
        names = set(Setting.read(KEY) or [])
        names = names | {name} if drain else names - {name}
        Setting.write(KEY, sorted(names))
    AuditLog.record("worker_drain" if drain else "worker_resume", user=actor, ip=ip, target=name)
    return {"name": name, "drained": drain, "workers": workers()["workers"]}
