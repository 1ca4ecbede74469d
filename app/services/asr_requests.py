"""Requests of the whisper-asr-webservice dialect (Bazarr's Whisper provider): raw PCM, models, duplicates.

Every request is an ordinary job made by :func:`app.services.jobs.create_job`. What this module adds:

- ``encode=false`` uploads are raw PCM (signed 16-bit little-endian, mono, 16 kHz, no header). Their length is
  what the bytes hold, checked against ``MAX_MEDIA_SECONDS``; they are stored as WAV so the pipeline reads
  them like any other file.
- the model: the default one, unless the request needs a multilingual model (translation, a language other
  than English, detection) and the default is English-only; then a multilingual one, or a 422 naming one to install.
- duplicates: a request joins an unfinished job with the same ``video_file``, task, language and output, or a
  job (unfinished or completed) that reads the same audio bytes with the same settings, instead of
  transcribing twice. Bazarr asks again for the same episode on its periodic searches.
- language detection: a job over at most the first 30 s of the audio.
"""

from __future__ import annotations

import hashlib
import logging
import struct
import subprocess
import threading
from collections.abc import Mapping
from importlib import metadata
from pathlib import Path
from typing import Any

from app.errors import AppError
from app.models import Job, User
from app.services import jobs, languages, model_aliases
from app.services.storage import Layout, clean_filename
from workers import audio, modelstore

log = logging.getLogger(__name__)

OUTPUTS = ("txt", "vtt", "srt", "tsv", "json")
PCM_BYTES_PER_SECOND = audio.SAMPLE_RATE * 2  # 16-bit mono
DETECT_SECONDS = 30  # one whisper window: what language detection looks at
PREFERRED_MULTILINGUAL = "base"  # built offline by `models install base`, so the one the 422 names
WAV_HEADER_BYTES = 44
COPY_CHUNK = 1 << 20
_join_lock = threading.Lock()  # find-or-create is one step, so two identical requests never make two jobs


# ----------------------------------------------------------------------- raw PCM


def pcm_seconds(cfg: Mapping[str, Any], path: Path) -> float:
    """The length of a raw PCM upload, from its size; 400 when empty or odd, 413 past ``MAX_MEDIA_SECONDS``."""
    size = path.stat().st_size
    if size == 0:
        raise AppError(400, "EMPTY_FILE", "The uploaded audio is empty")
    if size % 2:
        raise AppError(
            400,
            "INVALID_PCM",
            f"encode=false takes raw PCM: signed 16-bit little-endian, mono, 16 kHz, "
            f"no header, so an even number of bytes; got {size}. Send encode=true for a media file",
        )
    seconds = size / PCM_BYTES_PER_SECOND
    limit = float(cfg["MAX_MEDIA_SECONDS"])
    if seconds > limit or size + WAV_HEADER_BYTES - 8 > 0xFFFFFFFF:  # a WAV's sizes are 32-bit
        raise AppError(
            413,
            "MEDIA_TOO_LONG",
            f"The audio is {audio.duration_text(seconds)} long; the limit is "
            f"{audio.duration_text(limit)} (WT_MAX_MEDIA_SECONDS)",
        )
    return seconds


def wav_header(data_bytes: int) -> bytes:
    """The 44-byte header of a 16 kHz mono 16-bit PCM WAV file holding ``data_bytes`` of samples."""
    return struct.pack(
        "<4sI4s4sIHHIIHH4sI",
        b"RIFF",
        36 + data_bytes,
        b"WAVE",
        b"fmt ",
        16,
        1,
        1,
        audio.SAMPLE_RATE,
        PCM_BYTES_PER_SECOND,
        2,
        16,
        b"data",
        data_bytes,
    )


def pcm_to_wav(cfg: Mapping[str, Any], raw: Path, max_seconds: float | None = None) -> Path:
    """Store raw PCM (all of it, or its first ``max_seconds``) as a WAV file in ``tmp/``; ``raw`` is removed."""
    size = raw.stat().st_size
    if max_seconds is not None:
        size = min(size, int(max_seconds) * PCM_BYTES_PER_SECOND)
    wav = Layout(cfg["DATA_DIR"]).temp_file(".wav")
    try:
        with open(raw, "rb") as source, open(wav, "wb") as target:
            target.write(wav_header(size))
            left = size
            while left > 0:
                chunk = source.read(min(COPY_CHUNK, left))
                if not chunk:
                    break
                target.write(chunk)
                left -= len(chunk)
    except BaseException:
        wav.unlink(missing_ok=True)
        raise
    finally:
        raw.unlink(missing_ok=True)
    return wav


def media_head_as_wav(cfg: Mapping[str, Any], media: Path, seconds: float) -> Path:
    """The first ``seconds`` of a media file's first audio track as 16 kHz mono WAV in ``tmp/``; ``media`` is removed.

    The media is probed first, so unreadable or too long media is a 4xx as on any upload.
    """
    wav = Layout(cfg["DATA_DIR"]).temp_file(".wav")
    try:
        jobs.probe_upload(cfg, media)
        command = audio.decode_command(media, str(wav), seconds, output_format=audio.WAV_FORMAT)
        timeout = min(120, float(cfg["FFMPEG_TIMEOUT_SECONDS"]))
        try:
            result = subprocess.run(command, capture_output=True, timeout=timeout, check=False)
        except subprocess.TimeoutExpired as exc:
            raise AppError(400, "MEDIA_TIMEOUT", f"Reading the media took longer than {timeout:.0f} s") from exc
        if result.returncode != 0 or wav.stat().st_size <= WAV_HEADER_BYTES:
            raise AppError(415, "UNSUPPORTED_MEDIA", "The audio of the file could not be decoded")
    except BaseException:
        wav.unlink(missing_ok=True)
        raise
    finally:
        media.unlink(missing_ok=True)
    return wav


def prepare_upload(
    cfg: Mapping[str, Any],
    upload: Path,
    filename: str,
    *,
    encode: bool,
    video_file: str | None = None,
    head_seconds: float | None = None,
) -> tuple[Path, str]:
    """The file a job reads and its display name: raw PCM as WAV, media as it is (or its head, as WAV).

    ``head_seconds`` keeps only the beginning (language detection). The display name is the video's when
    ``video_file`` names one (Bazarr's uploads are all called ``audio_file``). ``upload`` is taken or removed.
    """
    name = clean_filename(video_file or filename)
    stem = Path(name).stem or "audio"
    try:
        if not encode:
            pcm_seconds(cfg, upload)
            return pcm_to_wav(cfg, upload, head_seconds), f"{stem}.wav"
        if head_seconds is not None:
            return media_head_as_wav(cfg, upload, head_seconds), f"{stem}.wav"
    except BaseException:
        upload.unlink(missing_ok=True)
        raise
    return upload, name


def file_sha256(path: Path) -> str:
    """The sha256 of a file, hex."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(COPY_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


# ------------------------------------------------------------------------- models


def needs_multilingual(task: str, language: str | None) -> bool:
    """True for requests an English-only model cannot serve: translation, another language, or detection."""
    return task == "translate" or language != "en"


def multilingual_model(cfg: Mapping[str, Any], purpose: str) -> str:
    """The multilingual model to use: the default when it is one, else ``base``, else the smallest installed.

    422 naming the model to install when only English-only models are installed.
    """
    folder = cfg["MODELS_DIR"]
    default = model_aliases.resolve(cfg, cfg["DEFAULT_MODEL"])
    installed = modelstore.installed(folder)
    candidates = [name for name in installed if modelstore.is_multilingual(folder, name)]
    if default in candidates:
        return default
    if PREFERRED_MULTILINGUAL in candidates:
        return PREFERRED_MULTILINGUAL
    if candidates:
        return min(candidates, key=lambda name: modelstore.model_path(folder, name).stat().st_size)
    raise AppError(
        422,
        "MULTILINGUAL_MODEL_REQUIRED",
        f"{purpose} needs a multilingual model, and only English-only models are installed "
        f"({', '.join(installed) or 'none'}). Install one with: "
        f"{modelstore.install_hint(PREFERRED_MULTILINGUAL)}",
    )


def model_for(cfg: Mapping[str, Any], task: str, language: str | None) -> str | None:
    """The model a transcription runs on: None (the default) unless that is English-only and the request needs more.

    With no multilingual model installed, audio of unknown language is transcribed as English by the
    English-only default, as whisper-asr-webservice does with an ``.en`` model.
    """
    default = model_aliases.resolve(cfg, cfg["DEFAULT_MODEL"])
    if not needs_multilingual(task, language) or modelstore.is_multilingual(cfg["MODELS_DIR"], default):
        return None
    if language is None and task == "transcribe":
        try:
            return multilingual_model(cfg, "Detecting the language")
        except AppError:
            return None
    what = "Translation" if task == "translate" else f"Transcribing {languages.name_of(language)}"
    return multilingual_model(cfg, what)


# --------------------------------------------------------------------- duplicates


def _same_settings(job: Job, *, model: str, task: str, language: str | None, prompt: str | None, words: bool) -> bool:
    return (
        job.model == model
        and job.task == task
        and job.language == language
        and job.prompt == prompt
        and bool(job.options.get("word_timestamps")) == words
    )


def find_joinable(
    user: User,
    *,
    sha256: str,
    model: str,
    task: str,
    language: str | None,
    prompt: str | None,
    words: bool,
    video_file: str | None,
    output: str,
) -> Job | None:
    """A job this request can take its answer from instead of making another, or None.

    An unfinished job of the same ``video_file``, task, language and output; or a queued, running or
    completed job over the same audio bytes with the same model, task, language, prompt and word timestamps
    (the same input and settings give the same transcript).
    """
    if video_file:
        for job in Job.unfinished_visible_to(user):
            options = job.options or {}
            if (
                options.get("video_file") == video_file
                and job.task == task
                and job.language == language
                and options.get("output") == output
            ):
                return job
    for job in Job.with_upload_hash(user, sha256):
        if job.status in ("queued", "processing", "completed") and _same_settings(
            job, model=model, task=task, language=language, prompt=prompt, words=words
        ):
            return job
    return None


def submit(
    cfg: Mapping[str, Any],
    user: User,
    upload: Path,
    filename: str,
    *,
    model: str | None,
    task: str,
    language: str | None,
    prompt: str | None,
    options: dict[str, Any],
) -> tuple[Job, bool]:
    """The job for this request and whether it joined an existing one; the upload is taken or removed either way."""
    try:
        sha256 = file_sha256(upload)
        resolved = jobs.validate_model(cfg, model)
        with _join_lock:
            joined = find_joinable(
                user,
                sha256=sha256,
                model=resolved,
                task=task,
                language=language,
                prompt=prompt,
                words=bool(options.get("word_timestamps")),
                video_file=options.get("video_file"),
                output=options.get("output", ""),
            )
            if joined is None:
                job = jobs.create_job(
                    cfg,
                    user,
                    upload,
                    filename,
                    model=model,
                    language=language,
                    task=task,
                    prompt=prompt,
                    options=options,
                )
                job.update_fields(upload_sha256=sha256)
                return job, False
    finally:
        upload.unlink(missing_ok=True)  # create_job moved it into place, or nobody needs it
    log.info("whisper-asr-webservice request joined job %s (%s)", joined.id, joined.status, extra={"job_id": joined.id})
    return joined, True


# ------------------------------------------------------------------------ answers


def detection(job: Job) -> dict[str, Any]:
    """whisper-asr-webservice's language answer from a finished detection job; 422 when no language was heard.

    ``confidence`` is the transcript's mean token probability in that language (0 when unknown): the job
    pipeline keeps no separate probability of the language itself.
    """
    code = job.detected_language
    if not code:
        raise AppError(422, "LANGUAGE_NOT_DETECTED", f"No language could be detected in job {job.id}")
    return {
        "detected_language": languages.name_of(code),
        "language_code": code,
        "confidence": round(float(job.confidence or 0.0), 4),
    }


def appliance_version() -> str:
    """The installed package's version."""
    try:
        return metadata.version("whisper-transcriber")
    except metadata.PackageNotFoundError:
        return "0.0.0"
