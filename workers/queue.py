"""The Huey queue: SQLite storage in its own file under the data dir.

The instance exists at import so tasks can be declared; ``bind`` points it at a data
dir once settings are known (the app factory and the worker command both call it).
"""

from __future__ import annotations

from pathlib import Path

from huey import SqliteHuey
from huey.storage import SqliteStorage

huey = SqliteHuey("whisper-transcriber", filename=":memory:", results=False)


def bind(data_dir: Path | str) -> None:
    """Use ``<data dir>/queue.db`` for the queue."""
    path = Path(data_dir) / "queue.db"
    if getattr(huey.storage, "filename", None) != str(path):
        huey.storage = SqliteStorage(huey.name, filename=str(path), timeout=15)


def pending_job_ids() -> set[str]:
    """Job ids that sit in the queue, waiting for a consumer."""
    return {str(task.args[0]) for task in huey.pending() if task.args}
