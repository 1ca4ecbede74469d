"""Job state changes made by the workers: progress, stage records, results and failures.

The rules for what users may do with jobs live in ``app/services/jobs.py``; this module holds
the transitions the pipeline drives, each in its own IMMEDIATE transaction.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from app.db import opened_data_dir
from app.models import Job, Segment, db, isoformat, utcnow
from app.services import totals
from app.services.jobs import transcript
from app.services.storage import Layout, atomic_write


def set_progress(job_id: str, stage: str, percent: float, **extra: Any) -> None:
    """Record stage and overall percent for a processing job."""
    with db.atomic("IMMEDIATE"):
        Job.update(stage=stage, progress=min(100.0, max(0.0, percent)), updated_at=utcnow(), **extra).where(
            (Job.id == job_id) & (Job.status == "processing")
        ).execute()


def public_reason(reason: str, data_dir: str | Path | None = None) -> str:
    """A failure reason as users read it: paths in the data dir relative to it, so no server layout shows.

    Reasons come from anywhere (ffmpeg, OSError, the engine); both stage records and the job's error pass here.
    """
    root = data_dir or _data_dir()
    if not root:
        return reason
    for prefix in dict.fromkeys((str(root).rstrip("/"), os.path.realpath(root))):
        if len(prefix) <= 1:
            continue  # a data dir of "/" has nothing to hide
        reason = re.sub(re.escape(prefix) + r"/+", "", reason)
        reason = re.sub(re.escape(prefix) + r"(?![\w.-])", "<data dir>", reason)
    return reason


def _data_dir() -> Path | None:
    # The data dir that app.db.open_database was given (boot passes it, whichever database the URL names).
    return opened_data_dir()


def update_stage(job_id: str, name: str, **fields: Any) -> dict[str, Any]:
    """Merge ``fields`` into one stage's record (read-modify-write in one IMMEDIATE transaction)."""
    if isinstance(fields.get("error"), str):
        fields["error"] = public_reason(fields["error"])
    with db.atomic("IMMEDIATE"):
        row = Job.select(Job.stages).where(Job.id == job_id).first()
        if row is None:
            return {}
        stages = row.stages or {}
        stages[name] = {**stages.get(name, {}), **fields, "updated_at": isoformat(utcnow())}
        Job.update(stages=stages, updated_at=utcnow()).where(Job.id == job_id).execute()
    return stages


def record_progress(
    job_id: str,
    label: str,
    overall: float,
    stage: str,
    stage_percent: float,
    segments_done: int,
    *,
    eta_seconds: float | None = None,
    total_segments: int | None = None,
) -> None:
    """The job's overall and its running stage's progress, time left and segment counts, in one transaction."""
    with db.atomic("IMMEDIATE"):  # the two writes below nest as savepoints: one commit, one fsync
        set_progress(
            job_id,
            label,
            overall,
            segments_done=segments_done,
            total_segments=total_segments,
            eta_seconds=None if eta_seconds is None else round(eta_seconds, 1),
        )
        update_stage(job_id, stage, progress=stage_percent)


def recent_speed(model: str, jobs: int = 20) -> float | None:
    """Seconds of audio per second of processing over the model's latest completed jobs; None without any."""
    rows = (
        Job.select(Job.duration, Job.processing_seconds)
        .where((Job.model == model) & (Job.status == "completed") & (Job.duration > 0) & (Job.processing_seconds > 0))
        .order_by(Job.completed_at.desc())
        .limit(jobs)
    )
    audio = spent = 0.0
    for row in rows:
        audio, spent = audio + row.duration, spent + row.processing_seconds
    return audio / spent if spent > 0 else None


def cancel_requested(job_id: str) -> bool:
    """True when the user cancelled or deleted the job."""
    row = Job.select(Job.cancel_requested).where(Job.id == job_id).first()
    return row is None or row.cancel_requested


def store_transcript(
    cfg: Mapping[str, Any],
    job: Job,
    segments: list[dict[str, Any]],
    *,
    language: str | None,
    engine: str | None = None,
    loops_suppressed: int = 0,
) -> None:
    """Replace the job's segments and text in one transaction, then write ``transcripts/<id>.json``."""
    text = " ".join(s["text"].strip() for s in segments if s["text"].strip())
    confidences = [s["confidence"] for s in segments if s.get("confidence") is not None]
    confidence = round(sum(confidences) / len(confidences), 4) if confidences else None
    with db.atomic("IMMEDIATE"):
        if Job.get_or_none(Job.id == job.id) is None:
            return  # deleted while running
        Segment.delete().where(Segment.job == job.id).execute()
        if segments:
            Segment.insert_many(
                [
                    {
                        "job": job.id,
                        "idx": i,
                        "start": s["start"],
                        "end": s["end"],
                        "text": s["text"].strip(),
                        "confidence": s.get("confidence"),
                        "words": s.get("words"),
                    }
                    for i, s in enumerate(segments)
                ]
            ).execute()
        # The counts become exact here: the worker's progress writes are throttled and the total was an estimate.
        Job.update(
            text=text,
            confidence=confidence,
            detected_language=language,
            segments_done=len(segments),
            total_segments=len(segments),
            engine=engine,
            loops_suppressed=loops_suppressed,
            updated_at=utcnow(),
        ).where(Job.id == job.id).execute()
    job = Job.get_by_id(job.id)
    atomic_write(
        Layout(cfg["DATA_DIR"]).transcript_path(job.id),
        json.dumps(
            {"job_id": job.id, "filename": job.original_filename, "model": job.model, **transcript(job)},
            ensure_ascii=False,
        ),
    )


def complete_job(job_id: str, processing_seconds: float) -> None:
    """Mark a job completed once every stage has finished."""
    now, seconds = utcnow(), round(processing_seconds, 3)
    with db.atomic("IMMEDIATE"):
        done = totals.before_completion()  # first: totals started from the jobs on record must not count this one
        changed = (
            Job.update(
                status="completed",
                stage="completed",
                progress=100.0,
                completed_at=now,
                updated_at=now,
                error=None,
                processing_seconds=seconds,
            )
            .where((Job.id == job_id) & (Job.status == "processing"))
            .execute()
        )
        if changed:
            finished = Job.get_by_id(job_id)
            totals.add_completion(done, finished.duration, seconds, finished.loops_suppressed)


def fail(job_id: str, reason: str) -> None:
    """Mark a job failed with a reason the user can read (paths relative to the data dir)."""
    reason, now = public_reason(reason), utcnow()
    with db.atomic("IMMEDIATE"):
        Job.update(status="failed", stage="failed", error=reason, completed_at=now, updated_at=now).where(
            Job.id == job_id
        ).execute()


def mark_cancelled(job_id: str) -> None:
    """Record that a running job stopped on request; partial text is discarded."""
    now = utcnow()
    with db.atomic("IMMEDIATE"):
        Segment.delete().where(Segment.job == job_id).execute()
        Job.update(status="cancelled", stage="cancelled", text=None, completed_at=now, updated_at=now).where(
            Job.id == job_id
        ).execute()
