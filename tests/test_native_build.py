"""The optional native build of whisper.cpp: flags chosen from /proc/cpuinfo, verification, fallback to the wheel.

No test compiles: a build takes minutes. The steps that download, compile and install are stubbed; the
verification subprocess runs for real against the installed wheel (marked slow).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from app.cli import main
from tests.helpers import MODELS_DIR
from workers import native_build
from workers.convert import quantize_ggml
from workers.native_build import BuildError, NativeBuild, compare, plan_build, summarise

X86_BASE = (
    "fpu vme de pse tsc msr pae mce cx8 apic sep mtrr sse sse2 ht syscall nx pdpe1gb rdtscp lm pni "
    "pclmulqdq ssse3 fma cx16 sse4_1 sse4_2 x2apic movbe popcnt aes xsave avx f16c rdrand hypervisor "
    "bmi1 avx2 bmi2 erms"
)
AVX512 = "avx512f avx512dq avx512ifma avx512cd avx512bw avx512vl avx512vbmi avx512_vbmi2 avx512_vnni avx512_bf16"
AMX = "amx_bf16 avx512_fp16 amx_tile amx_int8"
RPI5 = "fp asimd evtstrm aes pmull sha1 sha2 crc32 atomics fphp asimdhp cpuid asimdrdm lrcpc dcpop asimddp"
RPI4 = "fp asimd evtstrm crc32 cpuid"


def cpuinfo(*flag_lines: str, key: str = "flags") -> str:
    """A /proc/cpuinfo text with one processor per flags line."""
    return "\n\n".join(
        f"processor\t: {n}\nmodel name\t: test cpu\n{key}\t\t: {flags}\n" for n, flags in enumerate(flag_lines)
    )


SAPPHIRE_RAPIDS = cpuinfo(f"{X86_BASE} {AVX512} {AMX}", f"{X86_BASE} {AVX512} {AMX}")


# ------------------------------------------------------------------ flag selection


def test_avx512_cpu_with_amx_gets_avx512_and_never_amx_or_march_native() -> None:
    plan = plan_build(SAPPHIRE_RAPIDS, "x86_64")
    assert plan.refusal is None
    for option in ("GGML_AVX2", "GGML_AVX512", "GGML_AVX512_VBMI", "GGML_AVX512_VNNI", "GGML_AVX512_BF16"):
        assert plan.options[option] == "ON", option
    # AMX kernels are what took over (and crashed) q8_0; -march=native would compile them in regardless.
    for option in ("GGML_NATIVE", "GGML_AMX_TILE", "GGML_AMX_INT8", "GGML_AMX_BF16"):
        assert plan.options[option] == "OFF", option
    args = plan.cmake_args()
    assert "-DGGML_AMX_INT8=OFF" in args and "-DGGML_NATIVE=OFF" in args and "march" not in args
    assert "-DCMAKE_INSTALL_RPATH=$ORIGIN" in args


def test_avx512_cpu_without_amx_gets_the_same_avx512_options() -> None:
    plan = plan_build(cpuinfo(f"{X86_BASE} {AVX512}"), "x86_64")
    assert plan.refusal is None
    assert plan.options["GGML_AVX512_VNNI"] == "ON" and plan.options["GGML_AMX_INT8"] == "OFF"


def test_avx2_only_cpu_gets_a_build_with_llamafile_kernels_and_no_avx512() -> None:
    plan = plan_build(cpuinfo(X86_BASE), "x86_64")
    assert plan.refusal is None
    assert plan.options["GGML_AVX2"] == "ON" and plan.options["GGML_LLAMAFILE"] == "ON"
    assert plan.options["GGML_AVX512"] == "OFF" and plan.options["GGML_AVX512_VNNI"] == "OFF"


def test_unreadable_cpuinfo_is_refused_rather_than_guessed() -> None:
    plan = plan_build("", "x86_64")
    assert plan.refusal and "no CPU flags" in plan.refusal


def test_partial_avx512_does_not_switch_avx512_on() -> None:
    # Knights Landing style: AVX-512F and CD without BW/VL/DQ; ggml's AVX512 option needs all five.
    plan = plan_build(cpuinfo(f"{X86_BASE} avx512f avx512cd avx512er avx512pf"), "x86_64")
    assert plan.options["GGML_AVX512"] == "OFF" and plan.options["GGML_AVX2"] == "ON"


def test_only_features_every_core_has_are_used() -> None:
    plan = plan_build(cpuinfo(f"{X86_BASE} {AVX512}", f"{X86_BASE} {AVX512.replace('avx512_vnni', '')}"), "x86_64")
    assert plan.options["GGML_AVX512"] == "ON"
    assert plan.options["GGML_AVX512_VNNI"] == "OFF"


def test_aarch64_with_dot_product_gets_an_explicit_march() -> None:
    plan = plan_build(cpuinfo(RPI5, RPI5, key="Features"), "aarch64")
    assert plan.refusal is None
    assert plan.options == {"GGML_NATIVE": "OFF", "GGML_CPU_ARM_ARCH": "armv8.2-a+dotprod+fp16", "GGML_LLAMAFILE": "ON"}
    assert "-DGGML_CPU_ARM_ARCH=armv8.2-a+dotprod+fp16" in plan.cmake_args()


def test_aarch64_without_extensions_gets_the_armv8_baseline() -> None:
    plan = plan_build(cpuinfo(RPI4, key="Features"), "aarch64")
    assert plan.refusal is None and plan.options["GGML_CPU_ARM_ARCH"] == "armv8-a"


def test_aarch64_without_neon_is_refused() -> None:
    plan = plan_build(cpuinfo("fp evtstrm crc32", key="Features"), "aarch64")
    assert plan.refusal and "NEON" in plan.refusal


@pytest.mark.parametrize("machine", ["armv7l", "riscv64", "ppc64le"])
def test_other_architectures_are_refused_clearly(machine: str) -> None:
    plan = plan_build(cpuinfo("fp asimd", key="Features"), machine)
    assert plan.refusal and machine in plan.refusal


# ------------------------------------------------------------------ verification figures


def figures(seconds: float, wer: float = 0.0) -> dict[str, Any]:
    """What one measuring subprocess prints, with the same seconds and WER everywhere."""
    clips = {clip: {"seconds": seconds, "cpu": seconds, "wer": wer} for clip in native_build.CLIPS}
    return {"module": "", "system_info": "", "results": {"ggml-x.bin": clips, "ggml-x-q8_0.bin": dict(clips)}}


def test_compare_accepts_a_small_wer_change_and_reports_the_speedup() -> None:
    problems, speedup = compare(summarise([figures(1.0, 0.05)]), summarise([figures(0.8, 0.059)]))
    assert problems == [] and speedup == 1.25


def test_speedup_compares_the_fastest_model_file_of_each_build() -> None:
    # As measured on an AMD EPYC without llamafile's kernels: AVX-512 made q8_0 faster and f16 slower.
    baseline, candidate = figures(1.0), figures(1.1)
    baseline["results"]["ggml-x-q8_0.bin"] = {c: {"seconds": 0.9, "cpu": 0.9, "wer": 0.0} for c in native_build.CLIPS}
    candidate["results"]["ggml-x-q8_0.bin"] = {c: {"seconds": 0.6, "cpu": 0.6, "wer": 0.0} for c in native_build.CLIPS}
    base, new = summarise([baseline]), summarise([candidate])
    assert compare(base, new) == ([], 1.5)
    assert native_build.model_speedups(base, new) == {"ggml-x.bin": 0.909, "ggml-x-q8_0.bin": 1.5}


def test_compare_rejects_a_wer_loss_beyond_the_tolerance() -> None:
    problems, _ = compare(summarise([figures(1.0, 0.0)]), summarise([figures(0.5, 0.05)]))
    assert len(problems) == 4 and "ggml-x-q8_0.bin" in " ".join(problems)


def test_summarise_takes_the_median_time_and_the_worst_wer() -> None:
    summary = summarise([figures(1.0, 0.0), figures(3.0, 0.02), figures(2.0, 0.0)])
    assert summary["ggml-x.bin"]["jfk.flac"] == {"seconds": 2.0, "cpu": 2.0, "wer": 0.02}


# ------------------------------------------------------------------ fallback


class StubBuild(NativeBuild):
    """A NativeBuild whose download, compile and install steps record calls instead of running."""

    def __init__(self, data_dir: Path, fail: str | None = None):
        super().__init__(data_dir, [Path("ggml-x.bin"), Path("ggml-x-q8_0.bin")], runs=2, echo=lambda _: None)
        self.fail = fail
        self.installed: list[str] = []

    def download_sdist(self, version: str) -> Path:
        if self.fail == "download":
            raise BuildError("pip download failed: network is unreachable")
        return self.work / "sdist.tar.gz"

    def download_wheel(self, version: str) -> Path:
        return self.work / "pypi.whl"

    def build_wheel(self, sdist: Path, plan: native_build.BuildPlan) -> Path:
        if self.fail == "build":
            raise BuildError("pip wheel failed: CMake Error: no C++ compiler")
        return self.work / "native.whl"

    def stage(self, wheel: Path) -> Path:
        return self.work / "site-packages"

    def install(self, wheel: Path) -> None:
        self.installed.append(wheel.name)


def stub_measure(monkeypatch: pytest.MonkeyPatch, native: Any, installed: Any = None) -> None:
    """Replace the measuring subprocess: ``native`` answers for the staged build (a dict, or an exception)."""

    def fake(models: list[Path], site: Path | None = None, threads: int = 0, python: str = "") -> dict[str, Any]:
        answer = (installed or figures(1.0)) if site is None else native
        if isinstance(answer, Exception):
            raise answer
        return {**answer, "module": f"{site}/_pywhispercpp.so" if site else "/venv/_pywhispercpp.so"}

    monkeypatch.setattr(native_build, "measure", fake)


def test_a_failing_compile_keeps_the_wheel_and_says_why(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    stub_measure(monkeypatch, figures(0.5))
    build = StubBuild(tmp_path, fail="build")
    outcome = build.run(SAPPHIRE_RAPIDS, "x86_64")
    assert not outcome.installed and build.installed == []
    assert "wheel kept" in outcome.message and "no C++ compiler" in outcome.message
    assert "no C++ compiler" in build.read_record()["message"]


def test_a_crash_in_verification_keeps_the_wheel(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    stub_measure(monkeypatch, BuildError("the native build crashed (SIGSEGV) on the shipped clips"))
    build = StubBuild(tmp_path)
    outcome = build.run(SAPPHIRE_RAPIDS, "x86_64")
    assert not outcome.installed and build.installed == [] and "SIGSEGV" in outcome.message


def test_a_less_accurate_build_is_not_installed(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    stub_measure(monkeypatch, figures(0.5, wer=0.2))
    build = StubBuild(tmp_path)
    outcome = build.run(SAPPHIRE_RAPIDS, "x86_64")
    assert not outcome.installed and build.installed == [] and "less accurate" in outcome.message


def test_a_slower_build_is_not_installed(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    stub_measure(monkeypatch, figures(1.2))
    build = StubBuild(tmp_path)
    outcome = build.run(SAPPHIRE_RAPIDS, "x86_64")
    assert not outcome.installed and build.installed == [] and "not faster" in outcome.message


def test_a_verified_faster_build_is_installed(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    stub_measure(monkeypatch, figures(0.8))
    build = StubBuild(tmp_path)
    outcome = build.run(SAPPHIRE_RAPIDS, "x86_64")
    assert outcome.installed and build.installed == ["native.whl"]
    assert outcome.speedup == 1.25 and outcome.native["ggml-x-q8_0.bin"]["jfk.flac"]["seconds"] == 0.8
    assert json.loads(build.record_path.read_text())["installed"] is True


def test_an_installed_build_that_then_fails_is_replaced_by_the_wheel(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls: list[Path | None] = []

    def fake(models: list[Path], site: Path | None = None, threads: int = 0, python: str = "") -> dict[str, Any]:
        calls.append(site)
        if site is None and len(calls) > 4:  # the check after installing: the venv's build now crashes
            raise BuildError("the installed build crashed (SIGSEGV)")
        return {**figures(1.0 if site is None else 0.5), "module": f"{site}/x.so"}

    monkeypatch.setattr(native_build, "measure", fake)
    build = StubBuild(tmp_path)
    outcome = build.run(SAPPHIRE_RAPIDS, "x86_64")
    assert not outcome.installed and build.installed == ["native.whl", "pypi.whl"]


def test_once_skips_a_version_already_refused_here(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    build = StubBuild(tmp_path)
    plan = plan_build(cpuinfo("fp asimd"), "armv7l")
    assert not build.already_done(native_build.installed_version(), plan)
    build.run(cpuinfo("fp asimd"), "armv7l")
    assert build.already_done(native_build.installed_version(), plan)
    assert not build.already_done("0.0.1", plan)
    assert not build.already_done(native_build.installed_version(), plan_build(SAPPHIRE_RAPIDS, "x86_64"))


def test_a_failed_download_is_tried_again_by_once(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    stub_measure(monkeypatch, figures(0.5))
    build = StubBuild(tmp_path, fail="download")
    outcome = build.run(SAPPHIRE_RAPIDS, "x86_64")
    assert not outcome.installed and outcome.retry and "network is unreachable" in outcome.message
    assert not build.already_done(native_build.installed_version(), plan_build(SAPPHIRE_RAPIDS, "x86_64"))


def test_measure_turns_a_crash_of_the_subprocess_into_a_reason(tmp_path: Path) -> None:
    site = tmp_path / "site"
    site.mkdir()
    (site / "_pywhispercpp.py").write_text("import os, signal\nos.kill(os.getpid(), signal.SIGSEGV)\n")
    with pytest.raises(BuildError, match=r"native build crashed \(SIGSEGV\)"):
        native_build.measure([Path("unused.bin")], site)


# ------------------------------------------------------------------ the command


@pytest.fixture
def cli(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> CliRunner:
    """A CliRunner with temp data and the shared models."""
    monkeypatch.delenv("WT_CONFIG", raising=False)
    return CliRunner(env={"WT_DATA_DIR": str(tmp_path / "data"), "WT_MODELS_DIR": str(MODELS_DIR)})


def test_engine_info_shows_the_build_and_whisper_system_info(cli: CliRunner) -> None:
    result = cli.invoke(main, ["engine", "info"], catch_exceptions=False)
    assert result.exit_code == 0
    assert "pywhispercpp " in result.output and "AVX2 = " in result.output


def test_engine_build_on_an_unsupported_cpu_exits_1_and_keeps_the_wheel(
    cli: CliRunner, monkeypatch: pytest.MonkeyPatch
) -> None:
    if not (MODELS_DIR / "ggml-tiny.en-q8_0.bin").is_file():
        pytest.skip("the shared tiny.en-q8_0 model is not built")
    monkeypatch.setattr(native_build, "read_cpuinfo", lambda: cpuinfo("rv64imafdc"))
    monkeypatch.setattr(native_build.platform, "machine", lambda: "riscv64")
    result = cli.invoke(main, ["engine", "build"], catch_exceptions=False)
    assert result.exit_code == 1 and "wheel kept: no native build for riscv64" in result.output
    again = cli.invoke(main, ["engine", "build", "--once"], catch_exceptions=False)
    assert again.exit_code == 0 and "already done" in again.output


# ------------------------------------------------------------------ the real verification step


@pytest.mark.slow
def test_verification_runs_the_installed_wheel_on_the_shipped_clips(tmp_path: Path) -> None:
    f16 = MODELS_DIR / "ggml-tiny.en.bin"
    q8 = MODELS_DIR / "ggml-tiny.en-q8_0.bin"
    if not q8.is_file():
        q8 = quantize_ggml(f16, tmp_path / "ggml-tiny.en-q8_0.bin")
    result = native_build.measure([f16, q8], None)
    assert "site-packages" in result["module"] and "AVX2" in result["system_info"]
    for model in (f16.name, q8.name):
        for clip in native_build.CLIPS:
            assert result["results"][model][clip]["wer"] <= 0.1, (model, clip)
            assert result["results"][model][clip]["seconds"] > 0 and result["results"][model][clip]["cpu"] > 0
    problems, speedup = compare(summarise([result]), summarise([result]))
    assert problems == [] and speedup == 1.0
