"""Media-library files: where they may live, what arr/Jellyfin webhooks send, and the folder watch.

Library files belong to the user: jobs read them in place (``Job.source_path``) and write only a
sidecar subtitle next to them; nothing here ever moves or deletes them.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from app.errors import AppError
from app.models import Job, User
from app.services import jobs

log = logging.getLogger(__name__)

VIDEO_EXTENSIONS = {".mp4", ".mkv", ".webm", ".mov", ".avi", ".m4v"}
AUDIO_EXTENSIONS = {".wav", ".mp3", ".flac", ".ogg", ".m4a", ".opus", ".aac"}
MEDIA_EXTENSIONS = VIDEO_EXTENSIONS | AUDIO_EXTENSIONS
# Events that mean "a file arrived"; Sonarr/Radarr send "Test" when the connection is saved.
IMPORT_EVENTS = {"download", "import", "movieadded", "episodefileimported", "itemadded", "upgrade", "created"}


def _split(value: Any) -> list[str]:
    if not value:
        return []
    if isinstance(value, list | tuple):
        return [str(v) for v in value if v]
    return [part for part in str(value).replace(",", os.pathsep).split(os.pathsep) if part.strip()]


def media_roots(cfg: Mapping[str, Any]) -> list[Path]:
    """The real paths of ``WT_MEDIA_ROOTS`` (and the watch folders, which are library folders too)."""
    return [Path(os.path.realpath(p.strip())) for p in _split(cfg.get("MEDIA_ROOTS")) + _split(cfg.get("WATCH_DIRS"))]


def resolve_library_file(cfg: Mapping[str, Any], raw: Any) -> Path:
    """The real path of a media file inside a media root; 400 for bad paths, 403 outside the roots."""
    if not isinstance(raw, str) or not raw.strip():
        raise AppError(400, "INVALID_PATH", "path must be a non-empty string")
    if "\x00" in raw:
        raise AppError(400, "INVALID_PATH", "path must not contain NUL bytes")
    if not os.path.isabs(raw):
        raise AppError(400, "INVALID_PATH", "path must be absolute")
    roots = media_roots(cfg)
    if not roots:
        raise AppError(403, "MEDIA_ROOTS_NOT_CONFIGURED", "Set WT_MEDIA_ROOTS to the library folders webhooks may use")
    real = Path(os.path.realpath(raw))  # symlinks resolved before the containment check
    if not any(real == root or root in real.parents for root in roots):
        raise AppError(403, "OUTSIDE_MEDIA_ROOTS", "path is outside the configured media roots")
    if not real.is_file():
        raise AppError(400, "FILE_NOT_FOUND", "path is not an existing file")
    if real.suffix.lower() not in MEDIA_EXTENSIONS:
        raise AppError(400, "UNSUPPORTED_MEDIA", f"{real.suffix or 'files without an extension'} is not a media type")
    return real


def _join(folder: Any, relative: Any) -> str | None:
    return os.path.join(folder, relative) if isinstance(folder, str) and isinstance(relative, str) else None


def webhook_path(data: Mapping[str, Any]) -> tuple[Any, str]:
    """(path, event) from our own ``{path, eventType}``, a Sonarr/Radarr import or a Jellyfin ItemAdded."""
    event = str(data.get("eventType") or data.get("NotificationType") or data.get("event") or "")
    if "path" in data:  # our own shape; resolve_library_file judges the value
        return data["path"], event or "manual"
    episode, movie = data.get("episodeFile") or {}, data.get("movieFile") or {}
    if isinstance(episode, dict) and episode:  # Sonarr
        return episode.get("path") or _join((data.get("series") or {}).get("path"), episode.get("relativePath")), event
    if isinstance(movie, dict) and movie:  # Radarr
        return movie.get("path") or _join((data.get("movie") or {}).get("folderPath"), movie.get("relativePath")), event
    for key in ("ItemPath", "Path", "path"):  # Jellyfin's webhook plugin, with {{ItemPath}} in its template
        if isinstance(data.get(key), str):
            return data[key], event
    return None, event


def queue_library_file(
    cfg: Mapping[str, Any],
    user: User | None,
    path: Path,
    *,
    model: str | None = None,
    language: str | None = None,
    dub: Any = None,
) -> Job:
    """Queue a sidecar job for a library file, unless one for the same file is already waiting or running."""
    waiting = Job.select().where((Job.source_path == str(path)) & Job.status.in_(("queued", "processing"))).first()
    if waiting is not None:
        return waiting
    return jobs.create_source_job(cfg, user, path, kind="sidecar", model=model, language=language, dub=dub)


# --------------------------------------------------------------- folder watch

_sizes: dict[str, int] = {}  # path -> size at the previous scan; a file is queued once its size holds still
_refused: dict[str, int] = {}  # path -> size when it was refused; retried only after it changes


def _has_sidecar(path: Path) -> bool:
    return any(path.parent.glob(f"{glob_escape(path.stem)}.*.srt"))


def glob_escape(text: str) -> str:
    """Escape glob wildcards in a literal file name."""
    return "".join(f"[{c}]" if c in "*?[" else c for c in text)


def scan_watch_dirs(cfg: Mapping[str, Any], user: User | None) -> list[str]:
    """Queue new media in ``WT_WATCH_DIRS`` (files with no job and no sidecar whose size is stable)."""
    queued: list[str] = []
    seen: set[str] = set()
    for root in _split(cfg.get("WATCH_DIRS")):
        for dirpath, _dirs, files in os.walk(root):
            for name in files:
                path = Path(os.path.realpath(os.path.join(dirpath, name)))
                key = str(path)
                if path.suffix.lower() not in MEDIA_EXTENSIONS or name.startswith("."):
                    continue
                seen.add(key)
                size = path.stat().st_size
                if _sizes.get(key) != size:  # new or still being copied: look again next scan
                    _sizes[key] = size
                    continue
                if (
                    _refused.get(key) == size
                    or _has_sidecar(path)
                    or Job.select().where(Job.source_path == key).exists()
                ):
                    continue
                try:
                    queued.append(queue_library_file(cfg, user, path).id)
                    log.info("watch: queued %s", key)
                except AppError as exc:
                    log.warning("watch: skipped %s: %s", key, exc.detail)
                    _refused[key] = size
    for key in set(_sizes) - seen:
        del _sizes[key]
        _refused.pop(key, None)
    return queued
