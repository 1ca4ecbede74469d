"""The VOXIS API end to end: upload, process, status, export, jobs, health, rate limit.

Jobs run through the real pipeline and ffmpeg (``drain``); transcription uses the stub engine,
except for one test with whisper.cpp judged by word error rate.
"""

from __future__ import annotations

import io
from pathlib import Path

import pytest

from tests.conftest import login
from tests.helpers import AUDIO, ffmpeg, make_video, reference, wer
from tests.test_dsp import levels, make_noisy_speech, probe

GOOD_BODY = {
    "denoise_strength": 80,
    "high_precision": True,
    "upscale_factor": 1,
    "target_sample_rate": 44100,
    "target_channels": 2,
    "noise_profile": "auto",
}


@pytest.fixture(scope="module")
def noisy(tmp_path_factory) -> Path:
    """Speech under white noise (48 kHz mono WAV), with 2 s of noise only first."""
    return make_noisy_speech(tmp_path_factory.mktemp("voxis"))[1]


def upload(client, headers, path: Path, name: str | None = None, **kw):
    """POST /api/upload with one file."""
    data = {"file": (io.BytesIO(path.read_bytes()), name or path.name)}
    return client.post("/api/upload", headers=headers, data=data, **kw)


def upload_id(client, headers, path: Path) -> str:
    """Upload and return the file_id."""
    response = upload(client, headers, path)
    assert response.status_code == 200, response.get_json()
    return response.get_json()["file_id"]


def process(client, headers, **body):
    """POST /api/process."""
    return client.post("/api/process", headers=headers, json=body)


def assert_error(response, status: int, *words: str) -> dict:
    """An error in the standard body whose detail mentions ``words``."""
    assert response.status_code == status, response.get_data(as_text=True)
    body = response.get_json()
    assert set(body) == {"detail", "error_code", "timestamp", "request_id"}
    for word in words:
        assert word in body["detail"], body
    return body


def processed(client, headers, drain, path: Path, **body) -> str:
    """Upload, process with ``body`` and run the job; return its id."""
    file_id = upload_id(client, headers, path)
    response = process(client, headers, file_id=file_id, **body)
    assert response.status_code == 200, response.get_json()
    drain()
    return response.get_json()["job_id"]


def export(client, headers, job_id: str, tmp_path: Path, fmt: str, quality: str | None = None) -> Path:
    """Download an export into a file and return its path."""
    query = f"?format={fmt}" + (f"&quality={quality}" if quality else "")
    response = client.get(f"/api/export/{job_id}{query}", headers=headers)
    assert response.status_code == 200, response.get_data(as_text=True)[:300]
    out = tmp_path / f"{job_id}-{quality or 'x'}.{fmt}"
    out.write_bytes(response.data)
    return out


# ------------------------------------------------------------------- the round trip


def test_upload_process_status_and_export_in_wav_mp3_and_flac(client, admin_headers, drain, noisy, tmp_path):
    """The VOXIS document's flow; the exports have the target rate and channels, and the noise is measurably lower."""
    response = upload(client, admin_headers, noisy, "meeting.wav")
    body = response.get_json()
    assert response.status_code == 200 and body["success"] is True
    assert body["filename"] == "meeting.wav" and body["size"] == noisy.stat().st_size
    assert body["uploaded_at"].endswith("Z") and len(body["file_id"]) == 36

    started = process(client, admin_headers, file_id=body["file_id"], **GOOD_BODY)
    assert started.status_code == 200
    job_id = started.get_json()["job_id"]
    assert started.get_json() == {
        "success": True,
        "job_id": job_id,
        "status": "queued",
        "message": "Processing started",
    }

    queued = client.get(f"/api/status/{job_id}", headers=admin_headers).get_json()
    assert queued["status"] == "queued" and queued["current_stage"] == "upload" and queued["progress"] == 0
    assert queued["stages"] == {name: {"progress": 0, "updated_at": None} for name in ("ingest", "denoise", "resample")}

    drain()
    done = client.get(f"/api/status/{job_id}", headers=admin_headers).get_json()
    assert set(done) == {"job_id", "status", "current_stage", "progress", "stages"}
    assert (done["status"], done["current_stage"], done["progress"]) == ("complete", "resample", 100)
    assert list(done["stages"]) == ["ingest", "denoise", "resample"]
    assert all(s["progress"] == 100 and s["updated_at"].endswith("Z") for s in done["stages"].values())

    wav = export(client, admin_headers, job_id, tmp_path, "wav")
    flac = export(client, admin_headers, job_id, tmp_path, "flac")
    for path, codec in ((wav, "pcm_s24le"), (flac, "flac")):
        info = probe(path)
        assert (int(info["sample_rate"]), info["channels"], info["codec_name"]) == (44100, 2, codec)
    noise_before, speech_before = levels(noisy)
    noise_after, speech_after = levels(flac)
    print(
        f"\nexported flac: noise {noise_before:.1f} -> {noise_after:.1f} dBFS, "
        f"speech {speech_before:.1f} -> {speech_after:.1f} dBFS"
    )
    assert noise_before - noise_after >= 6 and speech_before - speech_after <= 3

    for quality, kbps in (("low", 128), ("medium", 192), ("high", 320)):
        info = probe(export(client, admin_headers, job_id, tmp_path, "mp3", quality))
        assert (info["codec_name"], int(info["sample_rate"]), info["channels"]) == ("mp3", 44100, 2)
        assert int(info["format"]["bit_rate"]) == pytest.approx(kbps * 1000, rel=0.10)


def test_export_headers_name_the_file_and_type(client, admin_headers, drain, noisy):
    """Attachment named after the upload; the VOXIS document's content types."""
    job_id = processed(client, admin_headers, drain, noisy, denoise_strength=10)
    for fmt, mime in (("wav", "audio/wav"), ("mp3", "audio/mpeg"), ("flac", "audio/flac")):
        response = client.get(f"/api/export/{job_id}?format={fmt}", headers=admin_headers)
        assert response.status_code == 200 and response.mimetype == mime
        assert f"filename=noisy_cleaned.{fmt}" in response.headers["Content-Disposition"]


def test_96_khz_mono_exports_flac_at_96_khz_and_mp3_at_48(client, admin_headers, drain, noisy, tmp_path):
    """MPEG audio stops at 48 kHz, so the mp3 of a 96 kHz job is resampled; wav and flac keep 96 kHz."""
    job_id = processed(
        client,
        admin_headers,
        drain,
        noisy,
        denoise_strength=50,
        target_sample_rate=96000,
        target_channels=1,
        upscale_factor=2,
        noise_profile="gentle",
    )
    for fmt, rate in (("wav", 96000), ("flac", 96000), ("mp3", 48000)):
        info = probe(export(client, admin_headers, job_id, tmp_path, fmt))
        assert (int(info["sample_rate"]), info["channels"]) == (rate, 1)


def test_a_file_can_be_processed_twice_with_different_settings(client, admin_headers, drain, noisy, tmp_path):
    """The upload stays usable: each job takes its own link to it."""
    file_id = upload_id(client, admin_headers, noisy)
    ids = [process(client, admin_headers, file_id=file_id, target_channels=c).get_json()["job_id"] for c in (1, 2)]
    drain()
    channels = [probe(export(client, admin_headers, j, tmp_path, "wav"))["channels"] for j in ids]
    assert channels == [1, 2]


# ------------------------------------------------------------------------- uploads


def test_each_voxis_audio_type_is_accepted(client, admin_headers, noisy, tmp_path):
    """wav, mp3, flac, ogg and m4a."""
    for ext, codec in (("mp3", "libmp3lame"), ("flac", "flac"), ("ogg", "libvorbis"), ("m4a", "aac")):
        path = tmp_path / f"clip.{ext}"
        ffmpeg("-i", str(noisy), "-t", "2", "-c:a", codec, str(path))
        response = upload(client, admin_headers, path)
        assert response.status_code == 200, (ext, response.get_json())
    assert upload(client, admin_headers, noisy).status_code == 200


def test_wrong_types_are_400_by_extension_and_by_content(client, admin_headers, noisy, tmp_path):
    """A .txt name, text inside a .wav, and a video inside a .m4a are all refused."""
    assert_error(upload(client, admin_headers, noisy, "notes.txt"), 400, "wav, mp3, flac, ogg, m4a")
    text = tmp_path / "fake.wav"
    text.write_text("this is not audio at all\n" * 50)
    assert_error(upload(client, admin_headers, text), 400, "not audio")
    video = make_video(AUDIO / "jfk.flac", tmp_path / "video.mp4")
    assert_error(upload(client, admin_headers, video, "video.m4a"), 400, "video")
    leftovers = [
        p
        for p in Path(client.application.config["DATA_DIR"]).rglob("*")
        if p.is_file() and p.parent.name in ("tmp", "voxis")
    ]
    assert leftovers == []  # refused uploads leave neither a stored file nor a temp file


def test_oversized_upload_is_413(app, client, admin_headers, noisy):
    """The request limit (MAX_CONTENT_LENGTH) answers 413 in the standard body."""
    app.config["MAX_CONTENT_LENGTH"] = 50_000
    assert_error(upload(client, admin_headers, noisy), 413, "upload limit")


def test_missing_file_and_anonymous_upload(client, admin_headers):
    """No file is 400; no credentials is 401."""
    assert_error(client.post("/api/upload", headers=admin_headers, data={}), 400, "file")
    anonymous = client.application.test_client(use_cookies=False)
    assert_error(anonymous.post("/api/upload", data={"file": (io.BytesIO(b"x"), "a.wav")}), 401)


# ------------------------------------------------------------------------- process


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("denoise_strength", 101),
        ("denoise_strength", -1),
        ("denoise_strength", "80"),
        ("denoise_strength", True),
        ("high_precision", "yes"),
        ("upscale_factor", 3),
        ("upscale_factor", 8),
        ("target_sample_rate", 22050),
        ("target_sample_rate", "48000"),
        ("target_channels", 6),
        ("target_channels", 0),
        ("noise_profile", "extreme"),
        ("noise_profile", 1),
        ("transcribe", "true"),
    ],
)
def test_each_bad_process_field_is_400_naming_it(client, admin_headers, noisy, field, value):
    """The detail starts with the field's name; nothing is queued."""
    file_id = upload_id(client, admin_headers, noisy)
    body = assert_error(process(client, admin_headers, **{**GOOD_BODY, "file_id": file_id, field: value}), 400)
    assert body["detail"].startswith(field) and body["error_code"] == "INVALID_PARAMETER"
    assert client.get("/api/jobs", headers=admin_headers).get_json()["total"] == 0


def test_process_needs_a_visible_file_and_a_json_object(client, admin_headers, noisy):
    """Missing file_id 400, unknown 404, someone else's 404, malformed JSON 400."""
    assert_error(process(client, admin_headers, **GOOD_BODY), 400, "file_id")
    assert_error(process(client, admin_headers, file_id="0b3c0c9e-0000-4000-8000-000000000000"), 404, "File")
    file_id = upload_id(client, admin_headers, noisy)
    assert (
        client.post(
            "/admin/users", headers=admin_headers, json={"username": "bob", "password": "bob-password-123"}
        ).status_code
        == 201
    )
    bob = login(client, "bob", "bob-password-123")
    assert_error(process(client, bob, file_id=file_id), 404, "File")
    broken = client.post(
        "/api/process", headers={**admin_headers, "Content-Type": "application/json"}, data=b'{"file_id": '
    )
    assert broken.status_code == 400 and broken.get_json()["error_code"] == "INVALID_JSON"


def test_status_and_export_of_unknown_or_unfinished_jobs(client, admin_headers, noisy):
    """Unknown 404; not yet processed 409; a transcription job has no cleaned audio (404); bad format 400."""
    assert_error(client.get("/api/status/nope", headers=admin_headers), 404, "Job")
    assert_error(client.get("/api/export/nope", headers=admin_headers), 404, "Job")
    job_id = process(client, admin_headers, file_id=upload_id(client, admin_headers, noisy)).get_json()["job_id"]
    assert_error(client.get(f"/api/export/{job_id}", headers=admin_headers), 409, "not ready")
    assert_error(client.get(f"/api/export/{job_id}?format=ogg", headers=admin_headers), 400, "format")
    assert_error(client.get(f"/api/export/{job_id}?format=mp3&quality=max", headers=admin_headers), 400, "quality")
    canonical = client.post(
        "/api/jobs/", headers=admin_headers, data={"file": (io.BytesIO(noisy.read_bytes()), "plain.wav")}
    ).get_json()["job_id"]
    assert_error(client.get(f"/api/export/{canonical}", headers=admin_headers), 404, "no cleaned audio")


def test_a_failed_job_reports_error_with_the_failed_stage(client, admin_headers, drain, noisy, monkeypatch):
    """failed → "error"; current_stage names the stage that failed."""
    from workers import stages

    real = stages.STAGES["denoise"]

    def broken(ctx):
        raise RuntimeError("denoiser on fire")

    monkeypatch.setitem(stages.STAGES, "denoise", stages.Stage("denoise", "denoising", real.weight, broken))
    job_id = processed(client, admin_headers, drain, noisy)
    status = client.get(f"/api/status/{job_id}", headers=admin_headers).get_json()
    assert (status["status"], status["current_stage"]) == ("error", "denoise")
    assert "denoiser on fire" in status["error"] and status["stages"]["ingest"]["progress"] == 100


# ---------------------------------------------------------------- transcription


def test_transcribe_true_sends_the_cleaned_audio_on_to_transcription(client, admin_headers, drain, noisy, stub_engine):
    """One call: cleanup stages, then decode/transcribe/finalize on cleaned.wav; the transcript is in the status."""
    job_id = processed(
        client, admin_headers, drain, noisy, denoise_strength=60, target_sample_rate=96000, transcribe=True
    )
    status = client.get(f"/api/status/{job_id}", headers=admin_headers).get_json()
    assert status["status"] == "complete"
    assert list(status["stages"]) == ["ingest", "denoise", "resample", "decode", "transcribe", "finalize"]
    assert status["transcript"].startswith("word0")
    job = client.get(f"/api/jobs/{job_id}", headers=admin_headers).get_json()
    assert job["kind"] == "cleanup" and job["transcript"]["segments"]
    with client.application.app_context():
        from app.models import Job

        assert Path(Job.get_by_id(job_id).stages["decode"]["output"]).name == "audio.s16"
    assert len(stub_engine.calls) == 1


@pytest.mark.slow
def test_cleaned_jfk_transcribes_within_ten_percent_wer_with_whisper_cpp(client, admin_headers, drain):
    """The real engine on the cleaned audio: the cleanup must not hurt recognition."""
    job_id = processed(
        client,
        admin_headers,
        drain,
        AUDIO / "jfk.flac",
        denoise_strength=40,
        transcribe=True,
        target_sample_rate=48000,
        target_channels=1,
    )
    status = client.get(f"/api/status/{job_id}", headers=admin_headers).get_json()
    assert status["status"] == "complete", status
    print(f"\njfk after cleanup: {status['transcript']!r}")
    assert wer(reference("jfk.flac"), status["transcript"]) <= 0.10


# ------------------------------------------------------------------ jobs, health


def test_job_list_without_slash_is_voxis_and_with_slash_is_canonical(client, admin_headers, drain, noisy):
    """Both answer 200 directly (no redirect either way); limit and status filter the VOXIS list."""
    ids = [processed(client, admin_headers, drain, noisy, denoise_strength=20) for _ in range(2)]
    process(client, admin_headers, file_id=upload_id(client, admin_headers, noisy))  # stays queued
    voxis = client.get("/api/jobs", headers=admin_headers)
    canonical = client.get("/api/jobs/", headers=admin_headers)
    assert voxis.status_code == 200 and canonical.status_code == 200
    assert "Location" not in voxis.headers and "Location" not in canonical.headers
    assert set(canonical.get_json()) == {"jobs", "total", "limit", "offset"}
    body = voxis.get_json()
    assert body["total"] == 3 and body["limit"] == 50
    assert body["jobs"][0]["status"] == "queued" and [j["job_id"] for j in body["jobs"][1:]] == ids[::-1]
    assert body["jobs"][1]["settings"]["denoise_strength"] == 20 and body["jobs"][1]["filename"] == "noisy.wav"
    complete = client.get("/api/jobs?status=complete&limit=1", headers=admin_headers).get_json()
    assert complete["total"] == 2 and len(complete["jobs"]) == 1 and complete["jobs"][0]["status"] == "complete"
    assert client.get("/api/jobs?status=error", headers=admin_headers).get_json()["total"] == 0
    assert_error(client.get("/api/jobs?status=done", headers=admin_headers), 400, "status")
    assert_error(client.get("/api/jobs?limit=0", headers=admin_headers), 400, "limit")


def test_health_reports_service_jobs_and_disk(client):
    """Open to anyone; the VOXIS document's shape."""
    response = client.get("/api/health")
    body = response.get_json()
    assert response.status_code == 200
    assert body["status"] == "healthy" and body["service"] and body["version"] == "1.0.5"
    assert body["active_jobs"] == 0
    assert body["disk"]["free_gb"] > 0 and 0 <= body["disk"]["percent_used"] <= 100


# ---------------------------------------------------------------------- rate limit


def test_voxis_routes_share_30_requests_per_minute_per_address(app):
    """The 31st request from one address is 429 in the standard body; another address is unaffected."""
    http = app.test_client(use_cookies=False)
    token = http.post(
        "/auth/login",
        json={"username": "admin", "password": "admin-password-123"},
        environ_base={"REMOTE_ADDR": "10.0.0.9"},
    ).get_json()["access_token"]
    headers = {"Authorization": f"Bearer {token}"}
    for i in range(30):
        path = ("/api/health", "/api/jobs", "/api/status/nope")[i % 3]
        response = http.get(path, headers=headers, environ_base={"REMOTE_ADDR": "10.0.0.1"})
        assert response.status_code in (200, 404), (i, response.get_json())
    limited = http.get("/api/jobs", headers=headers, environ_base={"REMOTE_ADDR": "10.0.0.1"})
    body = assert_error(limited, 429)
    assert body["error_code"] == "RATE_LIMITED" and body["request_id"] == limited.headers["X-Request-ID"]
    assert 1 <= int(limited.headers["Retry-After"]) <= 60
    assert http.get("/api/jobs", headers=headers, environ_base={"REMOTE_ADDR": "10.0.0.2"}).status_code == 200
    assert http.get("/api/jobs/", headers=headers, environ_base={"REMOTE_ADDR": "10.0.0.1"}).status_code == 200


def test_voxis_responses_report_the_voxis_limit_in_the_rate_limit_headers(app, admin_headers):
    """X-RateLimit-* describe the shared VOXIS limit (30 per minute), not the app-wide user or address limit."""
    http = app.test_client(use_cookies=False)
    first = http.get("/api/jobs", headers=admin_headers)
    assert first.headers.getlist("X-RateLimit-Limit") == ["30"] and first.headers["X-RateLimit-Remaining"] == "29"
    anonymous = http.get("/api/health")  # the same bucket: one per address for every VOXIS route
    assert (anonymous.headers["X-RateLimit-Limit"], anonymous.headers["X-RateLimit-Remaining"]) == ("30", "28")
    assert int(anonymous.headers["X-RateLimit-Reset"]) >= int(first.headers["X-RateLimit-Reset"])
    assert "Retry-After" not in anonymous.headers
    assert http.get("/api/jobs/", headers=admin_headers).headers["X-RateLimit-Limit"] == "300"  # canonical: the user's
    app.config["RATELIMIT_VOXIS"] = "3 per minute"  # another limit, so a fresh bucket
    remaining = [http.get("/api/jobs", headers=admin_headers).headers["X-RateLimit-Remaining"] for _ in range(3)]
    assert remaining == ["2", "1", "0"]
    limited = http.get("/api/jobs", headers=admin_headers)
    assert limited.status_code == 429 and limited.headers["X-RateLimit-Limit"] == "3"


def test_the_voxis_limit_is_a_setting(app):
    """RATELIMIT_VOXIS is read per request."""
    app.config["RATELIMIT_VOXIS"] = "2 per minute"
    http = app.test_client()
    assert [http.get("/api/health").status_code for _ in range(3)] == [200, 200, 429]


def test_cleanup_only_jobs_run_while_the_engine_is_paused(app, client, admin_headers, drain, noisy):
    """The engine breaker pauses transcription, not audio cleanup; a cleanup that transcribes is refused."""
    from app.services.breaker import configure_breaker, engine_breaker

    with app.app_context():
        engine_breaker.open()
    try:
        file_id = upload_id(client, admin_headers, noisy)
        assert_error(process(client, admin_headers, file_id=file_id, transcribe=True), 503, "paused")
        response = process(client, admin_headers, file_id=file_id)
        assert response.status_code == 200, response.get_json()
        drain()
        status = client.get(f"/api/status/{response.get_json()['job_id']}", headers=admin_headers).get_json()
        assert status["status"] == "complete"  # the VOXIS dialect's word
    finally:
        with app.app_context():
            engine_breaker.close()
        configure_breaker(app.config)
