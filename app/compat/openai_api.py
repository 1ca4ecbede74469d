"""OpenAI-compatible audio API: ``/v1/audio/transcriptions``, ``/v1/audio/translations``, ``/v1/models``.

Synchronous for the client, but every request is an ordinary job: it shows in the job list,
the queue orders it with everything else, and a timeout leaves it running (504 names its id).
"""

from __future__ import annotations

from flask import Blueprint, Response, current_app, g, jsonify, request

from app.api.job_routes import create_from_request
from app.errors import AppError
from app.security import login_required
from app.services import exports, jobs
from workers import modelstore

bp = Blueprint("openai", __name__, url_prefix="/v1")

RESPONSE_FORMATS = ("json", "text", "srt", "verbose_json", "vtt")
GRANULARITIES = ("segment", "word")
OPENAI_MODEL_ALIASES = ("whisper-1", "gpt-4o-transcribe", "gpt-4o-mini-transcribe")


def _model_name(requested: str | None) -> str | None:
    # OpenAI clients usually send "whisper-1"; that means "the appliance's default model".
    return None if not requested or requested in OPENAI_MODEL_ALIASES else requested


def _options() -> tuple[str, bool, dict]:
    form = request.form
    fmt = form.get("response_format") or "json"
    if fmt not in RESPONSE_FORMATS:
        raise AppError(400, "INVALID_RESPONSE_FORMAT", f"response_format must be one of {', '.join(RESPONSE_FORMATS)}")
    granularities = form.getlist("timestamp_granularities[]") or form.getlist("timestamp_granularities")
    unknown = set(granularities) - set(GRANULARITIES)
    if unknown:
        raise AppError(
            400, "INVALID_TIMESTAMP_GRANULARITY", f"timestamp_granularities must be among {', '.join(GRANULARITIES)}"
        )
    try:
        temperature = float(form.get("temperature") or 0)
    except ValueError as exc:
        raise AppError(400, "INVALID_TEMPERATURE", "temperature must be a number between 0 and 1") from exc
    if not 0 <= temperature <= 1:
        raise AppError(400, "INVALID_TEMPERATURE", "temperature must be a number between 0 and 1")
    words = "word" in granularities
    return fmt, words, {"word_timestamps": words, "temperature": temperature, "source": "openai"}


def _transcribe(task: str) -> Response | tuple:
    fmt, words, options = _options()
    job = create_from_request(model=_model_name(request.form.get("model")), task=task, options=options)
    finished = jobs.await_completed(job, float(current_app.config["OPENAI_TIMEOUT_SECONDS"]))
    # srt and vtt are timed by the words; the other answers show words only when asked (verbose_json's flag).
    transcript = jobs.transcript(finished, words=True)
    if fmt == "json":
        return jsonify({"text": transcript["text"]})
    if fmt == "verbose_json":
        return jsonify(exports.to_openai_verbose(transcript, task=task, duration=finished.duration, words=words))
    body, mime = exports.render(transcript, {"text": "txt"}.get(fmt, fmt))
    return Response(body, content_type=mime)


@bp.post("/audio/transcriptions")
@login_required("jobs:create")
def transcriptions():
    """Transcribe an uploaded file (OpenAI's multipart form); answers when the job is done."""
    return _transcribe("transcribe")


@bp.post("/audio/translations")
@login_required("jobs:create")
def translations():
    """Translate an uploaded file into English text (needs a multilingual model)."""
    return _transcribe("translate")


@bp.get("/models")
@login_required()
def list_models():
    """The installed models, as OpenAI's model list."""
    folder = current_app.config["MODELS_DIR"]
    data = [
        {
            "id": name,
            "object": "model",
            "created": int(modelstore.model_path(folder, name).stat().st_mtime),
            "owned_by": "whisper-transcriber",
        }
        for name in modelstore.installed(folder)
    ]
    return jsonify(
        {"object": "list", "data": data, "default": current_app.config["DEFAULT_MODEL"], "user": g.user.username}
    )
