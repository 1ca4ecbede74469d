"""whisper-asr-webservice routes (Bazarr's Whisper provider): ``POST /asr``, ``POST /detect-language``, ``GET /status``.

Thin adapters over ``app/services/asr_requests.py`` and the ordinary job pipeline: every request is a job,
listed and counted like any other, and the request holds until it is done. Options come as query parameters,
the audio as the multipart field ``audio_file``. Errors are the standard JSON error with a non-2xx status, never
a 200: Bazarr saves the body of a 200 as the subtitle file. Bazarr sends no credentials, so callers from
``ANONYMOUS_NETWORKS`` may use these routes without any (as the no-login service user, counted per address).
"""

from __future__ import annotations

from pathlib import Path

from flask import Blueprint, current_app, g, jsonify, request

from app.api.export_routes import download_response
from app.errors import AppError
from app.security import login_required, open_to_anonymous_networks
from app.services import asr_requests, exports, jobs
from app.services.uploads import take_multipart_file

bp = Blueprint("asr", __name__)
open_to_anonymous_networks(bp)  # Bazarr's provider has no setting for credentials

TRUE, FALSE = ("true", "1", "yes", "on"), ("false", "0", "no", "off")
MAX_VIDEO_FILE = 4096  # characters of the informational video path


def _param(name: str) -> str | None:
    """A query parameter (where whisper-asr-webservice takes them), else a form field of the same name."""
    return request.args[name] if name in request.args else request.form.get(name)


def _flag(name: str, default: bool) -> bool:
    raw = (_param(name) or "").strip().lower()
    if not raw:
        return default
    if raw not in TRUE + FALSE:
        raise AppError(400, "INVALID_PARAMETER", f"{name} must be true or false")
    return raw in TRUE


def _video_file() -> str | None:
    value = (_param("video_file") or "").strip()
    if len(value) > MAX_VIDEO_FILE:
        raise AppError(400, "INVALID_PARAMETER", f"video_file is longer than {MAX_VIDEO_FILE} characters")
    return value or None


def _subtitle_options() -> dict[str, str]:
    """The subtitle options sent (whisper-asr-webservice's names, and ``max_cue_seconds``), checked before any job."""
    options = {name: value for name in exports.SUBTITLE_OPTIONS if (value := _param(name)) is not None}
    exports.subtitle_layout(options)  # a bad value is a 400 now, not after the transcription
    return options


def _output() -> str:
    output = (_param("output") or "txt").strip().lower()
    if output not in asr_requests.OUTPUTS:
        raise AppError(400, "UNSUPPORTED_FORMAT", f"output must be one of {', '.join(asr_requests.OUTPUTS)}")
    return output


def _audio(encode: bool, video_file: str | None, head_seconds: float | None = None) -> tuple[Path, str]:
    path, filename = take_multipart_file("audio_file")
    return asr_requests.prepare_upload(
        current_app.config, path, filename, encode=encode, video_file=video_file, head_seconds=head_seconds
    )


@bp.post("/asr")
@login_required("jobs:create")
def asr():
    """Transcribe or translate ``audio_file``; answers with the document once the job is done.

    Query: `task` transcribe|translate, `language` (empty: detect), `output` txt|vtt|srt|tsv|json (default txt),
    `encode` (default true: any media ffmpeg reads; false: raw s16le mono 16 kHz PCM, as Bazarr sends),
    `word_timestamps`, `vad_filter`, `initial_prompt`, `video_file` (informational), and for srt and vtt
    `max_line_width`, `max_line_count`, `max_cue_seconds`, `highlight_words`. A request identical to a running
    one (same `video_file`, task, language and output, or the same audio) joins that job. 504 names the job
    when it takes longer than `WT_ASR_TIMEOUT_SECONDS`.
    """
    cfg = current_app.config
    task, language = jobs.validate_task(_param("task")), jobs.validate_language(_param("language"))
    output, encode, video_file = _output(), _flag("encode", True), _video_file()
    words, vad, subtitle_options = _flag("word_timestamps", False), _flag("vad_filter", False), _subtitle_options()
    prompt = _param("initial_prompt") or None
    model = asr_requests.model_for(cfg, task, language)
    upload, name = _audio(encode, video_file)
    options = {
        "source": "asr",
        "output": output,
        "vad_filter": vad,
        "word_timestamps": words or exports.subtitle_layout(subtitle_options).highlight_words,
    }
    if video_file:
        options["video_file"] = video_file
    job, _ = asr_requests.submit(
        cfg, g.user, upload, name, model=model, task=task, language=language, prompt=prompt, options=options
    )
    finished = jobs.await_completed(job, float(cfg["ASR_TIMEOUT_SECONDS"]))
    response = download_response(finished, output, subtitle_options)
    response.headers["X-Job-ID"] = finished.id
    return response


@bp.post("/detect-language")
@login_required("jobs:create")
def detect_language():
    """The language spoken in the first 30 s of ``audio_file``: `detected_language`, `language_code`, `confidence`.

    Query: `encode` as for `/asr`, `video_file`. Needs a multilingual model (422 naming one to install).
    """
    cfg = current_app.config
    encode, video_file = _flag("encode", True), _video_file()
    model = asr_requests.multilingual_model(cfg, "Language detection")
    upload, name = _audio(encode, video_file, head_seconds=asr_requests.DETECT_SECONDS)
    job, _ = asr_requests.submit(
        cfg,
        g.user,
        upload,
        name,
        model=model,
        task="transcribe",
        language=None,
        prompt=None,
        options={"source": "asr-detect"},
    )
    finished = jobs.await_completed(job, float(cfg["ASR_TIMEOUT_SECONDS"]))
    response = jsonify(asr_requests.detection(finished))
    response.headers["X-Job-ID"] = finished.id
    return response


@bp.get("/status")
def status():
    """``{"version": ...}``, open to anyone: Bazarr's "Test connection" button."""
    return jsonify({"version": asr_requests.appliance_version()})
