"""Dubarr routes: webhooks with sidecars, video uploads with a muxed subtitle track, task actions."""

from __future__ import annotations

import base64
import json
import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from app.services import media
from tests.helpers import AUDIO, ffprobe_streams, make_video, reference, wer


@pytest.fixture
def library(app, tmp_path) -> Path:
    """A media root holding one episode (JFK's speech), configured as WT_MEDIA_ROOTS."""
    root = tmp_path / "library"
    (root / "Show" / "Season 1").mkdir(parents=True)
    shutil.copy(AUDIO / "jfk.flac", root / "Show" / "Season 1" / "episode.flac")
    app.config["MEDIA_ROOTS"] = str(root)
    return root


def webhook(client, headers, payload) -> object:
    """POST a JSON webhook."""
    return client.post("/webhook", headers=headers, data=json.dumps(payload), content_type="application/json")


def stream_md5(path: Path, selector: str) -> str:
    """MD5 of a stream's packets, copied without decoding (equal only if the stream was not re-encoded)."""
    out = subprocess.run(
        ["ffmpeg", "-v", "error", "-i", str(path), "-map", selector, "-c", "copy", "-f", "md5", "-"],
        capture_output=True,
        check=True,
    ).stdout
    return out.decode().strip()


def test_webhook_writes_a_sidecar_that_matches_the_speech(client, admin_headers, library, drain):
    """The real engine transcribes the library file; the SRT lands next to it, the media is untouched."""
    episode = library / "Show" / "Season 1" / "episode.flac"
    before = episode.read_bytes()
    response = webhook(client, admin_headers, {"path": str(episode), "eventType": "Download"})
    assert response.status_code == 200, response.get_json()
    assert response.get_json()["status"] == "queued" and response.get_json()["path"] == str(episode)
    drain()
    sidecar = episode.with_name("episode.en.srt")
    assert sidecar.exists() and not list(episode.parent.glob(".*.part"))
    text = " ".join(
        line for line in sidecar.read_text().splitlines() if line and not line.isdigit() and "-->" not in line
    )
    assert wer(reference("jfk.flac"), text) <= 0.10
    assert episode.read_bytes() == before


def test_existing_sidecar_is_kept_unless_overwrite_is_allowed(app, client, admin_headers, library, stub_engine, drain):
    """A subtitle the user already has is never clobbered by default."""
    episode = library / "Show" / "Season 1" / "episode.flac"
    sidecar = episode.with_name("episode.en.srt")
    sidecar.write_text("mine")
    webhook(client, admin_headers, {"path": str(episode)})
    drain()
    assert sidecar.read_text() == "mine"
    app.config["SIDECAR_OVERWRITE"] = True
    webhook(client, admin_headers, {"path": str(episode)})
    drain()
    assert sidecar.read_text().startswith("1\n00:00:00,000")


@pytest.mark.parametrize(
    "make_path",
    [
        lambda root, tmp: "/etc/passwd",
        lambda root, tmp: str(root / ".." / "outside.flac"),
        lambda root, tmp: str(root / "Show" / "link.flac"),
    ],
)
def test_webhook_outside_the_roots_is_refused(client, admin_headers, library, tmp_path, make_path):
    """Absolute paths elsewhere, ``..`` and symlinks out of the root are 403."""
    shutil.copy(AUDIO / "jfk.flac", tmp_path / "outside.flac")
    os.symlink(tmp_path / "outside.flac", library / "Show" / "link.flac")
    response = webhook(client, admin_headers, {"path": make_path(library, tmp_path)})
    assert response.status_code == 403 and response.get_json()["error_code"] == "OUTSIDE_MEDIA_ROOTS"


@pytest.mark.parametrize(
    ("payload", "code"),
    [
        ({"path": "relative/episode.flac"}, "INVALID_PATH"),
        ({"path": "/x\x00.flac"}, "INVALID_PATH"),
        ({"path": 42}, "INVALID_PATH"),
        ({"eventType": "Download"}, "MISSING_PATH"),
    ],
)
def test_webhook_bad_paths_are_400(client, admin_headers, library, payload, code):
    """Malformed paths get a 400 naming the problem."""
    response = webhook(client, admin_headers, payload)
    assert response.status_code == 400 and response.get_json()["error_code"] == code


def test_webhook_for_missing_or_non_media_files_is_400(client, admin_headers, library):
    """Inside the root but not a usable media file."""
    (library / "notes.txt").write_text("hi")
    assert webhook(client, admin_headers, {"path": str(library / "nope.flac")}).status_code == 400
    assert webhook(client, admin_headers, {"path": str(library / "notes.txt")}).status_code == 400


def test_webhook_without_configured_roots_is_403(client, admin_headers):
    """No WT_MEDIA_ROOTS: nothing in the filesystem may be named."""
    response = webhook(client, admin_headers, {"path": str(AUDIO / "jfk.flac")})
    assert response.status_code == 403 and response.get_json()["error_code"] == "MEDIA_ROOTS_NOT_CONFIGURED"


def test_webhook_malformed_json_is_400(client, admin_headers, library):
    """A body that is not a JSON object."""
    response = client.post("/webhook", headers=admin_headers, data="{nope", content_type="application/json")
    assert response.status_code == 400 and response.get_json()["error_code"] == "INVALID_JSON"


def test_sonarr_radarr_and_jellyfin_payloads_are_understood(library):
    """The path comes from each tool's own JSON shape."""
    episode = str(library / "Show" / "Season 1" / "episode.flac")
    sonarr = {
        "eventType": "Download",
        "series": {"path": str(library / "Show")},
        "episodeFile": {"relativePath": "Season 1/episode.flac", "path": episode},
    }
    sonarr_relative = {
        "eventType": "Download",
        "series": {"path": str(library / "Show")},
        "episodeFile": {"relativePath": "Season 1/episode.flac"},
    }
    radarr = {
        "eventType": "Download",
        "movie": {"folderPath": str(library)},
        "movieFile": {"relativePath": "Show/Season 1/episode.flac"},
    }
    jellyfin = {"NotificationType": "ItemAdded", "ItemType": "Episode", "ItemPath": episode}
    for payload in (sonarr, sonarr_relative, radarr, jellyfin):
        path, event = media.webhook_path(payload)
        assert os.path.normpath(path) == episode and event in ("Download", "ItemAdded")


def test_arr_test_event_answers_ok_without_queueing(client, admin_headers, library):
    """Saving the connection in Sonarr/Radarr sends a Test event."""
    response = webhook(client, admin_headers, {"eventType": "Test", "series": {"path": "/x"}})
    assert response.status_code == 200 and response.get_json()["status"] == "ok"


def test_repeated_webhook_for_a_waiting_file_returns_the_same_task(client, admin_headers, library):
    """Arr tools may send an event twice; one job is enough."""
    episode = str(library / "Show" / "Season 1" / "episode.flac")
    first = webhook(client, admin_headers, {"path": episode}).get_json()["task_id"]
    assert webhook(client, admin_headers, {"path": episode}).get_json()["task_id"] == first


def test_video_upload_redirects_and_its_download_has_video_and_subtitles(client, admin_headers, drain, tmp_path):
    """The video stream is copied bit for bit and a subtitle track is added (dubs: tests/test_dubbing.py)."""
    video = make_video(AUDIO / "jfk.flac", tmp_path / "clip.mp4")
    with open(video, "rb") as f:
        response = client.post(
            "/upload",
            headers={**admin_headers, "Accept": "text/html"},
            data={"file": (f, "clip.mp4"), "dub": "false"},
        )
    assert response.status_code == 303 and response.headers["Location"].startswith("/?job=")
    task_id = response.headers["X-Job-ID"]
    drain()
    download = client.get(f"/download/{task_id}", headers=admin_headers)
    assert download.status_code == 200 and download.content_type == "application/octet-stream"
    out = tmp_path / "out.mp4"
    out.write_bytes(download.data)
    kinds = [s["codec_type"] for s in ffprobe_streams(out)]
    assert "video" in kinds and "audio" in kinds and "subtitle" in kinds
    assert stream_md5(out, "0:v") == stream_md5(video, "0:v")
    assert stream_md5(out, "0:a") == stream_md5(video, "0:a")
    job = client.get(f"/api/jobs/{task_id}", headers=admin_headers).get_json()
    assert job["kind"] == "video" and [s["name"] for s in job["stages"]][-1] == "mux"
    assert wer(reference("jfk.flac"), job["transcript"]["text"]) <= 0.10


def test_audio_download_is_the_transcript_and_unfinished_is_404(client, admin_headers, stub_engine, drain):
    """For audio the download is the SRT; before completion there is nothing."""
    with open(AUDIO / "jfk.flac", "rb") as f:
        task_id = client.post("/upload", headers=admin_headers, data={"file": (f, "jfk.flac")}).headers["X-Job-ID"]
    assert client.get(f"/download/{task_id}", headers=admin_headers).status_code == 404
    drain()
    response = client.get(f"/download/{task_id}", headers=admin_headers)
    assert response.status_code == 200 and response.get_data(as_text=True).startswith("1\n")
    assert client.get("/download/unknown", headers=admin_headers).status_code == 404


def test_retry_purge_delete_answer_303_for_browsers_and_json_for_api(
    client, admin_headers, stub_engine, drain, library, app
):
    """Task actions follow the caller's Accept header; delete never removes the library file."""
    episode = library / "Show" / "Season 1" / "episode.flac"
    task_id = webhook(client, admin_headers, {"path": str(episode)}).get_json()["task_id"]
    assert client.post(f"/retry/{task_id}", headers=admin_headers).status_code == 409  # still queued
    drain()
    cache = Path(app.config["DATA_DIR"]) / "cache" / task_id
    assert cache.exists()
    browser = {**admin_headers, "Accept": "text/html,application/xhtml+xml"}
    response = client.post(f"/purge/{task_id}", headers=browser)
    assert response.status_code == 303 and not cache.exists()
    api = client.post(f"/purge/{task_id}", headers={**admin_headers, "Accept": "application/json"})
    assert api.status_code == 200 and api.get_json()["task_id"] == task_id
    assert client.post(f"/delete/{task_id}", headers=admin_headers).get_json()["message"] == "Task deleted"
    assert episode.exists()
    assert client.get(f"/api/jobs/{task_id}", headers=admin_headers).status_code == 404


def test_basic_auth_with_api_user_and_user_passwords(app, client, library):
    """API_USER/API_PASS as in Dubarr's document; appliance users' passwords work too; wrong ones are 401."""
    from tests.conftest import ADMIN_PASSWORD

    app.config.update(API_USER="dubarr", API_PASS="dubarr-secret-1")

    def basic(user: str, password: str) -> dict:
        return {"Authorization": "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()}

    episode = str(library / "Show" / "Season 1" / "episode.flac")
    assert webhook(client, basic("dubarr", "dubarr-secret-1"), {"path": episode}).status_code == 200
    assert webhook(client, basic("admin", ADMIN_PASSWORD), {"path": episode}).status_code == 200
    denied = webhook(client, basic("dubarr", "wrong"), {"path": episode})
    assert denied.status_code == 401 and denied.get_json()["error_code"] == "UNAUTHORIZED"


def test_health_reports_queue_stats_and_engine_statuses(client, admin_headers, stub_engine, drain):
    """Dubarr's keys, with status still "ok" for the v1 API."""
    with open(AUDIO / "jfk.flac", "rb") as f:
        client.post("/api/jobs/", headers=admin_headers, data={"file": (f, "jfk.flac")})
    body = client.get("/health").get_json()
    assert body["status"] == "ok"
    assert body["queue_stats"] == {"QUEUED": 1, "PROCESSING": 0, "DONE": 0, "ERROR": 0}
    assert body["engine_statuses"] == {
        "whisper": "LOADING",
        "tts": "READY",  # espeak-ng
        "llm": "NOT_CONFIGURED",
        "diarization": "NOT_AVAILABLE",
        "ffmpeg": "READY",
        "vad": "NOT_CONFIGURED",
    }
    drain()
    assert client.get("/health").get_json()["queue_stats"]["DONE"] == 1


def test_watch_folder_queues_new_media_once_its_size_is_stable(app, library, stub_engine):
    """The first scan notes the file, the second queues it, later scans do not queue it again."""
    from workers import pipeline

    app.config["WATCH_DIRS"] = str(library)
    pipeline.configure(dict(app.config))
    with app.app_context():
        assert pipeline.scan_watch_dirs() == []
        queued = pipeline.scan_watch_dirs()
        assert len(queued) == 1
        assert pipeline.scan_watch_dirs() == []


def upload_video(client, headers, tmp_path) -> tuple[str, Path]:
    """POST /upload a short mp4 of JFK's speech; the task id and the uploaded file."""
    video = make_video(AUDIO / "jfk.flac", tmp_path / "clip.mp4")
    with open(video, "rb") as f:
        response = client.post("/upload", headers=headers, data={"file": (f, "clip.mp4")})
    assert response.status_code == 303, response.get_json()
    return response.headers["X-Job-ID"], video


def test_purged_video_task_can_be_retried_and_downloads_with_subtitles_again(
    app, client, admin_headers, stub_engine, drain, tmp_path
):
    """Purge deletes the subtitled video; retry (409 before) runs every stage again and the download is back."""
    task_id, _ = upload_video(client, admin_headers, tmp_path)
    drain()
    assert client.post(f"/retry/{task_id}", headers=admin_headers).status_code == 409  # nothing to redo yet
    assert client.post(f"/purge/{task_id}", headers=admin_headers).status_code == 200
    assert not (Path(app.config["DATA_DIR"]) / "cache" / task_id).exists()
    purged = client.get(f"/download/{task_id}", headers=admin_headers)
    assert purged.status_code == 404 and "retry" in purged.get_json()["detail"]
    listed = client.get("/api/jobs/", headers=admin_headers).get_json()["jobs"][0]
    assert (listed["status"], listed["kind"], listed["purged"]) == ("completed", "video", True)

    retried = client.post(f"/retry/{task_id}", headers=admin_headers)
    assert retried.status_code == 200 and retried.get_json()["status"] == "queued"
    drain()
    job = client.get(f"/api/jobs/{task_id}", headers=admin_headers).get_json()
    assert job["status"] == "completed" and job["purged"] is False
    assert all(s["status"] == "done" for s in job["stages"])
    download = client.get(f"/download/{task_id}", headers=admin_headers)
    assert download.status_code == 200
    out = tmp_path / "again.mp4"
    out.write_bytes(download.data)
    assert "subtitle" in [s["codec_type"] for s in ffprobe_streams(out)]
    assert client.post(f"/retry/{task_id}", headers=admin_headers).status_code == 409  # completed, not purged


def test_purge_of_a_running_task_is_409(app, client, admin_headers, tmp_path):
    """The worker is writing the caches; purging under it would corrupt the run."""
    from app.models import Job

    task_id, _ = upload_video(client, admin_headers, tmp_path)
    with app.app_context():
        Job.update(status="processing").where(Job.id == task_id).execute()
    assert client.post(f"/purge/{task_id}", headers=admin_headers).status_code == 409


def basic(user: str, password: str) -> dict:
    """HTTP Basic headers."""
    return {"Authorization": "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()}


def test_api_user_signs_in_to_the_dashboard_and_sees_its_tasks(app, client, stub_engine, tmp_path):
    """The Basic-only account logs in with the same credentials and its session lists what it uploaded."""
    app.config.update(API_USER="dubarr", API_PASS="dubarr-secret-1")
    task_id, _ = upload_video(client, {**basic("dubarr", "dubarr-secret-1"), "Accept": "text/html"}, tmp_path)
    landing = client.get("/", follow_redirects=False)
    assert landing.status_code == 302 and "/login" in landing.headers["Location"]

    assert client.post("/auth/login", json={"username": "dubarr", "password": "wrong"}).status_code == 401
    signed_in = client.post("/auth/login", json={"username": "dubarr", "password": "dubarr-secret-1"})
    assert signed_in.status_code == 200, signed_in.get_json()
    assert client.get("/").status_code == 200  # the session cookie opens the dashboard
    listed = client.get("/api/jobs/").get_json()["jobs"]
    assert [j["job_id"] for j in listed] == [task_id]
    assert client.get(f"/ui/jobs/{task_id}").status_code == 200


def test_api_user_without_a_password_cannot_sign_in(app, client):
    """API_USER alone (no API_PASS) is no account: the login answers as for any wrong password."""
    app.config.update(API_USER="dubarr", API_PASS="")
    response = client.post("/auth/login", json={"username": "dubarr", "password": "anything"})
    assert response.status_code == 401 and response.get_json()["error_code"] == "INVALID_CREDENTIALS"


def test_dubarr_401_offers_basic_beside_bearer(client):
    """A browser posting to /upload without credentials gets a Basic prompt; other APIs keep Bearer only."""
    response = client.post("/upload")
    assert response.status_code == 401
    challenges = response.headers.getlist("WWW-Authenticate")
    assert "Bearer" in challenges and any(re.fullmatch(r'Basic realm="[^"]+".*', c) for c in challenges)
    assert client.get("/download/x").headers.getlist("WWW-Authenticate")[-1].startswith("Basic ")
    assert client.get("/api/jobs/").headers.getlist("WWW-Authenticate") == ["Bearer"]
    client.set_cookie("wt_session", "expired-session")  # the dashboard sends its users to the login page
    assert client.get("/download/x").headers.getlist("WWW-Authenticate") == ["Bearer"]
