"""What the Wyoming server offers and runs: the installed models and their languages, the warm engine, the counters.

Shared by every connection of ``workers/wyoming_server.py``. A request names a model and a language or
neither; :meth:`Voice.resolve` turns that into an installed model and a whisper language code, or a
:class:`RequestError` that says what to install or send. The engine comes from ``load_engine`` like a
worker's (the backend and file that ``WT_ENGINE`` and the calibration choose for short audio), but in
this process, loaded once at start and kept warm.
"""

from __future__ import annotations

import logging
import re
import time
from collections.abc import Mapping
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from importlib import metadata
from typing import Any

import numpy as np
from wyoming.info import AsrModel, AsrProgram, Attribution, Info

from app.services import languages, wyoming_stats
from workers import modelstore, tuning
from workers.engine import Engine, EngineResult, load_engine
from workers.pcmstream import SAMPLE_RATE
from workers.silence import WINDOW_SECONDS

log = logging.getLogger(__name__)

PROGRAM = "whisper-transcriber"
WARMUP_SECONDS = 2.0  # the first call of a context allocates its buffers: done at start, not on a command
QUANTIZED_SUFFIX = "-q8_0"


class ProtocolError(Exception):
    """The client broke the protocol: answered with an error event, then the connection is closed."""

    def __init__(self, code: str, text: str):
        super().__init__(text)
        self.code, self.text = code, text


class RequestError(ProtocolError):
    """A well-formed request that cannot be served (model, language): answered, the connection stays."""


@dataclass(frozen=True)
class Request:
    """What a ``transcribe`` asked for, resolved to an installed model and a whisper language code."""

    model: str
    language: str | None


def appliance_version() -> str:
    """The installed version of the appliance, shown in ``info``."""
    try:
        return metadata.version("whisper-transcriber")
    except metadata.PackageNotFoundError:
        return "0"


def repeats_itself(text: str) -> bool:
    """True when a sentence of two words or more comes twice: in a voice command, whisper's loop, not speech."""
    sentences = [" ".join(re.sub(r"[^\w\s']", " ", part.lower()).split()) for part in re.split(r"[.!?]+", text)]
    sentences = [s for s in sentences if len(s.split()) >= 2]
    return len(sentences) != len(set(sentences))


class Voice:
    """The models this box offers, the warm engine, and the counters: shared by every connection."""

    def __init__(self, settings: Mapping[str, Any]):
        self.settings = dict(settings)
        self.models_dir = self.settings["MODELS_DIR"]
        self.max_seconds = float(self.settings["WYOMING_MAX_SECONDS"])
        self.threads = int(self.settings.get("ENGINE_THREADS") or 0)
        # One thread runs the engine (a whisper.cpp context serves one call at a time); another counts,
        # so a busy database never delays a transcript.
        self.engine_pool = ThreadPoolExecutor(1, thread_name_prefix="wyoming-engine")
        self.stats_pool = ThreadPoolExecutor(1, thread_name_prefix="wyoming-stats")
        self.connections = 0

    # ------------------------------------------------------------------ models

    def models(self) -> dict[str, list[str]]:
        """Installed model → its languages; a q8_0 copy is the same model (the engine picks the file)."""
        names = set(modelstore.installed(self.models_dir)) | set(modelstore.ct2_installed(self.models_dir))
        names = {n.removesuffix(QUANTIZED_SUFFIX) if n.removesuffix(QUANTIZED_SUFFIX) in names else n for n in names}
        every = sorted(languages.table()) or ["en"]
        return {n: ["en"] if not modelstore.is_multilingual(self.models_dir, n) else every for n in sorted(names)}

    def info(self) -> Info:
        """The ``info`` answer: one ASR program with every installed model."""
        whisper = Attribution(name="OpenAI Whisper", url="https://github.com/openai/whisper")
        models = [
            AsrModel(
                name=name,
                attribution=whisper,
                installed=True,
                version=None,
                languages=langs,
                description=f"Whisper {name}" + (" (English only)" if langs == ["en"] else ""),
            )
            for name, langs in self.models().items()
        ]
        program = AsrProgram(
            name=PROGRAM,
            installed=True,
            version=appliance_version(),
            models=models,
            attribution=Attribution(name="whisper.cpp", url="https://github.com/ggml-org/whisper.cpp"),
            description="Whisper Transcriber: whisper.cpp on a warm context sized to each command",
        )
        return Info(asr=[program])

    def resolve(self, name: str | None, language: str | None) -> Request:
        """The model and language code for a request; :class:`RequestError` names what to install or send."""
        offered = self.models()
        code = None
        if language and language.strip().lower() != "auto":
            code = languages.code_for(language)
            if code is None:
                raise RequestError("language-unknown", f"{language!r} is not a language whisper knows")
        if name:
            model = self.settings.get("MODEL_ALIASES", {}).get(name, name)
            files = set(modelstore.installed(self.models_dir)) | set(offered)
            if model not in files:
                raise RequestError(
                    "model-not-installed", f"model {name} is not installed here: {modelstore.install_hint(name)}"
                )
        else:
            model = str(self.settings["DEFAULT_MODEL"])
            if model not in offered and model.removesuffix(QUANTIZED_SUFFIX) in offered:
                model = model.removesuffix(QUANTIZED_SUFFIX)
            if model not in offered:
                raise RequestError(
                    "model-not-installed",
                    f"the default model {model} is not installed: {modelstore.install_hint(model)}",
                )
            if code and code not in offered[model]:  # e.g. German on tiny.en: a multilingual model if any
                model = next((m for m in offered if code in offered[m]), model)
        if code and code != "en" and not modelstore.is_multilingual(self.models_dir, model):
            raise RequestError(
                "language-not-supported",
                f"{model} knows English only; for {language!r} install a multilingual model: "
                f"{modelstore.install_hint('base')}",
            )
        return Request(model, code)

    # ------------------------------------------------------------------ the engine

    def engine(self, model: str, seconds: float) -> Engine:
        """The warm engine for a command of ``seconds`` on ``model``: the backend and file WT_ENGINE chooses."""
        choice = tuning.choose(self.settings, model, seconds)
        return load_engine(choice.path, self.threads, choice.backend)

    def transcribe(self, request: Request, samples: np.ndarray) -> EngineResult:
        """Run one command on the engine (called on the engine thread).

        On a context sized to a short command whisper.cpp now and then says a sentence twice ("And so my
        fellow Americans. And so my fellow Americans." for jfk's first 3 s); such a command is decoded once
        more with the whole 30 s window (the audio padded with silence), which costs about a second, rarely.
        """
        engine = self.engine(request.model, len(samples) / SAMPLE_RATE)
        result = engine.transcribe(samples, language=request.language)
        window = int(WINDOW_SECONDS * SAMPLE_RATE)
        if getattr(engine, "name", "") == "whispercpp" and len(samples) < window and repeats_itself(result.text):
            log.info("wyoming: %r repeats itself; decoding the command again with the full window", result.text)
            padded = np.zeros(window, dtype=samples.dtype)
            padded[: len(samples)] = samples
            result = engine.transcribe(padded, language=request.language)
        return result

    def warm_up(self) -> str:
        """Load the default model and run it once, so the first command is as fast as the others."""
        request = self.resolve(None, None)
        started = time.perf_counter()
        self.transcribe(request, np.zeros(int(WARMUP_SECONDS * SAMPLE_RATE), dtype=np.int16))
        label = self.engine(request.model, WARMUP_SECONDS).label
        log.info("wyoming: %s loaded and warm in %.2f s", label, time.perf_counter() - started)
        return label

    def count(self, outcome: str, latency: float | None = None, audio_seconds: float = 0.0) -> None:
        """Add a command to the counters in /metrics/, off the event loop."""

        def report(future: Future) -> None:
            if not future.cancelled() and future.exception() is not None:
                log.error("wyoming: cannot count a command: %s", future.exception())

        self.stats_pool.submit(wyoming_stats.record, outcome, latency, audio_seconds).add_done_callback(report)

    def close(self) -> None:
        """Stop the threads (a running command finishes first)."""
        self.engine_pool.shutdown(wait=True, cancel_futures=True)
        self.stats_pool.shutdown(wait=True)
