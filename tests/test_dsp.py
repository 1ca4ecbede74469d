"""Audio cleanup stages with real ffmpeg: measured denoise on speech under white noise, formats, exciter."""

from __future__ import annotations

import json
import subprocess
import time
from pathlib import Path

import numpy as np
import pytest

from app.models import Job
from tests.helpers import ffmpeg
from workers import audio, dsp, engine
from workers.stages import StageContext

RATE = 48000
LEAD = 2.0  # seconds of noise only before the speech
NOISE_STRETCH = (0.2, 1.7)  # seconds measured as "noise only"
SENTENCE = (
    "Speech enhancement removes steady background noise while the voice stays clear. "
    "The quick brown fox jumps over the lazy dog."
)


def make_noisy_speech(folder: Path, rate: int = RATE, seconds_of_noise: float = LEAD) -> tuple[Path, Path]:
    """espeak-ng speech after ``seconds_of_noise`` of silence, alone (clean) and under white noise at -30 dBFS RMS."""
    folder.mkdir(parents=True, exist_ok=True)
    voice = folder / "voice.wav"
    subprocess.run(["espeak-ng", "-w", str(voice), SENTENCE], check=True, timeout=60)
    clean, noisy = folder / "clean.wav", folder / "noisy.wav"
    delay = int(seconds_of_noise * 1000)
    ffmpeg(
        "-i",
        str(voice),
        "-af",
        f"aresample={rate},adelay={delay}:all=1,apad=pad_dur=0.5",
        "-c:a",
        "pcm_s16le",
        str(clean),
    )
    # Uniform white noise of amplitude a has an RMS of a/sqrt(3): 0.0548 is -30 dBFS.
    ffmpeg(
        "-i",
        str(clean),
        "-f",
        "lavfi",
        "-i",
        f"anoisesrc=color=white:amplitude=0.0548:sample_rate={rate}:seed=42",
        "-filter_complex",
        "[0:a][1:a]amix=inputs=2:duration=first:normalize=0",
        "-c:a",
        "pcm_s16le",
        str(noisy),
    )
    return clean, noisy


def load(path: Path, rate: int = RATE) -> np.ndarray:
    """Any audio file → mono float64 at ``rate``: decoded by ffmpeg as f32, channels averaged here.

    Averaged in numpy because ffmpeg's own stereo → mono mix is not a plain mean (it would raise the level).
    """
    channels = int(probe(path)["channels"])
    raw = subprocess.run(
        ["ffmpeg", "-v", "error", "-i", str(path), "-ar", str(rate), "-f", "f32le", "-"],
        capture_output=True,
        check=True,
        timeout=60,
    ).stdout
    return np.frombuffer(raw, dtype="<f4").reshape(-1, channels).astype(np.float64).mean(axis=1)


def level_db(samples: np.ndarray) -> float:
    """RMS level in dBFS."""
    return float(10 * np.log10(np.mean(samples**2) + 1e-20))


def levels(path: Path) -> tuple[float, float]:
    """(noise-only stretch, speech stretch) levels of a file built by :func:`make_noisy_speech`."""
    x = load(path)
    noise = x[int(NOISE_STRETCH[0] * RATE) : int(NOISE_STRETCH[1] * RATE)]
    speech = x[int(LEAD * RATE) : len(x) - int(0.5 * RATE)]
    return level_db(noise), level_db(speech)


def snr_db(reference: np.ndarray, test: np.ndarray) -> float:
    """Signal to error ratio of ``test`` against ``reference`` (sample-aligned)."""
    n = min(len(reference), len(test))
    return float(10 * np.log10(np.sum(reference[:n] ** 2) / np.sum((test[:n] - reference[:n]) ** 2)))


def probe(path: Path) -> dict:
    """ffprobe's first stream and format."""
    out = subprocess.run(
        ["ffprobe", "-v", "error", "-print_format", "json", "-show_streams", "-show_format", str(path)],
        capture_output=True,
        check=True,
        timeout=60,
    ).stdout
    data = json.loads(out)
    return {**data["streams"][0], "format": data["format"]}


@pytest.fixture(scope="module")
def fixture_audio(tmp_path_factory) -> tuple[Path, Path]:
    """(clean, noisy) speech, built once for this module."""
    return make_noisy_speech(tmp_path_factory.mktemp("speech"))


def run_cleanup(tmp_path: Path, source: Path, *, abort: bool = False, **options) -> Path:
    """Run ingest, denoise and resample on ``source`` with these options; return cleaned.wav."""
    info = probe(source)
    job = Job(
        id=f"dsp-{len(list(tmp_path.iterdir()))}",
        kind="cleanup",
        options=options,
        source_path=str(source),
        original_filename=source.name,
        duration=float(info["format"]["duration"]),
        media_info={"sample_rate": int(info["sample_rate"]), "channels": info["channels"]},
    )
    cfg = {"DATA_DIR": str(tmp_path), "FFMPEG_TIMEOUT_SECONDS": 120, "MAX_MEDIA_SECONDS": 3600}
    ctx = StageContext(job, cfg, lambda level, message: print(level, message), lambda p, s: None, lambda: abort)
    for stage in (dsp.ingest, dsp.denoise, dsp.resample):
        out = stage(ctx)
    assert out == ctx.cache / "cleaned.wav" and ctx.media() == out
    return out


def test_strength_80_lowers_noise_by_6_db_and_speech_by_at_most_3(tmp_path, fixture_audio):
    """The cleanup's target figures on speech under white noise; the speech also gets closer to the clean original."""
    clean, noisy = fixture_audio
    out = run_cleanup(tmp_path, noisy, denoise_strength=80, target_sample_rate=48000, target_channels=1)
    noise_before, speech_before = levels(noisy)
    noise_after, speech_after = levels(out)
    before, after = snr_db(load(clean), load(noisy)), snr_db(load(clean), load(out))
    print(
        f"\nnoise-only stretch {noise_before:.1f} -> {noise_after:.1f} dBFS "
        f"(drop {noise_before - noise_after:.1f} dB); speech stretch {speech_before:.1f} -> {speech_after:.1f} "
        f"dBFS (drop {speech_before - speech_after:.1f} dB); "
        f"SNR against the clean speech {before:.1f} -> {after:.1f} dB"
    )
    assert noise_before - noise_after >= 6
    assert speech_before - speech_after <= 3
    # Sample-aligned (afftdn's latency is compensated) and much closer to the clean speech.
    assert after >= before + 5
    assert len(load(out)) == len(load(noisy))


def test_aggressive_removes_more_noise_than_auto_and_auto_more_than_gentle(tmp_path, fixture_audio):
    """At the same strength the profiles are ordered; each keeps the speech level within 3 dB."""
    _, noisy = fixture_audio
    noise_before, speech_before = levels(noisy)
    results = {}
    for profile in ("gentle", "auto", "aggressive"):
        out = run_cleanup(tmp_path, noisy, denoise_strength=60, noise_profile=profile, target_channels=1)
        results[profile] = levels(out)
    print("\n" + "; ".join(f"{p}: noise {n:.1f}, speech {s:.1f} dBFS" for p, (n, s) in results.items()))
    assert results["aggressive"][0] < results["auto"][0] - 3 < results["gentle"][0] - 6
    assert results["gentle"][0] < noise_before - 3
    assert all(speech_before - s <= 3 for _, s in results.values())


def test_higher_strength_removes_more_noise(tmp_path, fixture_audio):
    """Strength scales the reduction."""
    _, noisy = fixture_audio
    weak = levels(run_cleanup(tmp_path, noisy, denoise_strength=20, target_channels=1))[0]
    strong = levels(run_cleanup(tmp_path, noisy, denoise_strength=90, target_channels=1))[0]
    assert strong < weak - 6


def test_strength_zero_passes_the_audio_through(tmp_path, fixture_audio):
    """Same rate and channels, no denoise, no exciter: the samples come back (within 16-bit rounding)."""
    _, noisy = fixture_audio
    out = run_cleanup(tmp_path, noisy, denoise_strength=0, target_sample_rate=48000, target_channels=1)
    before, after = load(noisy), load(out)
    assert len(before) == len(after)
    assert np.max(np.abs(before - after)) < 1e-4


@pytest.mark.parametrize(
    ("rate", "channels", "precise", "codec"),
    [
        (44100, 2, True, "pcm_s24le"),
        (48000, 1, False, "pcm_s16le"),
        (96000, 2, False, "pcm_s24le"),
    ],
)
def test_cleaned_audio_has_the_target_rate_channels_and_length(tmp_path, fixture_audio, rate, channels, precise, codec):
    """ffprobe sees the target format; the duration is unchanged by resampling."""
    _, noisy = fixture_audio
    out = run_cleanup(
        tmp_path, noisy, denoise_strength=50, target_sample_rate=rate, target_channels=channels, high_precision=precise
    )
    info = probe(out)
    assert (int(info["sample_rate"]), info["channels"], info["codec_name"]) == (rate, channels, codec)
    assert float(info["format"]["duration"]) == pytest.approx(float(probe(noisy)["format"]["duration"]), abs=0.01)


def test_stereo_output_of_mono_input_has_two_equal_channels(tmp_path, fixture_audio):
    """Mono is copied to both sides, not panned to one."""
    _, noisy = fixture_audio
    out = run_cleanup(tmp_path, noisy, denoise_strength=50, target_channels=2)
    raw = subprocess.run(
        ["ffmpeg", "-v", "error", "-i", str(out), "-f", "f32le", "-"], capture_output=True, check=True
    ).stdout
    pair = np.frombuffer(raw, dtype="<f4").reshape(-1, 2)
    assert np.array_equal(pair[:, 0], pair[:, 1]) and level_db(pair[:, 0].astype(np.float64)) > -40


def test_upscale_factor_adds_energy_above_the_source_band(tmp_path):
    """A 16 kHz recording has nothing above 8 kHz; the exciter adds some for 2 and more for 4."""
    _, noisy = make_noisy_speech(tmp_path / "src", rate=16000)
    quiet = tmp_path / "speech16k.wav"
    ffmpeg("-i", str(noisy), "-af", "volume=0.5", str(quiet))

    def high_band(factor: int) -> float:
        x = load(run_cleanup(tmp_path, quiet, denoise_strength=0, upscale_factor=factor, target_channels=1))
        power = np.abs(np.fft.rfft(x)) ** 2
        freqs = np.fft.rfftfreq(len(x), 1 / RATE)
        return float(10 * np.log10(power[freqs > 8500].sum() / power.sum() + 1e-20))

    one, two, four = high_band(1), high_band(2), high_band(4)
    print(f"\nenergy above 8.5 kHz: x1 {one:.1f} dB, x2 {two:.1f} dB, x4 {four:.1f} dB")
    assert two > one + 6 and four > two + 3


def test_a_cancelled_job_starts_no_stage_and_leaves_no_output(tmp_path, fixture_audio):
    """A cancel request seen before ffmpeg starts: nothing runs, nothing is left behind."""
    _, noisy = fixture_audio
    with pytest.raises(engine.Aborted):
        run_cleanup(tmp_path, noisy, abort=True)
    assert not list(tmp_path.rglob("*.wav")) and not list(tmp_path.rglob("*.part"))


def endless_context(tmp_path: Path, should_abort, timeout: float = 120) -> StageContext:
    """A context for running ffmpeg on an endless generated source."""
    job = Job(id="endless", kind="cleanup", options={}, duration=10.0, media_info={})
    return StageContext(
        job,
        {"DATA_DIR": str(tmp_path), "FFMPEG_TIMEOUT_SECONDS": timeout},
        lambda *a: None,
        lambda p, s: None,
        should_abort,
    )


ENDLESS = ["-f", "lavfi", "-i", "anoisesrc=color=white", "-af", "afftdn", "-f", "null", "-"]


def test_cancel_stops_a_running_ffmpeg_within_a_second(tmp_path):
    """should_abort is polled while ffmpeg runs; the process is killed and Aborted raised."""
    started = time.monotonic()
    ctx = endless_context(tmp_path, lambda: time.monotonic() - started > 0.5)
    with pytest.raises(engine.Aborted):
        dsp._ffmpeg(ctx, ENDLESS)
    assert time.monotonic() - started < 2


def test_ffmpeg_runs_are_stopped_after_the_configured_timeout(tmp_path):
    """FFMPEG_TIMEOUT_SECONDS bounds every run; the job fails with a readable MEDIA_TIMEOUT."""
    ctx = endless_context(tmp_path, lambda: False, timeout=1)
    started = time.monotonic()
    with pytest.raises(audio.MediaError) as caught:
        dsp._ffmpeg(ctx, ENDLESS)
    assert caught.value.error_code == "MEDIA_TIMEOUT" and time.monotonic() - started < 3


def test_noise_floor_is_the_quiet_tenth_and_ignores_digital_silence():
    """Speech windows and exact zeros do not move the estimate."""
    windows = [-30.0] * 20 + [-12.0] * 80 + [float("-inf")] * 50
    assert dsp.noise_floor(windows) == pytest.approx(-30.0)
    assert dsp.noise_floor([float("-inf")]) == -80.0


def test_filter_parameters_follow_strength_and_profile():
    """nr grows with strength and profile; nf sits above the measured floor within afftdn's range."""
    gentle, auto, aggressive = (dsp.denoise_params(80, p, -30) for p in ("gentle", "auto", "aggressive"))
    assert gentle[0] < auto[0] < aggressive[0] and gentle[1] < auto[1] < aggressive[1]
    assert dsp.denoise_params(100, "aggressive", -10) == (54.0, -20.0)
    assert dsp.denoise_filter(0, "auto", -30, 1200) == "anull"
    assert dsp.denoise_filter(80, "auto", -30, 1200).startswith("apad=pad_len=1200,afftdn=nr=28.8:nf=-25.0,atrim")
    precise = dsp.resample_filter(
        rate=96000, channels_in=2, channels=1, high_precision=True, upscale=4, source_rate=16000
    )
    assert precise == (
        "aresample=96000:resampler=soxr:precision=28,aexciter=amount=2.0:freq=4000:ceil=20000,pan=mono|c0=0.5*c0+0.5*c1"
    )
    assert (
        dsp.resample_filter(rate=44100, channels_in=1, channels=1, high_precision=False, upscale=1, source_rate=44100)
        == "aresample=44100"
    )
