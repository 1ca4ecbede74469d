"""whisper-asr-webservice dialect (Bazarr's Whisper provider): /asr, /detect-language and /status.

Bazarr runs ``ffmpeg -i video -f s16le -ac 1 -ar 16000 -`` itself and posts the raw PCM as the multipart field
``audio_file`` with ``encode=false``; it sends no credentials and saves the body of any 200 as the subtitle.
"""

from __future__ import annotations

import base64
import functools
import subprocess
import threading
from importlib import metadata
from pathlib import Path

import pytest
import requests

from tests.conftest import ADMIN_PASSWORD, build_app
from tests.helpers import AUDIO, MODELS_DIR, assert_error, reference, wer

BASIC = {"Authorization": "Basic " + base64.b64encode(f"admin:{ADMIN_PASSWORD}".encode()).decode()}
PCM_RATE = 32000  # bytes per second of s16le mono 16 kHz


@functools.cache
def pcm(clip: str = "jfk.flac", *before_input: str) -> bytes:
    """A clip as Bazarr sends it: headerless s16le, mono, 16 kHz."""
    return subprocess.run(
        [
            "ffmpeg",
            "-nostdin",
            "-v",
            "error",
            *before_input,
            "-i",
            str(AUDIO / clip),
            "-f",
            "s16le",
            "-ac",
            "1",
            "-ar",
            "16000",
            "-",
        ],
        capture_output=True,
        check=True,
        timeout=120,
    ).stdout


def multipart(payload: bytes, name: str, field: str = "audio_file") -> tuple[bytes, str]:
    """A multipart body with one file, as requests sends it (the test client's encoder leaves temp files open)."""
    boundary = "asr-test-boundary"
    head = (
        f'--{boundary}\r\nContent-Disposition: form-data; name="{field}"; filename="{name}"\r\n'
        "Content-Type: application/octet-stream\r\n\r\n"
    )
    return head.encode() + payload + f"\r\n--{boundary}--\r\n".encode(), f"multipart/form-data; boundary={boundary}"


def post(
    client,
    path: str = "/asr",
    body: bytes | None = None,
    headers: dict | None = None,
    name: str = "audio_file",
    environ: dict | None = None,
    **params: str,
):
    """POST ``body`` (default: jfk as raw PCM) as multipart ``audio_file`` with query parameters."""
    params.setdefault("encode", "false")
    data, content_type = multipart(pcm() if body is None else body, name)
    return client.post(
        path,
        query_string=params,
        data=data,
        content_type=content_type,
        headers=BASIC if headers is None else headers,
        environ_base=environ or {},
    )


def job_rows() -> list:
    """Every job, oldest first."""
    from app.models import Job

    return list(Job.select().order_by(Job.created_at))


def parse_srt(text: str) -> list[tuple[str, str]]:
    """(timing line, text) per cue; asserts numbering and the timing format."""
    cues = []
    for number, block in enumerate(text.strip().split("\n\n"), start=1):
        lines = block.splitlines()
        assert lines[0] == str(number), block
        start, arrow, end = lines[1].partition(" --> ")
        assert arrow and len(start) == len(end) == 12 and start[8] == end[8] == ",", lines[1]
        cues.append((lines[1], " ".join(lines[2:])))
    return cues


# --------------------------------------------------------------------- answers


def test_raw_pcm_request_answers_srt_as_an_ordinary_listed_job(app, client, stub_engine, background_worker):
    """encode=false + output=srt: the SRT with its content type; the job is in the list, 11 s long, as a WAV."""
    response = post(client, output="srt", language="en", video_file="/tv/Show/Season 1/Show S01E01.mkv")
    assert response.status_code == 200, response.get_data(as_text=True)
    assert response.mimetype == "application/x-subrip"
    assert 'filename="Show S01E01.srt"' in response.headers["Content-Disposition"]
    cues = parse_srt(response.get_data(as_text=True))
    assert " ".join(text for _, text in cues) == " ".join(f"word{i}" for i in range(11))
    listed = client.get("/api/jobs/", headers=BASIC).get_json()
    assert listed["total"] == 1
    job = listed["jobs"][0]
    assert (job["job_id"], job["status"], job["duration"]) == (response.headers["X-Job-ID"], "completed", 11.0)
    assert job["filename"] == "Show S01E01.wav" and job["model"] == "tiny.en"
    assert stub_engine.calls[-1]["language"] == "en"


def test_a_video_name_in_any_script_gives_a_header_a_server_can_send(client, stub_engine, background_worker):
    """Response headers must be latin-1: the file name in Content-Disposition keeps only its ASCII letters."""
    response = post(client, output="vtt", language="en", video_file='/tv/Ünïcødé 日本 "quoted".mkv')
    assert response.status_code == 200
    header = response.headers["Content-Disposition"]
    header.encode("latin-1")
    assert header.startswith("attachment; filename=") and header.endswith('.vtt"')


@pytest.mark.parametrize(
    ("output", "mimetype", "start"),
    [
        ("txt", "text/plain", "word0\nword1"),
        ("vtt", "text/vtt", "WEBVTT"),
        ("srt", "application/x-subrip", "1\n"),
        ("tsv", "text/tab-separated-values", "start\tend\ttext\n0\t1000\tword0"),
        ("json", "application/json", "{"),
    ],
)
def test_every_output_has_its_own_content_type(client, stub_engine, background_worker, output, mimetype, start):
    """txt (the default), vtt, srt, tsv and json come from the export renderers."""
    response = post(client, output=output)
    assert response.status_code == 200 and response.mimetype == mimetype
    assert response.get_data(as_text=True).startswith(start)


def test_default_output_is_txt_and_encoded_media_is_accepted(client, stub_engine, background_worker):
    """encode=true (the default) takes any media file; no output means txt."""
    response = post(client, body=(AUDIO / "jfk.flac").read_bytes(), name="jfk.flac", encode="true")
    assert response.status_code == 200 and response.mimetype == "text/plain"
    assert response.get_data(as_text=True).splitlines()[:2] == ["word0", "word1"]


def test_subtitle_options_reach_the_export_renderer(client, stub_engine, background_worker):
    """max_line_width=0 keeps one cue per segment; highlight_words asks for word times and marks the words."""
    plain = parse_srt(post(client, output="srt", language="en", max_line_width="0").get_data(as_text=True))
    assert [text for _, text in plain] == [f"word{i}" for i in range(11)]
    narrow = parse_srt(
        post(client, output="srt", language="en", max_line_width="6", max_line_count="1").get_data(as_text=True)
    )
    assert all(len(text) <= 6 for _, text in narrow) and len(narrow) == 11
    karaoke = post(client, output="srt", language="en", highlight_words="true").get_data(as_text=True)
    assert stub_engine.calls[-1]["words"] is True and "<u>word1</u>" in karaoke
    assert len({job.id for job in job_rows()}) == 2  # the same audio and settings: the first two share a job


def test_json_output_carries_word_timestamps_when_asked(client, stub_engine, background_worker):
    """word_timestamps=true asks the engine for words; highlight_words implies them."""
    body = post(client, output="json", word_timestamps="true").get_json()
    assert body["segments"][0]["words"][0]["word"] == "word0" and stub_engine.calls[-1]["words"] is True


def test_translation_and_other_languages_run_on_a_multilingual_model(client, stub_engine, background_worker):
    """The default tiny.en cannot translate or hear German: those requests run on base; English stays on tiny.en."""
    for params in ({"task": "translate"}, {"language": "de"}, {"language": "en"}):
        response = post(client, **params)
        assert response.status_code == 200, response.get_json()
    models = [(job.task, job.language, job.model) for job in job_rows()]
    assert models == [("translate", None, "base"), ("transcribe", "de", "base"), ("transcribe", "en", "tiny.en")]
    assert stub_engine.calls[0]["translate"] is True


def test_status_is_open_and_names_the_version(client):
    """Bazarr's "Test connection": 200 and the appliance's version, without credentials."""
    response = client.get("/status")
    assert response.status_code == 200
    assert response.get_json() == {"version": metadata.version("whisper-transcriber")}


# ------------------------------------------------------------------ bad input


@pytest.mark.parametrize(
    ("body", "params", "status", "code"),
    [
        (b"\x01\x02\x03", {}, 400, "INVALID_PCM"),  # an odd byte count is not 16-bit samples
        (b"", {}, 400, "EMPTY_FILE"),
        (None, {"output": "docx"}, 400, "UNSUPPORTED_FORMAT"),
        (None, {"task": "summarize"}, 400, "INVALID_TASK"),
        (None, {"language": "x" * 5000}, 400, "INVALID_LANGUAGE"),
        (None, {"language": "klingon"}, 400, "INVALID_LANGUAGE"),
        (None, {"encode": "maybe"}, 400, "INVALID_PARAMETER"),
        (None, {"word_timestamps": "2"}, 400, "INVALID_PARAMETER"),
        (None, {"max_line_width": "-3"}, 400, "INVALID_PARAMETER"),
        (None, {"max_cue_seconds": "0.1"}, 400, "INVALID_PARAMETER"),
        (None, {"highlight_words": "sometimes"}, 400, "INVALID_PARAMETER"),
        (None, {"max_line_count": "lots"}, 400, "INVALID_PARAMETER"),
        (None, {"max_line_count": "²"}, 400, "INVALID_PARAMETER"),  # a digit to str.isdigit, not to int()
        (None, {"initial_prompt": "p" * 2001}, 400, "INVALID_PROMPT"),
        (None, {"video_file": "v" * 5000}, 400, "INVALID_PARAMETER"),
        (b"not a media file at all", {"encode": "true"}, 415, "UNSUPPORTED_MEDIA"),
    ],
)
def test_bad_input_is_a_standard_error_and_makes_no_job(app, client, body, params, status, code):
    """Never a 200 (Bazarr would save the error as a subtitle) and nothing queued; no upload left behind."""
    response = post(client, body=body, **params)
    assert_error(response, status, code)
    assert job_rows() == []
    data = Path(app.config["DATA_DIR"])
    assert list((data / "tmp").iterdir()) == [] and list((data / "uploads").iterdir()) == []


def test_missing_audio_file_field_is_400(client):
    """The multipart field is called audio_file."""
    data, content_type = multipart(pcm(), "x", field="file")
    assert_error(client.post("/asr", headers=BASIC, data=data, content_type=content_type), 400, "MISSING_FILE")
    assert_error(client.post("/detect-language", headers=BASIC), 400, "MISSING_FILE")


def test_raw_pcm_length_is_what_its_bytes_hold(app, client):
    """11 s of PCM against a 5 s WT_MAX_MEDIA_SECONDS: 413 before any job, from the byte count alone."""
    app.config["MAX_MEDIA_SECONDS"] = 5
    assert_error(post(client), 413, "MEDIA_TOO_LONG")
    app.config["MAX_MEDIA_SECONDS"] = 12
    app.config["ASR_TIMEOUT_SECONDS"] = 0.1
    assert post(client).status_code == 504
    assert [job.duration for job in job_rows()] == [len(pcm()) / PCM_RATE]


def test_body_over_the_upload_limit_is_413(app, client):
    """WT_MAX_CONTENT_LENGTH bounds the raw PCM like any upload."""
    app.config["MAX_CONTENT_LENGTH"] = 100_000
    assert_error(post(client), 413)
    assert job_rows() == []


def test_failed_job_answers_422_never_200(client, stub_engine, background_worker, monkeypatch):
    """A job that fails is an error status with the standard body, so Bazarr saves nothing."""
    from workers import audio

    def broken(self, samples, **kwargs):
        raise audio.MediaError("the audio is damaged")

    monkeypatch.setattr(stub_engine, "transcribe", broken)
    body = assert_error(post(client, output="srt"), 422, "PROCESSING_FAILED")
    assert "damaged" in body["detail"]


# ------------------------------------------------------------------ duplicates


def test_timeout_is_504_naming_the_job_and_a_repeat_is_answered_from_it(app, client, drain, stub_engine):
    """The job outlives the request; Bazarr's next identical request gets its transcript at once."""
    app.config["ASR_TIMEOUT_SECONDS"] = 0.1
    first = post(client, output="srt", language="en")
    body = assert_error(first, 504, "TIMEOUT")
    job_id = first.headers["X-Job-ID"]
    assert job_id in body["detail"]
    drain()
    again = post(client, output="txt", language="en")
    assert again.status_code == 200 and again.headers["X-Job-ID"] == job_id
    assert len(job_rows()) == 1 and len(stub_engine.calls) == 1


def test_identical_audio_joins_the_running_job_but_other_settings_do_not(app, client):
    """Same bytes and settings: one job. Another task, language or prompt: a job of its own."""
    app.config["ASR_TIMEOUT_SECONDS"] = 0.05
    ids = [
        post(client, **params).headers["X-Job-ID"]
        for params in (
            {"language": "en"},
            {"language": "en", "output": "srt"},
            {"language": "en", "initial_prompt": "Kennedy"},
            {"task": "translate", "language": "en"},
            {},
        )
    ]
    assert ids[0] == ids[1] and len(set(ids)) == 4
    assert len(job_rows()) == 4


def test_same_video_file_task_language_and_output_joins_even_with_other_audio(app, client):
    """Bazarr may extract a slightly different stream next time; the video, task, language and format decide."""
    app.config["ASR_TIMEOUT_SECONDS"] = 0.05
    video = {"video_file": "/movies/Film (2020)/Film.mkv", "language": "en", "output": "srt"}
    first = post(client, **video).headers["X-Job-ID"]
    assert post(client, body=pcm()[: PCM_RATE * 5], **video).headers["X-Job-ID"] == first
    assert post(client, body=pcm()[: PCM_RATE * 5], **{**video, "output": "vtt"}).headers["X-Job-ID"] != first
    assert len(job_rows()) == 2


def test_simultaneous_identical_requests_make_one_job(app, stub_engine, background_worker):
    """Two requests at the same moment: one job, both get its transcript."""
    answers = []

    def ask() -> None:
        answers.append(post(app.test_client(), output="srt", language="en"))

    threads = [threading.Thread(target=ask) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert [a.status_code for a in answers] == [200, 200]
    assert answers[0].headers["X-Job-ID"] == answers[1].headers["X-Job-ID"]
    assert answers[0].get_data() == answers[1].get_data() and len(job_rows()) == 1


# --------------------------------------------------------------------- detection


def test_detect_language_uses_the_first_30_seconds_on_a_multilingual_model(client, stub_engine, background_worker):
    """60 s of raw PCM: a 30 s job on base; whisper-asr-webservice's answer keys."""
    response = post(client, "/detect-language", body=pcm("multilingual.mp3"))
    assert response.status_code == 200, response.get_json()
    assert response.get_json() == {"detected_language": "english", "language_code": "en", "confidence": 0.9}
    (job,) = job_rows()
    assert (job.model, job.language, job.duration, job.id) == ("base", None, 30.0, response.headers["X-Job-ID"])
    assert stub_engine.calls[-1]["language"] is None


def test_detect_language_cuts_encoded_media_to_30_seconds(client, stub_engine, background_worker):
    """encode=true: the first 30 s of the media's audio, decoded by ffmpeg."""
    response = post(
        client, "/detect-language", body=(AUDIO / "multilingual.mp3").read_bytes(), name="m.mp3", encode="true"
    )
    assert response.status_code == 200, response.get_json()
    assert 29.5 <= job_rows()[0].duration <= 30.0


@pytest.fixture
def english_only_app(tmp_path):
    """An app whose models folder holds tiny.en only."""
    models = tmp_path / "models"
    models.mkdir()
    (models / "ggml-tiny.en.bin").symlink_to(MODELS_DIR / "ggml-tiny.en.bin")
    return build_app(tmp_path / "data", MODELS_DIR=str(models))


def test_english_only_install_names_the_model_to_install(english_only_app):
    """Detection and translation need a multilingual model: 422 naming the install command, and no job."""
    client = english_only_app.test_client()
    for path, params in (("/detect-language", {}), ("/asr", {"task": "translate"}), ("/asr", {"language": "de"})):
        body = assert_error(post(client, path, **params), 422, "MULTILINGUAL_MODEL_REQUIRED")
        assert "whisper-transcriber models install base" in body["detail"] and "tiny.en" in body["detail"]
    with english_only_app.app_context():
        assert job_rows() == []


def test_english_only_install_transcribes_unknown_language_as_english(english_only_app, stub_engine):
    """Without a language and without a multilingual model, tiny.en transcribes (as the original service does)."""
    english_only_app.config["ASR_TIMEOUT_SECONDS"] = 0.05
    assert post(english_only_app.test_client()).status_code == 504
    with english_only_app.app_context():
        assert [job.model for job in job_rows()] == ["tiny.en"]


# -------------------------------------------------------------------------- auth


def test_credentials_are_required_outside_trusted_networks(app, admin_headers):
    """No credentials: 401. An API key (X-API-Key), a bearer token and HTTP Basic all work."""
    client = app.test_client(use_cookies=False)  # Bazarr keeps no session
    assert_error(post(client, headers={}), 401)
    key = client.post(
        "/api/api-keys/", headers=admin_headers, json={"name": "bazarr", "permissions": ["jobs:create", "jobs:read"]}
    ).get_json()["api_key"]
    app.config["ASR_TIMEOUT_SECONDS"] = 0.01
    for headers in ({"X-API-Key": key}, admin_headers, BASIC):
        assert post(client, headers=headers).status_code == 504  # let in; no worker runs here
    assert_error(post(client, headers={"X-API-Key": "wt_wrong"}), 401)


@pytest.fixture
def trusted_app(tmp_path):
    """An app that trusts 10.1.0.0/16 and allows 3 anonymous requests a minute per address."""
    return build_app(tmp_path / "data", ANONYMOUS_NETWORKS="10.1.0.0/16", RATELIMIT_ANON="3 per minute")


def test_trusted_network_needs_no_credentials_and_is_limited_per_address(trusted_app, stub_engine):
    """Bazarr from 10.1.2.3 without credentials: a job of the service user; the fourth request a minute is 429."""
    from workers import pipeline

    client = trusted_app.test_client(use_cookies=False)
    inside, other = {"REMOTE_ADDR": "10.1.2.3"}, {"REMOTE_ADDR": "10.1.9.9"}
    trusted_app.config["ASR_TIMEOUT_SECONDS"] = 0.05
    assert post(client, headers={}, environ=inside, language="en").status_code == 504
    pipeline.configure(dict(trusted_app.config))
    with trusted_app.app_context():
        (job,) = job_rows()
        pipeline.run(job.id)
        assert (job.user.username, job.user.role) == ("anonymous-network", "user")
    answer = post(client, headers={}, environ=inside, language="en", output="srt")
    assert answer.status_code == 200 and answer.get_data(as_text=True).startswith("1\n")
    assert post(client, headers={}, environ=inside, output="docx").status_code == 400
    assert_error(post(client, headers={}, environ=inside), 429)
    assert post(client, headers={}, environ=other, output="docx").status_code == 400  # another address
    assert_error(post(client, headers={}, environ={"REMOTE_ADDR": "10.2.0.1"}), 401)  # outside


def test_an_older_database_gains_the_upload_hash_column(tmp_path):
    """A job table from before the dialect is upgraded in place on start."""
    import sqlite3

    from app.db import open_database

    path = tmp_path / "old.sqlite"
    open_database(path).close()
    with sqlite3.connect(path) as old:
        old.execute("ALTER TABLE job DROP COLUMN upload_sha256")
    open_database(path).close()
    with sqlite3.connect(path) as upgraded:
        assert "upload_sha256" in {row[1] for row in upgraded.execute("PRAGMA table_info(job)")}


# ---------------------------------------------------------------------- openapi


def test_routes_are_in_the_openapi_document(client):
    """/asr with its query parameters and output enum; /status needs no credentials."""
    paths = client.get("/openapi.json").get_json()["paths"]
    asr = {p["name"]: p for p in paths["/asr"]["post"]["parameters"]}
    assert asr["output"]["schema"]["enum"] == ["txt", "vtt", "srt", "tsv", "json"]
    assert {"task", "language", "encode", "word_timestamps", "vad_filter", "initial_prompt", "video_file"} <= set(asr)
    assert "application/x-subrip" in paths["/asr"]["post"]["responses"]["200"]["content"]
    assert paths["/status"]["get"]["security"] == []
    assert "/detect-language" in paths


# ---------------------------------------------------------------------- end to end


def bazarr_pcm(clip: Path, *before_input: str) -> bytes:
    """Exactly Bazarr's extraction: ``ffmpeg -i clip -f s16le -ac 1 -ar 16000 -``."""
    return subprocess.run(
        ["ffmpeg", "-nostdin", *before_input, "-i", str(clip), "-f", "s16le", "-ac", "1", "-ar", "16000", "-"],
        capture_output=True,
        check=True,
        timeout=120,
    ).stdout


def basic_url(live_server) -> str:
    """The endpoint as a Bazarr user outside the trusted networks enters it: credentials in the URL."""
    return live_server.url.replace("http://", f"http://admin:{ADMIN_PASSWORD}@")


@pytest.mark.e2e
def test_bazarr_raw_pcm_request_returns_a_readable_srt(live_server):
    """Bazarr's request, through HTTP, the queue and whisper.cpp: the SRT parses and matches the reference."""
    response = requests.post(
        basic_url(live_server) + "/asr",
        files={"audio_file": bazarr_pcm(AUDIO / "jfk.flac")},
        params={"task": "transcribe", "language": "en", "output": "srt", "encode": "false"},
        timeout=(10, 300),
    )
    assert response.status_code == 200, response.text
    assert response.headers["Content-Type"].startswith("application/x-subrip")
    cues = parse_srt(response.text)
    assert wer(reference("jfk.flac"), " ".join(text for _, text in cues)) <= 0.10
    job = live_server.get(f"/api/jobs/{response.headers['X-Job-ID']}").json()
    assert job["status"] == "completed" and job["duration"] == pytest.approx(11.0, abs=0.01)


@pytest.mark.e2e
def test_detect_language_with_base_and_status_and_bad_input_over_http(live_server):
    """English from the first 30 s of the multilingual clip, German from its second half; /status; errors."""
    url = basic_url(live_server)

    def detect(audio: bytes) -> dict:
        answer = requests.post(
            url + "/detect-language", params={"encode": "false"}, files={"audio_file": audio}, timeout=(10, 300)
        )
        assert answer.status_code == 200, answer.text
        assert live_server.get(f"/api/jobs/{answer.headers['X-Job-ID']}").json()["model"] == "base"
        return answer.json()

    english = detect(bazarr_pcm(AUDIO / "multilingual.mp3"))
    assert (english["language_code"], english["detected_language"]) == ("en", "english")
    assert 0 < english["confidence"] <= 1
    assert detect(bazarr_pcm(AUDIO / "multilingual.mp3", "-ss", "34"))["language_code"] == "de"
    status = requests.get(live_server.url + "/status", timeout=10)
    assert status.status_code == 200 and status.json() == {"version": metadata.version("whisper-transcriber")}
    for params, audio, code in (
        ({"output": "srt"}, b"\x00" * 3, "INVALID_PCM"),
        ({}, b"", "EMPTY_FILE"),
        ({"output": "docx"}, b"\x00" * 32000, "UNSUPPORTED_FORMAT"),
    ):
        answer = requests.post(
            url + "/asr", params={"encode": "false", **params}, files={"audio_file": audio}, timeout=30
        )
        assert answer.status_code == 400 and answer.json()["error_code"] == code
