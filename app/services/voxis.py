"""The VOXIS audio-cleanup API's rules: stored uploads, the process body, job views and exports.

Uploads are kept as :class:`MediaFile` rows with their file under ``uploads/voxis/``; processing
hands a hard link of it to an ordinary ``cleanup`` job, so the file can be processed again.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import uuid
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from app.errors import AppError, not_found
from app.models import Job, MediaFile, User, db, isoformat
from app.services import jobs, plans
from app.services.storage import AtomicFile, Layout, clean_filename, safe_extension
from workers import audio, dsp

API_VERSION = "1.0.5"  # the version of the VOXIS API document these routes follow
SERVICE_NAME = "VOXIS Backend"
UPLOAD_EXTENSIONS = {
    ".wav": "audio/wav",
    ".mp3": "audio/mpeg",
    ".flac": "audio/flac",
    ".ogg": "audio/ogg",
    ".m4a": "audio/mp4",
}
# ffprobe's format names for those types: the content must be one of them, whatever the name says.
CONTENT_FORMATS = {
    "wav": "audio/wav",
    "mp3": "audio/mpeg",
    "flac": "audio/flac",
    "ogg": "audio/ogg",
    "mov,mp4,m4a,3gp,3g2,mj2": "audio/mp4",
}
STATUS = {
    "queued": "queued",
    "processing": "processing",
    "completed": "complete",
    "failed": "error",
    "cancelled": "error",
}
STATUS_FILTER = {
    "queued": ("queued",),
    "processing": ("processing",),
    "complete": ("completed",),
    "error": ("failed", "cancelled"),
    "completed": ("completed",),
    "failed": ("failed",),
    "cancelled": ("cancelled",),
}
EXPORT_FORMATS = {"wav": "audio/wav", "mp3": "audio/mpeg", "flac": "audio/flac"}
MP3_BITRATES = {"low": "128k", "medium": "192k", "high": "320k"}
MP3_MAX_RATE = 48000  # MPEG audio stops at 48 kHz; a 96 kHz job exports its mp3 at 48 kHz


def invalid(field: str, detail: str) -> AppError:
    """The 400 for one bad field; the message starts with the field's name."""
    return AppError(400, "INVALID_PARAMETER", f"{field} {detail}")


# ------------------------------------------------------------------- uploads


def store_upload(cfg: Mapping[str, Any], user: User | None, temp: Path, filename: str) -> MediaFile:
    """Check an uploaded temp file (type by name and by content, length) and keep it. Removes it on error."""
    try:
        name = clean_filename(filename)
        ext = safe_extension(name)
        if ext not in UPLOAD_EXTENSIONS:
            raise AppError(
                400,
                "INVALID_FILE_TYPE",
                f"file must be one of {', '.join(e[1:] for e in UPLOAD_EXTENSIONS)}; got {name!r}",
            )
        content_type = _content_type(cfg, temp)
        file_id = str(uuid.uuid4())
        final = Layout(cfg["DATA_DIR"]).folder("uploads") / "voxis" / f"{file_id}{ext}"
        final.parent.mkdir(parents=True, exist_ok=True)
        os.replace(temp, final)
    except BaseException:
        temp.unlink(missing_ok=True)
        raise
    with db.atomic("IMMEDIATE"):
        return MediaFile.create(
            id=file_id,
            user=user,
            filename=name,
            size=final.stat().st_size,
            path=str(final.relative_to(cfg["DATA_DIR"])),
            content_type=content_type,
        )


def _content_type(cfg: Mapping[str, Any], path: Path) -> str:
    """The audio type ffprobe finds in the file; 400 for anything that is not one of the upload types."""
    try:
        info = audio.probe(path, timeout=min(120, cfg["FFMPEG_TIMEOUT_SECONDS"]))
    except audio.MediaError as exc:
        raise AppError(400, "INVALID_FILE_TYPE", f"file content is not audio: {exc}") from exc
    if info.has_video or info.format_name not in CONTENT_FORMATS:
        raise AppError(
            400,
            "INVALID_FILE_TYPE",
            f"file content is {info.format_name!r}{' with video' if info.has_video else ''}, "
            "not wav, mp3, flac, ogg or m4a audio",
        )
    try:
        audio.check_duration(info, cfg["MAX_MEDIA_SECONDS"])
    except audio.MediaError as exc:
        raise AppError(413, exc.error_code, str(exc)) from exc
    return CONTENT_FORMATS[info.format_name]


def upload_view(media: MediaFile) -> dict[str, Any]:
    """The upload response body."""
    return {
        "success": True,
        "file_id": media.id,
        "filename": media.filename,
        "size": media.size,
        "uploaded_at": isoformat(media.uploaded_at),
    }


def get_media(user: User | None, file_id: str) -> MediaFile:
    """An uploaded file the user may use, or 404 (also when its file has since been removed)."""
    media = MediaFile.visible_to(user).where(MediaFile.id == file_id).first()
    if media is None:
        raise not_found("File")
    return media


# ---------------------------------------------------------------- processing


def _number(
    data: Mapping[str, Any], field: str, allowed: tuple[int, ...] | None = None, lo: float = 0, hi: float = 0
) -> Any:
    value = data.get(field, dsp.DEFAULTS[field])
    if isinstance(value, bool) or not isinstance(value, int | float):  # JSON true is not a number
        raise invalid(field, "must be a number")
    if allowed is not None:
        if value not in allowed:
            raise invalid(field, f"must be one of {', '.join(map(str, allowed))}")
        return int(value)
    if not lo <= value <= hi:
        raise invalid(field, f"must be between {lo:g} and {hi:g}")
    return value


def _flag(data: Mapping[str, Any], field: str, default: bool = False) -> bool:
    value = data.get(field, default)
    if not isinstance(value, bool):
        raise invalid(field, "must be true or false")
    return value


def process_options(data: Mapping[str, Any]) -> dict[str, Any]:
    """Validate a ``/api/process`` body into job options; every problem is a 400 naming its field."""
    file_id = data.get("file_id")
    if file_id is None or file_id == "":
        raise invalid("file_id", "is required")
    if not isinstance(file_id, str) or len(file_id) > 64:
        raise invalid("file_id", "must be the file_id string returned by /api/upload")
    profile = data.get("noise_profile", dsp.DEFAULTS["noise_profile"])
    if profile not in dsp.NOISE_PROFILES:
        raise invalid("noise_profile", f"must be one of {', '.join(dsp.NOISE_PROFILES)}")
    options = {
        "file_id": file_id,
        "denoise_strength": _number(data, "denoise_strength", lo=0, hi=100),
        "high_precision": _flag(data, "high_precision"),
        "upscale_factor": _number(data, "upscale_factor", dsp.UPSCALE_FACTORS),
        "target_sample_rate": _number(data, "target_sample_rate", dsp.SAMPLE_RATES),
        "target_channels": _number(data, "target_channels", dsp.CHANNELS),
        "noise_profile": profile,
        "transcribe": _flag(data, "transcribe"),
        "source": "voxis",
    }
    for field in ("model", "language"):
        if data.get(field) is not None and not isinstance(data[field], str):
            raise invalid(field, "must be a string")
    return options


def start_processing(cfg: Mapping[str, Any], user: User | None, data: Mapping[str, Any]) -> Job:
    """Queue a cleanup job (and transcription when asked) for an uploaded file."""
    options = process_options(data)
    media = get_media(user, options["file_id"])
    stored = Path(cfg["DATA_DIR"]) / media.path
    if not stored.exists():  # removed by the uploads retention rule
        raise not_found("File")
    # create_job renames what it is given into uploads/: hand it a link, the upload stays usable.
    link = Layout(cfg["DATA_DIR"]).folder("tmp") / f"voxis-{uuid.uuid4().hex}{stored.suffix}"
    try:
        os.link(stored, link)
    except OSError:
        shutil.copyfile(stored, link)
    transcribe = options["transcribe"]
    return jobs.create_job(
        cfg,
        user,
        link,
        media.filename,
        kind="cleanup",
        options=options,
        model=data.get("model") if transcribe else None,
        language=data.get("language") if transcribe else None,
    )


# -------------------------------------------------------------------- views


def current_stage(job: Job) -> str:
    """The stage a client should show: the running one, the failed one, the next one, or the last."""
    plan = plans.plan_for(job)
    records = job.stages or {}
    if job.status == "queued":
        return "upload"  # uploaded, waiting for a worker
    for wanted in ("running", "failed"):
        for name in plan:
            if records.get(name, {}).get("status") == wanted:
                return name
    for name in plan:
        if records.get(name, {}).get("status") != "done":
            return name
    return plan[-1]


def status_view(job: Job) -> dict[str, Any]:
    """``GET /api/status``: status, current stage, overall progress and each stage's progress."""
    records = job.stages or {}
    stages = {
        name: {
            "progress": round(records.get(name, {}).get("progress", 0)),
            "updated_at": records.get(name, {}).get("updated_at"),
        }
        for name in plans.plan_for(job)
    }
    body: dict[str, Any] = {
        "job_id": job.id,
        "status": STATUS.get(job.status, job.status),
        "current_stage": current_stage(job),
        "progress": 100 if job.status == "completed" else round(job.progress),
        "stages": stages,
    }
    if job.error and job.status != "completed":
        body["error"] = job.error
    if job.status == "completed" and (job.options or {}).get("transcribe"):
        body["transcript"] = job.text or ""
    return body


def job_view(job: Job) -> dict[str, Any]:
    """One entry of ``GET /api/jobs``: the status view plus the file and settings."""
    settings = {k: v for k, v in (job.options or {}).items() if k in dsp.DEFAULTS or k in ("file_id", "transcribe")}
    return {
        **status_view(job),
        "filename": job.original_filename,
        "settings": settings,
        "created_at": isoformat(job.created_at),
        "completed_at": isoformat(job.completed_at),
    }


def list_jobs(user: User | None, *, status: str | None, limit: int) -> tuple[list[Job], int]:
    """The user's cleanup jobs, newest first, optionally in one VOXIS (or canonical) status."""
    query = Job.visible_to(user).where(Job.kind == "cleanup")
    if status:
        if status not in STATUS_FILTER:
            raise invalid("status", f"must be one of {', '.join(STATUS_FILTER)}")
        query = query.where(Job.status.in_(STATUS_FILTER[status]))
    return list(query.order_by(Job.created_at.desc(), Job.id).limit(limit)), query.count()


def health(cfg: Mapping[str, Any]) -> dict[str, Any]:
    """Service name, API version, running jobs and the data dir's disk."""
    disk = shutil.disk_usage(cfg["DATA_DIR"])
    return {
        "status": "healthy",
        "service": SERVICE_NAME,
        "version": API_VERSION,
        "active_jobs": Job.select().where(Job.status == "processing").count(),
        "disk": {"free_gb": round(disk.free / 1024**3, 1), "percent_used": round(100 * disk.used / disk.total, 1)},
    }


# ------------------------------------------------------------------- export


def export_options(fmt: str | None, quality: str | None) -> tuple[str, str]:
    """The export format (default wav) and mp3 quality (default high); 400 naming a bad parameter."""
    fmt = (fmt or "wav").lower()
    quality = (quality or "high").lower()
    if fmt not in EXPORT_FORMATS:
        raise invalid("format", f"must be one of {', '.join(EXPORT_FORMATS)}")
    if quality not in MP3_BITRATES:
        raise invalid("quality", f"must be one of {', '.join(MP3_BITRATES)}")
    return fmt, quality


def export_file(cfg: Mapping[str, Any], job: Job, fmt: str, quality: str) -> tuple[Path, str, str]:
    """The cleaned audio in ``fmt``: (path, mimetype, download name). Transcodes are cached with the job."""
    if job.kind != "cleanup":
        raise AppError(404, "NOT_FOUND", "Job has no cleaned audio; only /api/process jobs make one")
    cache = Layout(cfg["DATA_DIR"]).job_cache(job.id)
    cleaned = cache / dsp.CLEANED_CACHE
    if (job.stages or {}).get("resample", {}).get("status") != "done":
        raise AppError(
            409, "JOB_NOT_COMPLETE", f"Job is {STATUS.get(job.status, job.status)}; the cleaned audio is not ready"
        )
    if not cleaned.exists():
        raise AppError(410, "OUTPUT_REMOVED", "The cleaned audio was removed; restart the job to make it again")
    name = f"{Path(job.original_filename).stem or 'audio'}_cleaned.{fmt}"
    if fmt == "wav":
        return cleaned, EXPORT_FORMATS[fmt], name
    out = cache / (f"export.{quality}.mp3" if fmt == "mp3" else "export.flac")
    if not out.exists() or out.stat().st_mtime < cleaned.stat().st_mtime:  # stale after the job re-ran
        _transcode(cfg, cleaned, out, fmt, quality)
    return out, EXPORT_FORMATS[fmt], name


def _transcode(cfg: Mapping[str, Any], source: Path, out: Path, fmt: str, quality: str) -> None:
    if fmt == "mp3":
        rate = audio.probe(source).sample_rate or MP3_MAX_RATE
        codec = ["-c:a", "libmp3lame", "-b:a", MP3_BITRATES[quality], "-ar", str(min(rate, MP3_MAX_RATE))]
    else:
        codec = ["-c:a", "flac"]
    try:
        with AtomicFile(out) as target:  # a temp name of its own: two downloads may transcode at once
            cmd = ["ffmpeg", "-nostdin", "-v", "error", "-y", "-i", str(source), *codec, "-f", fmt, str(target.temp)]
            result = subprocess.run(cmd, capture_output=True, timeout=cfg["FFMPEG_TIMEOUT_SECONDS"], check=False)
            if result.returncode != 0:
                detail = result.stderr.decode("utf-8", "replace").strip().splitlines()[-1:] or ["ffmpeg error"]
                raise AppError(500, "EXPORT_FAILED", f"Converting to {fmt} failed: {detail[0]}")
    except subprocess.TimeoutExpired as exc:
        raise AppError(500, "EXPORT_FAILED", f"Converting to {fmt} took too long") from exc
