"""Media workflows end to end: webhook → queue → whisper.cpp → sidecar, and video → muxed download."""

from __future__ import annotations

import shutil
import subprocess

import pytest

from tests.helpers import AUDIO, ffprobe_streams, make_video, reference, wait_for, wer

pytestmark = pytest.mark.e2e


def test_webhook_through_the_running_appliance_writes_a_sidecar(live_server):
    """A Sonarr-style import on a library file ends as ``<name>.en.srt`` next to it."""
    folder = live_server.library / "Show"
    folder.mkdir(exist_ok=True)
    episode = folder / "pilot.flac"
    shutil.copy(AUDIO / "jfk.flac", episode)
    payload = {
        "eventType": "Download",
        "series": {"path": str(folder)},
        "episodeFile": {"relativePath": "pilot.flac", "path": str(episode)},
    }
    response = live_server.post("/webhook", json=payload)
    assert response.status_code == 200 and response.json()["status"] == "queued", response.text
    job = live_server.wait(response.json()["task_id"])
    assert job["status"] == "completed", job
    sidecar = wait_for(lambda: (p := folder / "pilot.en.srt").exists() and p, timeout=10)
    text = " ".join(
        line for line in sidecar.read_text().splitlines() if line and not line.isdigit() and "-->" not in line
    )
    assert wer(reference("jfk.flac"), text) <= 0.10


def test_webhook_outside_the_roots_is_refused_by_the_running_appliance(live_server):
    """The real server answers 403 for a file outside WT_MEDIA_ROOTS."""
    response = live_server.post("/webhook", json={"path": str(AUDIO / "jfk.flac")})
    assert response.status_code == 403 and response.json()["error_code"] == "OUTSIDE_MEDIA_ROOTS"


def downloaded_streams(live_server, task_id: str, out) -> list[dict]:
    """GET /download/{id} into ``out``; its streams by ffprobe."""
    download = live_server.get(f"/download/{task_id}")
    assert download.status_code == 200, download.text
    out.write_bytes(download.content)
    return ffprobe_streams(out)


def test_video_upload_through_the_running_appliance_gains_a_subtitle_track(live_server, tmp_path):
    """POST /upload → 303; the download has video, audio and subtitle streams; purge → retry makes it again."""
    video = make_video(AUDIO / "jfk.flac", tmp_path / "clip.mkv")
    with open(video, "rb") as f:
        response = live_server.post("/upload", files={"file": ("clip.mkv", f)}, allow_redirects=False)
    assert response.status_code == 303
    job = live_server.wait(response.headers["X-Job-ID"])
    assert job["status"] == "completed", job
    streams = downloaded_streams(live_server, job["job_id"], tmp_path / "out.mkv")
    assert {s["codec_type"] for s in streams} == {"video", "audio", "subtitle"}
    assert next(s for s in streams if s["codec_type"] == "subtitle")["tags"]["language"] == "eng"

    assert live_server.post(f"/purge/{job['job_id']}").status_code == 200
    assert live_server.get(f"/download/{job['job_id']}").status_code == 404
    assert live_server.post(f"/retry/{job['job_id']}").status_code == 200
    job = live_server.wait(job["job_id"])
    assert job["status"] == "completed", job
    again = tmp_path / "again.mkv"
    streams = downloaded_streams(live_server, job["job_id"], again)
    assert {s["codec_type"] for s in streams} == {"video", "audio", "subtitle"}
    srt = subprocess.run(
        ["ffmpeg", "-v", "error", "-i", str(again), "-map", "0:s:0", "-f", "srt", "-"], capture_output=True, check=True
    ).stdout.decode()
    text = " ".join(line for line in srt.splitlines() if line and not line.isdigit() and "-->" not in line)
    assert wer(reference("jfk.flac"), text) <= 0.10
