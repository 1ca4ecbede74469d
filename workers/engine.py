"""The speech engine: whisper.cpp through pywhispercpp, behind a small interface.

``load_engine`` is the one entry point; tests replace it with a stub, and a faster
backend only has to provide ``transcribe`` with the same signature.
"""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

import numpy as np

log = logging.getLogger(__name__)


@dataclass
class EngineSegment:
    start: float
    end: float
    text: str
    confidence: float | None = None
    words: list[dict] | None = None  # [{"word", "start", "end", "probability"}] when asked for


@dataclass
class EngineResult:
    segments: list[EngineSegment] = field(default_factory=list)
    language: str | None = None

    @property
    def text(self) -> str:
        """The segments joined into one text."""
        return " ".join(s.text.strip() for s in self.segments if s.text.strip())


class Aborted(Exception):
    """The caller asked the engine to stop; partial output must be thrown away."""


class Engine(Protocol):
    def transcribe(
        self,
        audio: np.ndarray,
        *,
        language: str | None = None,
        translate: bool = False,
        prompt: str | None = None,
        words: bool = False,
        on_segment: Callable[[EngineSegment], None] | None = None,
        on_progress: Callable[[float], None] | None = None,
        should_abort: Callable[[], bool] | None = None,
    ) -> EngineResult: ...


class WhisperCppEngine:
    """One whisper.cpp context. Never share it between threads."""

    def __init__(self, model_path: Path | str, threads: int = 0):
        import _pywhispercpp as pw
        from pywhispercpp.model import Model

        self.model_path = str(model_path)
        self.threads = threads or os.cpu_count() or 1
        # pywhispercpp calls a Python progress callback only while print_progress is on; with a
        # callback assigned (every transcribe call assigns one) nothing is printed.
        self._model = Model(self.model_path, redirect_whispercpp_logs_to=None,
                            print_progress=True, print_realtime=False, n_threads=self.threads)
        self._lock = threading.Lock()
        self.multilingual = bool(pw.whisper_is_multilingual(self._model._ctx))

    def transcribe(self, audio, *, language=None, translate=False, prompt=None, words=False,
                   on_segment=None, on_progress=None, should_abort=None) -> EngineResult:
        """Transcribe (or translate to English) mono 16 kHz float32 audio.

        ``on_progress`` gets whisper.cpp's percent (once per 30 s window), ``on_segment`` each new segment.
        """
        import _pywhispercpp as pw

        aborted = threading.Event()

        def abort() -> bool:
            if should_abort is not None and should_abort():
                aborted.set()
            return aborted.is_set()

        def segment(seg) -> None:
            if on_segment is not None:
                on_segment(EngineSegment(seg.t0 / 100.0, seg.t1 / 100.0, seg.text))

        def progress(percent: int) -> None:
            if on_progress is not None:
                on_progress(float(percent))

        with self._lock:
            pw.assign_progress_callback(self._model._params, progress)
            # pywhispercpp keeps keyword params between calls, so every call sets all of them.
            segments = self._model.transcribe(
                np.ascontiguousarray(audio, dtype=np.float32),
                new_segment_callback=segment,
                abort_callback=abort,
                extract_probability=True,
                # An English-only model never needs to detect: "auto" would cost a whole extra encoder pass.
                language=language or ("auto" if self.multilingual else "en"),
                translate=translate,
                initial_prompt=prompt or "",
                token_timestamps=words,
            )
            if aborted.is_set():
                raise Aborted()
            if self.multilingual:
                lang_id = pw.whisper_full_lang_id(self._model._ctx)
                detected = pw.whisper_lang_str(lang_id) if lang_id >= 0 else None
            else:  # English-only models never detect; their language id is meaningless
                detected = "en"
            word_lists = [_words(self._model._ctx, i) if words else None for i in range(len(segments))]
        return EngineResult(
            segments=[
                EngineSegment(s.t0 / 100.0, s.t1 / 100.0, s.text,
                              None if np.isnan(s.probability) else float(s.probability), word_list)
                for s, word_list in zip(segments, word_lists, strict=True)
            ],
            language=detected or language,
        )


def _words(ctx, segment: int) -> list[dict]:
    """Group a segment's text tokens into words (a token starting with a space starts a word)."""
    import _pywhispercpp as pw

    eot = pw.whisper_token_eot(ctx)
    words: list[dict] = []
    pending: dict | None = None
    for j in range(pw.whisper_full_n_tokens(ctx, segment)):
        data = pw.whisper_full_get_token_data(ctx, segment, j)
        if data.id >= eot:  # timestamps and other special tokens
            continue
        piece = pw.whisper_token_to_bytes(ctx, data.id)
        if pending is None or piece.startswith(b" "):
            if pending is not None:
                words.append(pending)
            pending = {"bytes": b"", "start": data.t0 / 100.0, "probs": []}
        pending["bytes"] += piece
        pending["end"] = data.t1 / 100.0
        pending["probs"].append(float(data.p))
    if pending is not None:
        words.append(pending)
    return [
        {"word": w["bytes"].decode("utf-8", "replace").strip(), "start": w["start"], "end": w["end"],
         "probability": round(float(np.mean(w["probs"])), 4)}
        for w in words if w["bytes"].strip()
    ]


_cache: dict[str, Engine] = {}
_cache_lock = threading.Lock()


def _build(model_path: Path, threads: int) -> Engine:
    return WhisperCppEngine(model_path, threads)


def load_engine(model_path: Path | str, threads: int = 0) -> Engine:
    """The engine for this model, loaded once per process; loading another model replaces it."""
    key = str(model_path)
    with _cache_lock:
        if key not in _cache:
            _cache.clear()  # one model per worker keeps memory bounded
            log.info("loading model %s", key)
            _cache[key] = _build(Path(model_path), threads)
        return _cache[key]
