"""Hostile media: a header that lies about the length, ffmpeg stopped by its timeout or a cancel, hours of audio.

The length limit (``WT_MAX_MEDIA_SECONDS``) is enforced on the decoded audio, not on what the container
claims; decoded audio is read a piece at a time, never whole; ffmpeg's partial output never stays behind.
"""

from __future__ import annotations

import os
import stat
import time
import tracemalloc
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

from app.models import Job
from tests.conftest import launch_appliance
from tests.helpers import AUDIO, MODELS_DIR, ffmpeg, reference, wer
from workers import audio, engine, modelstore, stages, tuning

LIMIT = 60  # WT_MAX_MEDIA_SECONDS in these tests: small, so the lying file is quick to make and to decode
CAP_BYTES = int((LIMIT + audio.LIMIT_MARGIN_SECONDS) * audio.SAMPLE_RATE * 2)  # the most a decode may write


def lying_flac(out: Path, seconds: float = 600, claims: float = 1.0) -> Path:
    """A silent 16 kHz FLAC of ``seconds`` whose STREAMINFO says it lasts ``claims`` seconds.

    STREAMINFO is the 34-byte block after ``fLaC`` and its 4-byte block header; bytes 10-17 of it hold
    the sample rate (20 bits), channels (3), bits per sample (5) and total samples (36, the low ones).
    """
    ffmpeg(
        "-f",
        "lavfi",
        "-i",
        "anullsrc=r=16000:cl=mono",
        "-t",
        str(seconds),
        "-c:a",
        "flac",
        "-sample_fmt",
        "s16",
        str(out),
    )
    data = bytearray(out.read_bytes())
    assert data[:4] == b"fLaC" and data[4] & 0x7F == 0, "STREAMINFO comes first"
    packed = int.from_bytes(data[18:26], "big")
    rate = packed >> 44
    mask = (1 << 36) - 1
    assert packed & mask == int(seconds * rate)
    data[18:26] = ((packed & ~mask) | int(claims * rate)).to_bytes(8, "big")
    out.write_bytes(bytes(data))
    return out


def fake_ffmpeg(folder: Path, *, then: str = "exec sleep 30") -> Path:
    """An ``ffmpeg`` on PATH that writes 10 s of output to its last argument, notes its pid, then ``then``."""
    folder.mkdir(exist_ok=True)
    script = folder / "ffmpeg"
    script.write_text(
        "#!/bin/sh\n"
        "for out; do :; done\n"  # the last argument: the output file
        'head -c 320000 /dev/zero > "$out"\n'
        f'echo $$ > "{folder}/pid"\n'
        f"{then}\n"
    )
    script.chmod(script.stat().st_mode | stat.S_IEXEC)
    return folder


def use_fake_ffmpeg(monkeypatch: pytest.MonkeyPatch, folder: Path) -> None:
    """Put the fake first on PATH, and decode even small files with it (they are decoded in-process otherwise)."""
    monkeypatch.setenv("PATH", f"{folder}{os.pathsep}{os.environ['PATH']}")
    monkeypatch.setattr(audio, "IN_PROCESS_BYTES", 0)


def gone(pid_file: Path) -> bool:
    """True when the process whose pid the fake noted no longer exists (killed and reaped)."""
    try:
        os.kill(int(pid_file.read_text()), 0)
    except ProcessLookupError:
        return True
    return False


def leftovers(cache: Path) -> list[tuple[str, int]]:
    """Every file under a job's cache folder, with its size."""
    return sorted((p.name, p.stat().st_size) for p in cache.rglob("*") if p.is_file()) if cache.exists() else []


@pytest.fixture(params=["in_process", "ffmpeg"])
def decoder(request, monkeypatch) -> str:
    """Each way a job's media is decoded: PyAV in the worker (small files) and an ffmpeg process."""
    monkeypatch.setattr(audio, "IN_PROCESS_BYTES", 2**40 if request.param == "in_process" else 0)
    return request.param


# ------------------------------------------------------------------ the length limit


def test_the_lying_flac_claims_one_second(tmp_path):
    info = audio.probe(lying_flac(tmp_path / "lying.flac"))
    assert info.duration == pytest.approx(1.0)


def test_decoding_stops_at_the_limit_and_fails_as_media_too_long(tmp_path, decoder):
    source = lying_flac(tmp_path / "lying.flac")
    out = tmp_path / "cache" / "audio.s16"
    out.parent.mkdir()
    with pytest.raises(audio.MediaError) as caught:
        audio.decode_to_file(source, out, expected_seconds=1.0, max_seconds=LIMIT)
    assert caught.value.error_code == "MEDIA_TOO_LONG"
    message = str(caught.value)
    assert message.startswith("MEDIA_TOO_LONG") and "limit of 1.0 min" in message and "claims 1 s" in message
    assert leftovers(out.parent) == []


def test_audio_as_long_as_the_limit_still_decodes(tmp_path, decoder):
    source = tmp_path / "minute.flac"
    ffmpeg("-f", "lavfi", "-i", "anullsrc=r=16000:cl=mono", "-t", str(LIMIT), str(source))
    seconds = audio.decode_to_file(source, tmp_path / "audio.s16", expected_seconds=LIMIT, max_seconds=LIMIT)
    assert seconds == pytest.approx(LIMIT, abs=0.05)


@pytest.mark.parametrize("clip", ["jfk.flac", "OSR_us_000_0034_8k.flac", "hotwords.mp3", "stereo_diarization.flac"])
def test_both_decoders_give_the_same_samples(tmp_path, monkeypatch, clip):
    decoded = {}
    for name, size in (("in_process", 2**40), ("ffmpeg", 0)):
        monkeypatch.setattr(audio, "IN_PROCESS_BYTES", size)
        out = tmp_path / f"{name}.s16"
        audio.decode_to_file(AUDIO / clip, out, max_seconds=LIMIT)
        decoded[name] = np.fromfile(out, dtype="<i2").astype(np.int32)
    assert decoded["in_process"].size == decoded["ffmpeg"].size
    assert np.abs(decoded["in_process"] - decoded["ffmpeg"]).max() <= 4  # the same resampler, a rounding apart


def test_a_damaged_file_keeps_what_decodes_or_fails_as_truncated(tmp_path, decoder):
    source = tmp_path / "cut.mp3"
    ffmpeg("-i", str(AUDIO / "jfk.flac"), str(source))
    data = bytearray(source.read_bytes())
    data[len(data) // 3 : len(data) // 3 + 4000] = bytes(4000)  # a hole of zeros in the middle
    source.write_bytes(bytes(data[: 2 * len(data) // 3]))  # and the last third gone
    out = tmp_path / "audio.s16"
    with pytest.raises(audio.MediaError, match="truncated or damaged"):
        audio.decode_to_file(source, out, expected_seconds=11.0, max_seconds=LIMIT)
    assert not out.exists() and not out.with_name("audio.s16.part").exists()


@pytest.mark.parametrize("content", [b"", b"not media at all" * 100])
def test_what_is_not_media_fails_with_a_media_error_and_leaves_nothing(tmp_path, decoder, content):
    source = tmp_path / "fake.wav"
    source.write_bytes(content)
    out = tmp_path / "audio.s16"
    with pytest.raises(audio.MediaError) as caught:
        audio.decode_to_file(source, out, max_seconds=LIMIT)
    assert not out.exists() and not out.with_name("audio.s16.part").exists()
    if decoder == "in_process":
        assert str(tmp_path) not in str(caught.value), "the server's paths stay out of what users read"


def test_a_cancel_stops_an_in_process_decode_and_removes_its_partial_output(tmp_path, monkeypatch):
    monkeypatch.setattr(audio, "IN_PROCESS_BYTES", 2**40)
    monkeypatch.setattr(audio, "POLL_SECONDS", 0.0)  # ten minutes of silence decode in a blink: check every packet
    source = lying_flac(tmp_path / "lying.flac", seconds=600)
    out = tmp_path / "audio.s16"
    seen: list[float] = []
    with pytest.raises(engine.Aborted):
        audio.decode_to_file(source, out, max_seconds=3600, on_progress=seen.append, should_abort=lambda: bool(seen))
    assert seen and 0 < seen[-1] < 600
    assert not out.exists() and not out.with_name("audio.s16.part").exists()


def test_a_lying_upload_is_accepted_then_fails_its_job_without_filling_cache_or_memory(
    app, client, admin_headers, stub_engine, drain, uploaded_job
):
    app.config["MAX_MEDIA_SECONDS"] = LIMIT
    created = uploaded_job(
        client, admin_headers, lying_flac(Path(app.config["DATA_DIR"]).parent / "lying.flac"), model="tiny.en"
    )
    tracemalloc.start()
    try:
        drain()
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    job = client.get(f"/api/jobs/{created['job_id']}", headers=admin_headers).get_json()
    assert job["status"] == "failed" and job["error"].startswith("MEDIA_TOO_LONG"), job
    assert job["duration"] == pytest.approx(1.0)  # what the header claimed at upload
    assert not stub_engine.calls, "the engine never saw the audio"
    cache = Path(app.config["DATA_DIR"]) / "cache" / created["job_id"]
    assert all(not name.endswith(".part") and size <= CAP_BYTES for name, size in leftovers(cache))
    assert not (cache / stages.AUDIO_CACHE).exists()
    assert peak < 8 * 2**20, f"decoding held {peak / 2**20:.1f} MB"  # 10 min as float32 would be 38 MB


# ------------------------------------------------------------------ reading decoded audio


def write_pcm(path: Path, seconds: float) -> Path:
    """Noise in bursts with pauses, as 16 kHz s16le: what the decode stage caches."""
    rng = np.random.default_rng(7)
    t = np.arange(int(seconds * audio.SAMPLE_RATE)) / audio.SAMPLE_RATE
    bursts = (np.sin(2 * np.pi * t / 9) > -0.3).astype(np.float32)
    path.write_bytes((rng.normal(0, 3000, t.size) * bursts).astype("<i2").tobytes())
    return path


def test_load_pcm_reads_slices_as_float32_without_reading_the_file_whole(tmp_path):
    path = write_pcm(tmp_path / "audio.s16", 20)
    raw = np.fromfile(path, dtype="<i2")
    pcm = audio.load_pcm(path)
    assert len(pcm) == pcm.size == raw.size
    piece = pcm[16000:48000]
    assert piece.dtype == np.float32 and piece.flags.c_contiguous
    np.testing.assert_array_equal(piece, raw[16000:48000].astype(np.float32) / 32768.0)
    np.testing.assert_array_equal(np.asarray(pcm), raw.astype(np.float32) / 32768.0)  # whole, when asked for
    assert pcm[len(pcm) :].size == 0


def test_whisper_cpp_reads_hours_of_audio_a_piece_at_a_time(tmp_path, monkeypatch):
    """The pieces of a 10-minute file, not the file, are in memory while whisper.cpp works."""
    whisper = engine.load_engine(MODELS_DIR / "ggml-tiny.en.bin", 2)
    pieces: list[int] = []

    def piece(samples, offset, **options):
        assert samples.dtype == np.float32 and np.abs(samples).max() <= 1.0
        pieces.append(len(samples))
        return [], None

    monkeypatch.setattr(whisper, "_piece", piece)
    pcm = audio.load_pcm(write_pcm(tmp_path / "audio.s16", 600))
    tracemalloc.start()
    try:
        whisper.transcribe(pcm)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert sum(pieces) == len(pcm) and max(pieces) <= 30 * audio.SAMPLE_RATE
    assert peak < 8 * 2**20, f"{peak / 2**20:.1f} MB"  # the whole file as float32 is 38 MB


def test_whisper_cpp_hears_the_same_from_the_cached_file_as_from_memory(tmp_path):
    whisper = engine.load_engine(MODELS_DIR / "ggml-tiny.en.bin", 2)
    out = tmp_path / "audio.s16"
    audio.decode_to_file(AUDIO / "jfk.flac", out, max_seconds=LIMIT)
    from_file = whisper.transcribe(audio.load_pcm(out), language="en").text
    assert from_file == whisper.transcribe(audio.decode(AUDIO / "jfk.flac"), language="en").text
    assert wer(reference("jfk.flac"), from_file) <= 0.10


def test_ctranslate2_gets_long_audio_in_blocks_cut_at_pauses(tmp_path, monkeypatch):
    """faster-whisper copies its input and computes all features up front: it gets one block at a time."""
    from workers.backends import ctranslate2

    folder = modelstore.ct2_dir(MODELS_DIR, "tiny.en")
    if not (modelstore.is_ct2_dir(folder) and tuning.ctranslate2_available()):
        pytest.skip("no CTranslate2 tiny.en model or no faster-whisper")
    loaded = engine.load_engine(folder, 2, "ctranslate2")
    monkeypatch.setattr(ctranslate2, "BLOCK_SECONDS", 60.0)
    blocks: list[int] = []

    def batched(samples, **options):
        assert samples.dtype == np.float32 and np.abs(samples).max() <= 1.0
        blocks.append(len(samples))
        seconds = len(samples) / audio.SAMPLE_RATE
        segment = SimpleNamespace(
            start=1.0, end=seconds - 1.0, text=" block", compression_ratio=1.0, avg_logprob=-0.1, words=None
        )
        return (s for s in [segment]), SimpleNamespace(language="en")

    monkeypatch.setattr(loaded._batched, "transcribe", batched)
    monkeypatch.setattr(ctranslate2, "_speech_spans", lambda samples: [(0, len(samples))])  # all of it is speech
    pcm = audio.load_pcm(write_pcm(tmp_path / "audio.s16", 600))
    tracemalloc.start()
    try:
        result = loaded.transcribe(pcm)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert sum(blocks) == len(pcm) and max(blocks) <= 90 * audio.SAMPLE_RATE and len(blocks) >= 7
    starts = np.cumsum([0, *blocks[:-1]]) / audio.SAMPLE_RATE
    assert [s.start for s in result.segments] == pytest.approx([start + 1.0 for start in starts], abs=0.001)
    assert peak < 16 * 2**20, f"{peak / 2**20:.1f} MB"  # the whole file as float32 is 38 MB


# ------------------------------------------------------------------ ffmpeg stopped or failing


def test_a_cancel_stops_ffmpeg_at_once_and_removes_its_partial_output(tmp_path, monkeypatch):
    fake = fake_ffmpeg(tmp_path / "bin")
    use_fake_ffmpeg(monkeypatch, fake)
    out = tmp_path / "audio.s16"
    started = time.monotonic()
    seen: list[float] = []
    with pytest.raises(engine.Aborted):
        audio.decode_to_file(
            AUDIO / "jfk.flac",
            out,
            max_seconds=LIMIT,
            on_progress=seen.append,
            should_abort=lambda: time.monotonic() - started > 0.5,
        )
    assert time.monotonic() - started < 2.0
    assert gone(fake / "pid")
    assert seen and seen[-1] == pytest.approx(10.0)  # progress came from the output written so far
    assert not out.exists() and not out.with_name("audio.s16.part").exists()


def test_ffmpeg_that_fails_leaves_no_partial_output(tmp_path, monkeypatch):
    use_fake_ffmpeg(monkeypatch, fake_ffmpeg(tmp_path / "bin", then="echo 'Invalid data found' >&2; exit 1"))
    out = tmp_path / "audio.s16"
    with pytest.raises(audio.MediaError, match="Invalid data found"):
        audio.decode_to_file(AUDIO / "jfk.flac", out, max_seconds=LIMIT)
    assert not out.with_name("audio.s16.part").exists() and not out.exists()


def test_ffmpeg_timeout_fails_the_job_and_removes_the_partial_output(
    app, client, admin_headers, stub_engine, drain, tmp_path, monkeypatch, uploaded_job
):
    created = uploaded_job(client, admin_headers, "jfk.flac", model="tiny.en")
    app.config["FFMPEG_TIMEOUT_SECONDS"] = 1  # after the upload: its probe has a timeout of its own
    fake = fake_ffmpeg(tmp_path / "bin")
    use_fake_ffmpeg(monkeypatch, fake)
    started = time.monotonic()
    drain()
    assert time.monotonic() - started < 10
    job = client.get(f"/api/jobs/{created['job_id']}", headers=admin_headers).get_json()
    assert job["status"] == "failed" and "took longer than 1 s" in job["error"], job
    assert gone(fake / "pid")
    cache = Path(app.config["DATA_DIR"]) / "cache" / created["job_id"]
    assert not any(name.endswith(".part") for name, _ in leftovers(cache)), leftovers(cache)


def test_cancelling_a_job_while_it_decodes_stops_ffmpeg_within_a_second(
    app, client, admin_headers, stub_engine, drain, tmp_path, monkeypatch, uploaded_job
):
    created = uploaded_job(client, admin_headers, "jfk.flac", model="tiny.en")
    fake = fake_ffmpeg(tmp_path / "bin")
    use_fake_ffmpeg(monkeypatch, fake)
    with app.app_context():
        # The flag a cancel of a running job sets; the status is still queued, so the worker claims it.
        Job.update(cancel_requested=True).where(Job.id == created["job_id"]).execute()
    started = time.monotonic()
    drain()
    assert time.monotonic() - started < 3  # ffmpeg alone would have run for 30 s
    job = client.get(f"/api/jobs/{created['job_id']}", headers=admin_headers).get_json()
    assert job["status"] == "cancelled", job
    assert gone(fake / "pid")
    cache = Path(app.config["DATA_DIR"]) / "cache" / created["job_id"]
    assert not any(name.endswith(".part") for name, _ in leftovers(cache)), leftovers(cache)


# ------------------------------------------------------------------ end to end


@pytest.mark.e2e
def test_lying_flac_fails_as_too_long_and_the_worker_goes_on_to_the_next_job(tmp_path):
    """Through HTTP, the queue and the real worker: the lie is caught, the worker stays healthy, jfk completes."""
    lying = lying_flac(tmp_path / "lying.flac")
    with launch_appliance(tmp_path / "data", "media-limits.log", WT_MAX_MEDIA_SECONDS=str(LIMIT)) as server:
        job_id = server.submit(lying, model="tiny.en")  # accepted: its header claims 1 s
        job = server.wait(job_id, timeout=120)
        assert job["status"] == "failed" and job["error"].startswith("MEDIA_TOO_LONG"), job
        assert "WT_MAX_MEDIA_SECONDS" in job["error"]
        cache = server.data_dir / "cache" / job_id
        assert all(not name.endswith(".part") and size <= CAP_BYTES for name, size in leftovers(cache))
        assert server.get("/health").json()["worker_alive"] is True
        done = server.wait(server.submit(AUDIO / "jfk.flac", model="tiny.en"), timeout=180)
        assert done["status"] == "completed", done
        assert wer(reference("jfk.flac"), done["transcript"]["text"]) <= 0.10


def test_an_audio_cleanup_job_on_a_lying_file_stops_at_the_limit(app, client, admin_headers, drain):
    """The VOXIS ingest stage bounds its own decode too: the float WAV never grows past the cap."""
    app.config["MAX_MEDIA_SECONDS"] = LIMIT
    path = lying_flac(Path(app.config["DATA_DIR"]).parent / "lying.flac")
    with open(path, "rb") as f:
        file_id = client.post("/api/upload", headers=admin_headers, data={"file": (f, "lying.flac")}).get_json()[
            "file_id"
        ]
    job_id = client.post(
        "/api/process", headers=admin_headers, json={"file_id": file_id, "noise_reduction": True}
    ).get_json()["job_id"]
    drain()
    job = client.get(f"/api/jobs/{job_id}", headers=admin_headers).get_json()
    assert job["status"] == "failed" and "MEDIA_TOO_LONG" in job["error"], job
    cache = Path(app.config["DATA_DIR"]) / "cache" / job_id
    assert not list(cache.glob("*.wav")), "the over-long ingest output was removed"


def test_an_in_process_decode_past_its_timeout_fails_as_media_timeout(tmp_path, monkeypatch):
    monkeypatch.setattr(audio, "IN_PROCESS_BYTES", 2**40)
    monkeypatch.setattr(audio, "POLL_SECONDS", 0.0)
    out = tmp_path / "audio.s16"
    with pytest.raises(audio.MediaError) as caught:
        audio.decode_to_file(lying_flac(tmp_path / "lying.flac"), out, timeout=1e-6, max_seconds=3600)
    assert caught.value.error_code == "MEDIA_TIMEOUT"
    assert not out.exists() and not out.with_name("audio.s16.part").exists()
