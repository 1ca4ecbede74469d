"""The Huey queue: SQLite storage in its own file under the data dir, with a wake-up pipe beside it;
or Redis (``QUEUE_URL=redis://...``), which workers on other boxes share (Huey's ``RedisStorage``, as ``RedisHuey``).

The instance exists at import so tasks can be declared; ``bind`` points it at a data
dir once settings are known (the app factory and the worker command both call it).

An idle worker does not poll SQLite many times a second: it waits on a FIFO (``queue.wake``)
for up to ``QUEUE_POLL_SECONDS``, and every enqueue, from whichever process, writes a byte to
it. A job submitted over HTTP is picked up at once, and an idle appliance stays idle.
"""

from __future__ import annotations

import contextlib
import os
import select
import stat
import time
from pathlib import Path

from huey import SqliteHuey
from huey.constants import EmptyData
from huey.storage import RedisStorage, SqliteStorage

huey = SqliteHuey("whisper-transcriber", filename=":memory:", results=False)
STOPPING_PAUSE = 0.05  # seconds an interrupted dequeue waits before answering "nothing"
HEARTBEAT_KEY = "worker-heartbeat"
HEARTBEAT_MAX_AGE = 90  # seconds; workers beat every 30


class WakingSqliteStorage(SqliteStorage):
    """Huey's SQLite storage whose empty ``dequeue`` waits for a wake-up byte instead of returning at once."""

    blocking = True  # Huey's worker calls dequeue() again right away instead of sleeping between polls

    def __init__(self, name: str, filename: str, poll: float = 1.0, **kwargs):
        super().__init__(name, filename=filename, **kwargs)
        self.poll = poll
        self.fifo = Path(filename).with_suffix(".wake")
        self._fds: tuple[int, int] | None = None  # (reader, writer) held by a consuming process
        self._stopping = False

    def enqueue(self, data: bytes, priority: float | None = None) -> None:
        """Store the task, then wake one idle worker."""
        super().enqueue(data, priority)
        self.wake()

    def dequeue(self) -> bytes | None:
        """The next task; when there is none, wait up to ``poll`` seconds for a wake-up and look again."""
        if self._stopping:
            time.sleep(STOPPING_PAUSE)  # Huey's worker calls again at once until its stop flag is set: no spin
            return None
        data = super().dequeue()
        if data is None and self._wait() and not self._stopping:
            data = super().dequeue()
        return data

    def wake(self) -> None:
        """Write one byte to the FIFO; nothing happens when no worker listens (or the pipe is full)."""
        try:
            fd = os.open(self.fifo, os.O_WRONLY | os.O_NONBLOCK)
        except OSError:  # ENXIO: no reader; ENOENT: no worker has made the FIFO yet
            return
        try:
            if stat.S_ISFIFO(os.fstat(fd).st_mode):  # never append to a stray regular file
                os.write(fd, b"\0")
        except BlockingIOError:
            pass  # a full pipe means the workers have wake-ups waiting already
        finally:
            os.close(fd)

    def interrupt(self) -> None:
        """End this process's wait at once and take no more tasks (the worker is stopping)."""
        self._stopping = True
        if self._fds is not None:  # its own writer: works even if the FIFO was removed
            with contextlib.suppress(BlockingIOError):
                os.write(self._fds[1], b"\0")

    def resume(self) -> None:
        """Take tasks again (a drained worker was resumed)."""
        self._stopping = False

    def _wait(self) -> bool:
        fds = self._open()
        if fds is None:  # no FIFOs on this file system: plain polling
            select.select([], [], [], self.poll)
            return False
        ready, _, _ = select.select([fds[0]], [], [], self.poll)
        if ready:
            with contextlib.suppress(BlockingIOError):  # another worker took the byte
                os.read(fds[0], 4096)
        return bool(ready)

    def _open(self) -> tuple[int, int] | None:
        if self._fds is None:
            try:
                with contextlib.suppress(FileExistsError):
                    os.mkfifo(self.fifo, 0o600)
                if not stat.S_ISFIFO(os.stat(self.fifo).st_mode):  # a stray file would always read as ready
                    return None
                reader = os.open(self.fifo, os.O_RDONLY | os.O_NONBLOCK)
                # Holding a writer too keeps select() from reporting end-of-file whenever no one else writes.
                self._fds = (reader, os.open(self.fifo, os.O_WRONLY | os.O_NONBLOCK))
            except OSError:
                return None
        return self._fds


class StoppableRedisStorage(RedisStorage):
    """Huey's Redis storage (blocking pops of at most ``poll`` seconds) that a stopping worker can interrupt."""

    def __init__(self, name: str, url: str, poll: float = 1.0):
        super().__init__(name, blocking=True, read_timeout=max(1, round(poll)), url=url)
        self.url, self.poll = url, poll
        self._stopping = False

    def dequeue(self) -> bytes | None:
        """The next task, waiting up to ``poll`` seconds for one; nothing once the worker is stopping."""
        if self._stopping:
            time.sleep(STOPPING_PAUSE)
            return None
        return super().dequeue()

    def interrupt(self) -> None:
        """Take no more tasks (the worker is stopping); a pop under way ends within ``poll`` seconds."""
        self._stopping = True

    def resume(self) -> None:
        """Take tasks again (a drained worker was resumed)."""
        self._stopping = False

    def wake(self) -> None:
        """Nothing to do: a blocking pop wakes when a task arrives."""


def bind(data_dir: Path | str, poll: float = 1.0, url: str = "") -> None:
    """Use ``url`` (redis://) or ``<data dir>/queue.db`` for the queue; idle workers wait at most ``poll`` seconds."""
    if url:
        if getattr(huey.storage, "url", None) != url:
            _close(huey.storage)
            huey.storage = StoppableRedisStorage(huey.name, url=url, poll=poll)
        huey.storage.poll = poll
        return
    path = Path(data_dir) / "queue.db"
    if getattr(huey.storage, "filename", None) != str(path):
        _close(huey.storage)
        huey.storage = WakingSqliteStorage(huey.name, filename=str(path), poll=poll, timeout=15)
    huey.storage.poll = poll


def _close(storage: object) -> None:
    """Let go of a Redis storage's connections when the queue is bound elsewhere (tests, a second boot)."""
    if isinstance(storage, StoppableRedisStorage):
        storage.pool.disconnect()


def pending_job_ids() -> set[str]:
    """Job ids that sit in the queue, waiting for a consumer."""
    return {str(task.args[0]) for task in huey.pending() if task.args}


def beat() -> None:
    """Record that a consumer is alive (workers call this every 30 s)."""
    huey.storage.put_data(HEARTBEAT_KEY, str(time.time()).encode())


def consumer_alive() -> bool:
    """True when some worker wrote its heartbeat recently."""
    try:
        raw = huey.storage.peek_data(HEARTBEAT_KEY)
    except Exception:
        return False
    if raw is EmptyData or not raw:
        return False
    return time.time() - float(raw) < HEARTBEAT_MAX_AGE
