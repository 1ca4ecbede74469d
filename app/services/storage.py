"""Where things live under the data dir, and how files get there safely."""

from __future__ import annotations

import os
import re
import tempfile
from pathlib import Path

# One helper for atomic writes (temp file, fsync, rename), shared with the Flask-free worker libraries.
from workers.atomicfile import AtomicFile as AtomicFile
from workers.atomicfile import atomic_write as atomic_write

FOLDERS = ("uploads", "transcripts", "logs", "tmp", "cache", "models")
_EXT = re.compile(r"^\.[a-z0-9]{1,8}$")
_DISPLAY_EXT = re.compile(r"^\.[A-Za-z0-9]{1,16}$")
MAX_FILENAME = 255


class Layout:
    """The data dir's folders. Uploads are stored under generated names, never the client's."""

    def __init__(self, data_dir: Path | str):
        self.root = Path(data_dir)

    def folder(self, name: str) -> Path:
        """One of the known folders."""
        return self.root / name

    def ensure(self) -> None:
        """Create every folder."""
        for name in FOLDERS:
            self.folder(name).mkdir(parents=True, exist_ok=True)
        (self.folder("logs") / "jobs").mkdir(exist_ok=True)

    def upload_path(self, job_id: str, original_filename: str) -> Path:
        """Where a job's input file is kept: ``uploads/<job id><safe extension>``."""
        return self.folder("uploads") / f"{job_id}{safe_extension(original_filename)}"

    def transcript_path(self, job_id: str) -> Path:
        """The finished transcript as JSON."""
        return self.folder("transcripts") / f"{job_id}.json"

    def job_log(self, job_id: str) -> Path:
        """The worker's log for one job."""
        return self.folder("logs") / "jobs" / f"{job_id}.log"

    def job_cache(self, job_id: str) -> Path:
        """The folder for a job's cached stage outputs."""
        return self.folder("cache") / job_id

    def temp_file(self, suffix: str = ".part") -> Path:
        """A new empty file in ``tmp/`` on the same filesystem as the data, so a rename is atomic."""
        self.folder("tmp").mkdir(parents=True, exist_ok=True)
        fd, name = tempfile.mkstemp(dir=self.folder("tmp"), suffix=suffix)
        os.close(fd)
        return Path(name)


def safe_extension(filename: str | None) -> str:
    """The lower-cased extension of a client file name if it is plain, else ``.bin``."""
    ext = Path(filename or "").suffix.lower()
    return ext if _EXT.match(ext) else ".bin"


def clean_filename(filename: str | None) -> str:
    """A display name: the last path component, without control characters, at most 255 chars.

    A longer name loses the end of its stem, never its extension: exports and downloads are named after it.
    """
    name = re.split(r"[\\/]", filename or "")[-1]
    name = "".join(ch for ch in name if ch.isprintable()).strip() or "upload"
    if len(name) <= MAX_FILENAME:
        return name
    ext = Path(name).suffix
    if not _DISPLAY_EXT.match(ext):
        return name[:MAX_FILENAME]
    return name[: MAX_FILENAME - len(ext)].rstrip() + ext
