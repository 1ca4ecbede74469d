"""Chunked uploads: sessions, chunk files on disk, and assembly of the whole file into a job.

A chunk is streamed to a temporary file beside its final name, fsynced, renamed to
``tmp/chunks/<session>/<n>.part`` and only then recorded, all under the session's lock, so a
crash or a dropped connection never leaves half a chunk counted. Finalizing streams the parts
into one file in ``tmp/`` (never the whole file in memory) and hands it to
:func:`app.services.jobs.create_job`. Chunks are numbered from 1 to N, as in the full API document's
example, everywhere: routes, listings, errors and file names.
"""

from __future__ import annotations

import hashlib
import logging
import os
import shutil
import time
import uuid
from collections.abc import Mapping
from datetime import timedelta
from pathlib import Path
from typing import Any, BinaryIO

from app.errors import AppError, bad_request, not_found
from app.models import Job, UploadChunk, UploadSession, User, db, isoformat, utcnow
from app.services import jobs
from app.services.storage import AtomicFile, Layout

log = logging.getLogger(__name__)

MAX_CHUNKS = 10_000  # bounds the rows per session and the checksum list a client sends
BLOCK = 1024 * 1024  # bytes read or written at a time: memory stays flat whatever the chunk size
SHOWN = 20  # chunk numbers named in an error message at most


# -------------------------------------------------------------------- paths


def chunk_root(cfg: Mapping[str, Any]) -> Path:
    """The folder holding one sub-folder of chunk files per session."""
    return Layout(cfg["DATA_DIR"]).folder("tmp") / "chunks"


def chunk_path(cfg: Mapping[str, Any], session_id: str, number: int) -> Path:
    """Where a received chunk is kept."""
    return chunk_root(cfg) / session_id / f"{number}.part"


def _ttl(cfg: Mapping[str, Any]) -> timedelta:
    return timedelta(seconds=int(cfg["CHUNK_SESSION_TTL_SECONDS"]))


# ------------------------------------------------------------------ sessions


def initialize(
    cfg: Mapping[str, Any],
    user: User,
    *,
    filename: str,
    file_size: int,
    chunk_size: int,
    content_type: str | None = None,
) -> UploadSession:
    """Open an upload session after checking sizes, the user's open sessions and free disk."""
    if file_size < 1:
        raise AppError(422, "INVALID_FIELD", "file_size must be a positive number of bytes")
    limit = cfg.get("MAX_CONTENT_LENGTH")
    if limit and file_size > limit:
        raise AppError(413, "PAYLOAD_TOO_LARGE", f"file_size is larger than the upload limit of {limit} bytes")
    if not 1 <= chunk_size <= int(cfg["MAX_CHUNK_SIZE"]):
        raise AppError(422, "INVALID_CHUNK_SIZE", f"chunk_size must be between 1 and {cfg['MAX_CHUNK_SIZE']} bytes")
    total = -(-file_size // chunk_size)
    if total > MAX_CHUNKS:
        raise AppError(
            422,
            "TOO_MANY_CHUNKS",
            f"{total} chunks is more than {MAX_CHUNKS}; use a chunk_size of at "
            f"least {-(-file_size // MAX_CHUNKS)} bytes",
        )
    purge_expired_sessions(cfg)  # cheap: one indexed query when nothing has expired
    open_sessions = UploadSession.select().where(UploadSession.user == user).count()
    if open_sessions >= int(cfg["MAX_UPLOAD_SESSIONS_PER_USER"]):
        raise AppError(
            409,
            "TOO_MANY_UPLOAD_SESSIONS",
            f"You have {open_sessions} unfinished chunked uploads; finalize or delete one first",
        )
    # The chunks and the assembled copy sit side by side until the job takes the file.
    free = shutil.disk_usage(cfg["DATA_DIR"]).free
    if free < 2 * file_size:
        raise AppError(507, "INSUFFICIENT_STORAGE", f"Not enough free disk space for a {file_size} byte upload")
    now = utcnow()
    with db.atomic("IMMEDIATE"):
        return UploadSession.create(
            id=uuid.uuid4().hex,
            user=user,
            filename=filename,
            file_size=file_size,
            chunk_size=chunk_size,
            total_chunks=total,
            content_type=content_type,
            created_at=now,
            expires_at=now + _ttl(cfg),
        )


def get_session(user: User, session_id: str) -> UploadSession:
    """The caller's own live session, or 404 (someone else's session does not exist for them)."""
    session = UploadSession.get_or_none((UploadSession.id == str(session_id)) & (UploadSession.user == user))
    if session is None or session.expires_at < utcnow():
        raise not_found("Upload session")
    return session


def summary(session: UploadSession) -> dict[str, Any]:
    """What initialize answers: id, expiry and chunk count."""
    return {
        "session_id": session.id,
        "expires_at": isoformat(session.expires_at),
        "total_chunks": session.total_chunks,
        "chunk_size": session.chunk_size,
        "file_size": session.file_size,
    }


def status(session: UploadSession) -> dict[str, Any]:
    """The session with the chunks received so far and those still missing, for resuming."""
    chunks = list(UploadChunk.select().where(UploadChunk.session == session).order_by(UploadChunk.number))
    received = {c.number for c in chunks}
    received_size = sum(c.size for c in chunks)
    return {
        **summary(session),
        "filename": session.filename,
        "content_type": session.content_type,
        "status": session.status,
        "created_at": isoformat(session.created_at),
        "received_chunks": [c.number for c in chunks],
        "missing_chunks": [n for n in _numbers(session) if n not in received],
        "chunks": [{"chunk_number": c.number, "size": c.size, "checksum": c.checksum} for c in chunks],
        "received_size": received_size,
        "progress": _progress(received_size, session.file_size),
    }


def discard(cfg: Mapping[str, Any], session_id: str) -> None:
    """Forget a session and delete its chunk files."""
    with db.atomic("IMMEDIATE"):
        UploadSession.delete().where(UploadSession.id == session_id).execute()  # chunk rows cascade
    shutil.rmtree(chunk_root(cfg) / session_id, ignore_errors=True)


def purge_expired_sessions(cfg: Mapping[str, Any]) -> int:
    """Delete expired sessions with their chunks, and chunk folders no session owns; the number of sessions."""
    now = utcnow()
    purged = 0
    for row in UploadSession.select(UploadSession.id).where(UploadSession.expires_at < now):
        with db.atomic("IMMEDIATE"):
            # Checked again: a chunk that arrived meanwhile renewed the session.
            gone = (
                UploadSession.delete().where((UploadSession.id == row.id) & (UploadSession.expires_at < now)).execute()
            )
        if gone:
            shutil.rmtree(chunk_root(cfg) / row.id, ignore_errors=True)
            purged += 1
    root = chunk_root(cfg)
    if root.is_dir():
        live = {row.id for row in UploadSession.select(UploadSession.id)}
        # Only old folders: one created after ``live`` was read belongs to a session this loop cannot see.
        cutoff = time.time() - _ttl(cfg).total_seconds()
        for folder in root.iterdir():
            if folder.name not in live and folder.stat().st_mtime < cutoff:
                shutil.rmtree(folder, ignore_errors=True)
    if purged:
        log.info("purged %d expired upload sessions", purged)
    return purged


# -------------------------------------------------------------------- chunks


def _numbers(session: UploadSession) -> range:
    """The session's chunk numbers, 1 to N."""
    return range(1, session.total_chunks + 1)


def expected_size(session: UploadSession, number: int) -> int:
    """The exact size of chunk ``number`` (1 to N): ``chunk_size``, or the remainder for the last one."""
    if number not in _numbers(session):
        raise bad_request(f"chunk_number must be between 1 and {session.total_chunks}", "INVALID_CHUNK_NUMBER")
    if number < session.total_chunks:
        return session.chunk_size
    return session.file_size - session.chunk_size * (session.total_chunks - 1)


def _progress(received_bytes: int, file_size: int) -> float:
    """The percent of the file's bytes received so far."""
    return round(100.0 * received_bytes / file_size, 2)


def _require_open(session: UploadSession) -> None:
    if session.status != "open":
        raise AppError(409, "UPLOAD_FINALIZING", "The upload is being finalized; it takes no more chunks")


def receive_chunk(
    cfg: Mapping[str, Any], session: UploadSession, number: int, stream: BinaryIO, content_length: int | None
) -> dict[str, Any]:
    """Store one chunk from a request body stream; sending the same chunk again replaces it."""
    expected = expected_size(session, number)
    _require_open(session)
    if content_length is not None and content_length != expected:
        raise bad_request(
            f"chunk {number} must be {expected} bytes, the request has {content_length}", "CHUNK_SIZE_MISMATCH"
        )
    # .tmp, not .part: only a complete, recorded chunk is named <n>.part.
    with AtomicFile(chunk_path(cfg, session.id, number), suffix=".tmp") as part:
        digest, size = hashlib.sha256(), 0
        with open(part.temp, "wb") as out:
            while block := stream.read(min(BLOCK, expected + 1 - size)):
                size += len(block)
                if size > expected:
                    break
                digest.update(block)
                out.write(block)
            if size != expected:
                raise bad_request(
                    f"chunk {number} must be {expected} bytes, received {'more' if size > expected else size}",
                    "CHUNK_SIZE_MISMATCH",
                )
        part.sync()  # before the write lock: nobody waits on the disk
        checksum = digest.hexdigest()
        with db.atomic("IMMEDIATE"):
            # Under the write lock, so finalize sees either all of this chunk or none of it.
            current = UploadSession.get_or_none(UploadSession.id == session.id)
            if current is None:
                raise not_found("Upload session")
            _require_open(current)
            part.commit()
            UploadChunk.insert(session=session.id, number=number, size=size, checksum=checksum).on_conflict(
                conflict_target=[UploadChunk.session, UploadChunk.number],
                update={UploadChunk.size: size, UploadChunk.checksum: checksum},
            ).execute()  # portable: SQLite's REPLACE has no PostgreSQL form
            UploadSession.update(expires_at=utcnow() + _ttl(cfg)).where(UploadSession.id == session.id).execute()
            received = UploadChunk.select().where(UploadChunk.session == session.id)
            received_count, received_bytes = received.count(), sum(c.size for c in received)
    return {
        "chunk_number": number,
        "received_size": size,
        "checksum": checksum,
        "progress": _progress(received_bytes, session.file_size),
        "received_chunks": received_count,
        "total_chunks": session.total_chunks,
    }


# ------------------------------------------------------------------ finalize


def finalize(
    cfg: Mapping[str, Any],
    user: User,
    session: UploadSession,
    *,
    chunk_checksums: list[str],
    model: str | None = None,
    language: str | None = None,
    task: str | None = None,
    prompt: str | None = None,
    dub: str | None = None,
) -> Job:
    """Check every chunk against the client's checksums, assemble the file and queue a job."""
    # Job options first: a typo in the model name must not cost assembling a large file.
    jobs.validate_model(cfg, model)
    jobs.validate_task(task)
    jobs.validate_language(language)
    with db.atomic("IMMEDIATE"):
        locked = (
            UploadSession.update(status="finalizing", expires_at=utcnow() + _ttl(cfg))
            .where((UploadSession.id == session.id) & (UploadSession.status == "open"))
            .execute()
        )
    if not locked:
        raise AppError(409, "UPLOAD_FINALIZING", "The upload is already being finalized")
    try:
        chunks = _verified_chunks(session, chunk_checksums)
        path = _assemble(cfg, session, chunks)
        job = jobs.create_job(
            cfg, user, path, session.filename, model=model, language=language, task=task, prompt=prompt, dub=dub
        )  # removes the file itself on any error
    except BaseException:
        with db.atomic("IMMEDIATE"):  # let the client fix what was wrong and finalize again
            UploadSession.update(status="open").where(UploadSession.id == session.id).execute()
        raise
    discard(cfg, session.id)
    return job


def _named(numbers: list[int]) -> str:
    shown = ", ".join(str(n) for n in numbers[:SHOWN])
    return shown + (f" and {len(numbers) - SHOWN} more" if len(numbers) > SHOWN else "")


def _verified_chunks(session: UploadSession, checksums: list[str]) -> dict[int, UploadChunk]:
    chunks = {c.number: c for c in UploadChunk.select().where(UploadChunk.session == session)}
    missing = [n for n in _numbers(session) if n not in chunks]
    if missing:
        raise bad_request(f"chunks not received yet: {_named(missing)}", "MISSING_CHUNKS")
    if len(checksums) != session.total_chunks:
        raise bad_request(
            f"chunk_checksums must list {session.total_chunks} sha256 checksums, one per chunk "
            f"in order; it has {len(checksums)}",
            "CHECKSUM_MISMATCH",
        )
    wrong = [n for n, given in enumerate(checksums, start=1) if given.strip().lower() != chunks[n].checksum]
    if wrong:
        raise bad_request(
            f"checksums do not match the received data for chunks {_named(wrong)}; upload those chunks again",
            "CHECKSUM_MISMATCH",
        )
    total = sum(c.size for c in chunks.values())
    if total != session.file_size:
        raise bad_request(f"received {total} bytes, file_size is {session.file_size}", "SIZE_MISMATCH")
    return chunks


def _assemble(cfg: Mapping[str, Any], session: UploadSession, chunks: dict[int, UploadChunk]) -> Path:
    """Concatenate the chunk files into a new file in ``tmp/``, checking each against its recorded checksum."""
    target = Layout(cfg["DATA_DIR"]).temp_file(".upload")
    buffer = bytearray(BLOCK)
    view = memoryview(buffer)
    try:
        with open(target, "wb") as out:
            for number in _numbers(session):
                digest, size = hashlib.sha256(), 0
                try:
                    with open(chunk_path(cfg, session.id, number), "rb") as part:
                        while read := part.readinto(buffer):
                            digest.update(view[:read])
                            out.write(view[:read])
                            size += read
                except FileNotFoundError:
                    size = -1
                chunk = chunks[number]
                if size != chunk.size or digest.hexdigest() != chunk.checksum:
                    # The file on disk is not what was received: forget it so the client sends it again.
                    with db.atomic("IMMEDIATE"):
                        UploadChunk.delete().where(UploadChunk.id == chunk.id).execute()
                    raise bad_request(f"chunk {number} is damaged on the server; upload it again", "MISSING_CHUNKS")
            out.flush()
            os.fsync(out.fileno())  # the chunks are deleted once the job has the file
    except BaseException:
        target.unlink(missing_ok=True)
        raise
    return target
