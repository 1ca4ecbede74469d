"""The speech engine interface: segments, results, and one loader for every backend.

Backends (``workers/backends``: whisper.cpp, CTranslate2) provide ``transcribe`` with the
signature of :class:`Engine`. ``load_engine`` is the one entry point, so tests replace a
backend with a stub and the benchmark and the calibration can compare backends.
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

# Both engines' wheels bundle the same libgomp, loaded once per process. Once a process holds more OpenMP
# threads than CPUs (a worker that has run both engines always does, though one team runs at a time),
# libgomp's default waits only 100 spins at a barrier before sleeping, and every decoder step then pays a
# wake-up: whisper.cpp measured 35 % slower after one CTranslate2 job (jfk 0.28 s -> 0.38 s), and
# CTranslate2 slower beside whisper.cpp. ACTIVE with libgomp's own default spin count raises only that
# throttled count (to 1,000); idle threads still fall asleep after ~3 ms, as before.
OPENMP_DEFAULTS = {"OMP_WAIT_POLICY": "ACTIVE", "GOMP_SPINCOUNT": "300000"}


def openmp_defaults() -> None:
    """Set libgomp's wait policy before either engine loads it, unless the process already has one.

    A worker's boot calls it, and ``tune``; the Wyoming process sets its own (PASSIVE) instead.
    """
    if not any(name in os.environ for name in OPENMP_DEFAULTS):
        os.environ.update(OPENMP_DEFAULTS)


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
    loops_suppressed: int = 0  # pieces decoded again because their text repeated itself

    @property
    def text(self) -> str:
        """The segments joined into one text."""
        return " ".join(s.text.strip() for s in self.segments if s.text.strip())


class Aborted(Exception):
    """The caller asked the engine to stop; partial output must be thrown away."""


class Engine(Protocol):
    """What every backend provides; ``label`` names the backend and model file for a job's record."""

    model_path: str
    multilingual: bool
    label: str

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


BACKENDS = ("whispercpp", "ctranslate2")

_cache: dict[str, Engine] = {}  # backend → its loaded engine: at most one model per backend per process
_cache_lock = threading.Lock()


def build(model_path: Path, threads: int, backend: str) -> Engine:
    """A new engine of its own, outside the per-process cache (the calibration runs several at once)."""
    # Late imports: a worker loads only the backend it uses (faster-whisper is an optional extra).
    if backend == "ctranslate2":
        from workers.backends.ctranslate2 import CTranslate2Engine

        return CTranslate2Engine(model_path, threads)
    from workers.backends.whispercpp import WhisperCppEngine

    return WhisperCppEngine(model_path, threads)


def load_engine(model_path: Path | str, threads: int = 0, backend: str = "whispercpp") -> Engine:
    """The engine for this model file (or CTranslate2 folder), loaded once per process and backend.

    Loading another model on the same backend frees the previous one first, so memory stays bounded.
    """
    if backend not in BACKENDS:
        raise ValueError(f"unknown engine backend {backend!r}")
    key = str(model_path)
    with _cache_lock:
        loaded = _cache.get(backend)
        if loaded is None or getattr(loaded, "model_path", None) != key:
            close(_cache.pop(backend, None))  # free the old model before loading the new one
            log.info("loading model %s with %s", key, backend)
            _cache[backend] = build(Path(model_path), threads, backend)
        return _cache[backend]


def unload(backend: str | None = None) -> None:
    """Forget loaded engines (all, or one backend's), so their memory can be freed."""
    with _cache_lock:
        for name in list(_cache) if backend is None else [backend]:
            close(_cache.pop(name, None))


def close(loaded: Engine | None) -> None:
    """Free an engine's native memory now; dropping the Python object is not enough for whisper.cpp."""
    free = getattr(loaded, "close", None)
    if free is not None:
        free()
