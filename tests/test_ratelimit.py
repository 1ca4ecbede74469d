"""Rate limits through HTTP: per address, user, API key and admin route; failed logins; headers; isolation."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest

from tests.conftest import ADMIN_PASSWORD, USER_PASSWORD, build_app

RATE_HEADERS = ("X-RateLimit-Limit", "X-RateLimit-Remaining", "X-RateLimit-Reset")


@pytest.fixture
def make_app(tmp_path):
    """Build apps with extra settings (all on the same data dir), as the ``app`` fixture does."""

    def make(**config):
        return build_app(tmp_path / "data", **config)

    return make


@pytest.fixture
def http(app):
    """A client without cookies, so each request is exactly as anonymous or authenticated as it looks."""
    return app.test_client(use_cookies=False)


def assert_429(response, limit: int) -> dict:
    """A 429 in the standard error format with the limit headers and a positive Retry-After."""
    assert response.status_code == 429, response.get_data(as_text=True)
    body = response.get_json()
    assert body["error_code"] == "RATE_LIMITED" and body["request_id"] == response.headers["X-Request-ID"]
    assert set(body) == {"detail", "error_code", "timestamp", "request_id"}
    assert response.headers["X-RateLimit-Limit"] == str(limit)
    assert response.headers["X-RateLimit-Remaining"] == "0"
    assert int(response.headers["X-RateLimit-Reset"]) >= int(time.time())
    assert 1 <= int(response.headers["Retry-After"]) <= 60
    return body


def login(http, username: str, password: str, ip: str = "127.0.0.1"):
    """POST /auth/login from a given client address."""
    return http.post("/auth/login", json={"username": username, "password": password}, environ_base={"REMOTE_ADDR": ip})


def test_anonymous_limit_is_per_address_and_answers_429_with_headers(app, http):
    """RATELIMIT_ANON per client address: the next request is 429; another address is unaffected."""
    app.config["RATELIMIT_ANON"] = "3 per minute"
    remaining = [http.get("/auth/me").headers["X-RateLimit-Remaining"] for _ in range(3)]
    assert remaining == ["2", "1", "0"]
    assert_429(http.get("/auth/me"), 3)
    assert http.get("/auth/me", environ_base={"REMOTE_ADDR": "10.0.0.2"}).status_code == 401


def test_default_limits_are_60_anonymous_300_user_100_admin(app, http, admin_headers):
    """The documented numbers show in X-RateLimit-Limit."""
    assert http.get("/auth/me").headers["X-RateLimit-Limit"] == "60"
    assert http.get("/auth/me", headers=admin_headers).headers["X-RateLimit-Limit"] == "300"
    assert http.get("/admin/users", headers=admin_headers).headers.getlist("X-RateLimit-Limit") == ["100"]


def test_user_limit_is_per_user_across_their_tokens(app, http, user_headers):
    """Two tokens of one user share a bucket; other users and anonymous callers have their own."""
    alice = user_headers("alice")
    alice_again = {"Authorization": f"Bearer {login(http, 'alice', USER_PASSWORD).get_json()['access_token']}"}
    bob = user_headers("bob")
    app.config["RATELIMIT_USER"] = "4 per minute"
    for headers in (alice, alice_again, alice, alice_again):
        assert http.get("/auth/me", headers=headers).status_code == 200
    assert_429(http.get("/auth/me", headers=alice), 4)
    assert_429(http.get("/api/jobs/", headers=alice_again), 4)
    assert http.get("/auth/me", headers=bob).status_code == 200
    assert http.get("/auth/me").status_code == 401


def _key(http, admin_headers, **rate_limit) -> dict[str, str]:
    response = http.post(
        "/api/api-keys/",
        headers=admin_headers,
        json={"name": "k", "permissions": ["jobs:read"], "rate_limit": rate_limit},
    )
    assert response.status_code == 201
    return {"X-API-Key": response.get_json()["api_key"]}


def test_api_key_has_its_own_per_minute_limit(http, admin_headers):
    """requests_per_minute applies to the key, not to its owner's other sessions."""
    key = _key(http, admin_headers, requests_per_minute=2)
    other_key = _key(http, admin_headers, requests_per_minute=2)
    assert [http.get("/api/jobs/", headers=key).status_code for _ in range(2)] == [200, 200]
    assert_429(http.get("/api/jobs/", headers=key), 2)
    assert http.get("/api/jobs/", headers=other_key).status_code == 200
    assert http.get("/api/jobs/", headers=admin_headers).status_code == 200


def test_api_key_daily_quota(http, admin_headers):
    """daily_quota caps the key per day even when the per-minute limit has room."""
    key = _key(http, admin_headers, requests_per_minute=100, daily_quota=3)
    assert [http.get("/api/jobs/", headers=key).status_code for _ in range(3)] == [200] * 3
    response = http.get("/api/jobs/", headers=key)
    assert response.status_code == 429 and response.headers["X-RateLimit-Limit"] == "3"
    assert int(response.headers["Retry-After"]) > 60  # the day's window, not a minute's


def test_api_key_without_its_own_limit_gets_the_user_limit(app, http, admin_headers):
    """No rate_limit given: RATELIMIT_USER per key."""
    key = _key(http, admin_headers)
    app.config["RATELIMIT_USER"] = "2 per minute"
    assert [http.get("/api/jobs/", headers=key).status_code for _ in range(2)] == [200, 200]
    assert_429(http.get("/api/jobs/", headers=key), 2)


def test_admin_endpoints_have_their_own_limit(app, http, admin_headers):
    """RATELIMIT_ADMIN on /admin/* only; the rest of the API keeps working."""
    app.config["RATELIMIT_ADMIN"] = "2 per minute"
    assert [http.get("/admin/users", headers=admin_headers).status_code for _ in range(2)] == [200, 200]
    assert_429(http.get("/admin/audit", headers=admin_headers), 2)
    assert http.get("/auth/me", headers=admin_headers).status_code == 200


def test_upload_chunks_count_against_their_own_limit_not_the_user_limit(app, http, admin_headers):
    """A file in many chunks is not throttled like many API calls; the chunk limit still holds."""
    from tests.test_chunked_uploads import AUDIO_BYTES, initialize, parts, send

    app.config.update(RATELIMIT_USER="3 per minute", RATELIMIT_CHUNKS="5 per minute")
    session_id = initialize(http, admin_headers).get_json()["session_id"]  # 1 of the user's 3
    chunks = parts(AUDIO_BYTES)  # the session's chunk size; chunks are numbered from 1
    assert [send(http, admin_headers, session_id, n + 1, chunks[n]).status_code for n in range(5)] == [200] * 5
    assert_429(send(http, admin_headers, session_id, 6, chunks[5]), 5)
    assert [http.get("/api/jobs/", headers=admin_headers).status_code for _ in range(2)] == [200, 200]
    assert_429(http.get("/api/jobs/", headers=admin_headers), 3)


def test_websocket_token_in_the_query_counts_against_its_user(http, user_headers):
    """Browsers put the token in ?token= on WebSocket handshakes; the handshake counts as that user."""
    token = user_headers("socket-user")["Authorization"].removeprefix("Bearer ")
    handshake = {
        "Upgrade": "websocket",
        "Connection": "Upgrade",
        "Sec-WebSocket-Version": "13",
        "Sec-WebSocket-Key": "dGhlIHNhbXBsZSBub25jZQ==",
    }
    response = http.get(f"/ws/logs/system?token={token}", headers=handshake)
    assert response.status_code == 403 and response.headers["X-RateLimit-Limit"] == "300"  # the user's limit
    response = http.get(f"/auth/me?token={token}")  # not a handshake: tokens in URLs are for WebSockets only
    assert response.status_code == 401 and response.headers["X-RateLimit-Limit"] == "60"


def test_a_dialect_reports_its_own_limit_unless_the_app_wide_one_refused_the_request(app, http, admin_headers):
    """VOXIS answers carry the VOXIS limit; a 429 from the address limit names the address limit instead."""
    app.config["RATELIMIT_ANON"] = "2 per minute"
    assert [http.get("/api/health").headers["X-RateLimit-Limit"] for _ in range(2)] == ["30", "30"]
    assert_429(http.get("/api/health"), 2)
    assert http.get("/auth/me", headers=admin_headers).headers["X-RateLimit-Limit"] == "300"  # other routes unchanged


def test_unparseable_dialect_limit_refuses_to_start(make_app):
    """RATELIMIT_VOXIS is checked when the app is built, like the app-wide limits."""
    with pytest.raises(RuntimeError, match="RATELIMIT_VOXIS"):
        make_app(RATELIMIT_VOXIS="lots")


def test_health_is_exempt(app, http):
    """Probes never count and never get limited."""
    app.config["RATELIMIT_ANON"] = "1 per minute"
    for _ in range(5):
        response = http.get("/health")
        assert response.status_code == 200 and "X-RateLimit-Limit" not in response.headers
    assert http.get("/auth/me").status_code == 401
    assert http.get("/auth/me").status_code == 429


def test_retry_after_only_on_429(app, http):
    """Limited responses carry the X-RateLimit headers; Retry-After only comes with a 429."""
    app.config["RATELIMIT_ANON"] = "1 per minute"
    first = http.get("/auth/me")
    assert all(name in first.headers for name in RATE_HEADERS) and "Retry-After" not in first.headers
    assert "Retry-After" in http.get("/auth/me").headers


def test_limit_resets_after_its_window(app, http):
    """A fixed window: after it ends, requests pass again."""
    app.config["RATELIMIT_ANON"] = "2 per 1 second"
    assert [http.get("/auth/me").status_code for _ in range(3)] == [401, 401, 429]
    time.sleep(1.1)
    assert http.get("/auth/me").status_code == 401


def test_refusals_are_logged_once_per_address_and_limit_per_minute_with_a_count(app, http, monkeypatch):
    """A client hammering a limit writes two system-log lines a minute, not one per request."""
    from app import ratelimit

    now = [1000.0]
    monkeypatch.setattr(ratelimit.rejections, "clock", lambda: now[0])
    app.config["RATELIMIT_ANON"] = "2 per minute"
    a, b = {"REMOTE_ADDR": "10.0.0.1"}, {"REMOTE_ADDR": "10.0.0.2"}
    statuses = [http.get("/auth/me", environ_base=a).status_code for _ in range(50)]
    statuses += [http.get("/auth/me", environ_base=b).status_code for _ in range(20)]
    assert statuses.count(429) == 48 + 18
    log = Path(app.config["DATA_DIR"]) / "logs" / "system.log"

    def lines() -> list[dict]:
        return [entry for entry in map(json.loads, log.read_text().splitlines()) if "ratelimit" in entry["message"]]

    assert [(entry["remote_addr"], "exceeded at endpoint" in entry["message"]) for entry in lines()] == [
        ("10.0.0.1", True),
        ("10.0.0.2", True),
    ]
    now[0] += 61  # the minute is over: the next request, refused or not, writes the counts
    assert http.get("/health").status_code == 200
    summaries = [(entry["remote_addr"], entry["suppressed"]) for entry in lines()[2:]]
    assert summaries == [("10.0.0.1", 47), ("10.0.0.2", 17)]
    assert "47 more times" in lines()[2]["message"] and "2 per 1 minute" in lines()[2]["message"]
    assert http.get("/auth/me", environ_base=a).status_code == 429
    assert len(lines()) == 5  # a new minute: its first refusal is logged again


# -------------------------------------------------------------- failed logins


def test_ten_failed_logins_then_429_even_with_the_right_password(http):
    """Only failures count, per address and username; the 11th attempt is refused outright."""
    for _ in range(10):
        assert login(http, "admin", "wrong-password").status_code == 401
    assert_429(login(http, "admin", ADMIN_PASSWORD), 10)
    assert login(http, "someone-else", "wrong-password").status_code == 401  # other username
    assert login(http, "admin", ADMIN_PASSWORD, ip="10.0.0.9").status_code == 200  # other address


def test_successful_logins_do_not_count_as_failures(app, http):
    """Only failures count."""
    app.config["RATELIMIT_LOGIN_FAILURES"] = "2 per minute"
    assert login(http, "admin", "wrong-password").status_code == 401
    for _ in range(5):
        assert login(http, "admin", ADMIN_PASSWORD).status_code == 200
    assert login(http, "admin", "wrong-password").status_code == 401
    assert_429(login(http, "admin", ADMIN_PASSWORD), 2)


def test_failed_login_limit_ignores_username_case(app, http):
    """'Admin' and 'admin' share the failure budget."""
    app.config["RATELIMIT_LOGIN_FAILURES"] = "2 per minute"
    assert login(http, "admin", "wrong-password").status_code == 401
    assert login(http, "ADMIN", "wrong-password").status_code == 401
    assert login(http, "Admin", ADMIN_PASSWORD).status_code == 429


def test_failed_login_limit_may_have_several_windows(app, http):
    """ "5 per minute;2 per hour": the hourly budget ends first and says so in the headers."""
    app.config["RATELIMIT_LOGIN_FAILURES"] = "5 per minute;2 per hour"
    assert [login(http, "admin", "wrong-password").status_code for _ in range(2)] == [401, 401]
    response = login(http, "admin", ADMIN_PASSWORD)
    assert response.status_code == 429 and response.headers["X-RateLimit-Limit"] == "2"
    assert 60 < int(response.headers["Retry-After"]) <= 3600


# ---------------------------------------------------------------- proxies, setup


def test_x_forwarded_for_is_ignored_without_trusted_proxies(app, http):
    """A client cannot pick a fresh bucket by sending X-Forwarded-For."""
    app.config["RATELIMIT_ANON"] = "2 per minute"
    for n in range(2):
        assert http.get("/auth/me", headers={"X-Forwarded-For": f"203.0.113.{n}"}).status_code == 401
    assert_429(http.get("/auth/me", headers={"X-Forwarded-For": "203.0.113.99"}), 2)


def test_x_forwarded_for_is_the_client_behind_a_trusted_proxy(make_app):
    """WT_TRUSTED_PROXIES=1: buckets and the audit log use the forwarded address."""
    app = make_app(TRUSTED_PROXIES=1, RATELIMIT_ANON="2 per minute")
    http = app.test_client(use_cookies=False)
    for ip in ("203.0.113.1", "203.0.113.1"):
        assert http.get("/auth/me", headers={"X-Forwarded-For": ip}).status_code == 401
    assert http.get("/auth/me", headers={"X-Forwarded-For": "203.0.113.1"}).status_code == 429
    assert http.get("/auth/me", headers={"X-Forwarded-For": "203.0.113.2"}).status_code == 401
    http.post(
        "/auth/login", json={"username": "admin", "password": "nope-nope"}, headers={"X-Forwarded-For": "198.51.100.7"}
    )
    from app.models import AuditLog

    with app.app_context():
        assert AuditLog.search(action="login_failed").first().ip == "198.51.100.7"


def test_counters_and_settings_do_not_leak_from_one_app_to_the_next(make_app):
    """The limiter is module-level, but each app starts with fresh storage and its own switch."""
    first = make_app(RATELIMIT_ANON="2 per minute")
    c = first.test_client(use_cookies=False)
    assert [c.get("/auth/me").status_code for _ in range(3)] == [401, 401, 429]
    off = make_app(RATELIMIT_ENABLED=False, RATELIMIT_ANON="2 per minute")
    c = off.test_client(use_cookies=False)
    assert [c.get("/auth/me").status_code for _ in range(5)] == [401] * 5
    for _ in range(12):
        c.post("/auth/login", json={"username": "admin", "password": "wrong-password"})
    assert c.post("/auth/login", json={"username": "admin", "password": ADMIN_PASSWORD}).status_code == 200
    again = make_app(RATELIMIT_ANON="2 per minute")
    c = again.test_client(use_cookies=False)
    assert [c.get("/auth/me").status_code for _ in range(3)] == [401, 401, 429]


def test_fixture_apps_start_with_empty_counters(app, http):
    """Runs after the tests above used up limits: nothing carried over into this app."""
    from app.ratelimit import limiter

    assert limiter.storage.get("LIMITER/ip:127.0.0.1/principal/60/1/minute") == 0
    assert http.get("/auth/me").headers["X-RateLimit-Remaining"] == "59"


@pytest.mark.parametrize(
    "name", ["RATELIMIT_ANON", "RATELIMIT_USER", "RATELIMIT_ADMIN", "RATELIMIT_CHUNKS", "RATELIMIT_LOGIN_FAILURES"]
)
def test_unparseable_limit_refuses_to_start(make_app, name):
    """A typo in a limit fails at start, not on the first request."""
    with pytest.raises(RuntimeError, match=name):
        make_app(**{name: "lots"})
