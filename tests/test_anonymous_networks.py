"""WT_ANONYMOUS_NETWORKS: credential-less VOXIS clients on trusted networks act as a no-login service user.

The Flask test client's address is 127.0.0.1 unless ``environ_base={"REMOTE_ADDR": ...}`` says otherwise.
"""

from __future__ import annotations

import base64
import io

import pytest
import requests

from tests.conftest import build_app, launch_appliance
from tests.helpers import AUDIO, reference, wait_for, wer

NETWORKS = "10.1.0.0/16, fd00::/8"
INSIDE = {"REMOTE_ADDR": "10.1.2.3"}
OUTSIDE = {"REMOTE_ADDR": "10.2.0.1"}
CLIP = AUDIO / "jfk.flac"
SERVICE = "anonymous-network"


@pytest.fixture
def app(tmp_path):
    """The shared fixtures' app, trusting 10.1.0.0/16 and fd00::/8 (overrides conftest's ``app``)."""
    return build_app(tmp_path / "data", ANONYMOUS_NETWORKS=NETWORKS)


@pytest.fixture
def anon(app):
    """A client without cookies: nothing but its address identifies it."""
    return app.test_client(use_cookies=False)


def upload(http, environ: dict[str, str], **kw):
    """POST /api/upload with the jfk clip and no credentials."""
    return http.post(
        "/api/upload", data={"file": (io.BytesIO(CLIP.read_bytes()), CLIP.name)}, environ_base=environ, **kw
    )


def service_user():
    """The service account's row, or None."""
    from app.models import User

    return User.by_username(SERVICE)


# ------------------------------------------------------------------ who gets in


def test_inside_address_uploads_processes_polls_and_exports_without_credentials(app, anon, drain, stub_engine):
    """The whole VOXIS flow from 10.1.2.3 with no credentials; the job belongs to the non-admin service user."""
    uploaded = upload(anon, INSIDE)
    assert uploaded.status_code == 200, uploaded.get_json()
    started = anon.post(
        "/api/process", json={"file_id": uploaded.get_json()["file_id"], "transcribe": True}, environ_base=INSIDE
    )
    assert started.status_code == 200, started.get_json()
    job_id = started.get_json()["job_id"]
    drain()
    status = anon.get(f"/api/status/{job_id}", environ_base=INSIDE).get_json()
    assert status["status"] == "complete" and status["transcript"].startswith("word0")
    exported = anon.get(f"/api/export/{job_id}?format=wav", environ_base=INSIDE)
    assert exported.status_code == 200 and exported.mimetype == "audio/wav"
    assert anon.get("/api/jobs", environ_base=INSIDE).get_json()["total"] == 1
    with app.app_context():
        from app.models import Job

        owner = Job.get_by_id(job_id).user
        assert (owner.username, owner.role, owner.is_active) == (SERVICE, "user", True)


def test_outside_address_needs_credentials(anon):
    """10.2.0.1 is not in 10.1.0.0/16: every VOXIS route but /api/health answers 401."""
    assert upload(anon, OUTSIDE).status_code == 401
    assert anon.post("/api/process", json={"file_id": "x"}, environ_base=OUTSIDE).status_code == 401
    for path in ("/api/status/nope", "/api/export/nope", "/api/jobs"):
        response = anon.get(path, environ_base=OUTSIDE)
        assert response.status_code == 401 and response.get_json()["error_code"] == "UNAUTHORIZED", path
    assert anon.get("/api/health", environ_base=OUTSIDE).status_code == 200
    with anon.application.app_context():
        assert service_user() is None  # refused callers do not even create the account


def test_default_is_closed(tmp_path):
    """No WT_ANONYMOUS_NETWORKS: even loopback needs credentials."""
    app = build_app(tmp_path / "data")
    assert app.config["ANONYMOUS_NETWORKS"] == ()
    http = app.test_client(use_cookies=False)
    assert upload(http, {}).status_code == 401
    assert http.get("/api/jobs").status_code == 401


def test_only_the_dialects_without_auth_are_open(anon):
    """Trusted addresses reach VOXIS only: canonical, account, admin and other dialects' routes stay 401."""
    assert anon.get("/api/status/nope", environ_base=INSIDE).status_code == 404  # let in, then not found
    for method, path in (
        ("GET", "/api/jobs/"),
        ("GET", "/auth/me"),
        ("GET", "/admin/users"),
        ("GET", "/admin/audit"),
        ("GET", "/admin/stats"),
        ("GET", "/v1/models"),
        ("GET", "/jobs"),
        ("POST", "/api/api-keys/"),
    ):
        response = anon.open(path, method=method, environ_base=INSIDE)
        assert response.status_code == 401, (path, response.status_code)


def test_ipv6_and_ipv4_mapped_client_addresses(anon):
    """fd00::/8 admits fd00::5; ::ffff:10.1.0.7 is the IPv4 client 10.1.0.7 on a dual-stack socket."""
    for address, expected in (("fd00::5", 200), ("::ffff:10.1.0.7", 200), ("fe80::1", 401), ("::ffff:10.2.0.1", 401)):
        assert anon.get("/api/jobs", environ_base={"REMOTE_ADDR": address}).status_code == expected, address


# ------------------------------------------------------------ proxies, credentials


def test_x_forwarded_for_cannot_claim_a_trusted_address_without_trusted_proxies(anon):
    """WT_TRUSTED_PROXIES=0: the header is ignored, the socket's address decides."""
    spoofed = anon.get(
        "/api/jobs", headers={"X-Forwarded-For": "10.1.0.9"}, environ_base={"REMOTE_ADDR": "203.0.113.5"}
    )
    assert spoofed.status_code == 401


def test_behind_a_trusted_proxy_the_forwarded_client_address_decides(tmp_path):
    """WT_TRUSTED_PROXIES=1 with the proxy inside the network: only clients the proxy forwards from inside get in."""
    app = build_app(tmp_path / "data", ANONYMOUS_NETWORKS="10.1.0.0/16", TRUSTED_PROXIES=1)
    http = app.test_client(use_cookies=False)
    proxy = {"REMOTE_ADDR": "10.1.0.1"}
    assert http.get("/api/jobs", headers={"X-Forwarded-For": "203.0.113.5"}, environ_base=proxy).status_code == 401
    assert http.get("/api/jobs", headers={"X-Forwarded-For": "10.1.0.9"}, environ_base=proxy).status_code == 200


def test_credentials_still_win_and_bad_ones_are_refused(anon, admin_headers, stub_engine):
    """From inside, a valid token acts as its user; a wrong one is a 401, never a fallback to the service user."""
    as_admin = upload(anon, INSIDE, headers=admin_headers)
    assert as_admin.status_code == 200
    job = anon.post(
        "/api/process", json={"file_id": as_admin.get_json()["file_id"]}, headers=admin_headers, environ_base=INSIDE
    ).get_json()["job_id"]
    with anon.application.app_context():
        from app.models import Job

        assert Job.get_by_id(job).user.username == "admin"
    bad = anon.get("/api/jobs", headers={"Authorization": "Bearer not-a-token"}, environ_base=INSIDE)
    assert bad.status_code == 401
    assert anon.get(f"/api/status/{job}", environ_base=INSIDE).status_code == 404  # the admin's job is not theirs


# ------------------------------------------------------------------ the service user


def test_service_user_is_not_admin_and_nobody_can_log_in_as_it(anon, client, admin_headers):
    """Created on first use with the user role and a hash no password matches: login and Basic are 401."""
    assert anon.get("/api/jobs", environ_base=INSIDE).status_code == 200
    users = client.get("/admin/users", headers=admin_headers).get_json()
    listed = [u for u in users["users"] if u["username"] == SERVICE]
    assert len(listed) == 1 and listed[0]["role"] == "user"
    from app.services.users import NO_LOGIN_HASH

    for password in ("", NO_LOGIN_HASH, "anything-at-all"):
        login = anon.post("/auth/login", json={"username": SERVICE, "password": password}, environ_base=INSIDE)
        assert login.status_code in (401, 422), login.get_json()
        basic = base64.b64encode(f"{SERVICE}:{password}".encode()).decode()
        assert (
            anon.get("/api/jobs", headers={"Authorization": f"Basic {basic}"}, environ_base=INSIDE).status_code == 401
        )


def test_disabling_or_taking_over_the_service_account_closes_anonymous_access(anon, client, admin_headers):
    """Admins switch it off by disabling the account; an account someone can log in to is never borrowed."""
    assert anon.get("/api/jobs", environ_base=INSIDE).status_code == 200
    with anon.application.app_context():
        user_id = service_user().id
    assert client.patch(f"/admin/users/{user_id}", headers=admin_headers, json={"is_active": False}).status_code == 200
    assert anon.get("/api/jobs", environ_base=INSIDE).status_code == 401
    assert client.patch(f"/admin/users/{user_id}", headers=admin_headers, json={"is_active": True}).status_code == 200
    assert anon.get("/api/jobs", environ_base=INSIDE).status_code == 200
    changed = client.patch(f"/admin/users/{user_id}", headers=admin_headers, json={"password": "now-a-real-account"})
    assert changed.status_code == 200
    assert anon.get("/api/jobs", environ_base=INSIDE).status_code == 401


def test_an_ordinary_account_with_the_service_name_is_never_borrowed(anon, client, admin_headers):
    """A user who registered the name first keeps it to themselves; anonymous callers get 401."""
    created = client.post(
        "/admin/users", headers=admin_headers, json={"username": SERVICE.upper(), "password": "their-own-password"}
    )
    assert created.status_code == 201
    assert anon.get("/api/jobs", environ_base=INSIDE).status_code == 401
    with anon.application.app_context():
        assert service_user() is None


# ------------------------------------------------------------------ limits, audit


def test_each_trusted_address_has_its_own_rate_limit(app, anon):
    """The service user's bucket is not shared: the anonymous limit counts per address, so is the VOXIS one."""
    app.config.update(RATELIMIT_ANON="3 per minute", RATELIMIT_USER="2 per minute")
    first, second = {"REMOTE_ADDR": "10.1.0.1"}, {"REMOTE_ADDR": "10.1.0.2"}
    assert [anon.get("/api/jobs", environ_base=first).status_code for _ in range(3)] == [200] * 3
    refused = anon.get("/api/jobs", environ_base=first)
    assert refused.status_code == 429 and refused.headers["X-RateLimit-Limit"] == "3"
    assert "address" in refused.get_json()["detail"]
    assert [anon.get("/api/jobs", environ_base=second).status_code for _ in range(3)] == [200] * 3

    app.config.update(RATELIMIT_ANON="100 per minute", RATELIMIT_VOXIS="2 per minute")
    third, fourth = {"REMOTE_ADDR": "10.1.0.3"}, {"REMOTE_ADDR": "10.1.0.4"}
    assert [anon.get("/api/jobs", environ_base=third).status_code for _ in range(3)] == [200, 200, 429]
    assert anon.get("/api/jobs", environ_base=fourth).status_code == 200


def test_writes_are_audited_with_address_and_path_but_polls_are_not(anon, client, admin_headers):
    """One anonymous_request row per upload or process call; status polls, lists and refusals add none."""
    file_id = upload(anon, INSIDE).get_json()["file_id"]
    job_id = anon.post("/api/process", json={"file_id": file_id}, environ_base=INSIDE).get_json()["job_id"]
    for _ in range(3):
        assert anon.get(f"/api/status/{job_id}", environ_base=INSIDE).status_code == 200
    assert anon.get("/api/jobs", environ_base=INSIDE).status_code == 200
    assert upload(anon, OUTSIDE).status_code == 401
    entries = client.get("/admin/audit?action=anonymous_request", headers=admin_headers).get_json()["entries"]
    assert [(e["target"], e["ip"], e["username"], e["detail"]) for e in entries] == [
        ("/api/process", "10.1.2.3", SERVICE, {"method": "POST"}),
        ("/api/upload", "10.1.2.3", SERVICE, {"method": "POST"}),
    ]


# ------------------------------------------------------------------------ settings


@pytest.mark.parametrize("value", ["10.0.0.0/33", "192.168.1.7/24", "lan", "10.0.0.0/8,,bogus"])
def test_invalid_network_refuses_to_start(tmp_path, value):
    """A typo fails at start with the setting's name and the bad entry, not silently on every request."""
    with pytest.raises(RuntimeError, match=r"WT_ANONYMOUS_NETWORKS: '.*' is not a network"):
        build_app(tmp_path / "data", ANONYMOUS_NETWORKS=value)


def test_networks_come_from_the_environment_and_are_parsed_once(monkeypatch):
    """Comma-separated, spaces and empty entries ignored, a bare address is a /32."""
    import ipaddress

    from app.settings import load_settings

    monkeypatch.setenv("WT_ANONYMOUS_NETWORKS", " 192.168.1.0/24, ,10.0.0.5,fd00::/8 ")
    assert load_settings()["ANONYMOUS_NETWORKS"] == (
        ipaddress.ip_network("192.168.1.0/24"),
        ipaddress.ip_network("10.0.0.5/32"),
        ipaddress.ip_network("fd00::/8"),
    )
    monkeypatch.setenv("WT_ANONYMOUS_NETWORKS", "192.168.1.0/24;10.0.0.0/8")
    with pytest.raises(RuntimeError, match="WT_ANONYMOUS_NETWORKS"):
        load_settings()


# ------------------------------------------------------------------- end to end


@pytest.mark.e2e
def test_bazarr_style_client_on_loopback_cleans_and_transcribes_without_credentials(tmp_path):
    """A real appliance with WT_ANONYMOUS_NETWORKS=127.0.0.1/32: VOXIS upload + process with transcription,
    no credentials, through Gunicorn, the queue and whisper.cpp; judged by WER; the writes are audited."""
    with launch_appliance(
        tmp_path / "data",
        "anonymous-networks.log",
        WT_ANONYMOUS_NETWORKS="127.0.0.1/32",
        WT_RATELIMIT_ANON="600 per minute",
        WT_RATELIMIT_VOXIS="600 per minute",
    ) as server:
        with open(CLIP, "rb") as f:
            uploaded = requests.post(server.url + "/api/upload", files={"file": (CLIP.name, f)}, timeout=60)
        assert uploaded.status_code == 200, uploaded.text
        started = requests.post(
            server.url + "/api/process",
            timeout=30,
            json={
                "file_id": uploaded.json()["file_id"],
                "transcribe": True,
                "denoise_strength": 40,
                "target_sample_rate": 48000,
                "target_channels": 1,
            },
        )
        assert started.status_code == 200, started.text
        job_id = started.json()["job_id"]

        def finished():
            status = requests.get(f"{server.url}/api/status/{job_id}", timeout=10).json()
            return status if status["status"] in ("complete", "error") else None

        status = wait_for(finished, timeout=180, interval=0.5)
        assert status["status"] == "complete", status
        print(f"\nanonymous VOXIS transcript: {status['transcript']!r}")
        assert wer(reference(CLIP.name), status["transcript"]) <= 0.10
        assert requests.get(server.url + "/api/jobs/", timeout=10).status_code == 401  # canonical API stays closed
        entries = server.get("/admin/audit?action=anonymous_request").json()["entries"]
        assert sorted((e["target"], e["ip"]) for e in entries) == [
            ("/api/process", "127.0.0.1"),
            ("/api/upload", "127.0.0.1"),
        ]
