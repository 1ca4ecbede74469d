"""Atomic file writes: a temp file beside the target, fsynced, then renamed over it.

Readers see the old file or the whole new one, never a part, and a crash never leaves a renamed file
whose data is still only in the page cache. Flask-free and app-free: the media and engine libraries
use it, and ``app.services.storage`` re-exports it for the app.
"""

from __future__ import annotations

import os
import secrets
from pathlib import Path
from types import TracebackType

PRIVATE = 0o600  # what tempfile.mkstemp gives: the appliance's own records
PUBLIC = 0o666  # what open() gives, less the umask: files other programs read (sidecars, model files)


class AtomicFile:
    """A file written under a temporary name beside ``path`` and renamed over it once complete and on disk.

    Use it as a context manager and write ``temp`` (with ``open``, or by handing its path to ffmpeg).
    A clean exit fsyncs and renames it over ``path`` unless :meth:`commit` already did; an error removes it.
    ``temp`` is a new file named ``.<name>.<random><suffix>``, or the given path (emptied) when ``temp`` is set.
    """

    def __init__(self, path: Path | str, *, suffix: str = ".part", temp: Path | None = None, mode: int = PRIVATE):
        self.path = Path(path)
        self.temp = temp or self.path.with_name(f".{self.path.name}.{secrets.token_hex(4)}{suffix}")
        self._fixed_temp = temp is not None
        self.mode = mode
        self.synced = self.committed = False

    def __enter__(self) -> AtomicFile:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        # O_EXCL for a generated name: it is ours alone; a fixed name is a leftover of a crash at most.
        flags = os.O_WRONLY | os.O_CREAT | os.O_CLOEXEC | (os.O_TRUNC if self._fixed_temp else os.O_EXCL)
        os.close(os.open(self.temp, flags, self.mode))
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        try:
            if exc_type is None and not self.committed:
                self.commit()
        finally:
            self.temp.unlink(missing_ok=True)

    def sync(self) -> None:
        """Flush the temp file's data to disk (once); :meth:`commit` does it when nobody did."""
        if not self.synced:
            fd = os.open(self.temp, os.O_RDONLY | os.O_CLOEXEC)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
            self.synced = True

    def commit(self) -> Path:
        """Sync the temp file and rename it over ``path``: from now on readers see the new content."""
        self.sync()
        os.replace(self.temp, self.path)
        self.committed = True
        return self.path


def atomic_write(path: Path | str, data: bytes | str, *, mode: int = PRIVATE) -> None:
    """Write a file so that readers see either the old content or the whole new one."""
    with AtomicFile(path, mode=mode) as target:
        target.temp.write_bytes(data.encode() if isinstance(data, str) else data)
