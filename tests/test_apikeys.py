"""API keys through HTTP: created once, stored as a hash, scoped, expiring, revocable and private."""

from __future__ import annotations

import hashlib
import json
from datetime import timedelta

import pytest

from tests.conftest import ADMIN_PASSWORD
from tests.helpers import assert_error, post_clip

pytestmark = pytest.mark.database  # scripts/test runs these on PostgreSQL too

LIST_FIELDS = {
    "key_id",
    "name",
    "key_preview",
    "permissions",
    "created_at",
    "expires_at",
    "last_used",
    "usage_count",
    "is_active",
}


@pytest.fixture
def http(app):
    """A client that keeps no cookies: every request carries exactly the credentials it is given."""
    return app.test_client(use_cookies=False)


def create_key(http, headers, permissions=("jobs:read",), **extra) -> dict:
    """POST /api/api-keys/ and return the 201 body."""
    response = http.post(
        "/api/api-keys/", headers=headers, json={"name": "My Integration", "permissions": list(permissions), **extra}
    )
    assert response.status_code == 201, response.get_json()
    return response.get_json()


def test_create_returns_the_key_once_and_stores_only_its_hash(app, http, admin_headers):
    """201 with a wt_ key; the database and the list only ever hold the hash and a preview."""
    body = create_key(
        http,
        admin_headers,
        ["jobs:read", "jobs:create", "export:download"],
        expires_days=90,
        rate_limit={"requests_per_minute": 100, "daily_quota": 10000},
    )
    secret = body["api_key"]
    assert secret.startswith("wt_") and len(secret) > 40 and body["key_id"].startswith("key_")
    assert body["permissions"] == ["jobs:read", "jobs:create", "export:download"]
    assert body["expires_at"].endswith("Z") and "cannot be retrieved again" in body["message"]
    listed = http.get("/api/api-keys/", headers=admin_headers)
    assert secret not in listed.get_data(as_text=True)
    (entry,) = listed.get_json()["api_keys"]
    assert set(entry) >= LIST_FIELDS and entry["key_id"] == body["key_id"]
    assert entry["key_preview"] == f"wt_****_****_{secret[-4:]}" and entry["is_active"] is True
    assert entry["rate_limit"] == {"requests_per_minute": 100, "daily_quota": 10000}
    from app.models import ApiKey

    with app.app_context():
        row = ApiKey.get_by_id(body["key_id"])
        assert row.secret_hash == hashlib.sha256(secret.encode()).hexdigest()
        assert secret not in json.dumps({k: str(v) for k, v in row.__data__.items()})


@pytest.mark.parametrize("how", ["x-api-key", "bearer"])
def test_key_is_accepted_in_x_api_key_and_as_bearer(http, admin_headers, how):
    """Both headers work and each use is counted."""
    secret = create_key(http, admin_headers)["api_key"]
    headers = {"X-API-Key": secret} if how == "x-api-key" else {"Authorization": f"Bearer {secret}"}
    assert http.get("/api/jobs/", headers=headers).status_code == 200
    assert http.get("/api/jobs/", headers=headers).status_code == 200
    (entry,) = http.get("/api/api-keys/", headers=admin_headers).get_json()["api_keys"]
    assert entry["usage_count"] == 2 and entry["last_used"].endswith("Z")


def test_missing_scope_is_403(http, admin_headers):
    """A read-only key cannot create, delete, download or administer."""
    key = {"X-API-Key": create_key(http, admin_headers, ["jobs:read"])["api_key"]}
    assert http.get("/api/jobs/", headers=key).status_code == 200
    assert_error(post_clip(http, key), 403, "INSUFFICIENT_SCOPE")
    assert_error(http.delete("/api/jobs/0123", headers=key), 403, "INSUFFICIENT_SCOPE")
    assert_error(http.get("/api/export/download/0123/txt", headers=key), 403, "INSUFFICIENT_SCOPE")
    assert_error(http.get("/admin/users", headers=key), 403, "FORBIDDEN")


def test_scoped_key_can_do_what_it_was_given(http, admin_headers, stub_engine, uploaded_job):
    """jobs:create uploads."""
    key = {"X-API-Key": create_key(http, admin_headers, ["jobs:create", "jobs:read"])["api_key"]}
    job_id = uploaded_job(http, key)["job_id"]
    assert http.get(f"/api/jobs/{job_id}", headers=key).status_code == 200


def test_admin_key_with_admin_scope_reaches_admin_routes(http, admin_headers):
    """Only the admin scope opens /admin/*."""
    key = {"X-API-Key": create_key(http, admin_headers, ["admin"])["api_key"]}
    assert http.get("/admin/users", headers=key).status_code == 200


def test_expired_key_is_401(app, http, admin_headers):
    """Past expires_at the key stops working and lists as inactive."""
    from app.models import ApiKey, utcnow

    body = create_key(http, admin_headers, expires_days=1)
    key = {"X-API-Key": body["api_key"]}
    assert http.get("/api/jobs/", headers=key).status_code == 200
    with app.app_context():
        ApiKey.update(expires_at=utcnow() - timedelta(seconds=1)).where(ApiKey.key_id == body["key_id"]).execute()
    assert_error(http.get("/api/jobs/", headers=key), 401, "UNAUTHORIZED")
    assert http.get("/api/api-keys/", headers=admin_headers).get_json()["api_keys"][0]["is_active"] is False


def test_revoked_key_is_401(http, admin_headers):
    """DELETE revokes at once, in both header forms; the key stays listed as inactive."""
    body = create_key(http, admin_headers)
    response = http.delete(f"/api/api-keys/{body['key_id']}", headers=admin_headers)
    assert response.status_code == 200 and response.get_json()["is_active"] is False
    assert_error(http.get("/api/jobs/", headers={"X-API-Key": body["api_key"]}), 401, "UNAUTHORIZED")
    assert_error(http.get("/api/jobs/", headers={"Authorization": f"Bearer {body['api_key']}"}), 401)
    assert http.get("/api/api-keys/", headers=admin_headers).get_json()["api_keys"][0]["is_active"] is False


@pytest.mark.parametrize("secret", ["wt_not-a-real-key", "", "wt_"])
def test_unknown_key_is_401(http, secret):
    """A made-up key is refused (an empty header is the same as none)."""
    assert_error(http.get("/api/jobs/", headers={"X-API-Key": secret} if secret else {}), 401, "UNAUTHORIZED")


def test_key_of_a_disabled_user_is_401(http, admin_headers, user_headers):
    """Keys die with the account's access."""
    alice = user_headers("alice")
    secret = create_key(http, alice)["api_key"]
    user_id = http.get("/auth/me", headers=alice).get_json()["id"]
    http.patch(f"/admin/users/{user_id}", headers=admin_headers, json={"is_active": False})
    assert_error(http.get("/api/jobs/", headers={"X-API-Key": secret}), 401)


def test_user_can_only_grant_permissions_they_have(http, admin_headers, user_headers):
    """admin is for admins; a user's attempt is 403 and creates nothing."""
    alice = user_headers("alice")
    assert_error(
        http.post("/api/api-keys/", headers=alice, json={"name": "x", "permissions": ["admin"]}), 403, "FORBIDDEN"
    )
    assert http.get("/api/api-keys/", headers=alice).get_json()["api_keys"] == []
    assert create_key(http, admin_headers, ["admin", "jobs:read"])["permissions"] == ["admin", "jobs:read"]


def test_demoted_admins_key_loses_the_admin_scope(http, admin_headers, user_headers):
    """Scopes are checked against the owner's current role on every request."""
    other_admin = user_headers("root2", admin=True)
    secret = create_key(http, other_admin, ["admin"])["api_key"]
    user_id = http.get("/auth/me", headers=other_admin).get_json()["id"]
    http.patch(f"/admin/users/{user_id}", headers=admin_headers, json={"role": "user"})
    assert_error(http.get("/admin/users", headers={"X-API-Key": secret}), 403)


@pytest.mark.parametrize(
    ("body", "status", "code"),
    [
        ({"permissions": ["jobs:read"]}, 422, "INVALID_FIELD"),
        ({"name": "x" * 201, "permissions": ["jobs:read"]}, 422, "INVALID_FIELD"),
        ({"name": "x"}, 422, "INVALID_FIELD"),
        ({"name": "x", "permissions": []}, 422, "INVALID_FIELD"),
        ({"name": "x", "permissions": "jobs:read"}, 422, "INVALID_FIELD"),
        ({"name": "x", "permissions": ["jobs:write"]}, 422, "INVALID_PERMISSION"),
        ({"name": "x", "permissions": ["jobs:read"], "expires_days": 0}, 422, "INVALID_FIELD"),
        ({"name": "x", "permissions": ["jobs:read"], "expires_days": "90"}, 422, "INVALID_FIELD"),
        ({"name": "x", "permissions": ["jobs:read"], "expires_days": True}, 422, "INVALID_FIELD"),
        ({"name": "x", "permissions": ["jobs:read"], "rate_limit": 5}, 422, "INVALID_FIELD"),
        ({"name": "x", "permissions": ["jobs:read"], "rate_limit": {"requests_per_minute": -1}}, 422, "INVALID_FIELD"),
    ],
)
def test_invalid_key_requests_are_422(http, admin_headers, body, status, code):
    """Name, permissions, expiry and limits are checked."""
    assert_error(http.post("/api/api-keys/", headers=admin_headers, json=body), status, code)


def test_malformed_json_is_400(http, admin_headers):
    """Not JSON at all."""
    response = http.post("/api/api-keys/", headers={**admin_headers, "Content-Type": "application/json"}, data="{nope")
    assert_error(response, 400, "INVALID_JSON")


def test_keys_are_private_to_their_owner_and_admins_see_all(http, admin_headers, user_headers):
    """Another user's key is 404 to list or revoke; an admin may list with all=true and revoke it."""
    alice, bob = user_headers("alice"), user_headers("bob")
    body = create_key(http, alice)
    assert http.get("/api/api-keys/", headers=bob).get_json()["api_keys"] == []
    assert http.get("/api/api-keys/?all=true", headers=bob).get_json()["api_keys"] == []
    assert_error(http.delete(f"/api/api-keys/{body['key_id']}", headers=bob), 404, "NOT_FOUND")
    assert http.get("/api/jobs/", headers={"X-API-Key": body["api_key"]}).status_code == 200
    assert http.get("/api/api-keys/", headers=admin_headers).get_json()["api_keys"] == []
    everyone = http.get("/api/api-keys/?all=true", headers=admin_headers).get_json()["api_keys"]
    assert [(k["key_id"], k["username"]) for k in everyone] == [(body["key_id"], "alice")]
    assert http.delete(f"/api/api-keys/{body['key_id']}", headers=admin_headers).status_code == 200
    assert_error(http.get("/api/jobs/", headers={"X-API-Key": body["api_key"]}), 401)


def test_key_sees_only_its_owners_jobs(http, admin_headers, stub_engine, user_headers, uploaded_job):
    """A key acts as its owner: other users' jobs are 404."""
    alice, bob = user_headers("alice"), user_headers("bob")
    job_id = uploaded_job(http, alice)["job_id"]
    bob_key = {"X-API-Key": create_key(http, bob, ["jobs:read", "jobs:delete"])["api_key"]}
    assert_error(http.get(f"/api/jobs/{job_id}", headers=bob_key), 404)
    assert_error(http.delete(f"/api/jobs/{job_id}", headers=bob_key), 404)
    assert http.get("/api/jobs/", headers=bob_key).get_json()["total"] == 0


def test_api_key_cannot_manage_keys_or_the_password(http, admin_headers):
    """A leaked key cannot mint broader keys, revoke others or change the account."""
    key = {"X-API-Key": create_key(http, admin_headers, ["jobs:read"])["api_key"]}
    assert_error(
        http.post("/api/api-keys/", headers=key, json={"name": "x", "permissions": ["jobs:delete"]}), 403, "FORBIDDEN"
    )
    assert_error(http.get("/api/api-keys/", headers=key), 403, "FORBIDDEN")
    assert_error(
        http.post(
            "/auth/change-password",
            headers=key,
            json={"current_password": ADMIN_PASSWORD, "new_password": "something-else-1"},
        ),
        403,
    )


def test_key_management_needs_authentication(http):
    """Anonymous callers get 401."""
    assert_error(http.get("/api/api-keys/"), 401)
    assert_error(http.post("/api/api-keys/", json={"name": "x", "permissions": ["jobs:read"]}), 401)
    assert_error(http.delete("/api/api-keys/key_0123"), 401)


def test_admins_key_without_admin_scope_sees_only_the_admins_own_jobs(
    http, admin_headers, stub_engine, user_headers, uploaded_job
):
    """Visibility follows the key's scopes, not just the owner's role."""
    alice = user_headers("alice")
    alices_job = uploaded_job(http, alice)["job_id"]
    own_job = uploaded_job(http, admin_headers)["job_id"]
    key = create_key(http, admin_headers, permissions=("jobs:read",))["api_key"]
    listed = {j["job_id"] for j in http.get("/api/jobs/", headers={"X-API-Key": key}).get_json()["jobs"]}
    assert listed == {own_job}
    assert_error(http.get(f"/api/jobs/{alices_job}", headers={"X-API-Key": key}), 404)
    everything = {j["job_id"] for j in http.get("/api/jobs/", headers=admin_headers).get_json()["jobs"]}
    assert everything == {own_job, alices_job}
