"""Admin access to files under the data dir: listing, browsing, deleting and a streamed zip.

Every path is confined to one known folder: NUL bytes, absolute paths and ``..`` are a 400, the
real path (symlinks resolved) must stay inside the folder's real path (else 400), and a missing
file is a 404. The models folder, the database and the secret are never reachable.

Deleting a file that belongs to a queued or processing job (its upload, transcript or job log) is
refused with 409: the worker needs it. Files of finished jobs may be deleted; the job keeps its
transcript in the database, but a restart of it then fails because its media is gone.
"""

from __future__ import annotations

import io
import os
import stat
import zipfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from app.errors import AppError, bad_request, not_found
from app.models import Job
from workers.timestamps import utc_iso

LISTED = ("logs", "uploads", "transcripts")  # GET/DELETE /admin/files
BROWSABLE = ("uploads", "transcripts", "logs", "cache")  # GET /admin/browse
ARCHIVED = ("logs", "transcripts")  # GET /admin/download-all
ACTIVE = ("queued", "processing")
CHUNK = 256 * 1024


def _mtime(value: float) -> str:
    return utc_iso(value)


def folder_root(data_dir: str | Path, folder: str, allowed: tuple[str, ...]) -> Path:
    """The real path of one allowed folder; 400 for any other name."""
    if folder not in allowed:
        raise bad_request(f"folder must be one of {', '.join(allowed)}", "INVALID_FOLDER")
    return Path(os.path.realpath(Path(data_dir) / folder))


def _inside(root: Path, path: str) -> bool:
    return path == str(root) or path.startswith(str(root) + os.sep)


def confine(data_dir: str | Path, folder: str, relative: str | None, allowed: tuple[str, ...]) -> Path:
    """Resolve ``relative`` inside ``folder``: 400 for NUL, absolute, ``..`` or escaping symlinks; 404 if missing."""
    root = folder_root(data_dir, folder, allowed)
    relative = relative or ""
    if "\x00" in relative:
        raise bad_request("path must not contain NUL bytes", "INVALID_PATH")
    if relative.startswith(("/", "\\")) or (len(relative) > 1 and relative[1] == ":"):
        raise bad_request("path must be relative to the folder", "INVALID_PATH")
    if ".." in relative.replace("\\", "/").split("/"):
        raise bad_request("path must not contain '..'", "INVALID_PATH")
    real = os.path.realpath(root / relative)
    if not _inside(root, real):
        raise bad_request("path leads outside the folder", "PATH_OUTSIDE_FOLDER")
    if not os.path.exists(real):
        raise not_found("File")
    return Path(real)


def _entry(root: Path, path: Path, st: os.stat_result) -> dict[str, Any]:
    return {"name": path.relative_to(root).as_posix(), "size": st.st_size, "modified": _mtime(st.st_mtime)}


def walk(root: Path) -> Iterator[tuple[Path, os.stat_result]]:
    """Regular files under ``root`` (recursively), skipping symlinks that lead outside it."""
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames.sort()
        for name in sorted(filenames):
            path = Path(dirpath) / name
            real = os.path.realpath(path)
            try:
                st = os.stat(real)
            except OSError:
                continue
            if _inside(root, real) and stat.S_ISREG(st.st_mode):
                yield path, st


def list_files(data_dir: str | Path) -> dict[str, Any]:
    """Log, upload and transcript files with sizes and modification times."""
    body: dict[str, Any] = {}
    total = count = 0
    for folder in LISTED:
        root = folder_root(data_dir, folder, LISTED)
        entries = [_entry(root, path, st) for path, st in walk(root)]
        total += sum(e["size"] for e in entries)
        count += len(entries)
        body[folder] = entries
    body.update({"total_files": count, "total_size": total})
    return body


def browse(data_dir: str | Path, folder: str, path: str | None) -> dict[str, Any]:
    """One directory of a browsable folder: files and subdirectories, sorted by name."""
    target = confine(data_dir, folder, path, BROWSABLE)
    root = folder_root(data_dir, folder, BROWSABLE)
    if not target.is_dir():
        raise bad_request("path is a file, not a directory", "NOT_A_DIRECTORY")
    entries = []
    for child in sorted(target.iterdir()):
        real = os.path.realpath(child)
        if not _inside(root, real):
            continue  # a symlink leading outside is not shown
        try:
            st = os.stat(real)
        except OSError:
            continue
        kind = "directory" if stat.S_ISDIR(st.st_mode) else "file"
        entries.append(
            {
                "name": child.name,
                "type": kind,
                "size": st.st_size if kind == "file" else None,
                "modified": _mtime(st.st_mtime),
            }
        )
    relative = target.relative_to(root).as_posix()
    return {"folder": folder, "path": "" if relative == "." else relative, "entries": entries}


def _owning_job(folder: str, root: Path, target: Path) -> Job | None:
    """The job a file belongs to: its upload, its transcript or its job log."""
    relative = target.relative_to(root)
    if folder == "uploads":
        return Job.get_or_none(Job.upload_path == f"uploads/{relative.as_posix()}") or Job.get_or_none(
            Job.id == target.stem
        )
    if folder == "transcripts" or (folder == "logs" and relative.parts[:1] == ("jobs",)):
        return Job.get_or_none(Job.id == target.stem)
    return None


def delete_file(data_dir: str | Path, folder: str, filename: str | None) -> dict[str, Any]:
    """Delete one file of logs, uploads or transcripts; 409 while its job is queued or processing."""
    if not filename:
        raise AppError(422, "MISSING_FIELD", "filename is required")
    target = confine(data_dir, folder, filename, LISTED)
    root = folder_root(data_dir, folder, LISTED)
    if not target.is_file():
        raise bad_request("only files can be deleted", "NOT_A_FILE")
    job = _owning_job(folder, root, target)
    if job is not None and job.status in ACTIVE:
        raise AppError(
            409,
            "JOB_ACTIVE",
            f"The file belongs to job {job.id}, which is {job.status}; cancel it or wait until it finishes",
        )
    size = target.stat().st_size
    target.unlink()
    return {
        "folder": folder,
        "filename": target.relative_to(root).as_posix(),
        "size": size,
        "job_id": job.id if job else None,
    }


# ------------------------------------------------------------------ streamed zip


class _ChunkSink(io.RawIOBase):
    """A write-only, unseekable stream that hands what zipfile writes to a generator."""

    def __init__(self) -> None:
        self.chunks: list[bytes] = []
        self.position = 0

    def writable(self) -> bool:
        return True

    def write(self, data: bytes) -> int:  # type: ignore[override]
        self.chunks.append(bytes(data))
        self.position += len(data)
        return len(data)

    def tell(self) -> int:
        return self.position

    def take(self) -> bytes:
        """Everything written since the last call."""
        data, self.chunks = b"".join(self.chunks), []
        return data


def archive_members(data_dir: str | Path) -> list[tuple[Path, str]]:
    """The files of the archive and their names in it (``logs/...``, ``transcripts/...``)."""
    members = []
    for folder in ARCHIVED:
        root = folder_root(data_dir, folder, ARCHIVED)
        members += [(path, f"{folder}/{path.relative_to(root).as_posix()}") for path, _ in walk(root)]
    return members


def stream_zip(members: list[tuple[Path, str]]) -> Iterator[bytes]:
    """Yield a zip of ``members`` chunk by chunk; memory use stays at one chunk whatever the total."""
    sink = _ChunkSink()
    with zipfile.ZipFile(sink, "w", compression=zipfile.ZIP_DEFLATED) as archive:
        for path, name in members:
            try:
                source = open(path, "rb")  # noqa: SIM115  (closed below; a vanished file is skipped)
            except OSError:
                continue
            with source:
                info = zipfile.ZipInfo.from_file(path, name)
                info.compress_type = zipfile.ZIP_DEFLATED
                with archive.open(info, "w", force_zip64=info.file_size > 2**31) as entry:
                    while chunk := source.read(CHUNK):
                        entry.write(chunk)
                        if sink.chunks:
                            yield sink.take()
            yield sink.take()
    yield sink.take()
