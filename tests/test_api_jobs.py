"""The canonical jobs API through HTTP (Flask client, stub engine): happy paths and bad input."""

from __future__ import annotations

import hashlib
import io
import threading
import time
from pathlib import Path

import pytest

from tests.helpers import AUDIO, assert_error, post_clip

pytestmark = pytest.mark.database  # scripts/test runs these on PostgreSQL too


def leftovers(app) -> list[Path]:
    """Files in tmp/ and uploads/ of the test's data dir."""
    root = Path(app.config["DATA_DIR"])
    return [p for folder in ("tmp", "uploads") for p in (root / folder).iterdir()]


def test_create_job_returns_201_with_the_full_api_fields(client, admin_headers):
    """The response carries job_id, status, filename, model and created_at."""
    response = post_clip(client, admin_headers, model="tiny.en", language="en", task="transcribe", prompt="JFK")
    assert response.status_code == 201
    body = response.get_json()
    assert body["status"] == "queued" and body["filename"] == "jfk.flac" and body["model"] == "tiny.en"
    assert body["created_at"].endswith("Z") and len(body["job_id"]) == 32


def test_job_completes_and_exports_every_format(client, admin_headers, stub_engine, drain, uploaded_job):
    """After the worker runs, the transcript downloads as txt, srt, vtt, json and tsv."""
    job_id = uploaded_job(client, admin_headers)["job_id"]
    drain()
    for fmt, mime in [
        ("txt", "text/plain"),
        ("srt", "application/x-subrip"),
        ("vtt", "text/vtt"),
        ("json", "application/json"),
        ("tsv", "text/tab-separated-values"),
    ]:
        response = client.get(f"/api/export/download/{job_id}/{fmt}", headers=admin_headers)
        assert response.status_code == 200 and response.content_type.startswith(mime)
        assert f'filename="jfk.{fmt}"' in response.headers["Content-Disposition"]
    assert client.get("/api/export/formats", headers=admin_headers).get_json()["formats"][0]["name"] == "txt"


def test_export_before_completion_is_409_and_unknown_format_400(
    client, admin_headers, stub_engine, drain, uploaded_job
):
    """A queued job has nothing to export; a bad format names the choices."""
    job_id = uploaded_job(client, admin_headers)["job_id"]
    assert_error(client.get(f"/api/export/download/{job_id}/srt", headers=admin_headers), 409)
    drain()
    assert_error(client.get(f"/api/export/download/{job_id}/docx", headers=admin_headers), 400, "UNSUPPORTED_FORMAT")


def test_list_pages_filters_and_previews(client, admin_headers, stub_engine, drain, uploaded_job):
    """limit/offset page newest first; status and created_after filter."""
    ids = [uploaded_job(client, admin_headers)["job_id"] for _ in range(3)]
    drain()
    body = client.get("/api/jobs/?limit=2&offset=0", headers=admin_headers).get_json()
    assert body["total"] == 3 and body["limit"] == 2 and len(body["jobs"]) == 2
    assert body["jobs"][0]["job_id"] == ids[-1]
    job = body["jobs"][0]
    assert set(job) >= {
        "job_id",
        "status",
        "filename",
        "model",
        "created_at",
        "completed_at",
        "duration",
        "transcript_preview",
    }
    assert job["transcript_preview"].startswith("word0") and job["error"] is None
    assert client.get("/api/jobs/?status=failed", headers=admin_headers).get_json()["total"] == 0
    later = client.get("/api/jobs/?created_after=2999-01-01T00:00:00Z", headers=admin_headers).get_json()
    assert later["total"] == 0


@pytest.mark.parametrize(
    "query", ["limit=0", "limit=101", "limit=x", "offset=-1", "status=done", "created_after=yesterday"]
)
def test_list_rejects_bad_query_parameters(client, admin_headers, query):
    """Out-of-range or malformed parameters are a 400."""
    assert_error(client.get(f"/api/jobs/?{query}", headers=admin_headers), 400)


def test_progress_reports_stage_and_percent(client, admin_headers, stub_engine, drain, uploaded_job):
    """Queued, then completed at 100 %."""
    job_id = uploaded_job(client, admin_headers)["job_id"]
    body = client.get(f"/api/progress/{job_id}", headers=admin_headers).get_json()
    assert (body["status"], body["stage"], body["progress"]) == ("queued", "queued", 0.0)
    drain()
    body = client.get(f"/api/progress/{job_id}", headers=admin_headers).get_json()
    assert (body["status"], body["stage"], body["progress"]) == ("completed", "completed", 100.0)
    assert set(body) >= {"job_id", "estimated_time_remaining", "current_segment"}


def test_wait_returns_as_soon_as_the_job_finishes(client, admin_headers, stub_engine, drain, uploaded_job):
    """A long poll started on a queued job answers with the finished job once a worker has run it."""
    job_id = uploaded_job(client, admin_headers)["job_id"]
    worker = threading.Timer(0.3, drain)
    worker.start()
    try:
        body = client.get(f"/api/progress/{job_id}?wait=30", headers=admin_headers).get_json()
        assert (body["status"], body["progress"]) == ("completed", 100.0)
        job = client.get(f"/api/jobs/{job_id}?wait=30", headers=admin_headers).get_json()
        assert job["status"] == "completed" and job["transcript"]["text"]
    finally:
        worker.join()


def test_wait_gives_up_after_the_given_seconds(client, admin_headers, uploaded_job):
    """Nothing runs the job: the answer comes after the wait with the job still queued."""
    job_id = uploaded_job(client, admin_headers)["job_id"]
    started = time.monotonic()
    body = client.get(f"/api/progress/{job_id}?wait=1", headers=admin_headers).get_json()
    assert body["status"] == "queued" and time.monotonic() - started >= 0.9


def test_wait_ends_when_the_server_stops(client, admin_headers, uploaded_job):
    """A stopping web process answers waiting requests with the job as it is."""
    from app.shutdown import stopping

    job_id = uploaded_job(client, admin_headers)["job_id"]
    stopping.set()
    try:
        assert client.get(f"/api/jobs/{job_id}?wait=60", headers=admin_headers).get_json()["status"] == "queued"
    finally:
        stopping.clear()


def test_wait_answers_at_once_when_every_waiting_slot_is_taken(client, admin_headers, monkeypatch, uploaded_job):
    """Waiting requests hold web threads, so past the limit a request does not wait."""
    from app.services import jobs as service

    job_id = uploaded_job(client, admin_headers)["job_id"]
    full = threading.BoundedSemaphore(1)
    full.acquire()
    monkeypatch.setattr(service, "_waiters", full)
    monkeypatch.setattr(service, "wait_finished", lambda *a, **kw: pytest.fail("waited past the limit"))
    assert client.get(f"/api/jobs/{job_id}?wait=30", headers=admin_headers).get_json()["status"] == "queued"


@pytest.mark.parametrize("wait", ["-1", "61", "soon", "1.5"])
def test_bad_wait_is_a_400(client, admin_headers, wait, uploaded_job):
    job_id = uploaded_job(client, admin_headers)["job_id"]
    for path in (f"/api/jobs/{job_id}", f"/api/progress/{job_id}"):
        assert_error(client.get(f"{path}?wait={wait}", headers=admin_headers), 400, "INVALID_PARAMETER")


def test_delete_removes_row_and_files(client, admin_headers, stub_engine, drain, app, uploaded_job):
    """Nothing of a deleted job stays on disk."""
    job_id = uploaded_job(client, admin_headers)["job_id"]
    drain()
    root = Path(app.config["DATA_DIR"])
    assert (root / "transcripts" / f"{job_id}.json").exists()
    assert client.delete(f"/api/jobs/{job_id}", headers=admin_headers).status_code == 200
    assert_error(client.get(f"/api/jobs/{job_id}", headers=admin_headers), 404, "NOT_FOUND")
    assert not list(root.glob(f"**/{job_id}*"))


def test_restart_only_for_failed_or_cancelled_jobs(client, admin_headers, stub_engine, drain, uploaded_job):
    """A queued or completed job gives 409; a cancelled one is queued again and completes."""
    job_id = uploaded_job(client, admin_headers)["job_id"]
    assert_error(client.post(f"/api/jobs/{job_id}/restart", headers=admin_headers), 409, "JOB_NOT_RESTARTABLE")
    cancelled = client.post(f"/api/jobs/{job_id}/cancel", headers=admin_headers).get_json()
    assert cancelled["status"] == "cancelled"
    assert_error(client.post(f"/api/jobs/{job_id}/cancel", headers=admin_headers), 409)
    assert client.post(f"/api/jobs/{job_id}/restart", headers=admin_headers).get_json()["status"] == "queued"
    drain()
    assert client.get(f"/api/jobs/{job_id}", headers=admin_headers).get_json()["status"] == "completed"


def test_restart_requeues_failed_job(client, admin_headers, stub_engine, drain, app, uploaded_job):
    """A job that failed (here: its model vanished) can be restarted."""
    from app.models import Job

    job_id = uploaded_job(client, admin_headers)["job_id"]
    with app.app_context():
        Job.update(model="small").where(Job.id == job_id).execute()
    drain()
    failed = client.get(f"/api/jobs/{job_id}", headers=admin_headers).get_json()
    assert failed["status"] == "failed" and "no longer installed" in failed["error"]
    with app.app_context():
        Job.update(model="tiny.en").where(Job.id == job_id).execute()
    assert client.post(f"/api/jobs/{job_id}/restart", headers=admin_headers).status_code == 200
    drain()
    assert client.get(f"/api/jobs/{job_id}", headers=admin_headers).get_json()["status"] == "completed"


# ------------------------------------------------------------------ bad input


def test_non_audio_file_is_415_and_leaves_nothing(client, admin_headers, app):
    """A text file is refused and its upload removed."""
    text = b"just some text\n" * 100
    assert_error(post_clip(client, admin_headers, data=text, name="notes.mp3"), 415, "UNSUPPORTED_MEDIA")
    assert leftovers(app) == []


def test_zero_byte_file_is_400_and_leaves_nothing(client, admin_headers, app):
    """An empty upload is refused."""
    assert_error(post_clip(client, admin_headers, data=b"", name="empty.wav"), 400, "EMPTY_FILE")
    assert leftovers(app) == []


def test_file_truncated_in_its_header_is_refused(client, admin_headers, app):
    """ffprobe cannot read it: 415 and nothing left."""
    data = (AUDIO / "jfk.flac").read_bytes()[:3000]
    assert_error(post_clip(client, admin_headers, data=data, name="cut.flac"), 415)
    assert leftovers(app) == []


def test_file_truncated_in_its_body_fails_the_job_with_a_clear_reason(
    client, admin_headers, stub_engine, drain, uploaded_job
):
    """The header promises 11 s but the data stops early: the job fails and says why."""
    data = (AUDIO / "jfk.flac").read_bytes()[:60000]
    job_id = uploaded_job(client, admin_headers, data=data, name="cut.flac")["job_id"]
    drain()
    job = client.get(f"/api/jobs/{job_id}", headers=admin_headers).get_json()
    assert job["status"] == "failed" and "truncated" in job["error"]
    listed = client.get("/api/jobs/", headers=admin_headers).get_json()["jobs"]
    assert [row["error"] for row in listed] == [job["error"]]  # the list says why, too


def test_oversized_body_is_413(app, admin_headers, client):
    """A body over MAX_CONTENT_LENGTH is refused before it is stored."""
    app.config["MAX_CONTENT_LENGTH"] = 50_000
    body = assert_error(post_clip(client, admin_headers), 413, "PAYLOAD_TOO_LARGE")
    assert "50000" in body["detail"]
    assert leftovers(app) == []


def test_path_like_file_name_is_stored_under_a_generated_name(client, admin_headers, app):
    """The client's name is kept for display only."""
    response = post_clip(client, admin_headers, name="../../etc/passwd.flac")
    assert response.status_code == 201
    job_id = response.get_json()["job_id"]
    assert response.get_json()["filename"] == "passwd.flac"
    stored = [p.name for p in (Path(app.config["DATA_DIR"]) / "uploads").iterdir()]
    assert stored == [f"{job_id}.flac"]


def test_media_longer_than_the_limit_is_refused(app, client, admin_headers):
    """The maximum duration is configurable."""
    app.config["MAX_MEDIA_SECONDS"] = 5
    body = assert_error(post_clip(client, admin_headers), 413, "MEDIA_TOO_LONG")
    assert "limit" in body["detail"]
    assert leftovers(app) == []


def test_missing_file_field_is_400(client, admin_headers):
    """A form without ``file``."""
    assert_error(client.post("/api/jobs/", headers=admin_headers, data={"model": "tiny.en"}), 400, "MISSING_FILE")


def test_uninstalled_whisper_model_is_400_with_install_hint(client, admin_headers):
    """The message lists installed models and the command to install the missing one."""
    body = assert_error(post_clip(client, admin_headers, model="medium.en"), 400, "MODEL_NOT_INSTALLED")
    assert "tiny.en" in body["detail"] and "whisper-transcriber models install medium.en" in body["detail"]


def test_non_whisper_model_name_is_400(client, admin_headers):
    """A name that is no Whisper model."""
    assert_error(post_clip(client, admin_headers, model="gpt-4o"), 400, "INVALID_MODEL")


@pytest.mark.parametrize(("field", "value"), [("task", "summarise"), ("language", "english!"), ("prompt", "x" * 2001)])
def test_invalid_job_options_are_400(client, admin_headers, field, value, app):
    """Task, language and prompt are validated before anything is stored."""
    assert_error(post_clip(client, admin_headers, **{field: value}), 400)
    assert leftovers(app) == []


# ------------------------------------------------------------ error format


def test_unknown_route_405_and_unknown_job_use_the_error_format(client, admin_headers):
    """404, 405 and unknown ids all answer with the standard body."""
    assert_error(client.get("/no/such/route"), 404)
    assert_error(client.put("/api/jobs/", headers=admin_headers), 405, "METHOD_NOT_ALLOWED")
    assert_error(client.get("/api/jobs/0123", headers=admin_headers), 404)
    assert_error(client.get("/api/progress/0123", headers=admin_headers), 404)


def test_unauthenticated_request_is_401(client):
    """Every jobs route needs credentials."""
    assert_error(client.get("/api/jobs/"), 401, "UNAUTHORIZED")


def test_unexpected_exception_is_a_json_500(app, client, admin_headers, monkeypatch):
    """A bug answers with the standard body and no traceback."""
    from app.services import jobs

    monkeypatch.setattr(jobs, "list_jobs", lambda *a, **k: 1 / 0)
    body = assert_error(client.get("/api/jobs/", headers=admin_headers), 500, "INTERNAL_ERROR")
    assert "Traceback" not in body["detail"]


def test_request_id_is_echoed_or_generated(client):
    """A sane incoming X-Request-ID is kept; a hostile one is replaced."""
    assert client.get("/health", headers={"X-Request-ID": "abc-123"}).headers["X-Request-ID"] == "abc-123"
    replaced = client.get("/health", headers={"X-Request-ID": "<script>"}).headers["X-Request-ID"]
    assert replaced != "<script>" and len(replaced) == 32


def test_health_reports_database_and_worker(client):
    """No auth; status ok."""
    body = client.get("/health").get_json()
    assert body["status"] == "ok" and body["database"] == "ok" and body["worker_alive"] is False


def test_cancelled_jobs_are_not_counted_as_errors_in_queue_stats(client, admin_headers, uploaded_job):
    """Dubarr's ERROR means failed; a job the user cancelled is counted under ``jobs`` only."""
    job_id = uploaded_job(client, admin_headers)["job_id"]
    client.post(f"/api/jobs/{job_id}/cancel", headers=admin_headers)
    body = client.get("/health").get_json()
    assert body["jobs"]["cancelled"] == 1
    assert body["queue_stats"] == {"QUEUED": 0, "PROCESSING": 0, "DONE": 0, "ERROR": 0}


# ------------------------------------------------------------ languages, names, errors

JFK = (AUDIO / "jfk.flac").read_bytes()


@pytest.mark.parametrize("language", ["zz", "klingon", "xx-US", "english!", "e" * 300])
def test_a_language_whisper_does_not_know_is_400_naming_valid_ones(client, admin_headers, app, language):
    """No silent auto-detection of a typo: the answer names codes and a name that would work."""
    body = assert_error(post_clip(client, admin_headers, language=language), 400, "INVALID_LANGUAGE")
    assert "'en'" in body["detail"] and "'German'" in body["detail"] and len(body["detail"]) < 300
    assert leftovers(app) == []


@pytest.mark.parametrize(
    ("given", "stored"),
    [
        ("de", "de"),
        ("German", "de"),
        ("  HAITIAN creole ", "ht"),
        ("en-US", "en"),
        ("pt_BR", "pt"),
        ("yue", "yue"),
        ("AUTO", None),
        ("", None),
    ],
)
def test_language_codes_english_names_and_regions_become_whisper_codes(
    client, admin_headers, given, stored, uploaded_job
):
    """The job keeps whisper's code, whatever form the client sent it in."""
    job_id = uploaded_job(client, admin_headers, language=given)["job_id"]
    assert client.get(f"/api/jobs/{job_id}", headers=admin_headers).get_json()["requested_language"] == stored


def _chunked_finalize(client, headers, language: str):
    base = "/api/chunked-uploads"
    session = client.post(
        f"{base}/initialize",
        headers=headers,
        json={"filename": "jfk.flac", "file_size": len(JFK), "chunk_size": len(JFK), "content_type": "audio/flac"},
    )
    session_id = session.get_json()["session_id"]
    client.post(f"{base}/{session_id}/chunks/1", headers=headers, data=JFK, content_type="application/octet-stream")
    return client.post(
        f"{base}/{session_id}/finalize",
        headers=headers,
        json={"language": language, "chunk_checksums": [hashlib.sha256(JFK).hexdigest()]},
    )


def _voxis_process(client, headers, language: str):
    uploaded = client.post("/api/upload", headers=headers, data={"file": (io.BytesIO(JFK), "jfk.flac")})
    return client.post(
        "/api/process",
        headers=headers,
        json={"file_id": uploaded.get_json()["file_id"], "transcribe": True, "language": language},
    )


def _multipart(path: str, **form):
    return lambda client, headers, language: client.post(
        path, headers=headers, data={"file": (io.BytesIO(JFK), "jfk.flac"), "language": language, **form}
    )


DIALECTS = {
    "full API": _multipart("/api/jobs/"),
    "v1": _multipart("/jobs/"),
    "legacy": _multipart("/jobs"),
    "Dubarr": _multipart("/upload"),
    "OpenAI": _multipart("/v1/audio/transcriptions", model="whisper-1"),
    "chunked": _chunked_finalize,
    "VOXIS": _voxis_process,
}


@pytest.mark.parametrize("dialect", DIALECTS)
def test_every_dialect_refuses_an_unknown_language_the_same_way(client, admin_headers, dialect):
    """One check for all: language=zz is a 400 INVALID_LANGUAGE everywhere, and no job is created."""
    from app.models import Job

    assert_error(DIALECTS[dialect](client, admin_headers, "zz"), 400, "INVALID_LANGUAGE")
    assert Job.select().count() == 0


def test_an_over_long_file_name_is_cut_in_its_stem_and_keeps_its_extension(client, admin_headers, uploaded_job):
    """Exports and downloads are named after it, so the extension must survive."""
    name = "interview with the mayor " * 20 + ".flac"
    filename = uploaded_job(client, admin_headers, name=name)["filename"]
    assert filename.endswith(".flac") and 250 <= len(filename) <= 255
    assert name.startswith(filename[: -len(".flac")])  # the stem's end was cut, nothing else


def test_a_failed_jobs_error_shows_paths_relative_to_the_data_dir(
    app, client, admin_headers, stub_engine, drain, uploaded_job
):
    """The reason users read (job, list and stage record) never shows where the server keeps its data."""
    job_id = uploaded_job(client, admin_headers)["job_id"]
    for stored in (Path(app.config["DATA_DIR"]) / "uploads").iterdir():
        stored.unlink()  # the decoder then fails naming the file it was given
    drain()
    job = client.get(f"/api/jobs/{job_id}", headers=admin_headers).get_json()
    stage_errors = [stage["error"] for stage in job["stages"] if stage.get("error")]
    assert job["status"] == "failed" and f"uploads/{job_id}.flac" in job["error"]
    for text in (
        job["error"],
        *stage_errors,
        client.get("/api/jobs/", headers=admin_headers).get_json()["jobs"][0]["error"],
    ):
        assert app.config["DATA_DIR"] not in text and "/tmp/" not in text
