"""The legacy API's routes through HTTP (Flask client, stub engine): jobs, download, metadata, auth, bad input."""

from __future__ import annotations

import re

import pytest

from tests.conftest import ADMIN_PASSWORD
from tests.helpers import assert_error, post_clip

LEGACY_FIELDS = {"id", "original_filename", "model", "created_at", "updated", "status"}
PASSWORD = "user-password-123"


@pytest.fixture
def http(app):
    """A client that keeps no cookies: every request carries exactly the credentials it is given."""
    return app.test_client(use_cookies=False)


# ------------------------------------------------------------------- jobs


def test_post_jobs_returns_201_with_the_job_id(client, admin_headers):
    """The legacy API document's curl call: multipart file, optional model; the id comes back with status queued."""
    response = post_clip(client, admin_headers, path="/jobs", model="tiny.en")
    assert response.status_code == 201
    body = response.get_json()
    assert len(body["id"]) == 32 and body["job_id"] == body["id"] and body["status"] == "queued"
    job = client.get(f"/jobs/{body['id']}", headers=admin_headers).get_json()
    assert job["model"] == "tiny.en" and job["original_filename"] == "jfk.flac"


@pytest.mark.parametrize(
    ("data", "form", "status", "code"),
    [
        (None, {"model": "no-such-model"}, 400, "INVALID_MODEL"),
        (b"", {}, 400, "EMPTY_FILE"),
        (b"this is not audio at all" * 10, {}, 415, None),
    ],
)
def test_post_jobs_rejects_bad_uploads(client, admin_headers, data, form, status, code):
    """Unknown models, empty files and non-media answer with the standard error body."""
    assert_error(post_clip(client, admin_headers, path="/jobs", data=data, **form), status, code)


def test_post_jobs_without_a_file_or_credentials(http, admin_headers):
    """No multipart file is 400; no credentials 401; a JSON body is not an upload."""
    assert_error(http.post("/jobs", headers=admin_headers, data={"model": "tiny.en"}), 400, "MISSING_FILE")
    assert_error(http.post("/jobs", headers=admin_headers, json={"file": "x"}), 400, "MISSING_FILE")
    assert_error(post_clip(http, {}, path="/jobs"), 401, "UNAUTHORIZED")
    assert_error(http.get("/jobs"), 401, "UNAUTHORIZED")


def test_jobs_and_jobs_slash_are_distinct_routes_without_redirects(http, admin_headers):
    """The legacy /jobs and the v1 /jobs/ answer directly (no 308) with their own shapes."""
    legacy = post_clip(http, admin_headers, path="/jobs")
    v1 = post_clip(http, admin_headers, path="/jobs/")
    assert legacy.status_code == v1.status_code == 201
    assert "id" in legacy.get_json() and "queue_job_id" not in legacy.get_json()
    assert v1.get_json()["message"] == "Job created successfully"
    for path in ("/jobs", "/jobs/"):
        response = http.get(path, headers=admin_headers)
        assert response.status_code == 200 and "Location" not in response.headers
        assert len(response.get_json()) == 2


def test_get_job_merges_legacy_fields_with_the_detail(client, admin_headers, stub_engine, drain, uploaded_job):
    """id, original_filename, model, created_at, updated, status, and once completed the transcript."""
    job_id = uploaded_job(client, admin_headers, path="/jobs")["id"]
    queued = client.get(f"/jobs/{job_id}", headers=admin_headers).get_json()
    assert set(queued) >= LEGACY_FIELDS | {"job_id", "stage", "progress"}
    assert queued["status"] == "queued" and "transcript" not in queued
    drain()
    body = client.get(f"/jobs/{job_id}", headers=admin_headers).get_json()
    assert body["id"] == body["job_id"] == job_id and body["status"] == "completed"
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d+)?Z", body["updated"])
    assert body["transcript"]["text"].startswith("word0")


def test_list_filters_by_search_over_name_and_text_and_by_status(
    client, admin_headers, stub_engine, drain, uploaded_job
):
    """search matches the file name or the transcript; status filters; newest first."""
    first = uploaded_job(client, admin_headers, path="/jobs")["id"]
    drain()
    second = uploaded_job(client, admin_headers, path="/jobs", name="meeting-notes.flac")["id"]
    listed = client.get("/jobs", headers=admin_headers)
    assert [j["id"] for j in listed.get_json()] == [second, first]
    assert listed.headers["X-Total-Count"] == "2"
    assert set(listed.get_json()[0]) >= LEGACY_FIELDS | {"job_id", "filename", "transcript_preview"}

    def ids(query: str) -> list[str]:
        response = client.get(f"/jobs?{query}", headers=admin_headers)
        assert response.status_code == 200
        return [j["id"] for j in response.get_json()]

    assert ids("search=meeting") == [second]
    assert ids("search=word3") == [first]  # only in the completed job's transcript
    assert ids("status=completed") == [first]
    assert ids("status=queued&search=jfk") == []
    assert ids("search=nothing-like-this") == []


@pytest.mark.parametrize("query", ["status=done", "limit=0", "limit=x", "offset=-1"])
def test_list_rejects_bad_filters(client, admin_headers, query):
    """An unknown status or a bad page is 400."""
    assert_error(client.get(f"/jobs?{query}", headers=admin_headers), 400)


def test_unknown_and_foreign_ids_are_404_everywhere(http, admin_headers, user_headers, uploaded_job):
    """Every route that takes an id answers 404 for a missing job and for another user's job."""
    bob = user_headers("bob", password=PASSWORD)
    foreign = uploaded_job(http, admin_headers, path="/jobs")["id"]
    for job_id in ("no-such-job", foreign):
        for method, path in [
            ("get", "/jobs/{}"),
            ("delete", "/jobs/{}"),
            ("post", "/jobs/{}/restart"),
            ("get", "/jobs/{}/download"),
            ("get", "/metadata/{}"),
            ("post", "/jobs/{}/analyze"),
        ]:
            response = getattr(http, method)(path.format(job_id), headers=bob)
            assert_error(response, 404, "NOT_FOUND")
    assert http.get("/jobs", headers=bob).get_json() == []
    assert http.get(f"/jobs/{foreign}", headers=admin_headers).status_code == 200


def test_delete_removes_the_job(client, admin_headers, stub_engine, drain, uploaded_job):
    """200, then the job is gone; a second delete is 404."""
    job_id = uploaded_job(client, admin_headers, path="/jobs")["id"]
    drain()
    response = client.delete(f"/jobs/{job_id}", headers=admin_headers)
    assert response.status_code == 200 and response.get_json()["id"] == job_id
    assert_error(client.get(f"/jobs/{job_id}", headers=admin_headers), 404)
    assert_error(client.delete(f"/jobs/{job_id}", headers=admin_headers), 404)


def test_restart_requeues_a_cancelled_job_and_refuses_others(client, admin_headers, stub_engine, drain, uploaded_job):
    """A queued job is 409; a cancelled one is queued again and then completes."""
    job_id = uploaded_job(client, admin_headers, path="/jobs")["id"]
    assert_error(client.post(f"/jobs/{job_id}/restart", headers=admin_headers), 409, "JOB_NOT_RESTARTABLE")
    client.post(f"/api/jobs/{job_id}/cancel", headers=admin_headers)
    response = client.post(f"/jobs/{job_id}/restart", headers=admin_headers)
    assert response.status_code == 200 and response.get_json()["status"] == "queued"
    drain()
    assert client.get(f"/jobs/{job_id}", headers=admin_headers).get_json()["status"] == "completed"


def test_download_defaults_to_srt_and_offers_txt_and_vtt(client, admin_headers, stub_engine, drain, uploaded_job):
    """409 before completion; srt by default; txt and vtt by format; an unknown format is 400."""
    job_id = uploaded_job(client, admin_headers, path="/jobs")["id"]
    assert_error(client.get(f"/jobs/{job_id}/download", headers=admin_headers), 409, "JOB_NOT_COMPLETED")
    drain()
    srt = client.get(f"/jobs/{job_id}/download", headers=admin_headers)
    assert srt.status_code == 200 and srt.content_type.startswith("application/x-subrip")
    assert srt.get_data(as_text=True).startswith("1\n00:00:00,000 --> 00:00:01,000\nword0")
    assert 'filename="jfk.srt"' in srt.headers["Content-Disposition"]
    txt = client.get(f"/jobs/{job_id}/download?format=txt", headers=admin_headers)
    assert txt.content_type.startswith("text/plain") and txt.get_data(as_text=True).startswith("word0\nword1")
    vtt = client.get(f"/jobs/{job_id}/download?format=VTT", headers=admin_headers)
    assert vtt.get_data(as_text=True).startswith("WEBVTT\n\n00:00:00.000 --> 00:00:01.000")
    assert_error(client.get(f"/jobs/{job_id}/download?format=docx", headers=admin_headers), 400, "UNSUPPORTED_FORMAT")


def test_download_needs_the_export_scope(http, admin_headers, stub_engine, drain, uploaded_job):
    """An API key without export:download is 403."""
    job_id = uploaded_job(http, admin_headers, path="/jobs")["id"]
    drain()
    key = http.post(
        "/api/api-keys/", headers=admin_headers, json={"name": "reader", "permissions": ["jobs:read"]}
    ).get_json()["api_key"]
    assert_error(http.get(f"/jobs/{job_id}/download", headers={"X-API-Key": key}), 403, "INSUFFICIENT_SCOPE")
    assert http.get(f"/jobs/{job_id}", headers={"X-API-Key": key}).status_code == 200


def test_metadata_reports_figures_of_the_completed_job(client, admin_headers, stub_engine, drain, uploaded_job):
    """Counts, speed and input format; 409 while the job is queued."""
    job_id = uploaded_job(client, admin_headers, path="/jobs")["id"]
    assert_error(client.get(f"/metadata/{job_id}", headers=admin_headers), 409, "JOB_NOT_COMPLETED")
    drain()
    body = client.get(f"/metadata/{job_id}", headers=admin_headers).get_json()
    job = client.get(f"/jobs/{job_id}", headers=admin_headers).get_json()
    segments = job["transcript"]["segments"]
    assert body["id"] == job_id and body["model"] == job["model"] and body["language"] == "en"
    assert body["duration"] == pytest.approx(11.0, abs=0.5)
    assert body["segment_count"] == len(segments) and body["word_count"] == len(segments)  # one word each
    assert body["words_per_minute"] == pytest.approx(body["word_count"] * 60 / body["duration"], abs=0.1)
    assert body["processing_seconds"] == job["processing_seconds"] is not None
    assert body["real_time_factor"] == pytest.approx(body["processing_seconds"] / body["duration"], abs=0.001)
    media = job["media"]
    assert (body["codec"], body["sample_rate"], body["channels"]) == (
        media["codec"],
        media["sample_rate"],
        media["channels"],
    )
    assert body["codec"] == "flac" and body["sample_rate"] > 0 and body["channels"] >= 1
    assert isinstance(body["keywords"], list)


def test_analyze_without_a_key_is_local_and_409_before_completion(
    client, admin_headers, stub_engine, drain, app, uploaded_job
):
    """No OPENAI_API_KEY: the local extractive analysis, provider "local"."""
    app.config["OPENAI_API_KEY"] = None
    job_id = uploaded_job(client, admin_headers, path="/jobs")["id"]
    assert_error(client.post(f"/jobs/{job_id}/analyze", headers=admin_headers), 409, "JOB_NOT_COMPLETED")
    drain()
    body = client.post(f"/jobs/{job_id}/analyze", headers=admin_headers).get_json()
    assert body["provider"] == "local" and body["job_id"] == job_id
    assert body["summary"] and body["statistics"]["word_count"] == 11


# ------------------------------------------------------------------- auth


def test_register_follows_the_auth_register_rules(app, http):
    """403 while registration is off; then 201, 409 for a taken name, 422 for a short password, 400 bad JSON."""
    assert_error(http.post("/register", json={"username": "carol", "password": PASSWORD}), 403, "REGISTRATION_DISABLED")
    app.config["ALLOW_REGISTRATION"] = True
    created = http.post("/register", json={"username": "carol", "password": PASSWORD})
    assert created.status_code == 201
    assert created.get_json()["username"] == "carol" and created.get_json()["message"] == "User registered successfully"
    assert_error(http.post("/register", json={"username": "Carol", "password": PASSWORD}), 409, "USER_EXISTS")
    assert_error(http.post("/register", json={"username": "dave", "password": "short"}), 422, "WEAK_PASSWORD")
    assert_error(http.post("/register", data="{not json", content_type="application/json"), 400, "INVALID_JSON")
    form = http.post("/register", data={"username": "erin", "password": PASSWORD})
    assert form.status_code == 201


def test_token_accepts_oauth2_form_and_json(http):
    """The OAuth2 password form and JSON both give an access token that works on /jobs."""
    form = http.post("/token", data={"grant_type": "password", "username": "admin", "password": ADMIN_PASSWORD})
    assert form.status_code == 200
    body = form.get_json()
    assert body["token_type"] == "bearer" and body["expires_in"] > 0
    assert http.get("/jobs", headers={"Authorization": f"Bearer {body['access_token']}"}).status_code == 200
    as_json = http.post("/token", json={"username": "admin", "password": ADMIN_PASSWORD})
    assert as_json.status_code == 200 and as_json.get_json()["access_token"]


@pytest.mark.parametrize(
    ("kwargs", "status", "code"),
    [
        ({"data": {"username": "admin", "password": "wrong-password"}}, 401, "INVALID_CREDENTIALS"),
        ({"data": {"username": "nobody", "password": "wrong-password"}}, 401, "INVALID_CREDENTIALS"),
        ({"data": {"username": "admin"}}, 422, "MISSING_CREDENTIALS"),
        ({"json": {"username": 1, "password": ["x"]}}, 422, "MISSING_CREDENTIALS"),
        ({"json": ["admin", ADMIN_PASSWORD]}, 400, "INVALID_JSON"),
        ({"data": "{bad", "content_type": "application/json"}, 400, "INVALID_JSON"),
    ],
)
def test_token_rejects_bad_credentials_and_bodies(http, kwargs, status, code):
    """Wrong credentials 401; missing fields 422; malformed JSON 400."""
    assert_error(http.post("/token", **kwargs), status, code)


def test_change_password_then_only_the_new_password_works(http, user_headers):
    """Same rules as /auth/change-password: the old password stops working."""
    bob = user_headers("bob", password=PASSWORD)
    response = http.post(
        "/change-password", headers=bob, json={"current_password": PASSWORD, "new_password": "a-new-password-456"}
    )
    assert response.status_code == 200 and response.get_json()["message"] == "Password changed successfully"
    assert_error(http.post("/token", data={"username": "bob", "password": PASSWORD}), 401)
    assert http.post("/token", data={"username": "bob", "password": "a-new-password-456"}).status_code == 200


@pytest.mark.parametrize(
    ("kwargs", "status", "code"),
    [
        (
            {"json": {"current_password": "wrong-password", "new_password": "a-new-password-456"}},
            400,
            "INVALID_PASSWORD",
        ),
        ({"json": {"current_password": PASSWORD, "new_password": "short"}}, 422, "WEAK_PASSWORD"),
        ({"json": {"current_password": PASSWORD, "new_password": PASSWORD}}, 422, "SAME_PASSWORD"),
        ({"data": "{bad", "content_type": "application/json"}, 400, "INVALID_JSON"),
    ],
)
def test_change_password_rejects_bad_input(http, user_headers, kwargs, status, code):
    """A wrong current password, a weak or unchanged new one, and malformed JSON."""
    bob = user_headers("bob", password=PASSWORD)
    assert_error(http.post("/change-password", headers=bob, **kwargs), status, code)


def test_change_password_needs_a_signed_in_user(http, user_headers):
    """Anonymous is 401; an API key may not change the password (403)."""
    bob = user_headers("bob", password=PASSWORD)
    body = {"current_password": PASSWORD, "new_password": "a-new-password-456"}
    assert_error(http.post("/change-password", json=body), 401, "UNAUTHORIZED")
    key = http.post("/api/api-keys/", headers=bob, json={"name": "k", "permissions": ["jobs:read"]}).get_json()[
        "api_key"
    ]
    assert_error(http.post("/change-password", headers={"X-API-Key": key}, json=body), 403, "FORBIDDEN")


# ------------------------------------------------------------------ OpenAPI


def test_every_legacy_route_is_in_the_openapi_document(client):
    """Each legacy API route appears with its docstring's first line as the summary."""
    from app.compat import legacy_api

    paths = client.get("/openapi.json").get_json()["paths"]
    expected = {
        ("/jobs", "post"): legacy_api.create_job,
        ("/jobs", "get"): legacy_api.list_jobs,
        ("/jobs/{job_id}", "get"): legacy_api.get_job,
        ("/jobs/{job_id}", "delete"): legacy_api.delete_job,
        ("/jobs/{job_id}/restart", "post"): legacy_api.restart_job,
        ("/jobs/{job_id}/download", "get"): legacy_api.download,
        ("/metadata/{job_id}", "get"): legacy_api.metadata,
        ("/jobs/{job_id}/analyze", "post"): legacy_api.analyze,
        ("/register", "post"): legacy_api.register,
        ("/token", "post"): legacy_api.token,
        ("/change-password", "post"): legacy_api.change_password,
    }
    for (path, method), view in expected.items():
        summary = view.__doc__.splitlines()[0].replace("``", "`")  # the document speaks Markdown
        assert paths[path][method]["summary"] == summary, (path, method)
