"""Account administration and the audit log through HTTP, with the last-admin guard."""

from __future__ import annotations

import pytest

from tests.conftest import login
from tests.helpers import assert_error

pytestmark = pytest.mark.database  # scripts/test runs these on PostgreSQL too

PASSWORD = "correct-horse-battery"


@pytest.fixture
def http(app):
    """A client without cookies."""
    return app.test_client(use_cookies=False)


def create(http, admin_headers, username: str, role: str = "user", **extra) -> dict:
    """POST /admin/users; return the new user."""
    response = http.post(
        "/admin/users", headers=admin_headers, json={"username": username, "password": PASSWORD, "role": role, **extra}
    )
    assert response.status_code == 201, response.get_json()
    return response.get_json()


def admin_id(http, admin_headers) -> str:
    """The bootstrap admin's id."""
    return http.get("/auth/me", headers=admin_headers).get_json()["id"]


def test_admin_creates_lists_updates_and_deletes_users(http, admin_headers):
    """The full cycle, with the public user view throughout."""
    user = create(http, admin_headers, "alice", email="alice@example.com")
    assert user["role"] == "user" and user["email"] == "alice@example.com" and user["is_active"] is True
    listed = http.get("/admin/users", headers=admin_headers).get_json()
    assert [u["username"] for u in listed["users"]] == ["admin", "alice"] and listed["total"] == 2
    assert all("password_hash" not in u for u in listed["users"])
    page = http.get("/admin/users?limit=1&offset=1", headers=admin_headers).get_json()
    assert [u["username"] for u in page["users"]] == ["alice"] and page["total"] == 2
    assert http.get(f"/admin/users/{user['id']}", headers=admin_headers).get_json() == user
    changed = http.patch(f"/admin/users/{user['id']}", headers=admin_headers, json={"role": "admin"}).get_json()
    assert changed["role"] == "admin"
    assert http.get("/admin/users", headers=login(http, "alice", PASSWORD)).status_code == 200
    response = http.delete(f"/admin/users/{user['id']}", headers=admin_headers)
    assert response.status_code == 200 and response.get_json()["user_id"] == user["id"]
    assert_error(http.get(f"/admin/users/{user['id']}", headers=admin_headers), 404, "NOT_FOUND")


def test_admin_password_reset_signs_the_user_out(http, admin_headers):
    """A new password from the admin works and ends the user's sessions."""
    user = create(http, admin_headers, "alice")
    old_session = login(http, "alice", PASSWORD)
    assert (
        http.patch(
            f"/admin/users/{user['id']}", headers=admin_headers, json={"password": "reset-by-admin-1"}
        ).status_code
        == 200
    )
    assert_error(http.get("/auth/me", headers=old_session), 401)
    assert login(http, "alice", "reset-by-admin-1")


@pytest.mark.parametrize(
    ("body", "status", "code"),
    [
        ({"role": "root"}, 422, "INVALID_ROLE"),
        ({"is_active": "no"}, 422, "INVALID_FIELD"),
        ({"email": "nope"}, 422, "INVALID_EMAIL"),
        ({"password": "short"}, 422, "WEAK_PASSWORD"),
        ({"username": "renamed"}, 422, "NO_CHANGES"),
        ({}, 422, "NO_CHANGES"),
    ],
)
def test_invalid_updates_are_422(http, admin_headers, body, status, code):
    """Only role, is_active, email and password can change, and only to valid values."""
    user = create(http, admin_headers, "alice")
    assert_error(http.patch(f"/admin/users/{user['id']}", headers=admin_headers, json=body), status, code)


@pytest.mark.parametrize(
    ("body", "status", "code"),
    [
        ({"username": "admin", "password": PASSWORD}, 409, "USER_EXISTS"),
        ({"username": "bob", "password": "short"}, 422, "WEAK_PASSWORD"),
        ({"username": "bob", "password": PASSWORD, "role": "superuser"}, 422, "INVALID_ROLE"),
    ],
)
def test_invalid_creations_are_refused(http, admin_headers, body, status, code):
    """Duplicates are 409; bad fields 422."""
    assert_error(http.post("/admin/users", headers=admin_headers, json=body), status, code)


@pytest.mark.parametrize("user_id", ["999", "abc"])
def test_unknown_user_is_404(http, admin_headers, user_id):
    """Every per-user route."""
    assert_error(http.get(f"/admin/users/{user_id}", headers=admin_headers), 404)
    assert_error(http.patch(f"/admin/users/{user_id}", headers=admin_headers, json={"role": "user"}), 404)
    assert_error(http.delete(f"/admin/users/{user_id}", headers=admin_headers), 404)


ADMIN_ROUTES = [
    ("get", "/admin/users"),
    ("post", "/admin/users"),
    ("get", "/admin/users/1"),
    ("patch", "/admin/users/1"),
    ("delete", "/admin/users/1"),
    ("get", "/admin/audit"),
]


@pytest.mark.parametrize(("method", "path"), ADMIN_ROUTES)
def test_admin_routes_are_403_for_users_and_401_for_anonymous(http, admin_headers, method, path):
    """Every /admin/* route; the admin is untouched afterwards."""
    create(http, admin_headers, "alice")
    alice = login(http, "alice", PASSWORD)
    assert_error(getattr(http, method)(path, headers=alice, json={"role": "user"}), 403, "FORBIDDEN")
    assert_error(getattr(http, method)(path, json={"role": "user"}), 401, "UNAUTHORIZED")
    me = http.get("/auth/me", headers=admin_headers).get_json()
    assert me["role"] == "admin" and me["is_active"] is True


# ------------------------------------------------------------ last-admin guard


@pytest.mark.parametrize(
    ("method", "body"), [("patch", {"role": "user"}), ("patch", {"is_active": False}), ("delete", None)]
)
def test_last_active_admin_cannot_be_demoted_disabled_or_deleted(http, admin_headers, method, body):
    """409 LAST_ADMIN, and nothing changes."""
    response = getattr(http, method)(f"/admin/users/{admin_id(http, admin_headers)}", headers=admin_headers, json=body)
    assert_error(response, 409, "LAST_ADMIN")
    me = http.get("/auth/me", headers=admin_headers).get_json()
    assert me["role"] == "admin" and me["is_active"] is True


def test_an_admin_can_step_down_while_another_remains(http, admin_headers):
    """With two admins one may go; then the other is the last one."""
    second = create(http, admin_headers, "root2", role="admin")
    second_headers = login(http, "root2", PASSWORD)
    first_id = admin_id(http, admin_headers)
    assert http.patch(f"/admin/users/{first_id}", headers=second_headers, json={"role": "user"}).status_code == 200
    assert_error(
        http.patch(f"/admin/users/{second['id']}", headers=second_headers, json={"is_active": False}), 409, "LAST_ADMIN"
    )
    assert_error(http.get("/admin/users", headers=admin_headers), 403)


def test_disabled_admin_does_not_count_as_the_remaining_admin(http, admin_headers):
    """An inactive admin cannot keep the guard open."""
    second = create(http, admin_headers, "root2", role="admin")
    http.patch(f"/admin/users/{second['id']}", headers=admin_headers, json={"is_active": False})
    assert_error(http.delete(f"/admin/users/{admin_id(http, admin_headers)}", headers=admin_headers), 409, "LAST_ADMIN")
    assert http.delete(f"/admin/users/{second['id']}", headers=admin_headers).status_code == 200


# ------------------------------------------------------------------- audit


def test_audit_log_records_security_events_and_pages(http, admin_headers):
    """Logins, failures, key creation and revocation, password changes and admin actions."""
    user = create(http, admin_headers, "alice")
    http.post("/auth/login", json={"username": "alice", "password": "not-her-password"})
    alice = login(http, "alice", PASSWORD)
    key = http.post("/api/api-keys/", headers=alice, json={"name": "k", "permissions": ["jobs:read"]}).get_json()
    http.delete(f"/api/api-keys/{key['key_id']}", headers=alice)
    http.post(
        "/auth/change-password",
        headers=alice,
        json={"current_password": PASSWORD, "new_password": "another-password-1"},
    )
    http.patch(f"/admin/users/{user['id']}", headers=admin_headers, json={"is_active": False})
    http.post("/auth/logout", headers=admin_headers)
    admin = login(http)

    body = http.get("/admin/audit?limit=100", headers=admin).get_json()
    actions = [e["action"] for e in reversed(body["entries"])]
    assert actions == [
        "login",
        "admin_user_created",
        "login_failed",
        "login",
        "api_key_created",
        "api_key_revoked",
        "password_changed",
        "admin_user_updated",
        "logout",
        "login",
    ]
    assert body["total"] == len(actions)
    entry = body["entries"][0]
    assert set(entry) == {"id", "at", "action", "user_id", "username", "target", "ip", "detail"}
    assert entry["at"].endswith("Z") and entry["ip"] == "127.0.0.1" and entry["username"] == "admin"
    updated = http.get("/admin/audit?action=admin_user_updated", headers=admin).get_json()["entries"]
    assert updated[0]["target"] == user["id"] and updated[0]["detail"] == {"is_active": False}
    failed = http.get("/admin/audit?action=login_failed", headers=admin).get_json()["entries"]
    assert failed[0]["username"] == "alice" and failed[0]["user_id"] is None
    page = http.get("/admin/audit?limit=2&offset=1", headers=admin).get_json()
    assert [e["id"] for e in page["entries"]] == [e["id"] for e in body["entries"][1:3]]
    mine = http.get(f"/admin/audit?user_id={user['id']}", headers=admin).get_json()["entries"]
    assert {e["action"] for e in mine} == {"login", "api_key_created", "api_key_revoked", "password_changed"}
    assert "another-password-1" not in str(body) and PASSWORD not in str(body)


@pytest.mark.parametrize("query", ["limit=0", "limit=abc", "offset=-1", "user_id=x", "since=yesterday"])
def test_audit_rejects_bad_query_parameters(http, admin_headers, query):
    """400 with the standard body."""
    assert_error(http.get(f"/admin/audit?{query}", headers=admin_headers), 400)
