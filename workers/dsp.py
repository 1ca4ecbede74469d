"""Audio cleanup stages (VOXIS ``/api/process``): ingest → denoise → resample, all ffmpeg filters.

- ``ingest``: the first audio track → 32-bit float WAV at its own sample rate, at most two channels.
- ``denoise``: a level pass (``astats`` over 50 ms windows) estimates the noise floor as the RMS of the
  quietest 10 % of windows; then ``afftdn`` (spectral subtraction) with the noise floor ``nf`` set a few
  dB above that estimate and the reduction ``nr`` scaled by ``denoise_strength`` and ``noise_profile``
  (gentle < auto < aggressive). Strength 0 copies the audio unchanged.
- ``resample``: ``aresample`` to ``target_sample_rate`` (SoX resampler, 28-bit precision, when
  ``high_precision``; else ffmpeg's default swr), then ``upscale_factor`` 2 or 4 as a harmonic exciter
  (``aexciter``): it synthesises harmonics from the top of the source's band into the band the higher
  rate opened up, twice as strongly for 4. Nothing can restore lost detail; this only adds brightness.
  Finally ``pan`` to ``target_channels``; 16-bit PCM, or 24-bit for ``high_precision`` and 96 kHz.

The result is ``cache/<job>/cleaned.wav``; ``StageContext.media()`` hands it to transcription stages.
"""

from __future__ import annotations

import contextlib
import functools
import math
import subprocess
import tempfile
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from workers import audio, engine
from workers.atomicfile import AtomicFile

if TYPE_CHECKING:
    from app.models import Job
    from workers.stages import StageContext

INGEST_CACHE = "ingest.wav"
DENOISED_CACHE = "denoised.wav"
CLEANED_CACHE = "cleaned.wav"
LEVELS_FILE = "levels.txt"

NOISE_PROFILES = ("auto", "aggressive", "gentle")
UPSCALE_FACTORS = (1, 2, 4)
SAMPLE_RATES = (44100, 48000, 96000)
CHANNELS = (1, 2)
DEFAULTS: dict[str, Any] = {
    "denoise_strength": 50,
    "high_precision": False,
    "upscale_factor": 1,
    "target_sample_rate": 48000,
    "target_channels": 2,
    "noise_profile": "auto",
}

WINDOW_SECONDS = 0.05  # level windows for the noise-floor estimate
QUIET_PERCENTILE = 10  # the noise floor is the level of the quietest tenth of the windows
NF_RANGE = (-80.0, -20.0)  # what afftdn accepts for nf


@dataclass(frozen=True)
class Profile:
    """How hard a noise profile works: the reduction at strength 100, and nf above the measured floor."""

    max_reduction_db: float
    floor_offset_db: float


# afftdn removes noise up to nf; nf a few dB above the measured floor catches the noise's own
# fluctuation (measured: floor +5 dB takes ~28 dB off white noise, floor +0 dB only ~15 dB).
PROFILES = {
    "gentle": Profile(24.0, 2.0),
    "auto": Profile(36.0, 5.0),
    "aggressive": Profile(54.0, 8.0),
}


def cleanup_options(job: Job) -> dict[str, Any]:
    """The job's cleanup settings with the defaults filled in."""
    return {**DEFAULTS, **{k: v for k, v in (job.options or {}).items() if k in DEFAULTS}}


# ---------------------------------------------------------------------- filters


def noise_floor(levels: list[float]) -> float:
    """The noise floor in dBFS from window RMS levels: their 10th percentile; digital silence is ignored."""
    finite = np.array([v for v in levels if math.isfinite(v) and v > -120.0])
    if finite.size == 0:
        return NF_RANGE[0]
    return float(np.percentile(finite, QUIET_PERCENTILE))


def denoise_params(strength: float, profile: str, floor_db: float) -> tuple[float, float]:
    """afftdn's ``nr`` (dB of reduction) and ``nf`` (noise floor, dB) for these settings."""
    shape = PROFILES[profile]
    reduction = max(0.01, min(97.0, shape.max_reduction_db * strength / 100.0))
    nf = max(NF_RANGE[0], min(NF_RANGE[1], floor_db + shape.floor_offset_db))
    return round(reduction, 2), round(nf, 2)


def denoise_filter(strength: float, profile: str, floor_db: float, delay: int) -> str:
    """The denoise chain; ``delay`` samples of afftdn latency are padded and trimmed so the output stays aligned."""
    if strength <= 0:
        return "anull"
    reduction, nf = denoise_params(strength, profile, floor_db)
    chain = f"afftdn=nr={reduction}:nf={nf}"
    if delay:
        chain = f"apad=pad_len={delay},{chain},atrim=start_sample={delay},asetpts=PTS-STARTPTS"
    return chain


def resample_filter(
    *, rate: int, channels_in: int, channels: int, high_precision: bool, upscale: int, source_rate: int
) -> str:
    """The resample chain: rate conversion, optional harmonic exciter, channel layout."""
    parts = [f"aresample={rate}:resampler=soxr:precision=28" if high_precision else f"aresample={rate}"]
    if upscale > 1:
        # Harmonics are made from the upper half of the source's band and kept below the new Nyquist.
        scope = min(12000, max(2000, source_rate // 4))
        ceiling = min(20000, max(9999, int(rate * 0.45)))
        parts.append(f"aexciter=amount={1.0 if upscale == 2 else 2.0}:freq={scope}:ceil={ceiling}")
    if channels_in != channels:
        parts.append("pan=mono|c0=0.5*c0+0.5*c1" if channels == 1 else "pan=stereo|c0=c0|c1=c0")
    return ",".join(parts)


# ------------------------------------------------------------------------ ffmpeg


def _ffmpeg(
    ctx: StageContext,
    args: list[str],
    *,
    span: tuple[float, float] = (0.0, 100.0),
    seconds: float | None = None,
    cwd: Path | None = None,
) -> None:
    """Run ffmpeg with progress into ``span`` of the stage, stopping it on cancel or after the timeout."""
    if ctx.should_abort():  # cancelled between two runs: do not start the next
        raise engine.Aborted()
    timeout = float(ctx.cfg["FFMPEG_TIMEOUT_SECONDS"])
    total = seconds or ctx.job.duration or 0.0
    cmd = ["ffmpeg", "-nostdin", "-v", "error", "-nostats", "-progress", "pipe:1", "-y", *args]
    done = [0.0]

    def read_progress(stream) -> None:
        for line in stream:
            if line.startswith(b"out_time_us="):
                with contextlib.suppress(ValueError):  # "N/A" before the first frame
                    done[0] = int(line.split(b"=", 1)[1]) / 1e6

    with tempfile.TemporaryFile() as errors:  # a file, not a pipe: a chatty ffmpeg can never block on it
        try:
            proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=errors, cwd=cwd)
        except FileNotFoundError as exc:
            raise audio.MediaError("ffmpeg is not installed", "FFMPEG_MISSING") from exc
        reader = threading.Thread(target=read_progress, args=(proc.stdout,), daemon=True)
        reader.start()
        deadline = time.monotonic() + timeout
        try:
            while True:
                try:
                    proc.wait(timeout=0.25)
                    break
                except subprocess.TimeoutExpired:
                    pass
                if ctx.should_abort():
                    raise engine.Aborted()
                if time.monotonic() > deadline:
                    raise audio.MediaError(f"ffmpeg took longer than {timeout:.0f} s and was stopped", "MEDIA_TIMEOUT")
                if total > 0:
                    ctx.report(span[0] + (span[1] - span[0]) * min(1.0, done[0] / total), 0)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
            reader.join(timeout=5)
            proc.stdout.close()
        if proc.returncode != 0:
            errors.seek(0)
            lines = errors.read().decode("utf-8", "replace").strip().splitlines()
            raise audio.MediaError(f"audio processing failed: {lines[-1] if lines else 'ffmpeg error'}")


def _render(ctx: StageContext, args: list[str], out: Path, *, span: tuple[float, float] = (0.0, 100.0)) -> Path:
    """Run ffmpeg into a temp WAV next to ``out`` and rename it into place only when complete."""
    with AtomicFile(out) as output:
        # rf64 auto: long float WAVs pass the 4 GB RIFF limit; -bitexact keeps the header plain.
        _ffmpeg(ctx, [*args, "-bitexact", "-rf64", "auto", "-f", "wav", str(output.temp)], span=span)
    return out


def _probe(ctx: StageContext, path: Path) -> audio.MediaInfo:
    return audio.probe(path, timeout=min(120.0, float(ctx.cfg["FFMPEG_TIMEOUT_SECONDS"])))


@functools.lru_cache(maxsize=16)
def afftdn_delay(rate: int) -> int:
    """How many samples afftdn delays its output at this rate (0 if this ffmpeg compensates it itself).

    Measured once per rate by cross-correlating noise with its filtered copy, because the latency
    (25 ms in ffmpeg 5.1) depends on the ffmpeg version.
    """
    graph = (
        f"anoisesrc=color=white:amplitude=0.5:seed=7:duration=0.5:sample_rate={rate},"
        "aformat=channel_layouts=mono,asplit[a][b];"
        "[b]afftdn=nr=1:nf=-80[c];[a][c]join=inputs=2:channel_layout=stereo"
    )
    result = subprocess.run(
        ["ffmpeg", "-nostdin", "-v", "error", "-filter_complex", graph, "-f", "f32le", "-"],
        capture_output=True,
        timeout=60,
        check=False,
    )
    if result.returncode != 0:
        raise audio.MediaError("ffmpeg cannot run the afftdn denoiser")
    pair = np.frombuffer(result.stdout, dtype="<f4").reshape(-1, 2).astype(np.float64)
    dry, wet = pair[:, 0], pair[:, 1]
    size = 1 << (2 * len(dry) - 1).bit_length()
    correlation = np.fft.irfft(np.fft.rfft(wet, size) * np.conj(np.fft.rfft(dry, size)), size)
    return int(np.argmax(correlation[: len(dry) // 2]))


# ------------------------------------------------------------------------ stages


def ingest(ctx: StageContext) -> Path:
    """The first audio track → float WAV at its own rate; more than two channels are mixed to stereo."""
    out = ctx.cache / INGEST_CACHE
    channels = (ctx.job.media_info or {}).get("channels") or 2
    # -t: a header may lie about the length, so the limit bounds what ffmpeg writes, not what it was told.
    limit = float(ctx.cfg["MAX_MEDIA_SECONDS"])
    args = [
        "-i",
        str(ctx.source()),
        "-map",
        "0:a:0",
        "-vn",
        "-c:a",
        "pcm_f32le",
        "-t",
        f"{limit + audio.LIMIT_MARGIN_SECONDS:.3f}",
    ]
    if channels > 2:
        args += ["-ac", "2"]
    _render(ctx, args, out)
    info = _probe(ctx, out)
    if info.duration > limit + audio.LIMIT_MARGIN_SECONDS / 2:
        out.unlink(missing_ok=True)
        raise audio.MediaError(
            f"MEDIA_TOO_LONG: the audio goes on past the limit of {limit:.0f} s "
            "(WT_MAX_MEDIA_SECONDS); cleaning stopped there"
        )
    ctx.log("INFO", f"ingested {info.duration:.1f} s at {info.sample_rate} Hz, {info.channels} channel(s)")
    return out


def measure_noise_floor(ctx: StageContext, path: Path, rate: int, span: tuple[float, float]) -> float:
    """The noise floor of a file in dBFS: ``astats`` levels of 50 ms windows, see :func:`noise_floor`."""
    window = max(1, round(rate * WINDOW_SECONDS))
    # The levels file is named relative to the cache folder (ffmpeg's cwd): no path escaping in the graph.
    graph = (
        f"asetnsamples=n={window}:p=0,astats=metadata=1:reset=1:measure_perchannel=none:"
        f"measure_overall=RMS_level,ametadata=mode=print:key=lavfi.astats.Overall.RMS_level:file={LEVELS_FILE}"
    )
    levels_path = ctx.cache / LEVELS_FILE
    try:
        _ffmpeg(ctx, ["-i", str(path), "-af", graph, "-f", "null", "-"], span=span, cwd=ctx.cache)
        levels = []
        for line in levels_path.read_text().splitlines():
            if line.startswith("lavfi.astats.Overall.RMS_level="):
                with contextlib.suppress(ValueError):
                    levels.append(float(line.split("=", 1)[1]))
    finally:
        levels_path.unlink(missing_ok=True)
    return noise_floor(levels)


def denoise(ctx: StageContext) -> Path:
    """Spectral denoise of the ingested audio, scaled by ``denoise_strength`` and ``noise_profile``."""
    opts = cleanup_options(ctx.job)
    source, out = ctx.cache / INGEST_CACHE, ctx.cache / DENOISED_CACHE
    strength, profile = float(opts["denoise_strength"]), opts["noise_profile"]
    if strength <= 0:
        ctx.log("INFO", "denoise strength 0: audio passed through unchanged")
        return _render(ctx, ["-i", str(source), "-c:a", "pcm_f32le"], out)
    info = _probe(ctx, source)
    floor_db = measure_noise_floor(ctx, source, info.sample_rate or 48000, (0.0, 25.0))
    chain = denoise_filter(strength, profile, floor_db, afftdn_delay(info.sample_rate or 48000))
    reduction, nf = denoise_params(strength, profile, floor_db)
    ctx.log(
        "INFO", f"noise floor {floor_db:.1f} dBFS; afftdn nr={reduction} nf={nf} ({profile}, strength {strength:g})"
    )
    return _render(ctx, ["-i", str(source), "-af", chain, "-c:a", "pcm_f32le"], out, span=(25.0, 100.0))


def resample(ctx: StageContext) -> Path:
    """Denoised audio → ``cleaned.wav`` at the target rate and channel count (with the exciter if asked)."""
    opts = cleanup_options(ctx.job)
    source, out = ctx.cache / DENOISED_CACHE, ctx.cache / CLEANED_CACHE
    info = _probe(ctx, source)
    rate, channels = int(opts["target_sample_rate"]), int(opts["target_channels"])
    chain = resample_filter(
        rate=rate,
        channels_in=info.channels or 1,
        channels=channels,
        high_precision=bool(opts["high_precision"]),
        upscale=int(opts["upscale_factor"]),
        source_rate=_source_rate(ctx.job.media_info, info.sample_rate or rate),
    )
    codec = "pcm_s24le" if opts["high_precision"] or rate > 48000 else "pcm_s16le"
    _render(ctx, ["-i", str(source), "-af", chain, "-c:a", codec], out)
    ctx.log("INFO", f"resampled to {rate} Hz, {channels} channel(s), {codec}: {chain}")
    return out


def _source_rate(media_info: Mapping[str, Any] | None, fallback: int) -> int:
    """The upload's own sample rate: its band edge, which the exciter works from."""
    return int((media_info or {}).get("sample_rate") or fallback)
