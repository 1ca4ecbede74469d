"""End to end: HTTP → queue → whisper.cpp with the real model, judged by word error rate."""

from __future__ import annotations

import signal
import time

import psutil
import pytest
import requests

from tests.helpers import AUDIO, ffmpeg, make_long_audio, make_video, reference, wait_for, wer

pytestmark = pytest.mark.e2e


def test_jfk_upload_transcribes_within_ten_percent_wer(live_server):
    """The 11 s JFK clip through the canonical API."""
    job = live_server.wait(live_server.submit(AUDIO / "jfk.flac", model="tiny.en"))
    assert job["status"] == "completed", job
    assert wer(reference("jfk.flac"), job["transcript"]["text"]) <= 0.10
    assert job["transcript"]["language"] == "en"
    segments = job["transcript"]["segments"]
    assert segments and all(0 <= s["start"] < s["end"] <= 11.5 for s in segments)
    assert 0 < job["transcript"]["confidence"] <= 1


def test_telephone_band_osr_clip_transcribes_within_fifteen_percent_wer(live_server):
    """35.5 s of 8 kHz speech: resampled by ffmpeg, timestamps run to the end."""
    job = live_server.wait(live_server.submit(AUDIO / "OSR_us_000_0034_8k.flac"))
    assert job["status"] == "completed", job
    assert wer(reference("OSR_us_000_0034_8k.flac"), job["transcript"]["text"]) <= 0.15
    assert job["transcript"]["segments"][-1]["end"] > 25


def test_video_container_transcribes(live_server, tmp_path):
    """An mp4 with a video stream and JFK as its audio."""
    video = make_video(AUDIO / "jfk.flac", tmp_path / "jfk.mp4")
    job = live_server.wait(live_server.submit(video))
    assert job["status"] == "completed", job
    assert job["media"]["has_video"] is True
    assert wer(reference("jfk.flac"), job["transcript"]["text"]) <= 0.10


def test_srt_export_of_a_real_job_has_valid_cues(live_server):
    """The SRT export matches the transcript text by WER and has increasing cues."""
    job_id = live_server.submit(AUDIO / "jfk.flac")
    live_server.wait(job_id)
    srt = live_server.get(f"/api/export/download/{job_id}/srt").text
    cues = [c.splitlines() for c in srt.strip().split("\n\n")]
    assert [c[0] for c in cues] == [str(i) for i in range(1, len(cues) + 1)]
    assert all(" --> " in c[1] for c in cues)
    assert wer(reference("jfk.flac"), " ".join(" ".join(c[2:]) for c in cues)) <= 0.10


def test_translate_task_turns_german_speech_into_english(live_server, tmp_path):
    """The multilingual base model detects German and translates it."""
    german = tmp_path / "german.wav"
    ffmpeg("-ss", "34", "-i", str(AUDIO / "multilingual.mp3"), "-t", "20", str(german))
    job = live_server.wait(live_server.submit(german, model="base", task="translate"), timeout=240)
    assert job["status"] == "completed", job
    assert job["transcript"]["language"] == "de"
    words = set(job["transcript"]["text"].lower().replace(",", " ").replace(".", " ").split())
    assert words & {"software", "permission", "person", "copy", "rights", "documentation", "the"}
    assert not words & {"die", "der", "und", "das"}


def test_initial_prompt_is_accepted_and_steers_vocabulary(live_server):
    """A prompt naming 'ComfyUI' does not crash the engine and the word appears."""
    job = live_server.wait(live_server.submit(AUDIO / "hotwords.mp3", prompt="ComfyUI"))
    assert job["status"] == "completed", job
    assert "comfyui" in job["transcript"]["text"].lower().replace(" ", "")


def test_cancel_of_a_running_job_discards_partial_text(live_server, tmp_path):
    """The abort callback stops whisper.cpp; the job ends cancelled with no transcript."""
    long = make_long_audio(AUDIO / "OSR_us_000_0034_8k.flac", tmp_path / "long.wav", 8)
    job_id = live_server.submit(long)
    wait_for(lambda: live_server.get(f"/api/progress/{job_id}").json()["stage"] == "transcribing", timeout=60)
    assert live_server.post(f"/api/jobs/{job_id}/cancel").status_code == 200
    job = live_server.wait(job_id)
    assert job["status"] == "cancelled" and "transcript" not in job


def _worker_process(live_server) -> psutil.Process:
    children = psutil.Process(live_server.process.pid).children()
    return next(p for p in children if "worker" in p.cmdline())


def test_worker_killed_mid_job_loses_nothing(live_server, tmp_path):
    """SIGKILL the worker while it transcribes: `run` restarts it and the job completes."""
    long = make_long_audio(AUDIO / "OSR_us_000_0034_8k.flac", tmp_path / "long.wav", 4)
    job_id = live_server.submit(long)
    progress = wait_for(
        lambda: (p := live_server.get(f"/api/progress/{job_id}").json())["stage"] == "transcribing" and p, timeout=60
    )
    assert progress["status"] == "processing"
    victim = _worker_process(live_server)
    victim.send_signal(signal.SIGKILL)
    victim.wait(10)
    job = live_server.wait(job_id, timeout=300)
    assert job["status"] == "completed", job
    assert job["attempts"] == 2
    expected = " ".join([reference("OSR_us_000_0034_8k.flac")] * 4)
    assert wer(expected, job["transcript"]["text"]) <= 0.15
    assert _worker_process(live_server).pid != victim.pid


def test_progress_is_visible_while_a_job_runs(live_server, tmp_path):
    """The percent rises through transcribing before the job completes."""
    long = make_long_audio(AUDIO / "OSR_us_000_0034_8k.flac", tmp_path / "long.wav", 4)
    job_id = live_server.submit(long)
    seen: set[float] = set()
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline:
        body = live_server.get(f"/api/progress/{job_id}").json()
        if body["status"] == "processing" and body["stage"] == "transcribing":
            seen.add(body["progress"])
        if body["status"] == "completed":
            break
        time.sleep(0.2)
    assert body["status"] == "completed"
    assert any(0 < p < 100 for p in seen), seen


def test_oversized_upload_is_refused_by_the_real_server(live_server):
    """Gunicorn + Flask answer 413 with the JSON body (limit lowered for this test is not possible
    across processes, so send a declared length over the 2 GiB default without a body)."""
    response = requests.post(
        live_server.url + "/api/jobs/",
        headers={
            **live_server.headers(),
            "Content-Type": "multipart/form-data; boundary=x",
            "Content-Length": str(3 * 1024**3),
        },
        data=b"",
        timeout=10,
    )
    assert response.status_code == 413
    assert response.json()["error_code"] == "PAYLOAD_TOO_LARGE"
