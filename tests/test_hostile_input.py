"""Hostile request bodies: JSON nested thousands of levels deep, on every route that takes a body."""

from __future__ import annotations

import re
import time

import pytest
import requests

from app.validation import MAX_JSON_DEPTH, too_deep
from tests.conftest import ADMIN_PASSWORD
from tests.helpers import AUDIO, assert_error, reference, wer

DEEP = "[" * 10_000 + "]" * 10_000
BODY_METHODS = ("POST", "PUT", "PATCH", "DELETE")


def nested(depth: int) -> str:
    """An object holding arrays ``depth`` levels deep in all."""
    return '{"a": ' + "[" * (depth - 1) + "]" * (depth - 1) + "}"


def body_routes(app) -> list[tuple[str, str, str]]:
    """(method, path, endpoint) of every route that can take a body, path parameters filled in with "1"."""
    routes = []
    for rule in app.url_map.iter_rules():
        if getattr(rule, "websocket", False):
            continue
        path = re.sub(r"<(?:[^:>]+:)?[^>]+>", "1", rule.rule)
        routes.extend((method, path, rule.endpoint) for method in sorted(rule.methods & set(BODY_METHODS)))
    # Logging out ends the session the other routes are called with: last.
    return sorted(routes, key=lambda route: (route[2] == "auth.logout", route))


@pytest.fixture
def hostile_app(app):
    """The test app with server control off, so no route here can stop the test process."""
    app.config["ENABLE_SERVER_CONTROL"] = False
    return app


def test_the_route_list_covers_the_json_routes(hostile_app):
    """The list is generated, so new routes are covered; these must be in it."""
    endpoints = {endpoint for _, _, endpoint in body_routes(hostile_app)}
    assert {
        "auth.login",
        "auth.register",
        "compat_legacy.token",
        "search.search",
        "voxis.process",
        "chunked_uploads.initialize",
        "admin.delete_file",
        "dubarr.webhook",
    } <= endpoints


@pytest.mark.parametrize("auth", ["anonymous", "admin"])
def test_json_nested_10000_deep_is_never_a_5xx_on_any_route(hostile_app, auth):
    """Every route that reads JSON answers 400 INVALID_JSON, as it does for malformed JSON; no route fails."""
    client = hostile_app.test_client()
    headers = {}
    if auth == "admin":
        token = client.post("/auth/login", json={"username": "admin", "password": ADMIN_PASSWORD}).get_json()
        headers = {"Authorization": f"Bearer {token['access_token']}"}
    failures, reads_json = [], []
    for method, path, endpoint in body_routes(hostile_app):
        malformed = client.open(path, method=method, headers=headers, data="{", content_type="application/json")
        deep = client.open(path, method=method, headers=headers, data=DEEP, content_type="application/json")
        if deep.status_code >= 500 or malformed.status_code >= 500:
            failures.append((method, path, malformed.status_code, deep.status_code))
        elif (malformed.get_json(silent=True) or {}).get("error_code") == "INVALID_JSON":
            reads_json.append(endpoint)
            if (deep.get_json(silent=True) or {}).get("error_code") != "INVALID_JSON":
                failures.append((method, path, endpoint, deep.status_code, deep.get_data(as_text=True)[:200]))
    assert failures == []
    assert "auth.login" in reads_json  # the route of the report, reachable without credentials
    if auth == "admin":
        assert {
            "search.search",
            "voxis.process",
            "admin.delete_file",
            "admin_users.update_user",
            "dubarr.webhook",
        } <= set(reads_json)


def test_the_refusal_names_the_limit(client):
    """The client learns why, in the standard error body."""
    body = assert_error(client.post("/auth/login", data=DEEP, content_type="application/json"), 400, "INVALID_JSON")
    assert str(MAX_JSON_DEPTH) in body["detail"]


def test_depth_up_to_the_limit_is_accepted_and_one_more_is_refused(client, admin_headers):
    """The limit is exact, and a deep body within it reaches the route's own checks (422 here)."""
    ok = client.post(
        "/api/search/", headers=admin_headers, data=nested(MAX_JSON_DEPTH), content_type="application/json"
    )
    assert ok.status_code == 422 and ok.get_json()["error_code"] != "INVALID_JSON"
    assert_error(
        client.post(
            "/api/search/", headers=admin_headers, data=nested(MAX_JSON_DEPTH + 1), content_type="application/json"
        ),
        400,
        "INVALID_JSON",
    )


def test_brackets_inside_strings_do_not_count():
    """A password of 500 brackets is text, not nesting."""
    assert not too_deep(('{"password": "' + "[{" * 500 + '\\"]"}').encode(), MAX_JSON_DEPTH)
    assert too_deep(b'{"a": "x", "b": ' + b"[" * 65 + b"]" * 65 + b"}", MAX_JSON_DEPTH)
    assert too_deep(("[" * 65 + "]" * 65).encode("utf-16"), MAX_JSON_DEPTH)  # any encoding JSON allows


def test_the_depth_scan_stays_linear_on_pathological_text():
    """Megabytes of quotes, escapes and brackets are judged in well under a second each."""
    for raw in (b'"' + b'\\"' * 1_000_000, b'"' * 2_000_000, b"[]," * 1_000_000, b"[" * 2_000_000):
        started = time.perf_counter()
        too_deep(raw, MAX_JSON_DEPTH)
        assert time.perf_counter() - started < 1.0


# ------------------------------------------------------------------ live server


@pytest.mark.e2e
def test_live_server_refuses_deep_json_and_unknown_languages_and_takes_language_names(live_server):
    """Through Gunicorn: deep JSON on the open login route is a 400, language=zz a 400, "English" a job."""
    deep = requests.post(
        live_server.url + "/auth/login", data=DEEP, timeout=10, headers={"Content-Type": "application/json"}
    )
    assert deep.status_code == 400 and deep.json()["error_code"] == "INVALID_JSON"
    with open(AUDIO / "jfk.flac", "rb") as f:
        unknown = live_server.post("/api/jobs/", files={"file": ("jfk.flac", f)}, data={"language": "zz"})
    assert unknown.status_code == 400 and unknown.json()["error_code"] == "INVALID_LANGUAGE"
    job = live_server.wait(live_server.submit(AUDIO / "jfk.flac", model="tiny.en", language="English"))
    assert job["status"] == "completed" and job["requested_language"] == "en", job
    assert wer(reference("jfk.flac"), job["transcript"]["text"]) <= 0.10
