"""``whisper-transcriber bench --compare``: the appliance against faster-whisper, side by side, in one run.

Every system transcribes every workload; runs are interleaved (run 1 of every system, then run 2 …)
so that a drifting machine does not favour anyone, and the median is reported with the word error
rate and the peak memory beside each time.

- faster-whisper int8, sequential and batched: the engine most peers serve, and the anchor (×1.00);
- bare whisper.cpp on each model file, one call over the whole file: the engine as it comes;
- the running appliance, once per engine setting, timed from HTTP submit to the job reading
  completed, submitted as a user does (no model, no language);
- faster-whisper int8 once more with the appliance's OpenMP setting (``engine.OPENMP_DEFAULTS``), so
  the table shows what that setting alone is worth: the other bare engines run as they come.

Bare systems each run in a child process of their own (``--serve``), so their memory is their own.
"""

from __future__ import annotations

import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from workers import engine, modelstore, tuning
from workers.bench import Appliance, PeakRss

ANCHOR = "faster-whisper int8"
TUNED_ANCHOR = "faster-whisper int8, appliance's OpenMP setting"
# libgomp's own defaults, spelled out: with one of its variables set, the appliance's setting stays away.
AS_SHIPPED = {"GOMP_SPINCOUNT": "300000"}
BATCH_JOBS = 8
LONG_REPEATS = 17  # OSR ×17: about 10 minutes
FW_BATCH_SIZE = 4


@dataclass
class Workload:
    """Files transcribed together (one, or a batch submitted at once) and their reference text."""

    name: str
    files: list[Path]
    reference: str
    seconds: float


@dataclass
class Figures:
    """One system's measurements on one workload."""

    times: list[float] = field(default_factory=list)
    wer: float | None = None
    rss: int = 0


def build_workloads(folder: Path, names: list[str]) -> list[Workload]:
    """jfk, OSR, a 10-minute file made of OSR ×17, and 8 copies of OSR submitted at once."""
    clips = tuning.CLIPS_DIR
    osr = clips / tuning.LONG_CLIP
    made: dict[str, Workload] = {}
    if "jfk" in names:
        made["jfk"] = Workload("jfk", [clips / "jfk.flac"], tuning._reference("jfk.flac"), 11.0)
    if "osr" in names:
        made["osr"] = Workload("osr", [osr], tuning._reference(tuning.LONG_CLIP), 35.5)
    if "10min" in names:
        long = folder / "osr-x17.flac"
        subprocess.run(
            [
                "ffmpeg",
                "-nostdin",
                "-y",
                "-v",
                "error",
                "-stream_loop",
                str(LONG_REPEATS - 1),
                "-i",
                str(osr),
                "-ac",
                "1",
                "-ar",
                "16000",
                str(long),
            ],
            check=True,
            timeout=300,
        )
        made["10min"] = Workload(
            "10min", [long], tuning._reference(tuning.LONG_CLIP, LONG_REPEATS), 35.5 * LONG_REPEATS
        )
    if "batch8" in names:
        copies = []
        for i in range(BATCH_JOBS):
            copy = folder / f"osr-{i}.flac"
            copy.write_bytes(osr.read_bytes())
            copies.append(copy)
        made["batch8"] = Workload("batch8", copies, tuning._reference(tuning.LONG_CLIP, BATCH_JOBS), 35.5 * BATCH_JOBS)
    return [made[n] for n in names if n in made]


# ------------------------------------------------------------------ bare engines in child processes


def serve(system: str, model_dir: str, threads: int) -> None:
    """Child process: load one bare engine, then transcribe each file list read from stdin (JSON lines)."""
    from workers import audio  # late: only the measuring child decodes; the parent stays light

    if system.startswith("fw"):
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        from faster_whisper import BatchedInferencePipeline, WhisperModel

        model = WhisperModel(model_dir, device="cpu", compute_type="int8", cpu_threads=threads, local_files_only=True)
        batched = BatchedInferencePipeline(model) if system == "fw-batched" else None

        def run(samples) -> str:
            if batched is not None:
                segments, _ = batched.transcribe(samples, beam_size=1, batch_size=FW_BATCH_SIZE)
            else:
                segments, _ = model.transcribe(samples, beam_size=1)
            return " ".join(s.text.strip() for s in segments)
    else:
        from pywhispercpp.model import Model

        cpp = Model(model_dir, redirect_whispercpp_logs_to=None, print_progress=False, n_threads=threads)

        def run(samples) -> str:
            return " ".join(s.text.strip() for s in cpp.transcribe(samples))

    run(audio.decode(tuning.CLIPS_DIR / "jfk.flac")[: 16000 * 3])  # warm, as a server keeps its model
    for line in sys.stdin:
        files = json.loads(line)
        started = time.perf_counter()
        texts = [run(audio.decode(Path(f))) for f in files]  # decoding is part of the job, as in the appliance
        elapsed = time.perf_counter() - started
        rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
        print(json.dumps({"seconds": elapsed, "text": " ".join(texts), "rss": rss}), flush=True)


def child_env(openmp: dict[str, str]) -> dict[str, str]:
    """This process's environment with ``openmp`` in place of the OpenMP variables it holds."""
    return {k: v for k, v in os.environ.items() if k not in engine.OPENMP_DEFAULTS} | openmp


class Bare:
    """A bare engine in a child process."""

    def __init__(self, label: str, system: str, model_dir: Path, threads: int, openmp: dict[str, str] = AS_SHIPPED):
        self.label = label
        self.process = subprocess.Popen(
            [sys.executable, "-m", "workers.compare", system, str(model_dir), str(threads)],
            env=child_env(openmp),
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            text=True,
        )

    def transcribe(self, workload: Workload) -> tuple[float, str, int]:
        """Seconds, text and peak RSS so far."""
        assert self.process.stdin and self.process.stdout
        self.process.stdin.write(json.dumps([str(f) for f in workload.files]) + "\n")
        self.process.stdin.flush()
        line = self.process.stdout.readline()
        if not line:
            raise RuntimeError(f"{self.label} stopped")
        answer = json.loads(line)
        return answer["seconds"], answer["text"], answer["rss"]

    def close(self) -> None:
        """End the child."""
        self.process.terminate()
        self.process.wait(30)


class Served:
    """The running appliance with one engine setting, used as a client does."""

    def __init__(
        self,
        label: str,
        engine_setting: str,
        models_dir: str,
        threads: int,
        echo: Callable[[str], None],
        default_model: str = "tiny.en",
    ):
        self.label = label
        data = tempfile.mkdtemp(prefix="wt-compare-")
        if engine_setting == "auto":  # what a first start does in the background, done before timing
            cfg = {"DATA_DIR": data, "MODELS_DIR": models_dir, "ENGINE_THREADS": threads}
            tuning.calibrate(cfg, [default_model], echo=lambda line: echo(f"  tune {line}"))
        self.app = Appliance(
            models_dir, threads, data_dir=data, env={"WT_ENGINE": engine_setting, "WT_TUNE_ON_START": "false"}
        )
        self.rss = PeakRss(self.app.worker())

    def transcribe(self, workload: Workload) -> tuple[float, str, int]:
        """Submit every file at once, wait for all; seconds from the first submit, text and worker peak RSS."""
        started = time.perf_counter()
        with ThreadPoolExecutor(len(workload.files)) as pool:
            texts = list(pool.map(self.app.transcribe_text, workload.files))
        return time.perf_counter() - started, " ".join(texts), self.rss.peak

    def close(self) -> None:
        """Stop the appliance."""
        self.rss.stop()
        self.app.close()


# ------------------------------------------------------------------ the run


def run_compare(model: str, runs: int, names: list[str], echo: Callable[[str], None]) -> dict[str, Any]:
    """Measure every system on every workload, interleaved; print the table and return the figures."""
    from app.settings import load_settings  # late: the child processes need no settings

    settings = load_settings()
    engine.openmp_defaults()  # the calibration below runs here: as a worker runs its engines
    models_dir = settings["MODELS_DIR"]
    threads = int(settings["ENGINE_THREADS"]) or os.cpu_count() or 1
    ct2 = modelstore.ct2_dir(models_dir, model)
    if not modelstore.is_ct2_dir(ct2) or not tuning.ctranslate2_available():
        raise SystemExit(
            f"the comparison needs faster-whisper and {model}'s CTranslate2 weights: "
            f"pip install -e '.[ctranslate2]' and whisper-transcriber models install {model}"
        )
    systems: list[Any] = [
        Bare(ANCHOR, "fw", ct2, threads),
        Bare(f"faster-whisper int8 batched ({FW_BATCH_SIZE})", "fw-batched", ct2, threads),
        Bare(TUNED_ANCHOR, "fw", ct2, threads, engine.OPENMP_DEFAULTS),
    ]
    for choice in tuning.candidates(models_dir, model):
        if choice.backend == "whispercpp":
            systems.append(Bare(f"whisper.cpp bare {choice.path.name}", "cpp", choice.path, threads))
    for setting in ("whispercpp", "ctranslate2", "auto"):
        echo(f"starting the appliance with WT_ENGINE={setting}")
        systems.append(
            Served(f"appliance WT_ENGINE={setting}", setting, models_dir, threads, echo, settings["DEFAULT_MODEL"])
        )
    figures: dict[tuple[str, str], Figures] = {}
    try:
        with tempfile.TemporaryDirectory(prefix="wt-compare-audio-") as folder:
            workloads = build_workloads(Path(folder), names)
            for number in range(1, runs + 1):
                echo(f"run {number} of {runs}")
                for workload in workloads:
                    for system in systems:
                        seconds, text, rss = system.transcribe(workload)
                        cell = figures.setdefault((workload.name, system.label), Figures())
                        cell.times.append(seconds)
                        cell.wer = tuning.word_error_rate(workload.reference, text)
                        cell.rss = max(cell.rss, rss)
            return _report(workloads, systems, figures, threads, echo)
    finally:
        for system in systems:
            system.close()


def _report(
    workloads: list[Workload],
    systems: list[Any],
    figures: dict[tuple[str, str], Figures],
    threads: int,
    echo: Callable[[str], None],
) -> dict[str, Any]:
    cpu = tuning.cpu_features()
    echo(f"CPU: {cpu['machine']} {' '.join(cpu['flags'])}; {threads} threads")
    echo(f"whisper.cpp: {cpu['whisper_cpp']}")
    echo(f"{'workload':8} {'system':44} {'seconds':>8} {'× fw':>6} {'WER':>6} {'RSS MB':>7}")
    table: list[dict[str, Any]] = []
    for workload in workloads:
        anchor = statistics.median(figures[(workload.name, ANCHOR)].times)
        for system in systems:
            cell = figures[(workload.name, system.label)]
            median = statistics.median(cell.times)
            row = {
                "workload": workload.name,
                "system": system.label,
                "seconds": round(median, 3),
                "ratio": round(median / anchor, 2),
                "wer": round(cell.wer or 0.0, 3),
                "rss_mb": round(cell.rss / 2**20),
            }
            table.append(row)
            echo(
                f"{workload.name:8} {system.label:44} {median:8.2f} {row['ratio']:6.2f} {row['wer']:6.3f} "
                f"{row['rss_mb']:7d}"
            )
    return {"cpu": cpu, "threads": threads, "rows": table}


if __name__ == "__main__":  # a bare engine's child process: python -m workers.compare SYSTEM MODEL THREADS
    serve(sys.argv[1], sys.argv[2], int(sys.argv[3]))
