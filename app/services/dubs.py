"""Dubbing rules: who may ask for a dub, which model translates, and the state of the dubbing engines.

A job asks with ``dub=<lang>`` (or ``dub=true`` for ``DUB_LANGUAGE``). Offline, whisper's translate task
makes English only, and it needs a multilingual model; other targets need the chat model (``OPENAI_BASE_URL``).
"""

from __future__ import annotations

import shutil
import threading
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import requests

from app.errors import AppError
from app.services import languages
from workers import dubbing, modelstore

OPENAI_DEFAULT_URL = "https://api.openai.com/v1"
PROBE_SECONDS = 2.0  # /health answers quickly even when a server hangs
PROBE_CACHE_SECONDS = 30.0  # /health is open to anyone: do not knock on the servers on every request
IF_VIDEO = "if-video"
_YES = {"1", "true", "yes", "on"}
_NO = {"", "0", "false", "no", "off", "none"}
_probes: dict[str, tuple[float, str]] = {}
_probe_lock = threading.Lock()


def llm_configured(cfg: Mapping[str, Any]) -> bool:
    """True when a chat model is set up: an API key, or a base URL other than OpenAI's (a local server)."""
    base = str(cfg.get("OPENAI_BASE_URL") or OPENAI_DEFAULT_URL).rstrip("/")
    return bool(cfg.get("OPENAI_API_KEY")) or base != OPENAI_DEFAULT_URL


def installed_multilingual(cfg: Mapping[str, Any]) -> list[str]:
    """The installed models that can translate (not English-only)."""
    return [m for m in modelstore.installed(cfg["MODELS_DIR"]) if modelstore.is_multilingual(cfg["MODELS_DIR"], m)]


def multilingual_model(cfg: Mapping[str, Any], model: str) -> str:
    """``model`` when it is multilingual, else an installed multilingual one (same size first); 400 if none."""
    if modelstore.is_multilingual(cfg["MODELS_DIR"], model):
        return model
    installed = installed_multilingual(cfg)
    size = model.split(".en")[0]
    ranked = sorted(installed, key=lambda m: (m.split("-")[0] != size, "q8_0" in m, m))
    if not ranked:
        raise AppError(
            400,
            "DUB_NEEDS_MULTILINGUAL_MODEL",
            f"Dubbing translates with a multilingual model, and only English-only models are installed. "
            f"Install one with: {modelstore.install_hint('base')}",
        )
    return ranked[0]


def parse_dub(cfg: Mapping[str, Any], value: Any) -> str | None:
    """The target language a request asks for (``dub=de``, ``dub=true``), or None; 400 for nonsense."""
    if value is None or isinstance(value, bool):
        return str(cfg["DUB_LANGUAGE"]) if value else None
    text = str(value).strip().lower()
    if text in _NO:
        return None
    if text in _YES:
        return str(cfg["DUB_LANGUAGE"])
    code = languages.code_for(text)
    if code is None:
        raise AppError(400, "INVALID_DUB_LANGUAGE", f"dub must be a language code such as 'en', or true; got {text!r}")
    return code


def check(cfg: Mapping[str, Any], target: str, has_video: bool) -> None:
    """400 when a dub cannot be made: no video, or a target other than English with no chat model."""
    if not has_video:
        raise AppError(400, "DUB_NEEDS_VIDEO", "Only video can be dubbed; this file has no video stream")
    if target != "en" and not llm_configured(cfg):
        raise AppError(
            400,
            "DUB_LANGUAGE_UNAVAILABLE",
            f"Offline, dubs are in English only; a dub in {target!r} needs a chat model "
            "(set OPENAI_BASE_URL, and OPENAI_API_KEY if it asks for one)",
        )


def options(cfg: Mapping[str, Any], target: str, *, library: bool = False) -> dict[str, Any]:
    """The job options of a dub: its language, and for library media whether to mux a copy instead of a sidecar."""
    found = {"dub": target}
    if library and cfg.get("DUB_MUX_LIBRARY"):
        found["dub_mux"] = True
    return found


# ------------------------------------------------------------------ engine states (/health)


def _probe(key: str, url: str, headers: dict[str, str]) -> str:
    """READY when ``url`` answers below 500 (a 401 or 404 still proves a server), else ERROR; cached a while."""
    now = time.monotonic()
    with _probe_lock:
        cached = _probes.get(key)
        if cached and cached[0] > now and cached[1].startswith(url + " "):
            return cached[1].split(" ", 1)[1]
    try:
        state = "READY" if requests.get(url, headers=headers, timeout=PROBE_SECONDS).status_code < 500 else "ERROR"
    except requests.RequestException:
        state = "ERROR"
    with _probe_lock:
        _probes[key] = (now + PROBE_CACHE_SECONDS, f"{url} {state}")
    return state


def forget_probes() -> None:
    """Drop the cached probe answers (tests, and a changed setting)."""
    with _probe_lock:
        _probes.clear()


def tts_state(cfg: Mapping[str, Any]) -> str:
    """The speech engine: the TTS server answering, or espeak-ng installed."""
    if cfg.get("TTS_BASE_URL"):
        url = dubbing.tts_url(str(cfg["TTS_BASE_URL"]), "models")
        return _probe("tts", url, dubbing.bearer(cfg.get("TTS_API_KEY")))
    return "READY" if shutil.which("espeak-ng") else "ERROR"


def llm_state(cfg: Mapping[str, Any], breaker_open: bool) -> str:
    """The chat model: NOT_CONFIGURED, ERROR (unreachable, or its breaker open) or READY."""
    if not llm_configured(cfg):
        return "NOT_CONFIGURED"
    if breaker_open:
        return "ERROR"
    url = str(cfg.get("OPENAI_BASE_URL") or OPENAI_DEFAULT_URL).rstrip("/") + "/models"
    return _probe("llm", url, dubbing.bearer(cfg.get("OPENAI_API_KEY")))


def apply(
    cfg: Mapping[str, Any],
    dub: Any,
    has_video: bool,
    model: str,
    kind: str,
    job_options: dict[str, Any] | None,
    *,
    library: bool = False,
) -> tuple[str, str, dict[str, Any]]:
    """A new job's (model, kind, options) once its ``dub`` request is checked: unchanged without one.

    A dub needs a video, and a multilingual model for the whole job: an English-only model could neither
    transcribe the foreign speech nor translate it, so it is swapped for the installed multilingual one.
    """
    if dub == IF_VIDEO:  # Dubarr's default (WT_DUBARR_DUB): dub video it can, transcribe the rest as before
        dub = True if has_video and installed_multilingual(cfg) else None
    target = parse_dub(cfg, dub)
    if target is None:
        return model, kind, job_options or {}
    check(cfg, target, has_video)
    kind = "video" if kind in ("transcribe", "auto") else kind
    return multilingual_model(cfg, model), kind, {**(job_options or {}), **options(cfg, target, library=library)}


def dub_audio(cfg: Mapping[str, Any], job: Any) -> Path | None:
    """The job's dub (the mix stage's output in its cache), when it was made and is still there."""
    output = ((job.stages or {}).get("mix") or {}).get("output")
    if not (job.options or {}).get("dub") or not output:
        return None
    path = Path(cfg["DATA_DIR"]) / output
    return path if path.is_file() else None
