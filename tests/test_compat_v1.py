"""The v1 API's routes through HTTP (Flask client, stub engine): health, login, POST/GET /jobs/, bad input."""

from __future__ import annotations

import io

import pytest

from app.security import CSRF_COOKIE, SESSION_COOKIE
from tests.conftest import ADMIN_PASSWORD
from tests.helpers import AUDIO, assert_error, post_clip

CREATED_FIELDS = {"job_id", "status", "message", "queue_job_id"}


@pytest.fixture
def http(app):
    """A client that keeps no cookies: every request carries exactly the credentials it is given."""
    return app.test_client(use_cookies=False)


def test_health_reports_ok(http):
    """GET /health answers {"status": "ok"} without credentials."""
    response = http.get("/health")
    assert response.status_code == 200 and response.get_json()["status"] == "ok"


def test_admin_login_returns_token_and_sets_the_session_cookie(app):
    """POST /auth/login with the bootstrap admin: access_token, token_type, expires_in and the cookie."""
    client = app.test_client()
    response = client.post("/auth/login", json={"username": "admin", "password": ADMIN_PASSWORD})
    assert response.status_code == 200
    body = response.get_json()
    assert body["token_type"] == "bearer" and body["expires_in"] == app.config["JWT_EXPIRES_SECONDS"]
    cookies = response.headers.getlist("Set-Cookie")
    session = next(c for c in cookies if c.startswith(f"{SESSION_COOKIE}="))
    assert session.startswith(f"{SESSION_COOKIE}={body['access_token']};") and "HttpOnly" in session
    assert any(c.startswith(f"{CSRF_COOKIE}=") for c in cookies)
    assert client.get("/jobs/").status_code == 200  # the cookie alone authenticates reads


@pytest.mark.parametrize(
    ("body", "status", "code"),
    [
        ({"username": "admin", "password": "wrong-password"}, 401, "INVALID_CREDENTIALS"),
        ({"username": "admin"}, 422, "MISSING_CREDENTIALS"),
    ],
)
def test_login_rejects_bad_credentials(http, body, status, code):
    """Wrong password 401, missing password 422."""
    assert_error(http.post("/auth/login", json=body), status, code)


def test_create_job_answers_exactly_the_v1_fields(http, admin_headers):
    """201 with job_id, status queued, the message and queue_job_id."""
    response = post_clip(http, admin_headers, path="/jobs/", model="tiny.en", language="en")
    assert response.status_code == 201
    body = response.get_json()
    assert set(body) == CREATED_FIELDS
    assert body["status"] == "queued" and body["message"] == "Job created successfully"
    assert body["queue_job_id"] == f"queue-{body['job_id']}" and len(body["job_id"]) == 32
    job = http.get(f"/jobs/{body['job_id']}", headers=admin_headers).get_json()
    assert job["model"] == "tiny.en" and job["requested_language"] == "en"


@pytest.mark.parametrize(
    ("kwargs", "status", "code"),
    [
        ({"data": {"model": "tiny.en"}}, 400, "MISSING_FILE"),
        ({"json": {"file": "jfk.flac"}}, 400, "MISSING_FILE"),
        ({"data": {"file": (io.BytesIO(b""), "empty.wav")}}, 400, "EMPTY_FILE"),
        (
            {"data": {"file": (io.BytesIO((AUDIO / "jfk.flac").read_bytes()), "jfk.flac"), "language": "english!"}},
            400,
            "INVALID_LANGUAGE",
        ),
        (
            {"data": {"file": (io.BytesIO((AUDIO / "jfk.flac").read_bytes()), "jfk.flac"), "model": "huge-v9"}},
            400,
            "INVALID_MODEL",
        ),
    ],
)
def test_create_job_rejects_malformed_uploads(http, admin_headers, kwargs, status, code):
    """No file, an empty file, a bad language or model: the standard error body."""
    assert_error(http.post("/jobs/", headers=admin_headers, **kwargs), status, code)


def test_create_job_needs_credentials_and_the_create_scope(http, admin_headers):
    """Anonymous is 401; an API key with only jobs:read is 403."""
    assert_error(post_clip(http, {}, path="/jobs/"), 401, "UNAUTHORIZED")
    key = http.post(
        "/api/api-keys/", headers=admin_headers, json={"name": "reader", "permissions": ["jobs:read"]}
    ).get_json()["api_key"]
    assert_error(post_clip(http, {"X-API-Key": key}, path="/jobs/"), 403, "INSUFFICIENT_SCOPE")
    assert http.get("/jobs/", headers={"X-API-Key": key}).status_code == 200


def test_get_job_shows_status_then_the_transcript(http, admin_headers, stub_engine, drain, uploaded_job):
    """Queued first; completed with the transcript after the worker ran; unknown ids are 404."""
    job_id = uploaded_job(http, admin_headers, path="/jobs/")["job_id"]
    queued = http.get(f"/jobs/{job_id}", headers=admin_headers).get_json()
    assert queued["job_id"] == job_id and queued["status"] == "queued" and "transcript" not in queued
    drain()
    done = http.get(f"/jobs/{job_id}", headers=admin_headers).get_json()
    assert done["status"] == "completed" and done["transcript"]["text"].startswith("word0")
    assert done["transcript"]["segments"][0] == {"id": 0, "start": 0.0, "end": 1.0, "text": "word0", "confidence": 0.9}
    assert_error(http.get("/jobs/0123456789abcdef0123456789abcdef", headers=admin_headers), 404, "NOT_FOUND")
    assert_error(http.get(f"/jobs/{job_id}"), 401, "UNAUTHORIZED")


def test_list_pages_with_skip_and_limit(http, admin_headers, stub_engine, drain, uploaded_job):
    """Defaults skip=0, limit=100; newest first; skip and limit page through."""
    ids = [uploaded_job(http, admin_headers, path="/jobs/")["job_id"] for _ in range(3)]
    drain()
    everything = http.get("/jobs/", headers=admin_headers)
    assert [j["job_id"] for j in everything.get_json()] == ids[::-1]
    assert everything.headers["X-Total-Count"] == "3"
    assert set(everything.get_json()[0]) >= {"job_id", "status", "filename", "model", "created_at"}
    page = http.get("/jobs/?skip=1&limit=1", headers=admin_headers).get_json()
    assert [j["job_id"] for j in page] == [ids[1]]
    assert http.get("/jobs/?skip=3", headers=admin_headers).get_json() == []


@pytest.mark.parametrize("query", ["skip=-1", "skip=x", "limit=0", "limit=1001", "limit=ten"])
def test_list_rejects_bad_paging(http, admin_headers, query):
    """Negative or non-numeric skip, and limits outside 1..1000, are 400."""
    assert_error(http.get(f"/jobs/?{query}", headers=admin_headers), 400, "INVALID_PARAMETER")


def test_slash_and_no_slash_never_redirect(http, admin_headers):
    """POST and GET on /jobs/ (v1 API) and /jobs (legacy API) are answered in place: no 308 either way."""
    audio = (AUDIO / "jfk.flac").read_bytes()
    created = {
        path: http.post(path, headers=admin_headers, data={"file": (io.BytesIO(audio), "jfk.flac")})
        for path in ("/jobs/", "/jobs")
    }
    listed = {path: http.get(path, headers=admin_headers) for path in ("/jobs/", "/jobs")}
    for response in [*created.values(), *listed.values()]:
        assert response.status_code in (200, 201) and "Location" not in response.headers
    assert "queue_job_id" in created["/jobs/"].get_json() and "id" in created["/jobs"].get_json()
    assert "original_filename" not in listed["/jobs/"].get_json()[0]
    assert "original_filename" in listed["/jobs"].get_json()[0]


def test_v1_routes_are_in_the_openapi_document(http):
    """POST /jobs/, GET /jobs/ and GET /jobs/{job_id} appear with summaries."""
    from app.compat import v1_api

    paths = http.get("/openapi.json").get_json()["paths"]
    assert paths["/jobs/"]["post"]["summary"] == v1_api.create_job.__doc__.splitlines()[0].replace("``", "`")
    assert paths["/jobs/"]["get"]["summary"] == v1_api.list_jobs.__doc__.splitlines()[0].replace("``", "`")
    assert paths["/jobs/{job_id}"]["get"]["summary"]
    assert {"/health", "/auth/login"} <= set(paths)
