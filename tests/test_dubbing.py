"""Dubbing: translate → synthesize → fit → mix → mux on video jobs with ``dub``, and the rules around it."""

from __future__ import annotations

import json
import subprocess
import threading
import wave
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import numpy as np
import pytest

from app.models import Job
from app.services import analysis, dubs, plans
from tests.conftest import ADMIN_PASSWORD
from tests.helpers import AUDIO, MODELS_DIR, assert_error, ffprobe_streams, make_german_video, make_video, post_clip
from workers import dubbing


@pytest.fixture(scope="module")
def german_video(tmp_path_factory) -> Path:
    """The German clip with a tone under it, built once."""
    return make_german_video(tmp_path_factory.mktemp("german"))


def job_of(response) -> Job:
    """The job a 201 answer names."""
    assert response.status_code == 201, response.get_json()
    return Job.get_by_id(response.get_json()["job_id"])


def test_dub_job_adds_an_english_track_beside_the_original(client, admin_headers, drain, german_video, app):
    """A German video with dub=en ends with video, the original audio, an ``eng`` dub and the subtitles."""
    job = job_of(post_clip(client, admin_headers, german_video, dub="en", model="tiny.en", language="de"))
    assert job.model == "base" and job.kind == "video"  # English-only models cannot translate
    assert plans.plan_for(job)[-5:] == ("translate", "synthesize", "fit", "mix", "mux")
    drain()
    job = Job.get_by_id(job.id)
    assert job.status == "completed", job.error
    out = Path(app.config["DATA_DIR"]) / job.stages["mux"]["output"]
    found = ffprobe_streams(out)
    audio = [s for s in found if s["codec_type"] == "audio"]
    assert [s["codec_type"] for s in found].count("video") == 1 and len(audio) == 2
    tags = audio[1]["tags"]
    assert tags["language"] == "eng" and (tags.get("title") or tags.get("handler_name")) == "English (dub)"
    assert any(s["codec_type"] == "subtitle" for s in found)
    assert job.stages["fit"]["segments"] >= 1 and "sped_up" in job.stages["fit"]
    assert (Path(app.config["DATA_DIR"]) / "cache" / job.id / "voice.wav").exists()  # the voice-only stem


# ---------------------------------------------------------------------- bad input and rules


def test_dub_of_a_video_without_audio_is_refused_clearly(client, admin_headers, tmp_path):
    """A silent video has nothing to dub: 415 NO_AUDIO at upload, nothing queued."""
    silent = tmp_path / "silent.mp4"
    subprocess.run(
        ["ffmpeg", "-v", "error", "-f", "lavfi", "-i", "color=c=red:s=64x64:r=5:d=2", "-c:v", "libx264", str(silent)],
        check=True,
    )
    body = assert_error(post_clip(client, admin_headers, silent, dub="en"), 415, "NO_AUDIO")
    assert "audio" in body["detail"]
    assert Job.select().count() == 0


def test_dub_of_audio_only_is_refused(client, admin_headers):
    """dub needs a video stream."""
    assert_error(post_clip(client, admin_headers, AUDIO / "jfk.flac", dub="en"), 400, "DUB_NEEDS_VIDEO")


def test_dub_with_only_english_models_names_the_missing_multilingual_model(app, client, admin_headers, tmp_path):
    """Only tiny.en installed: 400 saying a multilingual model is needed and how to install one."""
    models = tmp_path / "models"
    models.mkdir()
    (models / "ggml-tiny.en.bin").symlink_to(MODELS_DIR / "ggml-tiny.en.bin")
    app.config.update(MODELS_DIR=str(models), DEFAULT_MODEL="tiny.en")
    video = make_video(AUDIO / "jfk.flac", tmp_path / "jfk.mp4")
    body = assert_error(post_clip(client, admin_headers, video, dub="true"), 400, "DUB_NEEDS_MULTILINGUAL_MODEL")
    assert "models install base" in body["detail"]


def test_dub_into_another_language_offline_is_refused(client, admin_headers, tmp_path):
    """Without a chat model only English dubs can be made."""
    video = make_video(AUDIO / "jfk.flac", tmp_path / "jfk.mp4")
    assert_error(post_clip(client, admin_headers, video, dub="fr"), 400, "DUB_LANGUAGE_UNAVAILABLE")
    assert_error(post_clip(client, admin_headers, video, dub="klingon"), 400, "INVALID_DUB_LANGUAGE")


def test_jobs_without_dub_keep_their_plans_and_dubarr_tasks_dub_by_default(client, admin_headers, tmp_path):
    """No dub field: a job runs its plan as before; a Dubarr video task dubs unless it opts out."""
    video = make_video(AUDIO / "jfk.flac", tmp_path / "jfk.mp4")
    assert "synthesize" not in plans.plan_for(job_of(post_clip(client, admin_headers, video)))
    for form, dubbed in (({}, True), ({"dub": "false"}, False)):
        with open(video, "rb") as f:
            response = client.post("/upload", headers=admin_headers, data={"file": (f, "jfk.mp4"), **form})
        assert response.status_code == 303
        plan = plans.plan_for(Job.get_by_id(response.headers["X-Job-ID"]))
        assert ("synthesize" in plan) is dubbed and plan[-1] == "mux"


# ---------------------------------------------------------------------- fitting


def tone_clip(path: Path, seconds: float) -> Path:
    """A 24 kHz mono WAV of a tone ``seconds`` long."""
    t = np.arange(int(seconds * dubbing.RATE)) / dubbing.RATE
    with wave.open(str(path), "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(dubbing.RATE)
        w.writeframes((np.sin(2 * np.pi * 300 * t) * 8000).astype(np.int16).tobytes())
    return path


@pytest.mark.parametrize(
    ("seconds", "tempo", "played", "overflow"),
    [
        (1.0, 1.0, 1.0, 0.0),  # fits: as is
        (2.4, 1.6, 1.5, 0.0),  # 1.6x into a 1.5 s slot
        (3.0, 1.6, 1.875, 0.375),  # still too long: runs into the silence after
        (6.0, 1.6, 2.5, 1.0),  # and is cut where the next segment starts
    ],
)
def test_fit_speeds_up_then_overflows_but_never_over_the_next_segment(tmp_path, seconds, tempo, played, overflow):
    """Slot 1.0-2.5 s, next segment at 3.5 s, limit 1.6x."""
    clip = tone_clip(tmp_path / "clip.wav", seconds)
    placed = dubbing.fit(0, clip, 1.0, 2.5, 3.5, tmp_path / "fit.wav", max_tempo=1.6, timeout=30)
    assert placed.tempo == pytest.approx(tempo, abs=0.01)
    assert placed.seconds == pytest.approx(played, abs=0.03)
    assert placed.overflow == pytest.approx(overflow, abs=0.03)
    assert placed.start + placed.seconds <= 3.5 + 0.01


def test_unspeakable_segments_are_skipped():
    """Empty text, punctuation and bracketed tags are not spoken."""
    assert not any(dubbing.speakable(t) for t in ("", "   ", "...", "[Music]", "(laughs)"))
    assert dubbing.speakable("Hello.") and dubbing.speakable("42")


# ---------------------------------------------------------------------- remote servers


class FakeServer:
    """A tiny local OpenAI-compatible server: chat completions and /v1/audio/speech (espeak-ng's WAV)."""

    def __init__(self, replies: dict[str, str] | None = None, default: str | None = None):
        self.replies, self.default, self.requests = replies or {}, default, []
        owner = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args) -> None:
                pass

            def do_GET(self) -> None:
                self._send(200, b'{"data": []}', "application/json")

            def do_POST(self) -> None:
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                owner.requests.append((self.path, body))
                if self.path.endswith("/chat/completions"):
                    text = body["messages"][-1]["content"]
                    answer = owner.replies.get(text, f"Hallo {text}" if owner.default is None else owner.default)
                    reply = {"choices": [{"message": {"content": answer}}]}
                    self._send(200, json.dumps(reply).encode(), "application/json")
                else:
                    wav = subprocess.run(["espeak-ng", "--stdout", body["input"]], capture_output=True).stdout
                    self._send(200, wav, "audio/wav")

            def _send(self, status: int, data: bytes, kind: str) -> None:
                self.send_response(status)
                self.send_header("Content-Type", kind)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/v1"

    def __enter__(self) -> FakeServer:
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        return self

    def __exit__(self, *exc) -> None:
        self.server.shutdown()
        self.server.server_close()


def unused_url() -> str:
    """A local URL where nothing listens."""
    server = ThreadingHTTPServer(("127.0.0.1", 0), BaseHTTPRequestHandler)
    port = server.server_address[1]
    server.server_close()
    return f"http://127.0.0.1:{port}/v1"


def test_unreachable_chat_model_fails_the_translate_stage_and_a_retry_works_once_it_is_back(
    app, client, admin_headers, drain, stub_engine, tmp_path
):
    """dub=de with OPENAI_BASE_URL down: translate fails naming the server; with the server up the retry completes.

    The fake chat model answers "" for one segment: that segment is skipped, not fatal.
    """
    analysis.reset_breaker()
    app.config.update(OPENAI_BASE_URL=unused_url(), OPENAI_MODEL="local")
    video = make_video(AUDIO / "jfk.flac", tmp_path / "jfk.mp4")
    job = job_of(post_clip(client, admin_headers, video, dub="de"))
    drain()
    job = Job.get_by_id(job.id)
    assert job.status == "failed" and "translation server" in job.error and "could not be reached" in job.error
    assert job.stages["translate"]["status"] == "failed" and job.stages["transcribe"]["status"] == "done"

    with FakeServer({"word1": ""}) as server:
        app.config["OPENAI_BASE_URL"] = server.url
        assert client.post(f"/api/jobs/{job.id}/restart", headers=admin_headers).status_code == 200
        drain()
    job = Job.get_by_id(job.id)
    assert job.status == "completed", job.error
    assert [c["translate"] for c in stub_engine.calls] == [False]  # the transcript was reused from the cache
    assert job.stages["fit"]["skipped"] == 1 and job.stages["fit"]["segments"] == len(server.requests) - 1
    out = Path(app.config["DATA_DIR"]) / job.stages["mux"]["output"]
    assert [s["tags"].get("language") for s in ffprobe_streams(out) if s["codec_type"] == "audio"][-1] == "deu"
    analysis.reset_breaker()


def test_unreachable_speech_server_fails_synthesize_and_a_retry_works_once_it_is_back(
    app, client, admin_headers, drain, stub_engine, tmp_path
):
    """WT_TTS_BASE_URL down: synthesize fails with the reason; back up, the retry speaks through it."""
    app.config["TTS_BASE_URL"] = unused_url()
    video = make_video(AUDIO / "jfk.flac", tmp_path / "jfk.mp4")
    job = job_of(post_clip(client, admin_headers, video, dub="en"))
    drain()
    job = Job.get_by_id(job.id)
    assert job.status == "failed" and "speech server" in job.error and "could not be reached" in job.error
    assert job.stages["synthesize"]["status"] == "failed"
    with FakeServer() as server:
        app.config["TTS_BASE_URL"] = server.url
        assert client.post(f"/api/jobs/{job.id}/restart", headers=admin_headers).status_code == 200
        drain()
    job = Job.get_by_id(job.id)
    assert job.status == "completed", job.error
    assert server.requests and all(path == "/v1/audio/speech" for path, _ in server.requests)


def test_health_reports_tts_and_llm_by_their_servers(app, client):
    """tts follows the TTS server, llm the chat model: READY while they answer, ERROR when down."""
    dubs.forget_probes()
    app.config.update(TTS_BASE_URL=unused_url(), OPENAI_BASE_URL=unused_url())
    states = client.get("/health").get_json()["engine_statuses"]
    assert (states["tts"], states["llm"], states["diarization"]) == ("ERROR", "ERROR", "NOT_AVAILABLE")
    dubs.forget_probes()
    with FakeServer() as server:
        app.config.update(TTS_BASE_URL=server.url, OPENAI_BASE_URL=server.url)
        states = client.get("/health").get_json()["engine_statuses"]
    assert (states["tts"], states["llm"]) == ("READY", "READY")
    dubs.forget_probes()


def test_library_dub_is_a_sidecar_next_to_the_untouched_media(app, client, admin_headers, drain, stub_engine, tmp_path):
    """A webhook with dub on library video writes <basename>.en.dub.m4a beside it; the video is unchanged."""
    root = tmp_path / "library"
    root.mkdir()
    app.config["MEDIA_ROOTS"] = str(root)
    video = make_video(AUDIO / "jfk.flac", root / "Movie (2020).mp4")
    before = video.read_bytes()
    response = client.post("/webhook", headers=admin_headers, json={"path": str(video), "dub": "en"})
    assert response.status_code == 200, response.get_json()
    drain()
    job = Job.get_by_id(response.get_json()["task_id"])
    assert job.status == "completed", job.error
    sidecar = root / "Movie (2020).en.dub.m4a"
    assert [s["codec_type"] for s in ffprobe_streams(sidecar)] == ["audio"]
    assert (root / "Movie (2020).en.srt").exists() and video.read_bytes() == before


# ---------------------------------------------------------------------- dashboard


def test_dashboard_offers_english_dubs_offline_and_every_language_with_a_chat_model(app):
    """Offline the Dub choice is English only; with OPENAI_BASE_URL every language."""
    page = app.test_client()
    assert page.post("/auth/login", json={"username": "admin", "password": ADMIN_PASSWORD}).status_code == 200
    html = page.get("/").get_data(as_text=True)
    assert 'id="opt-dub"' in html and '<option value="en">English (spoken track)</option>' in html
    assert '<option value="fr">French (spoken track)</option>' not in html
    app.config["OPENAI_BASE_URL"] = "http://127.0.0.1:9/v1"
    assert '<option value="fr">French (spoken track)</option>' in page.get("/").get_data(as_text=True)


def test_job_page_plays_and_downloads_the_dub(app, client, admin_headers, drain, stub_engine, tmp_path):
    """A finished dub job: an audio player and a download of <name>.en.dub.m4a; a job without a dub has neither."""
    page = app.test_client()
    assert page.post("/auth/login", json={"username": "admin", "password": ADMIN_PASSWORD}).status_code == 200
    video = make_video(AUDIO / "jfk.flac", tmp_path / "talk.mp4")
    dubbed = job_of(post_clip(client, admin_headers, video, dub="en"))
    plain = job_of(post_clip(client, admin_headers, video))
    drain()
    html = page.get(f"/ui/jobs/{dubbed.id}").get_data(as_text=True)
    assert f'src="/ui/jobs/{dubbed.id}/dub"' in html and 'id="dub-download"' in html
    played = page.get(f"/ui/jobs/{dubbed.id}/dub", headers={"Range": "bytes=0-99"})
    assert played.status_code == 206 and played.mimetype == "audio/mp4"
    saved = page.get(f"/ui/jobs/{dubbed.id}/dub?download=1")
    assert saved.status_code == 200 and "talk.en.dub.m4a" in saved.headers["Content-Disposition"]
    assert "dub-player" not in page.get(f"/ui/jobs/{plain.id}").get_data(as_text=True)
    assert_error(page.get(f"/ui/jobs/{plain.id}/dub"), 404)
    assert_error(app.test_client().get(f"/ui/jobs/{dubbed.id}/dub"), 401, "UNAUTHORIZED")  # signed out


def test_a_dub_with_nothing_to_say_completes_with_the_original_sound(app, client, admin_headers, drain, stub_engine):
    """Every translated segment empty: nothing is spoken, and the job still ends with its (silent) dub track."""
    app.config.update(OPENAI_MODEL="local")
    with FakeServer(default="") as server:
        app.config["OPENAI_BASE_URL"] = server.url
        video = make_video(AUDIO / "jfk.flac", Path(app.config["DATA_DIR"]) / "quiet.mkv")
        job = job_of(post_clip(client, admin_headers, video, dub="de"))
        drain()
    job = Job.get_by_id(job.id)
    assert job.status == "completed", job.error
    assert job.stages["fit"]["segments"] == 0 and job.stages["fit"]["skipped"] == len(server.requests)
    out = Path(app.config["DATA_DIR"]) / job.stages["mux"]["output"]
    assert out.suffix == ".mkv"
    audio = [s for s in ffprobe_streams(out) if s["codec_type"] == "audio"]
    assert len(audio) == 2 and audio[1]["tags"]["title"] == "German (dub)"


def test_library_dub_with_mux_library_is_a_muxed_copy(app, client, admin_headers, drain, stub_engine, tmp_path):
    """WT_DUB_MUX_LIBRARY=true: no dub sidecar; /download gives the video with the original audio and the dub."""
    root = tmp_path / "library"
    root.mkdir()
    app.config.update(MEDIA_ROOTS=str(root), DUB_MUX_LIBRARY=True)
    video = make_video(AUDIO / "jfk.flac", root / "clip.mp4")
    before = video.read_bytes()
    response = client.post("/webhook", headers=admin_headers, json={"path": str(video), "dub": True})
    assert response.status_code == 200, response.get_json()
    drain()
    task = response.get_json()["task_id"]
    assert Job.get_by_id(task).status == "completed"
    assert not (root / "clip.en.dub.m4a").exists() and video.read_bytes() == before
    download = client.get(f"/download/{task}", headers=admin_headers)
    assert download.status_code == 200
    copy = tmp_path / "copy.mp4"
    copy.write_bytes(download.data)
    assert [s["codec_type"] for s in ffprobe_streams(copy)].count("audio") == 2


def test_purged_dub_is_made_again_by_a_retry(app, client, admin_headers, drain, stub_engine, tmp_path):
    """Purge clears every dub stage (clips, stem, mix); Retry runs them all again and the dub is back."""
    video = make_video(AUDIO / "jfk.flac", tmp_path / "talk.mkv")
    job = job_of(post_clip(client, admin_headers, video, dub="en"))
    drain()
    assert client.post(f"/purge/{job.id}", headers=admin_headers).status_code == 200
    cache = Path(app.config["DATA_DIR"]) / "cache" / job.id
    assert not cache.exists() and client.get(f"/download/{job.id}", headers=admin_headers).status_code == 404
    assert client.post(f"/retry/{job.id}", headers=admin_headers).status_code == 200
    drain()
    job = Job.get_by_id(job.id)
    assert job.status == "completed", job.error
    assert all(job.stages[name]["status"] == "done" for name in ("translate", "synthesize", "fit", "mix", "mux"))
    assert (cache / "voice.wav").exists() and (cache / "dub.m4a").exists() and any((cache / "clips").iterdir())


def test_repeated_chat_model_outages_open_the_breaker(app, client, admin_headers, drain, stub_engine, tmp_path):
    """After BREAKER_FAIL_MAX failed translations the chat model is left alone: the stage says when to retry."""
    analysis.reset_breaker()
    app.config.update(OPENAI_BASE_URL=unused_url(), OPENAI_MODEL="local")
    video = make_video(AUDIO / "jfk.flac", tmp_path / "jfk.mp4")
    job = job_of(post_clip(client, admin_headers, video, dub="de"))
    errors = []
    for _ in range(analysis.BREAKER_FAIL_MAX + 1):
        drain()
        errors.append(Job.get_by_id(job.id).error)
        client.post(f"/api/jobs/{job.id}/restart", headers=admin_headers)
    assert all("could not be reached" in e for e in errors[: analysis.BREAKER_FAIL_MAX - 1])
    assert "failed repeatedly; retry in" in errors[-1]  # the failure that trips it says so too
    analysis.reset_breaker()
