"""Accounts and sessions through HTTP: register, login, logout, password change, JWT attacks, isolation."""

from __future__ import annotations

import base64
import json
import logging
import time

import jwt
import pytest

from tests.conftest import ADMIN_PASSWORD
from tests.helpers import MODELS_DIR, assert_error

PASSWORD = "correct-horse-battery"


def add_user(client, admin_headers, username: str, role: str = "user", password: str = PASSWORD) -> str:
    """Create an account through the admin API; return its id."""
    response = client.post(
        "/admin/users", headers=admin_headers, json={"username": username, "password": password, "role": role}
    )
    assert response.status_code == 201, response.get_json()
    return response.get_json()["id"]


def login_token(app, username: str, password: str = PASSWORD) -> str:
    """A bearer token, from a client that keeps no cookies (so no session leaks into later requests)."""
    response = app.test_client(use_cookies=False).post("/auth/login", json={"username": username, "password": password})
    assert response.status_code == 200, response.get_json()
    return response.get_json()["access_token"]


def bearer(token: str) -> dict[str, str]:
    """Authorization headers for a token."""
    return {"Authorization": f"Bearer {token}"}


def b64(data: dict) -> str:
    """Base64url JSON without padding, as in a JWT."""
    return base64.urlsafe_b64encode(json.dumps(data).encode()).rstrip(b"=").decode()


# ----------------------------------------------------------------- login, me


def test_login_returns_token_and_user_and_sets_httponly_lax_cookies(client):
    """The full API's body, plus a session cookie the browser UI can use and a readable CSRF cookie."""
    response = client.post("/auth/login", json={"username": "admin", "password": ADMIN_PASSWORD})
    assert response.status_code == 200
    body = response.get_json()
    assert body["token_type"] == "bearer" and body["expires_in"] == 3600 and body["access_token"].count(".") == 2
    assert body["user"]["username"] == "admin" and set(body["user"]) == {"id", "username", "email"}
    cookies = {c.split("=", 1)[0]: c for c in response.headers.getlist("Set-Cookie")}
    assert "HttpOnly" in cookies["wt_session"] and "SameSite=Lax" in cookies["wt_session"]
    assert "HttpOnly" not in cookies["wt_csrf"] and "SameSite=Lax" in cookies["wt_csrf"]


def test_login_accepts_a_form_body(app):
    """OAuth2-style clients post a form."""
    response = app.test_client().post("/auth/login", data={"username": "admin", "password": ADMIN_PASSWORD})
    assert response.status_code == 200 and response.get_json()["access_token"]


def test_me_returns_profile_with_role(client, admin_headers):
    """id, username, email, created_at, is_active and role."""
    body = client.get("/auth/me", headers=admin_headers).get_json()
    assert set(body) == {"id", "username", "email", "created_at", "is_active", "role"}
    assert body["role"] == "admin" and body["is_active"] is True and body["created_at"].endswith("Z")


@pytest.mark.parametrize("password", ["wrong-password", ""])
def test_wrong_or_missing_password_is_refused(app, password):
    """Wrong credentials are 401; missing ones 422."""
    response = app.test_client().post("/auth/login", json={"username": "admin", "password": password})
    if password:
        assert_error(response, 401, "INVALID_CREDENTIALS")
    else:
        assert_error(response, 422, "MISSING_CREDENTIALS")


def test_unknown_user_and_wrong_password_answer_alike(app):
    """No hint whether the account exists."""
    client = app.test_client()
    unknown = assert_error(client.post("/auth/login", json={"username": "nobody", "password": "x" * 10}), 401)
    wrong = assert_error(client.post("/auth/login", json={"username": "admin", "password": "x" * 10}), 401)
    assert unknown["detail"] == wrong["detail"]


def test_login_goes_on_and_logs_why_when_the_audit_write_fails(app, monkeypatch, caplog):
    """A full disk loses the audit entry, not the login: the failure goes to the system log instead."""
    import peewee

    from app.models import AuditLog

    def disk_full(*args, **kwargs):
        raise peewee.OperationalError("database or disk is full")

    monkeypatch.setattr(AuditLog, "record", disk_full)
    caplog.set_level(logging.WARNING, logger="app.api.auth_routes")
    client = app.test_client(use_cookies=False)
    response = client.post("/auth/login", json={"username": "admin", "password": ADMIN_PASSWORD})
    assert response.status_code == 200, response.get_json()
    me = client.get("/auth/me", headers={"Authorization": f"Bearer {response.get_json()['access_token']}"})
    assert me.status_code == 200 and me.get_json()["username"] == "admin"
    assert_error(client.post("/auth/login", json={"username": "admin", "password": "x" * 10}), 401)
    lines = [r.getMessage() for r in caplog.records if r.name == "app.api.auth_routes"]
    assert len(lines) == 2 and all("audit log write failed" in line and "disk is full" in line for line in lines)
    assert "login for admin" in lines[0] and "login_failed for admin" in lines[1]


def test_no_credentials_is_401(app):
    """Without a token, key or cookie."""
    assert_error(app.test_client().get("/auth/me"), 401, "UNAUTHORIZED")


def test_passwords_are_argon2_hashes_and_never_logged(app, client, admin_headers, caplog):
    """Only a hash is stored; neither passwords nor tokens show up in the log or the audit trail."""
    from app.models import AuditLog, User

    caplog.set_level(logging.DEBUG)
    add_user(client, admin_headers, "carol", password="carol-secret-pw")
    token = login_token(app, "carol", "carol-secret-pw")
    app.test_client().post("/auth/login", json={"username": "carol", "password": "carol-guess-pw"})
    with app.app_context():
        assert User.by_username("carol").password_hash.startswith("$argon2id$")
        audit = json.dumps([(e.action, e.detail, e.username) for e in AuditLog.select()])
    for secret in ("carol-secret-pw", "carol-guess-pw", token, ADMIN_PASSWORD):
        assert secret not in caplog.text and secret not in audit


def test_token_lifetime_is_configurable(app):
    """exp - iat is JWT_EXPIRES_SECONDS."""
    app.config["JWT_EXPIRES_SECONDS"] = 120
    response = app.test_client().post("/auth/login", json={"username": "admin", "password": ADMIN_PASSWORD})
    claims = jwt.decode(response.get_json()["access_token"], options={"verify_signature": False})
    assert response.get_json()["expires_in"] == 120 and claims["exp"] - claims["iat"] == 120
    assert {"sub", "jti", "iat", "exp"} <= set(claims)


@pytest.mark.parametrize("secret", [None, "", "too-short"])
def test_production_refuses_to_start_without_a_strong_secret(tmp_path, secret):
    """ENV=production needs SECRET_KEY of at least 32 characters."""
    from app import create_app

    with pytest.raises(RuntimeError, match="SECRET_KEY"):
        create_app(
            {
                "ENV": "production",
                "SECRET_KEY": secret,
                "DATA_DIR": str(tmp_path / "data"),
                "MODELS_DIR": str(MODELS_DIR),
            }
        )


# ------------------------------------------------------------------ register


def test_registration_is_403_when_disabled(app):
    """The default: no self-service accounts."""
    response = app.test_client().post(
        "/auth/register", json={"username": "eve", "password": PASSWORD, "email": "eve@example.com"}
    )
    assert_error(response, 403, "REGISTRATION_DISABLED")


def test_registration_when_enabled_creates_a_plain_user_who_can_log_in(app):
    """201 with message, user_id and username; the new account has the user role."""
    app.config["ALLOW_REGISTRATION"] = True
    client = app.test_client(use_cookies=False)
    response = client.post(
        "/auth/register",
        json={"username": "user@example.com", "password": PASSWORD, "email": "user@example.com", "role": "admin"},
    )
    assert response.status_code == 201
    body = response.get_json()
    assert body["message"] == "User registered successfully" and body["username"] == "user@example.com"
    me = client.get("/auth/me", headers=bearer(login_token(app, "user@example.com"))).get_json()
    assert me["id"] == body["user_id"] and me["role"] == "user" and me["email"] == "user@example.com"


@pytest.mark.parametrize(
    ("body", "status", "code"),
    [
        ({"username": "admin", "password": PASSWORD}, 409, "USER_EXISTS"),
        ({"username": "ADMIN", "password": PASSWORD}, 409, "USER_EXISTS"),
        ({"username": "frank", "password": "short"}, 422, "WEAK_PASSWORD"),
        ({"username": "frank", "password": 12345678}, 422, "WEAK_PASSWORD"),
        ({"username": "", "password": PASSWORD}, 422, "INVALID_USERNAME"),
        ({"username": ["x"], "password": PASSWORD}, 422, "INVALID_USERNAME"),
        ({"username": "frank", "password": PASSWORD, "email": "not-an-address"}, 422, "INVALID_EMAIL"),
    ],
)
def test_registration_rejects_duplicates_and_bad_fields(app, body, status, code):
    """Taken names (in any case) are 409; short passwords and bad fields 422."""
    app.config["ALLOW_REGISTRATION"] = True
    assert_error(app.test_client().post("/auth/register", json=body), status, code)


# ---------------------------------------------------------- logout, password


def test_logout_revokes_the_token(app):
    """The same token is refused afterwards; another session of the user is not affected."""
    client = app.test_client(use_cookies=False)
    token, other = login_token(app, "admin", ADMIN_PASSWORD), login_token(app, "admin", ADMIN_PASSWORD)
    response = client.post("/auth/logout", headers=bearer(token))
    assert response.status_code == 200 and response.get_json()["message"] == "Successfully logged out"
    assert_error(client.get("/auth/me", headers=bearer(token)), 401, "UNAUTHORIZED")
    assert client.get("/auth/me", headers=bearer(other)).status_code == 200


def test_change_password_revokes_other_tokens_and_keeps_the_current_one(app, client, admin_headers):
    """The old password stops working; so do other sessions; the session that changed it stays."""
    add_user(client, admin_headers, "dave")
    current, other = login_token(app, "dave"), login_token(app, "dave")
    c = app.test_client(use_cookies=False)
    response = c.post(
        "/auth/change-password",
        headers=bearer(current),
        json={"current_password": PASSWORD, "new_password": "a-brand-new-password"},
    )
    assert response.status_code == 200, response.get_json()
    assert c.get("/auth/me", headers=bearer(current)).status_code == 200
    assert_error(c.get("/auth/me", headers=bearer(other)), 401)
    assert_error(c.post("/auth/login", json={"username": "dave", "password": PASSWORD}), 401)
    assert login_token(app, "dave", "a-brand-new-password")


@pytest.mark.parametrize(
    ("body", "status", "code"),
    [
        ({"current_password": "wrong-password", "new_password": "a-brand-new-password"}, 400, "INVALID_PASSWORD"),
        ({"current_password": PASSWORD, "new_password": "short"}, 422, "WEAK_PASSWORD"),
        ({"current_password": PASSWORD}, 422, "WEAK_PASSWORD"),
        ({"current_password": PASSWORD, "new_password": PASSWORD}, 422, "SAME_PASSWORD"),
    ],
)
def test_change_password_checks_the_current_one_and_the_new_length(app, client, admin_headers, body, status, code):
    """Nothing changes on a wrong current password or a weak new one."""
    add_user(client, admin_headers, "dave")
    token = login_token(app, "dave")
    c = app.test_client(use_cookies=False)
    assert_error(c.post("/auth/change-password", headers=bearer(token), json=body), status, code)
    assert login_token(app, "dave")  # the old password still works


def test_cookie_session_needs_the_csrf_header_to_change_state(app):
    """Reads work with the cookie alone; a POST needs X-CSRF-Token equal to the wt_csrf cookie."""
    client = app.test_client()
    client.post("/auth/login", json={"username": "admin", "password": ADMIN_PASSWORD})
    assert client.get("/auth/me").get_json()["username"] == "admin"
    assert_error(client.post("/auth/logout"), 403, "CSRF_FAILED")
    assert_error(client.post("/auth/logout", headers={"X-CSRF-Token": "guess"}), 403, "CSRF_FAILED")
    csrf = client.get_cookie("wt_csrf").value
    assert client.post("/auth/logout", headers={"X-CSRF-Token": csrf}).status_code == 200
    assert_error(client.get("/auth/me"), 401)


# --------------------------------------------------------------- JWT attacks


def _forge(app, token: str, attack: str) -> str:
    secret = app.config["SECRET_KEY"]
    header, payload, signature = token.split(".")
    claims = jwt.decode(token, options={"verify_signature": False})
    if attack == "alg_none":
        return f"{b64({'alg': 'none', 'typ': 'JWT'})}.{payload}."
    if attack == "alg_none_with_signature":
        return f"{b64({'alg': 'none', 'typ': 'JWT'})}.{payload}.{signature}"
    if attack == "wrong_key":
        return jwt.encode(claims, "not-the-secret-" * 4, algorithm="HS256")
    if attack == "other_algorithm":
        return jwt.encode(claims, secret, algorithm="HS512")
    if attack == "tampered_body":
        return f"{header}.{b64({**claims, 'sub': '1', 'role': 'admin'})}.{signature}"
    if attack == "expired":
        return jwt.encode(
            {**claims, "iat": int(time.time()) - 7200, "exp": int(time.time()) - 3600}, secret, algorithm="HS256"
        )
    if attack.startswith("missing_"):
        claims.pop(attack.removeprefix("missing_"))
        return jwt.encode(claims, secret, algorithm="HS256")
    if attack == "never_issued_jti":
        return jwt.encode({**claims, "jti": "f" * 32}, secret, algorithm="HS256")
    if attack == "other_users_sub":
        return jwt.encode({**claims, "sub": "1"}, secret, algorithm="HS256")
    if attack == "garbage":
        return "not.a.jwt"
    raise AssertionError(attack)


@pytest.mark.parametrize(
    "attack",
    [
        "alg_none",
        "alg_none_with_signature",
        "wrong_key",
        "other_algorithm",
        "tampered_body",
        "expired",
        "missing_exp",
        "missing_iat",
        "missing_sub",
        "missing_jti",
        "never_issued_jti",
        "other_users_sub",
        "garbage",
    ],
)
def test_forged_or_broken_tokens_are_401(app, client, admin_headers, attack):
    """The algorithm is fixed, the signature covers everything, and the claims are required."""
    add_user(client, admin_headers, "mallory")
    token = _forge(app, login_token(app, "mallory"), attack)
    c = app.test_client(use_cookies=False)
    assert_error(c.get("/auth/me", headers=bearer(token)), 401, "UNAUTHORIZED")
    assert_error(c.get("/admin/users", headers=bearer(token)), 401, "UNAUTHORIZED")


def test_forged_session_cookie_is_401(app, client, admin_headers):
    """The cookie goes through the same checks as the header."""
    add_user(client, admin_headers, "mallory")
    c = app.test_client()
    c.set_cookie("wt_session", _forge(app, login_token(app, "mallory"), "alg_none"))
    assert_error(c.get("/auth/me"), 401)


def test_token_of_a_disabled_user_is_401_and_works_again_after_a_new_login(app, client, admin_headers):
    """Disabling revokes the sessions; re-enabling does not bring them back."""
    user_id = add_user(client, admin_headers, "erin")
    token = login_token(app, "erin")
    c = app.test_client(use_cookies=False)
    assert client.patch(f"/admin/users/{user_id}", headers=admin_headers, json={"is_active": False}).status_code == 200
    assert_error(c.get("/auth/me", headers=bearer(token)), 401)
    assert_error(c.post("/auth/login", json={"username": "erin", "password": PASSWORD}), 401)
    client.patch(f"/admin/users/{user_id}", headers=admin_headers, json={"is_active": True})
    assert_error(c.get("/auth/me", headers=bearer(token)), 401)
    assert c.get("/auth/me", headers=bearer(login_token(app, "erin"))).status_code == 200


def test_token_of_a_deleted_user_is_401(app, client, admin_headers):
    """Deleting an account takes its tokens with it."""
    user_id = add_user(client, admin_headers, "gone")
    token = login_token(app, "gone")
    assert client.delete(f"/admin/users/{user_id}", headers=admin_headers).status_code == 200
    assert_error(app.test_client(use_cookies=False).get("/auth/me", headers=bearer(token)), 401)


# --------------------------------------------------------------- isolation


def test_users_see_only_their_own_jobs_and_exports_and_admins_see_all(
    app, admin_headers, stub_engine, drain, user_headers, uploaded_job
):
    """Another user's job is 404 on every route (never 403); the admin sees it."""
    c = app.test_client(use_cookies=False)
    alice, bob = user_headers("alice"), user_headers("bob")
    job_id = uploaded_job(c, alice)["job_id"]
    drain()
    assert c.get(f"/api/export/download/{job_id}/txt", headers=alice).status_code == 200
    for method, path in [
        ("get", f"/api/jobs/{job_id}"),
        ("get", f"/api/progress/{job_id}"),
        ("get", f"/api/export/download/{job_id}/txt"),
        ("post", f"/api/jobs/{job_id}/restart"),
        ("post", f"/api/jobs/{job_id}/cancel"),
        ("delete", f"/api/jobs/{job_id}"),
    ]:
        assert_error(getattr(c, method)(path, headers=bob), 404, "NOT_FOUND")
    listed = c.get("/api/jobs/", headers=bob).get_json()
    assert listed["total"] == 0 and listed["jobs"] == []
    assert [j["job_id"] for j in c.get("/api/jobs/", headers=alice).get_json()["jobs"]] == [job_id]
    assert c.get(f"/api/jobs/{job_id}", headers=admin_headers).status_code == 200
    assert c.get(f"/api/export/download/{job_id}/srt", headers=admin_headers).status_code == 200
    assert c.get(f"/api/jobs/{job_id}", headers=alice).get_json()["status"] == "completed"


def test_still_valid_follows_revocation_expiry_and_disabled_users(app, client, admin_headers):
    """What long-lived sockets re-check: the token or key is still live and the user still active."""
    from app.models import ApiKey, Token, User
    from app.security import decode_token, principal_from_api_key, still_valid
    from app.services.credentials import Principal

    token = admin_headers["Authorization"].removeprefix("Bearer ")
    key = client.post(
        "/api/api-keys/", headers=admin_headers, json={"name": "socket", "permissions": ["jobs:read"]}
    ).get_json()["api_key"]
    with app.test_request_context():
        user, claims = decode_token(token)
        by_token = Principal(user, frozenset(), "jwt", claims=claims)
        by_key = principal_from_api_key(key)
        assert still_valid(by_token) and still_valid(by_key)
        assert not still_valid(Principal(user, frozenset(), "jwt", claims={**claims, "exp": 1}))
        Token.revoke(claims["jti"])
        ApiKey.update(is_active=False).where(ApiKey.key_id == by_key.api_key.key_id).execute()
        assert not still_valid(by_token) and not still_valid(by_key)
        User.update(is_active=False).where(User.id == user.id).execute()
        assert not still_valid(Principal(user, frozenset(), "basic"))
