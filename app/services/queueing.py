"""How services put a job on the queue, without importing the worker runtime.

The worker runtime (workers/tasks.py → pipeline → stages) calls into services, so services must not
import it back. Boot binds the Huey task here (:func:`bind`), in the web process and in the worker,
and everything that queues a job calls :func:`submit`. huey's own advice is config → tasks → main:
``workers/queue.py`` is the config, ``workers/tasks.py`` the tasks, and boot the main that joins them.
"""

from __future__ import annotations

from typing import Protocol


class JobTask(Protocol):
    """The part of a Huey task wrapper that queueing uses."""

    def __call__(self, job_id: str) -> object: ...

    def schedule(self, args: tuple, delay: float) -> object: ...


_task: JobTask | None = None


def bind(task: JobTask) -> None:
    """Queue jobs with ``task`` (``workers.tasks.process_job``)."""
    global _task
    _task = task


def submit(job_id: str, delay: float = 0) -> None:
    """Put the job's id on the queue, at once or after ``delay`` seconds."""
    if _task is None:
        raise RuntimeError("the job queue is not bound: start through create_app or the worker command")
    if delay > 0:
        _task.schedule((job_id,), delay=delay)
    else:
        _task(job_id)
