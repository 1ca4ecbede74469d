"""Which engine runs a job: the ``ENGINE`` setting, and the calibration that ``auto`` decides from.

A box is measured, not guessed at: ``whisper-transcriber tune`` (also run once in the background
at the first start) times every engine and model file on the clips the test suite ships, a short
one (a command, a clip) and a long one, and keeps for each the fastest candidate whose word error
rate is within one point of the best. With every core left to it (``ENGINE_THREADS`` 0), it also times
a deep queue under each layout of workers x threads, which ``WORKERS=0`` (auto) then applies. The record
lives in ``$DATA_DIR/engine-tuning.json``.
"""

from __future__ import annotations

import json
import logging
import os
import platform
import re
import statistics
import threading
import time
from collections.abc import Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jiwer
import numpy as np

from workers import audio, engine, modelstore
from workers.atomicfile import atomic_write
from workers.timestamps import utc_iso

log = logging.getLogger(__name__)

TUNING_FILE = "engine-tuning.json"
ENGINE_SETTINGS = ("auto", "whispercpp", "ctranslate2")
SHORT_SECONDS = 30.0  # one whisper window: where whisper.cpp's sized audio_ctx shines
WER_MARGIN = 0.01  # a candidate may be this much less accurate than the best and still win on speed
CLIPS_DIR = Path(__file__).resolve().parent.parent / "tests" / "data"
SHORT_CLIP = "jfk.flac"
LONG_CLIP = "OSR_us_000_0034_8k.flac"
LONG_REPEATS = 3  # ~106 s: long enough that batching and piece sizes show, short enough for a ~30 s run
LAYOUT_JOBS = 8  # a deep queue: the jobs waiting while worker layouts are compared
# More workers must finish the queue this much sooner than one worker on every core: each costs a model's
# memory, and a lone job then runs on fewer threads (2 x 1 thread measured 2 % faster here: not worth it).
LAYOUT_GAIN = 1.10


@dataclass(frozen=True)
class Choice:
    """One engine backend with one model file (whisper.cpp) or folder (CTranslate2)."""

    backend: str
    path: Path

    @property
    def label(self) -> str:
        """The backend and file name, as recorded per job and shown to admins."""
        return f"{self.backend}:{self.path.name}"


def ctranslate2_available() -> bool:
    """True when the optional faster-whisper package is installed."""
    import importlib.util

    return importlib.util.find_spec("faster_whisper") is not None


def candidates(models_dir: Path | str, model: str) -> list[Choice]:
    """Every way this box can run ``model``: whisper.cpp per ggml file, CTranslate2 when installed."""
    found = [
        Choice("whispercpp", path)
        for path in (modelstore.model_path(models_dir, model), modelstore.model_path(models_dir, f"{model}-q8_0"))
        if path.is_file()
    ]
    folder = modelstore.ct2_dir(models_dir, model)
    if modelstore.is_ct2_dir(folder) and ctranslate2_available():
        found.append(Choice("ctranslate2", folder))
    return found


# ------------------------------------------------------------------ the record


def tuning_path(cfg: Mapping[str, Any]) -> Path:
    """Where the calibration record of this data folder lives."""
    return Path(cfg["DATA_DIR"]) / TUNING_FILE


def read_record(cfg: Mapping[str, Any]) -> dict[str, Any] | None:
    """The calibration record of this host, or None when there is none (or it was made elsewhere)."""
    try:
        record = json.loads(tuning_path(cfg).read_text())
    except (OSError, ValueError):
        return None
    return record if isinstance(record, dict) and record.get("host") == platform.node() else None


def choose(cfg: Mapping[str, Any], model: str, seconds: float) -> Choice:
    """The backend and file for a job of ``seconds`` on ``model``, by the ``ENGINE`` setting and the record."""
    available = candidates(cfg["MODELS_DIR"], model)
    if not available:
        raise modelstore.ModelError(f"model {model} is not installed")
    setting = str(cfg.get("ENGINE") or "auto")
    record = read_record(cfg) or {}
    picks = (record.get("models") or {}).get(model) or {}
    if setting == "auto":
        pick = picks.get("short" if seconds <= SHORT_SECONDS else "long")
        for choice in available:
            if pick and choice.label == pick:
                return choice
    wanted = "ctranslate2" if setting == "ctranslate2" else "whispercpp"
    same = [c for c in available if c.backend == wanted] or [c for c in available if c.backend == "whispercpp"]
    if setting == "ctranslate2" and same[0].backend != "ctranslate2":
        log.warning(
            "WT_ENGINE=ctranslate2, but %s has no CTranslate2 weights or faster-whisper is missing; using whisper.cpp",
            model,
        )
    # For whisper.cpp, the calibration's file (q8_0 where its accuracy held), else the q8_0 file when built.
    preferred = picks.get("whispercpp_file")
    for choice in same:
        if preferred and choice.path.name == preferred:
            return choice
    return same[-1]  # candidates() lists the f16 file before q8_0


# ------------------------------------------------------------------ calibration


def cpu_features() -> dict[str, Any]:
    """What the CPU offers that the engines use, as whisper.cpp and the kernel report it."""
    import _pywhispercpp as pw

    flags: set[str] = set()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith(("flags", "Features")):
                flags.update(line.split(":", 1)[1].split())
                break
    except OSError:
        pass
    wanted = (
        "avx2",
        "fma",
        "f16c",
        "avx512f",
        "avx512_vnni",
        "avx512_bf16",
        "amx_tile",
        "amx_int8",
        "neon",
        "asimd",
        "asimddp",
        "sve",
    )
    return {
        "machine": platform.machine(),
        "flags": sorted(f for f in wanted if f in flags),
        "whisper_cpp": pw.whisper_print_system_info().strip(),
    }


def _clip_audio(name: str, repeats: int = 1) -> np.ndarray:
    samples = audio.decode(CLIPS_DIR / name)
    return np.tile(samples, repeats) if repeats > 1 else samples


def _reference(name: str, repeats: int = 1) -> str:
    clips = {c["file"]: c for c in json.loads((CLIPS_DIR / "manifest.json").read_text())["clips"]}
    return " ".join([clips[name]["reference"]] * repeats)


def word_error_rate(reference: str, hypothesis: str) -> float:
    """WER after lower-casing and dropping punctuation, as the test suite measures it."""

    def normal(text: str) -> str:
        return " ".join(re.sub(r"[^\w\s']", " ", text.lower().replace("-", " ")).split())

    return float(jiwer.wer(normal(reference), normal(hypothesis) or "<empty>"))


def _measure(choice: Choice, samples: np.ndarray, reference: str, threads: int, runs: int) -> dict[str, Any]:
    loaded = engine.load_engine(choice.path, threads, choice.backend)
    loaded.transcribe(samples[: 16000 * 3])  # warm: the first call allocates
    times, text = [], ""
    for _ in range(runs):
        started = time.perf_counter()
        text = loaded.transcribe(samples).text
        times.append(time.perf_counter() - started)
    return {"seconds": round(statistics.median(times), 3), "wer": round(word_error_rate(reference, text), 4)}


def _best(results: dict[str, dict[str, Any]]) -> str:
    """The fastest label whose WER is within WER_MARGIN of the best."""
    best_wer = min(r["wer"] for r in results.values())
    fine = {label: r for label, r in results.items() if r["wer"] <= best_wer + WER_MARGIN}
    return min(fine, key=lambda label: fine[label]["seconds"])


def layouts(cores: int) -> list[tuple[int, int]]:
    """The (workers, threads) pairs worth comparing on ``cores`` cores: one worker on all, one per core, halves."""
    found = {(1, cores), (cores, 1)}
    if cores >= 4:
        found.add((2, cores // 2))
    return sorted(found)


def _queue_seconds(choice: Choice, samples: np.ndarray, workers: int, threads: int) -> float:
    """Seconds for ``workers`` engines of ``threads`` threads each to drain LAYOUT_JOBS copies of ``samples``."""
    engines = [engine.build(choice.path, threads, choice.backend) for _ in range(workers)]
    waiting = list(range(LAYOUT_JOBS))
    lock = threading.Lock()

    def drain(loaded: engine.Engine) -> None:
        while True:
            with lock:
                if not waiting:
                    return
                waiting.pop()
            loaded.transcribe(samples)

    try:
        for loaded in engines:
            loaded.transcribe(samples[: 16000 * 3])  # warm: the first call allocates
        started = time.perf_counter()
        # Threads stand in for worker processes: both engines release the GIL while they compute.
        with ThreadPoolExecutor(workers) as pool:
            list(pool.map(drain, engines))
        return time.perf_counter() - started
    finally:
        for loaded in engines:
            engine.close(loaded)


def measure_layout(choice: Choice, samples: np.ndarray, cores: int) -> dict[str, Any]:
    """Time a deep queue under each worker layout; keep one worker on all cores unless another wins clearly."""
    seconds = {f"{w}x{t}": round(_queue_seconds(choice, samples, w, t), 3) for w, t in layouts(cores)}
    single = f"1x{cores}"
    fastest = min(seconds, key=lambda label: seconds[label])
    pick = fastest if seconds[fastest] * LAYOUT_GAIN <= seconds[single] else single
    workers, threads = (int(n) for n in pick.split("x"))
    return {"workers": workers, "threads": threads, "jobs": LAYOUT_JOBS, "engine": choice.label, "seconds": seconds}


def available_cores() -> int:
    """The cores this process may run on (its affinity, as a container or systemd limits it)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def calibrate(
    cfg: Mapping[str, Any], models: list[str], *, runs: int = 2, echo: Callable[[str], None] = log.info
) -> dict[str, Any]:
    """Time every candidate of ``models`` on a short and a long clip, pick per class, and save the record."""
    threads = int(cfg.get("ENGINE_THREADS") or 0)
    clips = {
        "short": (_clip_audio(SHORT_CLIP), _reference(SHORT_CLIP)),
        "long": (_clip_audio(LONG_CLIP, LONG_REPEATS), _reference(LONG_CLIP, LONG_REPEATS)),
    }
    record: dict[str, Any] = {
        "host": platform.node(),
        "created_at": utc_iso(),
        "cpu": cpu_features(),
        "threads": threads,
        "models": {},
    }
    steps = [(m, c) for m in models for c in candidates(cfg["MODELS_DIR"], m)]
    for number, (model, choice) in enumerate(steps, 1):
        echo(f"[{number}/{len(steps)}] {model}: {choice.label}")
        entry = record["models"].setdefault(model, {"results": {}})
        entry["results"][choice.label] = {
            kind: _measure(choice, samples, ref, threads, runs) for kind, (samples, ref) in clips.items()
        }
        engine.unload(choice.backend)  # one model at a time keeps the calibration's memory small
    for entry in record["models"].values():
        results = entry["results"]
        for kind in clips:
            entry[kind] = _best({label: r[kind] for label, r in results.items()})
        cpp = {label: r["long"] for label, r in results.items() if label.startswith("whispercpp:")}
        if cpp:
            entry["whispercpp_file"] = _best(cpp).split(":", 1)[1]
    cores = available_cores()
    if models and record["models"] and not threads and cores > 1:
        # The layout is measured with the first (default) model on a job of the long class, as queues hold.
        first = record["models"][models[0]]
        pick = next(c for c in candidates(cfg["MODELS_DIR"], models[0]) if c.label == first["long"])
        echo(f"[layout] {LAYOUT_JOBS} queued jobs: " + ", ".join(f"{w}x{t}" for w, t in layouts(cores)))
        record["layout"] = measure_layout(pick, _clip_audio(LONG_CLIP), cores)
    atomic_write(tuning_path(cfg), json.dumps(record, indent=2))
    return record
