"""The OpenAPI document, generated from the routes, and Swagger UI (``/docs``) and ReDoc (``/redoc``).

Every rule of the URL map is described, so each dialect's routes appear without listing them
here: path parameters from the rule, methods, the summary from the view's docstring, the
blueprint as tag. A few routes get request and response hints. The UI assets come from Python
packages (flask-swagger-ui, openapi-ui-bundles) and are served from here; a Content-Security-Policy
keeps the pages from loading anything from elsewhere.
"""

from __future__ import annotations

import inspect
import re
import sys
from functools import cache
from html import escape
from importlib import metadata, resources
from pathlib import Path
from typing import Any

from flask import Blueprint, Response, abort, current_app, jsonify, request, send_from_directory, url_for
from werkzeug.routing import Rule

from app.services.asr_requests import OUTPUTS as ASR_OUTPUTS
from app.services.exports import FORMATS
from app.services.files import BROWSABLE, LISTED
from app.services.jobs import MAX_WAIT_SECONDS
from app.services.subtitles import LIMITS as SUBTITLE_LIMITS
from app.services.voxis import EXPORT_FORMATS, MP3_BITRATES

bp = Blueprint("openapi", __name__)

OPENAPI_VERSION = "3.0.3"  # what both bundled UIs render completely
SWAGGER_DIR = Path(str(resources.files("flask_swagger_ui") / "dist"))
REDOC_DIR = Path(str(resources.files("openapi_ui_bundles") / "redoc" / "vendor"))
SWAGGER_FILES = frozenset({"swagger-ui.css", "swagger-ui-bundle.js", "favicon-32x32.png", "favicon-16x16.png"})
REDOC_FILES = frozenset({"redoc.standalone.js", "logo-mini.svg"})
REDOC_REMOTE_LOGO = b"https://cdn.redoc.ly/redoc/logo-mini.svg"
ASSET_MAX_AGE = 86400
CSP = (
    "default-src 'none'; script-src 'self'; style-src 'self' 'unsafe-inline'; img-src 'self' data:; "
    "font-src 'self' data:; connect-src 'self'; worker-src 'self' blob:; base-uri 'none'; "
    "form-action 'none'; frame-ancestors 'none'"
)
PUBLIC_BLUEPRINTS = frozenset({"health", "metrics", "openapi"})
PUBLIC_ENDPOINTS = frozenset(
    {
        "auth.login",
        "auth.register",
        "compat_legacy.token",
        "compat_legacy.register",
        "voxis.health",
        "asr.status",
        "dashboard.login",
        "dashboard.register_page",
    }
)
_PARAM = re.compile(r"<(?:(?P<converter>\w+)(?:\([^)]*\))?:)?(?P<name>\w+)>")
_TYPES = {"int": {"type": "integer"}, "float": {"type": "number"}, "uuid": {"type": "string", "format": "uuid"}}


# ------------------------------------------------------------------- schemas


def _obj(required: tuple[str, ...] = (), **properties: Any) -> dict[str, Any]:
    schema: dict[str, Any] = {"type": "object", "properties": properties}
    if required:
        schema["required"] = list(required)
    return schema


STR, INT, NUM = {"type": "string"}, {"type": "integer"}, {"type": "number"}
STR_LIST = {"type": "array", "items": STR}
_JOB_OPTIONS = {
    "model": STR,
    "language": STR,
    "task": {"type": "string", "enum": ["transcribe", "translate"]},
    "prompt": STR,
    "dub": {"type": "string", "description": "Video only: a spoken track in this language (e.g. en, or true)"},
}
_WAIT = {
    "name": "wait",
    "in": "query",
    "required": False,
    "description": f"Seconds (0-{MAX_WAIT_SECONDS}) to hold the answer until the job finishes",
    "schema": {"type": "integer", "minimum": 0, "maximum": MAX_WAIT_SECONDS, "default": 0},
}
_CREATED_JOB = _obj(job_id=STR, status=STR, message=STR, filename=STR, model=STR, created_at=STR)
_TRANSCRIPT_FORMAT = {"type": "string", "enum": list(FORMATS)}


def _query(name: str, schema: dict[str, Any], description: str, required: bool = False) -> dict[str, Any]:
    return {"name": name, "in": "query", "required": required, "description": description, "schema": schema}


def _json(schema: dict[str, Any]) -> dict[str, Any]:
    return {"content": {"application/json": {"schema": schema}}}


def _subtitle_query() -> list[dict[str, Any]]:
    """The subtitle layout options of the export downloads (srt, vtt)."""

    def bounds(name: str) -> dict[str, Any]:
        return {"minimum": SUBTITLE_LIMITS[name][0], "maximum": SUBTITLE_LIMITS[name][1]}

    return [
        _query(
            "max_line_width",
            {**INT, **bounds("max_line_width"), "default": 42},
            "srt, vtt: characters per line (0: one cue per segment, the engine's layout)",
        ),
        _query(
            "max_line_count", {**INT, **bounds("max_line_count"), "default": 2}, "srt, vtt: lines per cue (0: no limit)"
        ),
        _query("max_cue_seconds", {**NUM, **bounds("max_cue_seconds"), "default": 7}, "srt, vtt: longest cue"),
        _query(
            "highlight_words",
            {"type": "boolean", "default": False},
            "srt, vtt: karaoke (VTT timestamp tags; SRT underlines the word being spoken)",
        ),
    ]


def _ok(status: str, description: str, schema: dict[str, Any]) -> dict[str, Any]:
    return {status: {"description": description, **_json(schema)}}


HINTS: dict[str, dict[str, Any]] = {
    "auth.login": {
        "requestBody": {"required": True, **_json(_obj(("username", "password"), username=STR, password=STR))},
        "responses": _ok("200", "A bearer token", _obj(access_token=STR, token_type=STR, expires_in=INT)),
    },
    "jobs.create_job": {
        "requestBody": {
            "required": True,
            "content": {
                "multipart/form-data": {
                    "schema": _obj(("file",), file={"type": "string", "format": "binary"}, **_JOB_OPTIONS)
                }
            },
        },
        "responses": _ok("201", "The queued job", _CREATED_JOB),
    },
    "jobs.get_job": {"parameters": [_WAIT]},
    "jobs.job_progress": {
        "parameters": [_WAIT],
        "responses": _ok(
            "200",
            "The job's progress",
            _obj(
                job_id=STR,
                status=STR,
                stage=STR,
                progress=NUM,
                estimated_time_remaining={
                    **NUM,
                    "nullable": True,
                    "description": "Seconds left; null while unknown, 0 once finished",
                },
                estimated_time_remaining_text={**STR, "nullable": True, "example": "1m 30s"},
                current_segment=INT,
                total_segments={
                    **INT,
                    "nullable": True,
                    "description": "An estimate while transcribing, the exact count afterwards",
                },
            ),
        ),
    },
    "chunked_uploads.upload_chunk": {
        "parameters": [
            {
                "name": "chunk_number",
                "in": "path",
                "required": True,
                "description": "The chunk's number, from 1 to total_chunks",
                "schema": {"type": "integer", "minimum": 1},
            }
        ],
        "requestBody": {
            "required": True,
            "content": {"application/octet-stream": {"schema": {"type": "string", "format": "binary"}}},
        },
        "responses": _ok(
            "200", "The chunk was stored", _obj(chunk_number=INT, received_size=INT, checksum=STR, progress=NUM)
        ),
    },
    "chunked_uploads.session_status": {
        "responses": _ok(
            "200",
            "Chunks received so far",
            _obj(
                session_id=STR,
                total_chunks=INT,
                received_chunks={"type": "array", "items": INT},
                missing_chunks={"type": "array", "items": INT},
                progress=NUM,
                expires_at=STR,
            ),
        ),
    },
    "chunked_uploads.finalize": {
        "requestBody": {
            "required": True,
            **_json(_obj(("chunk_checksums",), chunk_checksums=STR_LIST, **_JOB_OPTIONS)),
        },
        "responses": _ok("201", "The queued job", _CREATED_JOB),
    },
    "search.search": {
        "requestBody": {
            "required": True,
            **_json(
                _obj(
                    ("query",),
                    query=STR,
                    limit=INT,
                    offset=INT,
                    filters=_obj(date_range=_obj(start=STR, end=STR), models=STR_LIST, languages=STR_LIST),
                )
            ),
        },
        "responses": _ok(
            "200",
            "Matching jobs, best first",
            _obj(
                total=INT,
                query_time=STR,
                results={
                    "type": "array",
                    "items": _obj(
                        job_id=STR,
                        filename=STR,
                        relevance_score=NUM,
                        created_at=STR,
                        matches={"type": "array", "items": _obj(text=STR, timestamp=NUM, confidence=NUM)},
                    ),
                },
            ),
        ),
    },
    "admin.delete_file": {
        "requestBody": {
            "required": True,
            **_json(
                _obj(
                    ("folder", "filename"),
                    folder={"type": "string", "enum": list(LISTED)},
                    filename={**STR, "minLength": 1, "description": "The file's path inside the folder"},
                )
            ),
        },
        "responses": _ok(
            "200",
            "The file was deleted",
            _obj(message=STR, folder=STR, filename=STR, size=INT, job_id={**STR, "nullable": True}),
        ),
    },
    "admin.browse": {
        "parameters": [
            _query("folder", {"type": "string", "enum": list(BROWSABLE)}, "The folder to browse", required=True),
            _query("path", STR, "A directory inside the folder (default: its top)"),
        ],
    },
    "exports.download": {
        "parameters": [
            {
                "name": "fmt",
                "in": "path",
                "required": True,
                "description": "The transcript format",
                "schema": _TRANSCRIPT_FORMAT,
            },
            *_subtitle_query(),
        ],
    },
    "compat_legacy.download": {
        "parameters": [_query("format", _TRANSCRIPT_FORMAT, "The transcript format (default srt)"), *_subtitle_query()],
    },
    "voxis.export": {
        "parameters": [
            _query("format", {"type": "string", "enum": list(EXPORT_FORMATS)}, "The audio format (default wav)"),
            _query("quality", {"type": "string", "enum": list(MP3_BITRATES)}, "The mp3 bit rate (default high)"),
        ],
    },
    "asr.asr": {
        "parameters": [
            _query(
                "task",
                {"type": "string", "enum": ["transcribe", "translate"], "default": "transcribe"},
                "Transcribe, or translate into English",
            ),
            _query("language", STR, "The spoken language (ISO 639-1, e.g. en); empty: detect it"),
            _query("output", {"type": "string", "enum": list(ASR_OUTPUTS), "default": "txt"}, "The answer's format"),
            _query(
                "encode",
                {"type": "boolean", "default": True},
                "true: audio_file is any media ffmpeg reads; false: raw PCM, s16le mono 16 kHz, no header",
            ),
            _query("word_timestamps", {"type": "boolean", "default": False}, "Time every word (json output)"),
            _query(
                "vad_filter",
                {"type": "boolean", "default": False},
                "Accepted; audio is always cut at pauses before transcription",
            ),
            _query("initial_prompt", {**STR, "maxLength": 2000}, "Text that sets the vocabulary and style"),
            _query("video_file", {**STR, "maxLength": 4096}, "The video the audio comes from (informational)"),
            _query(
                "max_line_width",
                {
                    **INT,
                    "minimum": SUBTITLE_LIMITS["max_line_width"][0],
                    "maximum": SUBTITLE_LIMITS["max_line_width"][1],
                },
                "srt, vtt: characters per line (0: one cue per segment)",
            ),
            _query(
                "max_line_count",
                {
                    **INT,
                    "minimum": SUBTITLE_LIMITS["max_line_count"][0],
                    "maximum": SUBTITLE_LIMITS["max_line_count"][1],
                },
                "srt, vtt: lines per cue (0: no limit)",
            ),
            _query(
                "max_cue_seconds",
                {
                    **NUM,
                    "minimum": SUBTITLE_LIMITS["max_cue_seconds"][0],
                    "maximum": SUBTITLE_LIMITS["max_cue_seconds"][1],
                },
                "srt, vtt: longest cue",
            ),
            _query(
                "highlight_words",
                {"type": "boolean", "default": False},
                "srt, vtt: highlight each word while it is spoken (karaoke)",
            ),
        ],
        "responses": {
            "200": {
                "description": "The transcript; multipart field audio_file carries the audio",
                "content": {
                    FORMATS[name].mime_type.split(";")[0]: {"schema": {"type": "object"} if name == "json" else STR}
                    for name in ASR_OUTPUTS
                },
            }
        },
    },
    "asr.detect_language": {
        "parameters": [
            _query(
                "encode",
                {"type": "boolean", "default": True},
                "true: audio_file is any media ffmpeg reads; false: raw PCM, s16le mono 16 kHz, no header",
            ),
            _query("video_file", {**STR, "maxLength": 4096}, "The video the audio comes from (informational)"),
        ],
        "responses": _ok(
            "200",
            "The language of the first 30 s of audio_file",
            _obj(
                detected_language={**STR, "example": "english"},
                language_code={**STR, "example": "en"},
                confidence={**NUM, "minimum": 0, "maximum": 1},
            ),
        ),
    },
    "asr.status": {"responses": _ok("200", "The appliance's version", _obj(version=STR))},
    "metrics.metrics": {
        "responses": {"200": {"description": "Prometheus text format", "content": {"text/plain": {"schema": STR}}}},
    },
}


def _initialize_hint(cfg: Any) -> dict[str, Any]:
    """Chunked-upload sizes are bounded by this appliance's settings."""
    file_size = {**INT, "minimum": 1, "description": "The whole file's size in bytes"}
    if cfg.get("MAX_CONTENT_LENGTH"):
        file_size["maximum"] = int(cfg["MAX_CONTENT_LENGTH"])
    chunk_size = {
        **INT,
        "minimum": 1,
        "maximum": int(cfg["MAX_CHUNK_SIZE"]),
        "description": "Bytes per chunk (the last may be shorter)",
    }
    return {
        "requestBody": {
            "required": True,
            **_json(
                _obj(
                    ("filename", "file_size", "chunk_size"),
                    filename=STR,
                    file_size=file_size,
                    chunk_size=chunk_size,
                    content_type=STR,
                )
            ),
        },
        "responses": _ok(
            "201", "The upload session", _obj(session_id=STR, upload_url=STR, expires_at=STR, total_chunks=INT)
        ),
    }


def _hints(endpoint: str) -> dict[str, Any]:
    if endpoint == "chunked_uploads.initialize":
        return _initialize_hint(current_app.config)
    return HINTS.get(endpoint, {})


# ----------------------------------------------------------------- generator


def openapi_path(rule: str) -> tuple[str, list[dict[str, Any]]]:
    """A Werkzeug rule as an OpenAPI path (``<int:x>`` becomes ``{x}``) and its path parameters."""
    parameters = []
    for match in _PARAM.finditer(rule):
        schema = _TYPES.get(match.group("converter") or "", STR)
        parameters.append({"name": match.group("name"), "in": "path", "required": True, "schema": dict(schema)})
    return _PARAM.sub(lambda m: "{" + m.group("name") + "}", rule), parameters


def _operation(rule: Rule, method: str, view: Any) -> dict[str, Any]:
    doc = (inspect.getdoc(view) or "").replace("``", "`")  # reST literals to Markdown, which the UIs render
    summary, _, description = doc.partition("\n")
    blueprint = rule.endpoint.rsplit(".", 1)[0] if "." in rule.endpoint else "app"
    _, parameters = openapi_path(rule.rule)
    operation: dict[str, Any] = {
        "tags": [blueprint],
        "summary": summary.strip() or rule.endpoint,
        "operationId": re.sub(r"\W", "_", f"{rule.endpoint}_{method}"),
    }
    if description.strip():
        operation["description"] = description.strip()
    websocket = getattr(rule, "websocket", False)
    if websocket:
        operation["description"] = "WebSocket: connect with ws:// or wss://. " + operation.get("description", "")
        operation["x-websocket"] = True  # a plain HTTP request to it is a 400
    hints = _hints(rule.endpoint)
    # A hint describes a parameter better than the rule does (a range, a description): it replaces the rule's.
    hinted = hints.get("parameters", [])
    replaced = {(h["name"], h["in"]) for h in hinted}
    parameters = [p for p in parameters if (p["name"], p["in"]) not in replaced]
    parameters += hinted
    if parameters:
        operation["parameters"] = parameters
    if "requestBody" in hints and method in ("post", "put", "patch", "delete"):
        operation["requestBody"] = hints["requestBody"]
    success = (
        {"101": {"description": "Switching Protocols: the WebSocket is open"}}
        if websocket
        else {"200": {"description": "Success"}}
    )
    operation["responses"] = {**hints.get("responses", success), "default": {"$ref": "#/components/responses/Error"}}
    if blueprint in PUBLIC_BLUEPRINTS or rule.endpoint in PUBLIC_ENDPOINTS:
        operation["security"] = []
    return operation


def _tags() -> list[dict[str, str]]:
    """One tag per blueprint, described by the first line of its module's docstring."""
    tags = []
    for name, blueprint in sorted(current_app.blueprints.items()):
        module = sys.modules.get(blueprint.import_name)
        doc = (inspect.getdoc(module) or "").partition("\n")[0].replace("``", "`") if module else ""
        tags.append({"name": name, "description": doc} if doc else {"name": name})
    return tags


def _version() -> str:
    try:
        return metadata.version("whisper-transcriber")
    except metadata.PackageNotFoundError:
        return "0.0.0"


def build_spec() -> dict[str, Any]:
    """The OpenAPI document for every route of the current app except static files."""
    paths: dict[str, dict[str, Any]] = {}
    seen: set[str] = set()
    for rule in current_app.url_map.iter_rules():
        if rule.endpoint == "static" or rule.endpoint.endswith(".static"):
            continue
        view = current_app.view_functions.get(rule.endpoint)
        path, _ = openapi_path(rule.rule)
        for method in sorted((rule.methods or set()) - {"HEAD", "OPTIONS"}):
            operation = _operation(rule, method.lower(), view)
            # One view can serve several rules (/metrics and /metrics/); operation ids must stay unique.
            base, n = operation["operationId"], 1
            while operation["operationId"] in seen:
                n += 1
                operation["operationId"] = f"{base}_{n}"
            seen.add(operation["operationId"])
            paths.setdefault(path, {})[method.lower()] = operation
    error = _obj(
        ("detail", "error_code", "timestamp", "request_id"), detail=STR, error_code=STR, timestamp=STR, request_id=STR
    )
    return {
        "openapi": OPENAPI_VERSION,
        "info": {
            "title": "Whisper Transcriber API",
            "version": _version(),
            "description": "Self-hosted speech-to-text. Every error has the body of the Error schema.",
        },
        "servers": [{"url": request.script_root or "/"}],
        "tags": _tags(),
        "paths": dict(sorted(paths.items())),
        "components": {
            "securitySchemes": {
                "bearerAuth": {"type": "http", "scheme": "bearer", "bearerFormat": "JWT or API key"},
                "apiKeyAuth": {"type": "apiKey", "in": "header", "name": "X-API-Key"},
            },
            "schemas": {"Error": error},
            "responses": {
                "Error": {"description": "The standard error body", **_json({"$ref": "#/components/schemas/Error"})}
            },
        },
        "security": [{"bearerAuth": []}, {"apiKeyAuth": []}],
    }


# ---------------------------------------------------------------------- pages


@bp.get("/openapi.json")
def openapi_json():
    """The OpenAPI 3 document of this API, generated from its routes."""
    return jsonify(build_spec())


def _page(title: str, head: str, body: str) -> Response:
    html = (
        f'<!DOCTYPE html>\n<html lang="en">\n<head>\n<meta charset="utf-8">\n'
        f'<meta name="viewport" content="width=device-width, initial-scale=1">\n<title>{escape(title)}</title>\n'
        f"{head}</head>\n<body>\n{body}</body>\n</html>\n"
    )
    response = Response(html, mimetype="text/html")
    response.headers["Content-Security-Policy"] = CSP
    return response


@bp.get("/docs")
def swagger_ui():
    """Swagger UI for this API, from local assets."""
    asset = lambda name: escape(url_for("openapi.swagger_asset", filename=name))  # noqa: E731
    head = (
        f'<link rel="stylesheet" href="{asset("swagger-ui.css")}">\n'
        f'<link rel="icon" type="image/png" href="{asset("favicon-32x32.png")}">\n'
    )
    body = (
        f'<div id="swagger-ui" data-spec-url="{escape(url_for("openapi.openapi_json"))}"></div>\n'
        f'<script src="{asset("swagger-ui-bundle.js")}"></script>\n'
        f'<script src="{escape(url_for("openapi.swagger_init"))}"></script>\n'
    )
    return _page("Whisper Transcriber API - Swagger UI", head, body)


@bp.get("/redoc")
def redoc():
    """ReDoc for this API, from local assets."""
    icon = escape(url_for("openapi.swagger_asset", filename="favicon-32x32.png"))
    head = f'<link rel="icon" type="image/png" href="{icon}">\n<style>body {{ margin: 0; padding: 0; }}</style>\n'
    body = (
        f'<redoc spec-url="{escape(url_for("openapi.openapi_json"))}"></redoc>\n'
        f'<script src="{escape(url_for("openapi.redoc_asset", filename="redoc.standalone.js"))}"></script>\n'
    )
    return _page("Whisper Transcriber API - ReDoc", head, body)


SWAGGER_INIT = """window.addEventListener("load", function () {
  var root = document.getElementById("swagger-ui");
  window.ui = SwaggerUIBundle({
    url: root.dataset.specUrl,
    domNode: root,
    deepLinking: true,
    validatorUrl: null,
    queryConfigEnabled: false,
    presets: [SwaggerUIBundle.presets.apis],
    layout: "BaseLayout"
  });
});
"""


@bp.get("/docs/assets/swagger-init.js")
def swagger_init():
    """Starts Swagger UI on /openapi.json (a file, so the page needs no inline script)."""
    response = Response(SWAGGER_INIT, mimetype="text/javascript")
    response.cache_control.max_age = ASSET_MAX_AGE
    return response


@bp.get("/docs/assets/swagger/<filename>")
def swagger_asset(filename: str):
    """A Swagger UI asset."""
    if filename not in SWAGGER_FILES:
        abort(404)
    return send_from_directory(SWAGGER_DIR, filename, max_age=ASSET_MAX_AGE)


@cache
def _redoc_script(logo_url: str) -> bytes:
    # ReDoc shows its logo from a CDN; point it at the copy shipped beside the script.
    return (REDOC_DIR / "redoc.standalone.js").read_bytes().replace(REDOC_REMOTE_LOGO, logo_url.encode())


@bp.get("/docs/assets/redoc/<filename>")
def redoc_asset(filename: str):
    """A ReDoc asset."""
    if filename not in REDOC_FILES:
        abort(404)
    if filename == "redoc.standalone.js":
        response = Response(
            _redoc_script(url_for("openapi.redoc_asset", filename="logo-mini.svg")), mimetype="text/javascript"
        )
        response.cache_control.max_age = ASSET_MAX_AGE
        response.cache_control.public = True
        return response
    return send_from_directory(REDOC_DIR, filename, max_age=ASSET_MAX_AGE)
