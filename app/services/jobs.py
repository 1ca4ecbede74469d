"""The job lifecycle: create, list, cancel, restart, delete, and the worker's state transitions."""

from __future__ import annotations

import logging
import os
import shutil
import threading
import time
import uuid
from collections.abc import Mapping
from datetime import datetime
from pathlib import Path
from typing import Any

from app.errors import AppError, not_found
from app.models import FINISHED, JOB_STATUSES, Job, Segment, User, db, isoformat, utcnow
from app.services import dubs, languages, model_aliases, plans, queueing
from app.services.breaker import engine_breaker, ensure_accepting
from app.services.storage import Layout, clean_filename
from app.shutdown import stopping
from workers import audio, modelstore

log = logging.getLogger(__name__)

TASKS = ("transcribe", "translate")
STAGES = ("queued", "decoding", "transcribing", "finalizing", "completed")
WAIT_INTERVAL = 0.05  # seconds between status reads while a request waits: a cheap in-process SQLite read
MAX_WAIT_SECONDS = 60
MAX_WAITERS = 16  # of Gunicorn's 64 threads; WebSocket tails and ordinary requests keep the rest
_waiters = threading.BoundedSemaphore(MAX_WAITERS)


# ----------------------------------------------------------------- validation


def validate_model(cfg: Mapping[str, Any], name: str | None) -> str:
    """The model to use: the default when empty, an alias's model; 400 for unknown or missing models."""
    requested = (name or cfg["DEFAULT_MODEL"]).strip()
    name = model_aliases.resolve(cfg, requested)
    available = modelstore.installed(cfg["MODELS_DIR"])
    if name in available:
        return name
    if name != requested:  # an alias whose model is gone (or, from the environment, never was)
        raise AppError(
            400,
            "MODEL_NOT_INSTALLED",
            f"Model {requested!r} is an alias of {name!r}, which is not installed. Installed: "
            f"{', '.join(available) or 'none'}. Install it with: {modelstore.install_hint(name)}",
        )
    if not modelstore.is_whisper_name(name):
        raise AppError(
            400, "INVALID_MODEL", f"{name!r} is not a Whisper model name. Installed: {', '.join(available) or 'none'}"
        )
    raise AppError(
        400,
        "MODEL_NOT_INSTALLED",
        f"Model {name!r} is not installed. Installed: {', '.join(available) or 'none'}. "
        f"Install it with: {modelstore.install_hint(name)}, or let an admin alias it to an installed "
        "model (WT_MODEL_ALIASES or the settings page)",
    )


def validate_task(task: str | None) -> str:
    """``transcribe`` (default) or ``translate``."""
    task = (task or "transcribe").strip().lower()
    if task not in TASKS:
        raise AppError(400, "INVALID_TASK", f"task must be one of {', '.join(TASKS)}")
    return task


def validate_language(language: Any) -> str | None:
    """Whisper's code for a language code or English name, or None for auto-detection; 400 for anything else.

    Every dialect reaches this (through ``_check_request``): an unknown language is refused, never
    silently auto-detected.
    """
    if language is not None and not isinstance(language, str):
        raise AppError(400, "INVALID_LANGUAGE", "language must be a string such as 'en'")
    language = (language or "").strip()
    if language.lower() in ("", "auto"):
        return None
    code = languages.code_for(language)
    if code is None:
        examples = ", ".join(repr(example) for example in languages.EXAMPLES)
        raise AppError(
            400,
            "INVALID_LANGUAGE",
            f"language {language[:40]!r} is not one of whisper's languages: use a code such as "
            f"{examples}, an English name such as 'German', or leave it empty to detect the language",
        )
    return code


def probe_upload(cfg: Mapping[str, Any], path: Path) -> audio.MediaInfo:
    """Check that a file is usable media within the length limit; turn media errors into 4xx."""
    try:
        info = audio.probe(path, timeout=min(120, cfg["FFMPEG_TIMEOUT_SECONDS"]))
        audio.check_duration(info, cfg["MAX_MEDIA_SECONDS"])
    except audio.MediaError as exc:
        status = {"MEDIA_TOO_LONG": 413, "EMPTY_FILE": 400, "MEDIA_TIMEOUT": 400}.get(exc.error_code, 415)
        raise AppError(status, exc.error_code, str(exc)) from exc
    return info


# ------------------------------------------------------------------ creation


def _check_request(
    cfg: Mapping[str, Any],
    model: str | None,
    task: str | None,
    language: str | None,
    prompt: str | None,
    *,
    uses_engine: bool = True,
) -> tuple[str, str, str | None]:
    if prompt is not None and len(prompt) > 2000:
        raise AppError(400, "INVALID_PROMPT", "prompt is longer than 2000 characters")
    if not uses_engine:  # audio cleanup only: neither the engine's pause nor a missing model concerns it
        return (model or cfg["DEFAULT_MODEL"]).strip(), validate_task(task), validate_language(language)
    ensure_accepting(engine_breaker)
    return validate_model(cfg, model), validate_task(task), validate_language(language)


def _insert(
    cfg: Mapping[str, Any], user: User | None, info: audio.MediaInfo, kind: str, enqueue: bool, **fields: Any
) -> Job:
    if kind == "auto":  # Dubarr uploads: a video gets its transcript muxed back in
        kind = "video" if info.has_video else "transcribe"
    with db.atomic("IMMEDIATE"):
        job = Job.create(user=user, kind=kind, duration=info.duration, media_info=info.to_dict(), **fields)
    if enqueue:
        submit(job)
    return job


def create_job(
    cfg: Mapping[str, Any],
    user: User | None,
    upload: Path,
    original_filename: str,
    *,
    model: str | None = None,
    language: str | None = None,
    task: str | None = None,
    prompt: str | None = None,
    kind: str = "transcribe",
    options: dict[str, Any] | None = None,
    enqueue: bool = True,
    dub: Any = None,
) -> Job:
    """Turn a complete uploaded file into a queued job. On any error the file is removed."""
    uses_engine = kind != "cleanup" or bool((options or {}).get("transcribe"))
    requested = (model or "").strip() or None  # kept beside the model that runs (an alias's, say)
    try:
        model, task, language = _check_request(cfg, model, task, language, prompt, uses_engine=uses_engine)
        info = probe_upload(cfg, upload)
        model, kind, options = dubs.apply(cfg, dub, info.has_video, model, kind, options)
        job_id = uuid.uuid4().hex
        name = clean_filename(original_filename)
        final = Layout(cfg["DATA_DIR"]).upload_path(job_id, name)
        os.replace(upload, final)
    except BaseException:
        upload.unlink(missing_ok=True)
        raise
    return _insert(
        cfg,
        user,
        info,
        kind,
        enqueue,
        id=job_id,
        original_filename=name,
        upload_path=str(final.relative_to(cfg["DATA_DIR"])),
        model=model,
        requested_model=requested,
        language=language,
        task=task,
        prompt=prompt or None,
        options=options or {},
    )


def create_source_job(
    cfg: Mapping[str, Any],
    user: User | None,
    source: Path,
    *,
    kind: str,
    model: str | None = None,
    language: str | None = None,
    options: dict[str, Any] | None = None,
    dub: Any = None,
) -> Job:
    """Queue a file that stays where it is (a media-library file); the appliance never moves or deletes it."""
    requested = (model or "").strip() or None
    model, task, language = _check_request(cfg, model, None, language, None)
    info = probe_upload(cfg, source)
    model, kind, options = dubs.apply(cfg, dub, info.has_video, model, kind, options, library=True)
    return _insert(
        cfg,
        user,
        info,
        kind,
        True,
        id=uuid.uuid4().hex,
        original_filename=source.name,
        source_path=str(source),
        model=model,
        requested_model=requested,
        language=language,
        task=task,
        options=options or {},
    )


def submit(job: Job) -> None:
    """Put the job's id on the queue."""
    queueing.submit(job.id)


# ------------------------------------------------------------------- reading


def get_job(user: User | None, job_id: str) -> Job:
    """A job the user may see, or 404 (never 403, so existence does not leak)."""
    job = Job.visible_to(user).where(Job.id == str(job_id)).first()
    if job is None:
        raise not_found("Job")
    return job


def list_jobs(
    user: User | None,
    *,
    status: str | None = None,
    created_after: datetime | None = None,
    search: str | None = None,
    limit: int = 50,
    offset: int = 0,
) -> tuple[list[Job], int]:
    """A page of the user's jobs, newest first, and the total that match."""
    query = Job.visible_to(user)
    if status:
        if status not in JOB_STATUSES:
            raise AppError(400, "INVALID_STATUS", f"status must be one of {', '.join(JOB_STATUSES)}")
        query = query.where(Job.status == status)
    if created_after:
        query = query.where(Job.created_at > created_after)
    if search:
        like = f"%{search}%"
        query = query.where(Job.original_filename**like | Job.text**like)
    total = query.count()
    jobs = list(query.order_by(Job.created_at.desc(), Job.id).limit(limit).offset(offset))
    return jobs, total


def transcript(job: Job, *, words: bool | None = None) -> dict[str, Any]:
    """The transcript of a completed job: text, segments, language and confidence.

    Segments carry their word timestamps when ``words`` is true; by default (None) only when the job asked
    for them: whisper.cpp jobs store them always, for the subtitles, but the transcript's shape is the client's.
    """
    if words is None:
        words = bool((job.options or {}).get("word_timestamps"))
    segments = []
    for s in Segment.for_job(job):
        segment = {
            "id": s.idx,
            "start": round(s.start, 3),
            "end": round(s.end, 3),
            "text": s.text,
            "confidence": None if s.confidence is None else round(s.confidence, 4),
        }
        if words and s.words is not None:
            segment["words"] = s.words
        segments.append(segment)
    return {
        "text": job.text or "",
        "segments": segments,
        "language": job.detected_language,
        "confidence": job.confidence,
    }


def require_transcript(job: Job, *, words: bool | None = None) -> dict[str, Any]:
    """The transcript (``words`` as for :func:`transcript`), or 409 when the job has not completed."""
    if job.status != "completed":
        raise AppError(409, "JOB_NOT_COMPLETED", f"Job is {job.status}; the transcript is not ready")
    return transcript(job, words=words)


def summary(job: Job) -> dict[str, Any]:
    """The list view of a job."""
    preview = (job.text or "")[:200]
    return {
        "job_id": job.id,
        "status": job.status,
        "filename": job.original_filename,
        "model": job.model,
        "task": job.task,
        "stage": job.stage,
        "progress": round(job.progress, 1),
        "created_at": isoformat(job.created_at),
        "completed_at": isoformat(job.completed_at),
        "duration": job.duration,
        "transcript_preview": preview or None,
        "error": job.error if job.status == "failed" else None,
        "kind": job.kind,
        "purged": outputs_purged(job),  # the dashboard offers the video, Purge and Retry by these
    }


def detail(job: Job) -> dict[str, Any]:
    """The full view of a job, with its transcript when completed and its error when failed."""
    body = summary(job)
    body.update(
        {
            "language": job.detected_language or job.language,
            "requested_language": job.language,
            "prompt": job.prompt,
            "updated_at": isoformat(job.updated_at),
            "started_at": isoformat(job.started_at),
            "attempts": job.attempts,
            "processing_seconds": job.processing_seconds,
            "media": job.media_info,
            "requested_model": job.requested_model,  # what the client asked for; "model" is what runs
            "engine": job.engine,
            "loops_suppressed": job.loops_suppressed,  # what transcribed it, and how often it looped
        }
    )
    body["kind"] = job.kind
    body["dub"] = (job.options or {}).get("dub")  # the dub's language, when the job makes one
    body["stages"] = stage_view(job)
    if job.status == "completed":
        body["transcript"] = transcript(job)
    if job.error:
        body["error"] = job.error
    return body


def stage_view(job: Job) -> list[dict[str, Any]]:
    """The job's plan with each stage's status, progress and timestamps."""
    records = job.stages or {}
    return [
        {"name": name, "status": "pending", "progress": 0.0, **records.get(name, {})} for name in plans.plan_for(job)
    ]


def progress(job: Job) -> dict[str, Any]:
    """Progress of a job: percent, time left (seconds and text) and segments done and in all.

    The time left is the worker's estimate, written with each progress update (``workers/pipeline.py``
    ``Eta``); None while unknown (queued, or before the transcription has a pace), 0 once finished.
    ``total_segments`` is None until the first segment; while transcribing it is an estimate (segments
    so far per second of audio transcribed, over the whole audio); once transcribed, the exact count.
    """
    remaining = None
    if job.status == "processing" and job.eta_seconds is not None:
        remaining = round(job.eta_seconds, 1)
    elif job.status in FINISHED:
        remaining = 0
    return {
        "job_id": job.id,
        "status": job.status,
        "progress": round(job.progress, 1),
        "stage": job.stage,
        "estimated_time_remaining": remaining,
        "estimated_time_remaining_text": duration_text(remaining),
        "current_segment": job.segments_done,
        "total_segments": total_segments(job),
    }


def total_segments(job: Job) -> int | None:
    """The job's segment count: exact once transcribed, an estimate while transcribing, else None."""
    if job.status == "completed":
        if job.total_segments is not None:
            return job.total_segments
        return Segment.select().where(Segment.job == job.id).count()  # completed before the count was kept
    return job.total_segments if job.status == "processing" else None


def duration_text(seconds: float | None) -> str | None:
    """Seconds as people read them: "45s", "1m 30s", "1h 2m"; None stays None."""
    if seconds is None:
        return None
    whole = int(max(0.0, seconds) + 0.5)
    if whole < 60:
        return f"{whole}s"
    if whole < 3600:
        return f"{whole // 60}m {whole % 60}s"
    hours, minutes = divmod(int(whole / 60 + 0.5), 60)
    return f"{hours}h {minutes}m"


def wait_finished(job_id: str, timeout: float, interval: float = WAIT_INTERVAL) -> Job | None:
    """Block until the job is completed, failed or cancelled; None after ``timeout`` seconds or on shutdown."""
    deadline = time.monotonic() + timeout
    while True:
        job = Job.get_or_none(Job.id == job_id)
        if job is None or job.status in FINISHED:
            return job
        if time.monotonic() >= deadline or stopping.is_set():
            return None
        time.sleep(interval)


def await_completed(job: Job, timeout: float) -> Job:
    """The job once completed, for the dialects that answer with the result (OpenAI, whisper-asr-webservice).

    504 naming the job when it takes longer than ``timeout`` (it keeps running), 422 when it failed,
    409 when it was cancelled.
    """
    finished = wait_finished(job.id, timeout)
    if finished is None:
        raise AppError(
            504,
            "TIMEOUT",
            f"The transcription did not finish in time; it continues as job {job.id}. "
            f"Poll /api/jobs/{job.id} for the result.",
            {"X-Job-ID": job.id},
        )
    if finished.status != "completed":
        raise AppError(
            422 if finished.status == "failed" else 409,
            "PROCESSING_FAILED",
            f"Job {job.id} {finished.status}: {finished.error or 'no transcript'}",
        )
    return finished


def wait_for(job: Job, seconds: float) -> Job:
    """The job once it has finished, or as it is after ``seconds`` (a long poll).

    Waiting holds a web thread, so only ``MAX_WAITERS`` requests wait at once; the rest answer at once.
    """
    if seconds <= 0 or job.status in FINISHED or not _waiters.acquire(blocking=False):
        return job
    try:
        return wait_finished(job.id, seconds) or Job.get_or_none(Job.id == job.id) or job
    finally:
        _waiters.release()


# ------------------------------------------------------------------- actions


def cancel_job(job: Job) -> Job:
    """Cancel a queued job at once; ask the worker to abort a running one. 409 when finished."""
    if job.status in FINISHED:
        raise AppError(409, "JOB_FINISHED", f"Job is already {job.status}")
    with db.atomic("IMMEDIATE"):
        Job.update(cancel_requested=True, updated_at=utcnow()).where(Job.id == job.id).execute()
        Job.update(status="cancelled", stage="cancelled", completed_at=utcnow()).where(
            (Job.id == job.id) & (Job.status == "queued")
        ).execute()
    return Job.get_by_id(job.id)


def outputs_purged(job: Job) -> bool:
    """True for a completed job whose cached stage outputs (a subtitled video, say) were purged."""
    # Every run records its stages, so a completed job without any lost them to purge_caches.
    return job.status == "completed" and not job.stages


def restartable(job: Job) -> bool:
    """True when a retry may queue the job again: it failed, was cancelled, or its outputs were purged."""
    return job.status in ("failed", "cancelled") or outputs_purged(job)


def restart_job(job: Job) -> Job:
    """Queue a failed, cancelled or purged job again; it resumes after its cached stages. 409 otherwise."""
    if not restartable(job):
        raise AppError(
            409, "JOB_NOT_RESTARTABLE", f"Only failed, cancelled or purged jobs can be restarted; job is {job.status}"
        )
    job.update_fields(
        status="queued",
        stage="queued",
        progress=0.0,
        error=None,
        attempts=0,
        cancel_requested=False,
        completed_at=None,
        worker_id=None,
    )
    submit(job)
    return job


def delete_job(cfg: Mapping[str, Any], job: Job) -> None:
    """Remove the job row and every file it owns (never a media-library source file)."""
    layout = Layout(cfg["DATA_DIR"])
    with db.atomic("IMMEDIATE"):
        Job.update(cancel_requested=True).where(Job.id == job.id).execute()
        Segment.delete().where(Segment.job == job).execute()
        Job.delete().where(Job.id == job.id).execute()
    if job.upload_path:
        (Path(cfg["DATA_DIR"]) / job.upload_path).unlink(missing_ok=True)
    layout.transcript_path(job.id).unlink(missing_ok=True)
    layout.job_log(job.id).unlink(missing_ok=True)
    shutil.rmtree(layout.job_cache(job.id), ignore_errors=True)


def purge_caches(cfg: Mapping[str, Any], job: Job) -> Job:
    """Forget every cached stage output so the next run starts from the beginning (409 while running).

    A completed job stays completed (its transcript is in the database), and a retry runs it again.
    """
    if job.status == "processing":
        raise AppError(409, "JOB_RUNNING", "The job is running; cancel it before purging its caches")
    shutil.rmtree(Layout(cfg["DATA_DIR"]).job_cache(job.id), ignore_errors=True)
    job.update_fields(stages={})
    return job
