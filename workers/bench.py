"""``whisper-transcriber bench``: the bare engine against the running appliance on the clips the test suite ships.

The appliance figure is wall time from HTTP submit to the job reading completed; the bare
figure is ffmpeg decoding plus whisper.cpp in one process, which is the least any
transcription of a file must do. Both use the same model file and thread count, warm, and
their runs alternate so that the machine's drifting speed does not favour either.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path

import psutil
import requests

from app.settings import ROOT, load_settings
from workers import audio, engine, modelstore

CLIPS = ("jfk.flac", "OSR_us_000_0034_8k.flac")
BENCH_PASSWORD = "bench-password-123"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def bare_seconds(model_file: Path, clip: Path, threads: int) -> float:
    """Decode and transcribe once in this process; seconds."""
    started = time.perf_counter()
    samples = audio.decode(clip)
    engine.load_engine(model_file, threads).transcribe(samples, language="en")
    return time.perf_counter() - started


class Appliance:
    """A ``whisper-transcriber run`` on a free port with a throwaway data dir."""

    def __init__(
        self, models_dir: str, threads: int, *, data_dir: str | None = None, env: dict[str, str] | None = None
    ):
        self.data_dir = data_dir or tempfile.mkdtemp(prefix="wt-bench-")
        port = _free_port()
        self.url = f"http://127.0.0.1:{port}"
        env = {
            **os.environ,
            "WT_DATA_DIR": self.data_dir,
            "WT_MODELS_DIR": models_dir,
            "WT_PORT": str(port),
            "WT_ADMIN_PASSWORD": BENCH_PASSWORD,
            "WT_ENGINE_THREADS": str(threads),
            "WT_TUNE_ON_START": "false",
            **(env or {}),
        }
        self.process = subprocess.Popen(
            [sys.executable, "-m", "app.cli", "run"],
            cwd=ROOT,
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            try:
                if requests.get(self.url + "/health", timeout=1).json().get("worker_alive"):
                    break
            except requests.RequestException:
                pass
            time.sleep(0.2)
        else:
            self.close()
            raise RuntimeError("the appliance did not start within 60 s")
        token = requests.post(
            self.url + "/auth/login", json={"username": "admin", "password": BENCH_PASSWORD}, timeout=10
        ).json()["access_token"]
        self.session = requests.Session()
        self.session.headers["Authorization"] = f"Bearer {token}"

    def worker(self) -> psutil.Process:
        """The worker process of the supervisor."""
        return next(p for p in psutil.Process(self.process.pid).children() if "worker" in p.cmdline())

    def transcribe_text(self, clip: Path) -> str:
        """Submit as a user does (no model, no language), wait (long poll) until completed; the text."""
        with open(clip, "rb") as f:
            job_id = self.session.post(self.url + "/api/jobs/", files={"file": (clip.name, f)}, timeout=60).json()[
                "job_id"
            ]
        while True:
            job = self.session.get(f"{self.url}/api/jobs/{job_id}?wait=60", timeout=90).json()
            if job["status"] in ("completed", "failed", "cancelled"):
                break
        if job["status"] != "completed":
            raise RuntimeError(f"job {job_id} ended {job['status']}: {job.get('error')}")
        return job["transcript"]["text"]

    def transcribe_seconds(self, clip: Path, model: str) -> float:
        """Submit over HTTP and wait (long poll) until completed; seconds."""
        started = time.perf_counter()
        with open(clip, "rb") as f:
            job_id = self.session.post(
                self.url + "/api/jobs/",
                files={"file": (clip.name, f)},
                data={"model": model, "language": "en"},
                timeout=60,
            ).json()["job_id"]
        while True:
            # A long poll answers the moment the job finishes; polling every 0.1 s instead costs the
            # engine 5-10 % here, because each request takes CPU from whisper.cpp's threads.
            status = self.session.get(f"{self.url}/api/progress/{job_id}?wait=60", timeout=90).json()["status"]
            if status in ("completed", "failed", "cancelled"):
                break
        elapsed = time.perf_counter() - started
        if status != "completed":
            raise RuntimeError(f"job {job_id} ended {status}")
        return elapsed

    def close(self) -> None:
        """Stop the appliance and remove its data."""
        self.process.send_signal(signal.SIGTERM)
        try:
            self.process.wait(30)
        except subprocess.TimeoutExpired:
            self.process.kill()
        shutil.rmtree(self.data_dir, ignore_errors=True)


class PeakRss:
    """Samples a process's resident memory in the background and keeps the peak."""

    def __init__(self, process: psutil.Process):
        self.process, self.peak = process, 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                self.peak = max(self.peak, self.process.memory_info().rss)
            except psutil.Error:
                return
            time.sleep(0.05)

    def stop(self) -> int:
        """Stop sampling; the peak in bytes."""
        self._stop.set()
        self._thread.join()
        return self.peak


def run_bench(model: str, runs: int, audio_dir: Path | None, echo: Callable[[str], None]) -> dict:
    """Print and return median seconds, real-time factors and the bare/appliance ratio per clip."""
    settings = load_settings()
    model_file = modelstore.model_path(settings["MODELS_DIR"], model)
    if not model_file.exists():
        raise SystemExit(f"model {model} is not installed: whisper-transcriber models install {model}")
    audio_dir = audio_dir or ROOT / "tests" / "data"  # the clips the test suite ships
    threads = int(settings["ENGINE_THREADS"]) or os.cpu_count() or 1
    clips = [audio_dir / name for name in CLIPS]
    echo(f"model {model}, {threads} threads, median of {runs} interleaved runs, warm model")
    bare_seconds(model_file, clips[0], threads)  # load the model once, as a worker keeps it
    bare: dict[str, list[float]] = {c.name: [] for c in clips}
    served: dict[str, list[float]] = {c.name: [] for c in clips}
    app = Appliance(settings["MODELS_DIR"], threads)
    try:
        app.transcribe_seconds(clips[0], model)  # the worker loads the model on its first job
        rss = PeakRss(app.worker())
        # Bare and appliance runs alternate, so drift in the machine's speed (a shared VM) hits both alike;
        # the idle appliance was measured not to slow the bare runs.
        for _ in range(runs):
            for clip in clips:
                bare[clip.name].append(bare_seconds(model_file, clip, threads))
                served[clip.name].append(app.transcribe_seconds(clip, model))
        peak = rss.stop()
    finally:
        app.close()
        engine.unload()
    bare = {name: statistics.median(values) for name, values in bare.items()}
    served = {name: statistics.median(values) for name, values in served.items()}

    results = {
        "model": model,
        "threads": threads,
        "runs": runs,
        "worker_peak_rss_mb": round(peak / 1e6, 1),
        "clips": {},
    }
    echo(f"{'clip':28} {'seconds':>8} {'bare s':>8} {'app s':>8} {'bare RTF':>9} {'app RTF':>8} {'app/bare':>9}")
    for clip in clips:
        length = audio.probe(clip).duration
        b, a = bare[clip.name], served[clip.name]
        results["clips"][clip.name] = {
            "seconds": round(length, 1),
            "bare_s": round(b, 3),
            "appliance_s": round(a, 3),
            "ratio": round(a / b, 3),
        }
        echo(f"{clip.name:28} {length:8.1f} {b:8.2f} {a:8.2f} {b / length:9.3f} {a / length:8.3f} {a / b:9.3f}")
    echo(f"worker peak RSS: {peak / 1e6:.0f} MB")
    return results
