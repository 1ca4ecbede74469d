"""An optional native build of whisper.cpp: pywhispercpp compiled from its sdist for this box's CPU.

The PyPI wheel is built for AVX2/FMA/F16C so that it runs on any x86-64 of the last decade, and without
llamafile's matrix kernels (whisper.cpp leaves GGML_LLAMAFILE off). ``whisper-transcriber engine build``
downloads the sdist of the installed pywhispercpp, compiles it with the instruction sets /proc/cpuinfo
lists and GGML_LLAMAFILE on, runs it beside the installed build on the shipped clips (f16 and q8_0 models,
each run in its own process, interleaved), and installs it into the venv only when it neither crashed nor
lost accuracy (WER within 0.01) and is faster. Anything else leaves the wheel in place and says why.
``--revert`` puts the PyPI wheel back.

Never ``GGML_NATIVE``: ``-march=native`` on a CPU with AMX defines ``__AMX_INT8__``, which compiles
ggml's AMX kernels in whatever ``GGML_AMX_INT8`` says. Those kernels take over the matrix products of
q8_0 weights (f16 ones stay on AVX-512): the likely cause of the q8_0-only crashes a native build had on
a Xeon with AMX. The flags here are explicit, AMX off, and the verification runs in a separate process.
"""

from __future__ import annotations

import argparse
import importlib.metadata
import json
import os
import platform
import re
import shutil
import signal
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from workers.atomicfile import PUBLIC, atomic_write
from workers.timestamps import utc_iso

PACKAGE = "pywhispercpp"
WORK_DIR = Path("engine") / "native"  # under DATA_DIR: sdist, wheels, the staged build and the record
RECORD = "record.json"
CLIPS_DIR = Path(__file__).resolve().parent.parent / "tests" / "data"
CLIPS = ("jfk.flac", "OSR_us_000_0034_8k.flac")
WER_TOLERANCE = 0.01  # the native build may lose at most this much accuracy on any clip and model
MIN_SPEEDUP = 1.0  # installed only when faster than the build it replaces
BUILD_TIMEOUT = 3600  # a Raspberry Pi compiles for a long time
MEASURE_TIMEOUT = 600
# One thread, timed in CPU seconds: the work a build needs for the same audio. Wall-clock time on a shared
# box swings by 25 % between minutes (see the README's Benchmark); one thread's CPU time stays within ~5 %.
VERIFY_THREADS = 1

# x86: (CMake option, cpuinfo flags it needs). The VBMI/VNNI/BF16 options only act with GGML_AVX512 on.
AVX512_BASE = ("avx512f", "avx512cd", "avx512vl", "avx512dq", "avx512bw")
X86_OPTIONS: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("GGML_SSE42", ("sse4_2",)),
    ("GGML_AVX", ("avx",)),
    ("GGML_AVX2", ("avx2",)),
    ("GGML_FMA", ("fma",)),
    ("GGML_F16C", ("f16c",)),
    ("GGML_BMI2", ("bmi2",)),
    ("GGML_AVX_VNNI", ("avx_vnni",)),
    ("GGML_AVX512", AVX512_BASE),
    ("GGML_AVX512_VBMI", (*AVX512_BASE, "avx512vbmi")),
    ("GGML_AVX512_VNNI", (*AVX512_BASE, "avx512_vnni")),
    ("GGML_AVX512_BF16", (*AVX512_BASE, "avx512_bf16")),
)
ALWAYS_OFF = ("GGML_NATIVE", "GGML_AMX_TILE", "GGML_AMX_INT8", "GGML_AMX_BF16")  # see the module docstring
# llamafile's tinyBLAS matrix kernels (x86 and NEON), which llama.cpp switches on and whisper.cpp leaves off:
# most of the gain (the encoder's matrix products), on every CPU the wheel runs on.
ALWAYS_ON = ("GGML_LLAMAFILE",)
# aarch64: (-march tag, cpuinfo features it needs); SVE stays off, its kernels assume a vector length.
ARM_TAGS = (("dotprod", ("asimddp",)), ("fp16", ("fphp", "asimdhp")), ("i8mm", ("i8mm",)))


class BuildError(RuntimeError):
    """One step of the native build failed; the message says which and why."""


@dataclass
class BuildPlan:
    """What to compile for this CPU, or why not to."""

    machine: str
    options: dict[str, str] = field(default_factory=dict)
    refusal: str | None = None

    @property
    def enabled(self) -> list[str]:
        """The instruction-set options switched on (or the ARM architecture), for messages."""
        return [k for k, v in self.options.items() if v == "ON"] + [
            v for k, v in self.options.items() if k == "GGML_CPU_ARM_ARCH"
        ]

    def cmake_args(self) -> str:
        """The CMAKE_ARGS value pywhispercpp's setup.py passes on to CMake."""
        # $ORIGIN: the extension and libwhisper/libggml find each other wherever the wheel is installed
        # (without it they keep the path of pip's deleted build folder).
        extra = {"CMAKE_INSTALL_RPATH": "$ORIGIN", "CMAKE_BUILD_WITH_INSTALL_RPATH": "ON", "GGML_CCACHE": "OFF"}
        return " ".join(f"-D{k}={v}" for k, v in {**self.options, **extra}.items())


def cpu_flags(cpuinfo: str) -> set[str]:
    """The flags (x86) or features (ARM) that every core of /proc/cpuinfo lists."""
    per_core = [
        set(line.split(":", 1)[1].split()) for line in cpuinfo.splitlines() if re.match(r"^(flags|Features)\s*:", line)
    ]
    return set.intersection(*per_core) if per_core else set()


def plan_build(cpuinfo: str, machine: str) -> BuildPlan:
    """Choose the CMake options for this CPU from its /proc/cpuinfo text, or refuse with the reason."""
    machine = machine.lower()
    flags = cpu_flags(cpuinfo)
    if not flags:
        return BuildPlan(machine, refusal="/proc/cpuinfo lists no CPU flags: no instruction set to build for")
    if machine in ("x86_64", "amd64"):
        options = {option: "ON" if all(f in flags for f in needs) else "OFF" for option, needs in X86_OPTIONS}
        return BuildPlan(machine, {**options, **dict.fromkeys(ALWAYS_ON, "ON"), **dict.fromkeys(ALWAYS_OFF, "OFF")})
    if machine in ("aarch64", "arm64"):
        if "asimd" not in flags:
            return BuildPlan(machine, refusal="this ARM CPU reports no NEON (asimd): no native build")
        tags = [tag for tag, needs in ARM_TAGS if all(f in flags for f in needs)]
        arch = "armv8.2-a" + "".join(f"+{t}" for t in tags) if tags else "armv8-a"
        return BuildPlan(machine, {"GGML_NATIVE": "OFF", "GGML_CPU_ARM_ARCH": arch, **dict.fromkeys(ALWAYS_ON, "ON")})
    return BuildPlan(machine, refusal=f"no native build for {machine}: only x86-64 and 64-bit ARM are supported")


def read_cpuinfo() -> str:
    """This box's /proc/cpuinfo, or empty text where there is none."""
    try:
        return Path("/proc/cpuinfo").read_text()
    except OSError:
        return ""


# ------------------------------------------------------------------ measuring (in a subprocess)


def _wer(reference: str, hypothesis: str) -> float:
    # The normalisation of workers.tuning.word_error_rate, not imported: that module pulls in the web app.
    import jiwer

    def normal(text: str) -> str:
        return " ".join(re.sub(r"[^\w\s']", " ", text.lower().replace("-", " ")).split())

    return float(jiwer.wer(normal(reference), normal(hypothesis) or "<empty>"))


def measure_here(models: list[Path], threads: int = VERIFY_THREADS) -> dict[str, Any]:
    """Transcribe the shipped clips once with each model in this process: times and WER per model and clip."""
    # late: only the verify step loads whisper.cpp (the freshly built one, after the install)
    import _pywhispercpp as pw

    from workers import audio
    from workers.backends.whispercpp import WhisperCppEngine

    manifest = json.loads((CLIPS_DIR / "manifest.json").read_text())["clips"]
    references = {c["file"]: c["reference"] for c in manifest if c["file"] in CLIPS}
    clips = {name: audio.decode(CLIPS_DIR / name) for name in CLIPS}
    results: dict[str, Any] = {}
    for model in models:
        loaded = WhisperCppEngine(model, threads)
        loaded.transcribe(clips[CLIPS[0]][: 16000 * 3])  # warm: the first call allocates
        for name, samples in clips.items():
            started, cpu = time.perf_counter(), time.process_time()
            text = loaded.transcribe(samples).text
            results.setdefault(model.name, {})[name] = {
                "seconds": round(time.perf_counter() - started, 3),
                "cpu": round(time.process_time() - cpu, 3),
                "wer": round(_wer(references[name], text), 4),
            }
        del loaded
    return {"module": pw.__file__, "system_info": pw.whisper_print_system_info().strip(), "results": results}


def measure(
    models: list[Path], site: Path | None = None, threads: int = VERIFY_THREADS, python: str = sys.executable
) -> dict[str, Any]:
    """Run ``measure_here`` in a fresh process, with ``site`` (a staged build) ahead of the installed one."""
    env = dict(os.environ)
    if site is not None:
        env["PYTHONPATH"] = os.pathsep.join(p for p in (str(site), env.get("PYTHONPATH", "")) if p)
    command = [python, "-m", "workers.native_build", "measure", "--threads", str(threads), *map(str, models)]
    root = Path(__file__).resolve().parent.parent
    which = "native" if site else "installed"
    try:
        done = subprocess.run(command, env=env, cwd=root, capture_output=True, text=True, timeout=MEASURE_TIMEOUT)
    except subprocess.TimeoutExpired as exc:
        raise BuildError(f"the {which} build hung (over {MEASURE_TIMEOUT} s)") from exc
    if done.returncode < 0:
        name = signal.Signals(-done.returncode).name if -done.returncode in signal.valid_signals() else "a signal"
        raise BuildError(f"the {which} build crashed ({name}) on the shipped clips: {_tail(done.stderr)}")
    if done.returncode != 0:
        raise BuildError(f"the {which} build failed on the shipped clips: {_tail(done.stderr)}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def _tail(text: str, lines: int = 3) -> str:
    return " | ".join(text.strip().splitlines()[-lines:]) or "(no output)"


def summarise(rounds: list[dict[str, Any]]) -> dict[str, dict[str, dict[str, float]]]:
    """Per model and clip: the median times and the worst WER over the rounds."""
    out: dict[str, dict[str, dict[str, float]]] = {}
    for model, clips in rounds[0]["results"].items():
        for clip in clips:
            runs = [r["results"][model][clip] for r in rounds]
            out.setdefault(model, {})[clip] = {
                key: round(statistics.median(r[key] for r in runs), 3) for key in ("seconds", "cpu")
            } | {"wer": max(r["wer"] for r in runs)}
    return out


def _total(clips: dict[str, dict[str, float]]) -> float:
    return sum(v["cpu"] for v in clips.values())


def compare(baseline: dict[str, Any], candidate: dict[str, Any]) -> tuple[list[str], float]:
    """The accuracy problems of ``candidate`` against ``baseline`` (empty: fine) and its speedup.

    The speedup compares the fastest model file of each build: that is the file the calibration picks, and
    instruction sets can move f16 and q8_0 apart (AVX-512 without llamafile's kernels, on an AMD EPYC:
    q8_0 10 % faster, f16 5 % slower).
    """
    problems = []
    for model, clips in baseline.items():
        for clip, base in clips.items():
            got = candidate.get(model, {}).get(clip)
            if got is None:
                problems.append(f"{model} on {clip}: not measured")
            elif got["wer"] > base["wer"] + WER_TOLERANCE:
                problems.append(f"{model} on {clip}: WER {got['wer']:.3f} against {base['wer']:.3f}")
    new_best = min((_total(clips) for clips in candidate.values()), default=0.0)
    base_best = min((_total(clips) for clips in baseline.values()), default=0.0)
    return problems, round(base_best / new_best, 3) if new_best else 0.0


def model_speedups(baseline: dict[str, Any], candidate: dict[str, Any]) -> dict[str, float]:
    """Per model file: the installed build's CPU time over the native build's, on the shipped clips."""
    return {
        model: round(_total(clips) / _total(candidate[model]), 3)
        for model, clips in baseline.items()
        if model in candidate and _total(candidate[model])
    }


# ------------------------------------------------------------------ the build


@dataclass
class Outcome:
    """What ``engine build`` did: installed or not, and why."""

    installed: bool
    message: str
    plan: dict[str, Any] | None = None
    speedup: float | None = None
    baseline: dict[str, Any] | None = None
    native: dict[str, Any] | None = None
    retry: bool = False  # a download failed: ``--once`` tries again next time


def installed_version() -> str:
    """The version of pywhispercpp in this environment."""
    return importlib.metadata.version(PACKAGE)


def installed_is_native() -> bool:
    """True when the installed pywhispercpp is a local build (tag linux_*) rather than PyPI's manylinux wheel."""
    wheel = importlib.metadata.distribution(PACKAGE).read_text("WHEEL") or ""
    tags = [line.split(":", 1)[1].strip() for line in wheel.splitlines() if line.startswith("Tag:")]
    return any("-linux_" in tag for tag in tags)


class NativeBuild:
    """The steps of a native build; each raises BuildError, and ``run`` turns any failure into a kept wheel."""

    def __init__(
        self,
        data_dir: Path | str,
        models: list[Path],
        *,
        threads: int = VERIFY_THREADS,
        runs: int = 3,
        python: str = sys.executable,
        echo: Callable[[str], None] = print,
    ):
        self.work = Path(data_dir) / WORK_DIR
        self.models = models
        self.threads = threads
        self.runs = runs
        self.python = python
        self.echo = echo

    # -- the record, so that ``--once`` builds a version once per box
    @property
    def record_path(self) -> Path:
        """Where the outcome of the last build is kept."""
        return self.work / RECORD

    def read_record(self) -> dict[str, Any] | None:
        """The last build's outcome, or None."""
        try:
            return json.loads(self.record_path.read_text())
        except (OSError, ValueError):
            return None

    def write_record(self, version: str, outcome: Outcome) -> None:
        """Keep the outcome beside the build (atomically)."""
        record = {"version": version, "created_at": utc_iso(), **asdict(outcome)}
        atomic_write(self.record_path, json.dumps(record, indent=2), mode=PUBLIC)

    def already_done(self, version: str, plan: BuildPlan) -> bool:
        """True when this version was built for these options before and its outcome still holds."""
        record = self.read_record() or {}
        same = record.get("version") == version and record.get("plan") == asdict(plan)
        return same and not record.get("retry") and (not record.get("installed") or installed_is_native())

    # -- steps
    def _pip(self, *args: str, timeout: float = 600, env: dict[str, str] | None = None, nice: bool = False) -> None:
        command = [self.python, "-m", "pip", *args]
        if nice and shutil.which("nice"):
            command = ["nice", "-n", "19", *command]  # a serving appliance keeps its CPU share while this compiles
        try:
            done = subprocess.run(command, capture_output=True, text=True, timeout=timeout, env=env)
        except subprocess.TimeoutExpired as exc:
            raise BuildError(f"pip {args[0]} took over {timeout:.0f} s") from exc
        if done.returncode != 0:
            raise BuildError(f"pip {args[0]} failed: {_tail(done.stderr + done.stdout, 4)}")

    def download_sdist(self, version: str) -> Path:
        """The sdist of ``version``; --no-binary names only pywhispercpp, so its build tools still come as wheels."""
        folder = self.work / "sdist"
        self._pip("download", "--no-deps", "--no-binary", PACKAGE, f"{PACKAGE}=={version}", "-d", str(folder))
        found = sorted(folder.glob(f"{PACKAGE}-{version}.tar.gz"))
        if not found:
            raise BuildError(f"pip download gave no {PACKAGE}-{version}.tar.gz")
        return found[0]

    def download_wheel(self, version: str) -> Path:
        """PyPI's wheel of ``version``, kept so that ``--revert`` works offline."""
        folder = self.work / "pypi-wheel"
        self._pip("download", "--no-deps", "--only-binary", ":all:", f"{PACKAGE}=={version}", "-d", str(folder))
        found = sorted(folder.glob(f"{PACKAGE}-{version}-*.whl"))
        if not found:
            raise BuildError(f"pip download gave no {PACKAGE}-{version} wheel")
        return found[0]

    def build_wheel(self, sdist: Path, plan: BuildPlan) -> Path:
        """Compile the sdist into a wheel with the plan's options."""
        compilers = [c for c in ("cc", "c++") if not shutil.which(c)]
        if compilers:
            raise BuildError(f"no C/C++ compiler ({', '.join(compilers)} missing): install build-essential")
        dist = self.work / "dist"
        shutil.rmtree(dist, ignore_errors=True)
        env = {**os.environ, "CMAKE_ARGS": plan.cmake_args(), "CMAKE_BUILD_PARALLEL_LEVEL": str(os.cpu_count() or 1)}
        env.pop("SOURCE_DATE_EPOCH", None)
        # --no-cache-dir: pip would otherwise hand back a wheel it cached from a build with other flags.
        self._pip(
            "wheel",
            "--no-deps",
            "--no-cache-dir",
            str(sdist),
            "-w",
            str(dist),
            timeout=BUILD_TIMEOUT,
            env=env,
            nice=True,
        )
        found = sorted(dist.glob(f"{PACKAGE}-*.whl"))
        if not found:
            raise BuildError("the build produced no wheel")
        return found[0]

    def stage(self, wheel: Path) -> Path:
        """Unpack the wheel into a folder of its own, where the verification runs it before anything changes."""
        site = self.work / "site-packages"
        shutil.rmtree(site, ignore_errors=True)
        self._pip("install", "--no-deps", "--no-compile", "--target", str(site), str(wheel))
        return site

    def verify(self, site: Path) -> tuple[dict[str, Any], dict[str, Any], float]:
        """Installed and staged build in turn, ``runs`` rounds; raise unless the staged one is sound."""
        installed_rounds, native_rounds = [], []
        for number in range(1, self.runs + 1):
            self.echo(f"  round {number}/{self.runs}: installed build, then native build")
            installed_rounds.append(measure(self.models, None, self.threads, self.python))
            native = measure(self.models, site, self.threads, self.python)
            if not native["module"].startswith(str(site)):
                raise BuildError(f"the staged build was not the one loaded ({native['module']})")
            native_rounds.append(native)
        baseline, candidate = summarise(installed_rounds), summarise(native_rounds)
        problems, speedup = compare(baseline, candidate)
        if problems:
            raise BuildError("the native build is less accurate: " + "; ".join(problems))
        return baseline, candidate, speedup

    def install(self, wheel: Path) -> None:
        """Replace the pywhispercpp in the venv with ``wheel``."""
        self._pip("install", "--no-deps", "--force-reinstall", str(wheel))

    def revert(self) -> Outcome:
        """Put PyPI's wheel of the installed version back."""
        version = installed_version()
        kept = sorted((self.work / "pypi-wheel").glob(f"{PACKAGE}-{version}-*.whl"))
        self.install(kept[0] if kept else self.download_wheel(version))
        outcome = Outcome(False, f"PyPI's {PACKAGE} {version} wheel is installed again")
        record = self.read_record()
        self.write_record(version, Outcome(False, outcome.message, (record or {}).get("plan")))
        return outcome

    def run(self, cpuinfo: str | None = None, machine: str | None = None) -> Outcome:
        """Plan, build, verify and install; on any failure keep the installed build and say why."""
        version = installed_version()
        plan = plan_build(read_cpuinfo() if cpuinfo is None else cpuinfo, machine or platform.machine())
        if plan.refusal:
            outcome = Outcome(False, f"wheel kept: {plan.refusal}", asdict(plan))
            self.write_record(version, outcome)
            return outcome
        self.echo(f"native build of {PACKAGE} {version} for {plan.machine}: {', '.join(plan.enabled)}")
        baseline: dict[str, Any] | None = None
        candidate: dict[str, Any] | None = None
        speedup: float | None = None
        try:
            self.echo("downloading the sdist and PyPI's wheel (kept for --revert)")
            sdist = self.download_sdist(version)
            pypi_wheel = self.download_wheel(version)
        except BuildError as exc:  # offline, most likely: not a verdict on this CPU
            outcome = Outcome(False, f"wheel kept: {exc}", asdict(plan), retry=True)
            self.write_record(version, outcome)
            return outcome
        try:
            self.echo("compiling (several minutes; at low priority)")
            wheel = self.build_wheel(sdist, plan)
            site = self.stage(wheel)
            self.echo("verifying on the shipped clips: " + ", ".join(m.name for m in self.models))
            baseline, candidate, speedup = self.verify(site)
            if speedup < MIN_SPEEDUP:
                per_model = ", ".join(f"{m} {x:.2f}x" for m, x in model_speedups(baseline, candidate).items())
                raise BuildError(f"the native build is not faster here ({speedup:.2f}x; {per_model})")
            self.install(wheel)
            try:
                measure(self.models[:1], None, self.threads, self.python)  # the venv now loads it, and it runs
            except BuildError:
                self.install(pypi_wheel)
                raise
        except BuildError as exc:
            outcome = Outcome(False, f"wheel kept: {exc}", asdict(plan), speedup, baseline, candidate)
        else:
            per_model = ", ".join(f"{m} {x:.2f}x" for m, x in model_speedups(baseline, candidate).items())
            outcome = Outcome(
                True,
                f"native build installed: {speedup:.2f}x the speed of the previous build "
                f"on the shipped clips ({per_model}); restart the workers to use it",
                asdict(plan),
                speedup,
                baseline,
                candidate,
            )
        self.write_record(version, outcome)
        return outcome


def main(argv: list[str] | None = None) -> None:
    """``python -m workers.native_build measure MODEL...``: the verification's subprocess, JSON on stdout."""
    parser = argparse.ArgumentParser(prog="python -m workers.native_build")
    sub = parser.add_subparsers(dest="command", required=True)
    measure_cmd = sub.add_parser("measure")
    measure_cmd.add_argument("--threads", type=int, default=VERIFY_THREADS)
    measure_cmd.add_argument("models", nargs="+", type=Path)
    args = parser.parse_args(argv)
    result = measure_here(args.models, args.threads)
    sys.stdout.write("\n" + json.dumps(result) + "\n")


if __name__ == "__main__":
    main()
