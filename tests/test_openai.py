"""OpenAI-compatible API: form validation, timeouts and the official client end to end."""

from __future__ import annotations

import io

import pytest

from tests.helpers import AUDIO, ffmpeg, reference, wer

ERROR_KEYS = {"detail", "error_code", "timestamp", "request_id"}


def post_audio(client, headers, path: str = "/v1/audio/transcriptions", **form):
    """POST jfk as OpenAI's multipart form."""
    data = {"file": (io.BytesIO((AUDIO / "jfk.flac").read_bytes()), "jfk.flac"), "model": "whisper-1", **form}
    return client.post(path, headers=headers, data=data)


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("response_format", "docx"),
        ("temperature", "2"),
        ("temperature", "hot"),
        ("timestamp_granularities[]", "char"),
        ("model", "gpt-9"),
    ],
)
def test_bad_form_fields_are_400_with_both_error_shapes(client, admin_headers, field, value):
    """The standard keys plus OpenAI's ``error.message``."""
    response = post_audio(client, admin_headers, **{field: value})
    assert response.status_code == 400
    body = response.get_json()
    assert set(body) >= ERROR_KEYS and body["error"]["message"] == body["detail"]


def test_request_without_credentials_is_401(client):
    """An API key or token is required."""
    assert post_audio(client, {}).status_code == 401


def test_timeout_answers_504_and_the_job_keeps_going(app, client, admin_headers):
    """With no worker the wait runs out; the job is still queued and named in the answer."""
    app.config["OPENAI_TIMEOUT_SECONDS"] = 0.3
    response = post_audio(client, admin_headers)
    assert response.status_code == 504
    job_id = response.headers["X-Job-ID"]
    assert job_id in response.get_json()["detail"]
    assert client.get(f"/api/jobs/{job_id}", headers=admin_headers).get_json()["status"] == "queued"


def test_verbose_json_with_word_granularity_returns_words(client, admin_headers, stub_engine, background_worker):
    """Word timestamps are asked of the engine and returned."""
    response = post_audio(
        client, admin_headers, response_format="verbose_json", **{"timestamp_granularities[]": ["word", "segment"]}
    )
    assert response.status_code == 200, response.get_json()
    body = response.get_json()
    assert body["task"] == "transcribe" and body["duration"] == 11.0 and len(body["segments"]) == 11
    assert body["words"][0] == {"word": "word0", "start": 0.0, "end": 0.5}
    assert stub_engine.calls[-1]["words"] is True


def test_text_srt_and_vtt_formats_are_plain_bodies(client, admin_headers, stub_engine, background_worker):
    """Non-JSON formats come back as text with their own content types."""
    for fmt, start in [("text", "word0"), ("srt", "1\n00:00:00,000"), ("vtt", "WEBVTT")]:
        response = post_audio(client, admin_headers, response_format=fmt)
        assert response.status_code == 200 and response.get_data(as_text=True).startswith(start)


def test_translation_route_sets_the_translate_task(client, admin_headers, stub_engine, background_worker):
    """Translations run as ordinary jobs with task=translate."""
    response = post_audio(client, admin_headers, path="/v1/audio/translations")
    assert response.status_code == 200 and "text" in response.get_json()
    assert stub_engine.calls[-1]["translate"] is True
    jobs = client.get("/api/jobs/", headers=admin_headers).get_json()["jobs"]
    assert jobs[0]["task"] == "translate"


def test_models_lists_installed_models(client, admin_headers):
    """``/v1/models`` is OpenAI's list object."""
    body = client.get("/v1/models", headers=admin_headers).get_json()
    assert body["object"] == "list" and "tiny.en" in {m["id"] for m in body["data"]}


# ------------------------------------------------------------- the real client


@pytest.fixture(scope="module")
def openai_client(live_server):
    """The official ``openai`` package, authenticated with an API key of the admin."""
    from openai import OpenAI

    response = live_server.post("/api/api-keys/", json={"name": "openai", "permissions": ["jobs:read", "jobs:create"]})
    assert response.status_code == 201, response.text
    return OpenAI(base_url=live_server.url + "/v1", api_key=response.json()["api_key"], max_retries=0)


@pytest.mark.e2e
def test_official_client_transcribes_jfk_as_json(openai_client):
    """json → an object with text within 10 % WER."""
    with open(AUDIO / "jfk.flac", "rb") as f:
        result = openai_client.audio.transcriptions.create(model="whisper-1", file=f, language="en")
    assert wer(reference("jfk.flac"), result.text) <= 0.10


@pytest.mark.e2e
def test_official_client_gets_valid_srt_and_vtt(openai_client):
    """srt and vtt come back as text with well-formed cues."""
    with open(AUDIO / "jfk.flac", "rb") as f:
        srt = openai_client.audio.transcriptions.create(model="tiny.en", file=f, response_format="srt")
    with open(AUDIO / "jfk.flac", "rb") as f:
        vtt = openai_client.audio.transcriptions.create(model="tiny.en", file=f, response_format="vtt")
    cues = [c.splitlines() for c in srt.strip().split("\n\n")]
    assert cues[0][0] == "1" and " --> " in cues[0][1] and "," in cues[0][1]
    assert vtt.startswith("WEBVTT") and "." in vtt.split("\n")[2]
    assert wer(reference("jfk.flac"), " ".join(" ".join(c[2:]) for c in cues)) <= 0.10


@pytest.mark.e2e
def test_official_client_verbose_json_has_real_word_timestamps(openai_client):
    """Words come from whisper.cpp's token timestamps and lie inside the clip."""
    with open(AUDIO / "jfk.flac", "rb") as f:
        result = openai_client.audio.transcriptions.create(
            model="tiny.en", file=f, response_format="verbose_json", timestamp_granularities=["word", "segment"]
        )
    words = result.words
    assert len(words) >= 18
    assert all(0 <= w.start <= w.end <= 11.5 for w in words)
    assert [w.start for w in words] == sorted(w.start for w in words)
    assert wer(reference("jfk.flac"), " ".join(w.word for w in words)) <= 0.10


@pytest.mark.e2e
@pytest.mark.filterwarnings("ignore::DeprecationWarning")  # the client marks translations deprecated
def test_official_client_translates_german(openai_client, tmp_path):
    """translations with the multilingual base model give English."""
    german = tmp_path / "german.wav"
    ffmpeg("-ss", "34", "-i", str(AUDIO / "multilingual.mp3"), "-t", "20", str(german))
    with open(german, "rb") as f:
        result = openai_client.audio.translations.create(model="base", file=f)
    words = set(result.text.lower().replace(",", " ").replace(".", " ").split())
    assert words & {"software", "permission", "person", "copy", "rights", "documentation", "the"}
