"""Log files: confinement to the logs folder, reading the tail, and following a file across rotation."""

from __future__ import annotations

import os
import re
from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO

from app.errors import AppError, bad_request, not_found

# A plain file name: no separators, no leading dot (hidden and lock files), nothing but these characters.
_NAME = re.compile(r"^[A-Za-z0-9_-][A-Za-z0-9._-]{0,254}$")
_BLOCK = 64 * 1024
MAX_READ = 1024 * 1024  # bytes a follower reads per poll, so one poll never holds a whole file


def confined_log_file(folder: Path, name: str) -> Path:
    """The regular file ``name`` directly in ``folder``; 400 for a malformed name, 404 for anything else.

    The name must be plain (no ``/``, ``\\``, NUL, ``..`` or leading dot), and its real path, after
    symlinks are resolved, must still lie inside the folder.
    """
    if not _NAME.match(name or "") or ".." in name:
        raise bad_request("filename must be a plain file name in the logs folder", "INVALID_FILENAME")
    root = folder.resolve()
    path = (root / name).resolve()
    if not path.is_relative_to(root) or not path.is_file():
        raise not_found("Log file")
    return path


def tail_offset(f: BinaryIO, count: int) -> int:
    """The byte offset where the last ``count`` lines of ``f`` begin (an unfinished last line counts)."""
    end = f.seek(0, os.SEEK_END)
    if count <= 0:
        return end
    pos, found = end, 0
    while pos > 0:
        step = min(_BLOCK, pos)
        pos -= step
        f.seek(pos)
        chunk = f.read(step)
        idx = len(chunk)
        while (idx := chunk.rfind(b"\n", 0, idx)) >= 0:
            if pos + idx == end - 1:
                continue  # the last line's own terminator
            found += 1
            if found == count:
                return pos + idx + 1
    return 0


def open_range(path: Path, tail: int = 0) -> tuple[Iterator[bytes], int]:
    """A file's bytes as chunks, from its last ``tail`` lines (0: all) to its size now; and their length.

    The end is fixed when the file is opened: a log that grows meanwhile never sends more than announced.
    """
    try:
        f = open(path, "rb")  # noqa: SIM115  (closed by the generator)
    except FileNotFoundError as exc:
        raise not_found("Log file") from exc
    try:
        start = tail_offset(f, tail) if tail else 0
        end = os.fstat(f.fileno()).st_size
    except BaseException:
        f.close()
        raise

    def chunks() -> Iterator[bytes]:
        try:
            f.seek(start)
            left = end - start
            while left > 0 and (data := f.read(min(_BLOCK, left))):
                left -= len(data)
                yield data
        finally:
            f.close()

    return chunks(), max(0, end - start)


class _Source:
    """One open file and the unfinished line read from it so far."""

    def __init__(self, f: BinaryIO):
        self.file = f
        st = os.fstat(f.fileno())
        self.identity = (st.st_dev, st.st_ino)
        self.partial = b""

    def read_lines(self, final: bool = False) -> list[str]:
        """The complete lines written since the last call; with ``final``, the unfinished one too."""
        data = self.partial + self.file.read(MAX_READ)
        lines = data.split(b"\n")
        self.partial = lines.pop()
        if final and self.partial:
            lines.append(self.partial)
            self.partial = b""
        return [line.rstrip(b"\r").decode("utf-8", "replace") for line in lines]

    def close(self) -> None:
        """Close the file."""
        self.file.close()


class LogFollower:
    """Polls a log file for new lines, like ``tail -F``: it survives rename-rotation, removal and truncation."""

    def __init__(self, path: Path, last: int | None = None):
        """Start at the last ``last`` lines, or at the beginning when ``last`` is None."""
        self.path = path
        self._current: _Source | None = None
        self._retired: _Source | None = None  # the file before a rotation, drained once more
        self._open(last)

    def _open(self, last: int | None = None) -> bool:
        try:
            f = open(self.path, "rb")  # noqa: SIM115  (kept open between polls)
        except FileNotFoundError:
            return False
        if last is not None:
            f.seek(tail_offset(f, last))
        self._current = _Source(f)
        return True

    def _identity(self) -> tuple[int, int] | None:
        try:
            st = os.stat(self.path)
        except FileNotFoundError:
            return None
        return st.st_dev, st.st_ino

    def poll(self) -> list[str]:
        """Every complete line written since the previous poll, in order."""
        lines: list[str] = []
        if self._retired is not None:
            # A writer that opened the file just before it was renamed may have added a last line.
            lines += self._retired.read_lines(final=True)
            self._retired.close()
            self._retired = None
        if self._current is None and not self._open():
            return lines
        lines += self._current.read_lines()
        identity = self._identity()
        if identity != self._current.identity:  # renamed or removed: the path names a new file (or none)
            self._retired, self._current = self._current, None
            if identity is not None and self._open():
                lines += self._current.read_lines()
        elif os.fstat(self._current.file.fileno()).st_size < self._current.file.tell():
            self._current.file.seek(0)  # truncated in place: start again from the top
            self._current.partial = b""
            lines += self._current.read_lines()
        return lines

    def close(self) -> None:
        """Close the open files."""
        for source in (self._current, self._retired):
            if source is not None:
                source.close()
        self._current = self._retired = None


def require_access_log(enabled: bool) -> None:
    """404 when the access log is switched off."""
    if not enabled:
        raise AppError(404, "ACCESS_LOG_DISABLED", "The access log is not enabled (ACCESS_LOG=false)")
