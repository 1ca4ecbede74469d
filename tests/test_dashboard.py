"""The dashboard's pages (Flask client): sessions, redirects, admin-only pages, media, and no external assets."""

from __future__ import annotations

import re
from pathlib import Path
from urllib.parse import unquote

import pytest

from app import create_app
from tests.conftest import ADMIN_PASSWORD
from tests.helpers import AUDIO, MODELS_DIR

WEB_DIR = Path(__file__).resolve().parent.parent / "app" / "web"
USER_PAGES = ["/", "/ui/keys", "/ui/account"]
ADMIN_PAGES = ["/ui/admin", "/ui/admin/files", "/ui/admin/settings", "/ui/admin/users"]
PASSWORD = "user-password-123"
# Attribute values that load or link something: all must stay on this origin.
_URL_ATTR = re.compile(r'(?:src|href|action|data-spec-url)="([^"]*)"')
_ABSOLUTE = re.compile(r"https?://[^\s\"'<>)]*", re.IGNORECASE)
# An XML namespace name is an identifier that is never fetched; standalone SVG files must declare it.
_SVG_NAMESPACE = 'xmlns="http://www.w3.org/2000/svg"'


def signed_in(app, username: str = "admin", password: str = ADMIN_PASSWORD):
    """A test client holding the session and CSRF cookies of a login."""
    client = app.test_client()
    response = client.post("/auth/login", json={"username": username, "password": password})
    assert response.status_code == 200, response.get_json()
    return client


@pytest.fixture
def admin(app):
    """A client signed in as the bootstrap admin."""
    return signed_in(app)


@pytest.fixture
def user(app, admin):
    """A client signed in as an ordinary user."""
    response = admin.post(
        "/admin/users",
        json={"username": "alice", "password": PASSWORD, "role": "user"},
        headers={"X-CSRF-Token": admin.get_cookie("wt_csrf").value},
    )
    assert response.status_code == 201, response.get_json()
    return signed_in(app, "alice", PASSWORD)


def csrf(client) -> dict[str, str]:
    """The double-submit header for a cookie session."""
    return {"X-CSRF-Token": client.get_cookie("wt_csrf").value}


# ------------------------------------------------------------------ sessions


@pytest.mark.parametrize("path", USER_PAGES + ADMIN_PAGES + ["/ui/jobs/abc"])
def test_pages_redirect_to_login_without_a_session(client, path):
    """No cookie: a redirect to the login page that comes back here afterwards."""
    response = client.get(path)
    assert response.status_code == 302
    assert unquote(response.headers["Location"]) == "/login?next=" + path


def test_an_expired_or_forged_session_cookie_is_sent_to_login(client):
    """A cookie that does not verify is treated like no cookie."""
    client.set_cookie("wt_session", "not-a-token")
    assert client.get("/").status_code == 302


def test_login_page_renders_a_form_and_signed_in_users_skip_it(client, admin):
    """The login page has the form; with a session it redirects to the next page."""
    page = client.get("/login?next=/ui/keys")
    assert page.status_code == 200 and page.mimetype == "text/html"
    html = page.get_data(as_text=True)
    assert 'id="login-form"' in html and 'data-next="/ui/keys"' in html
    assert admin.get("/login?next=/ui/keys").headers["Location"] == "/ui/keys"


@pytest.mark.parametrize("target", ["//evil.example/x", "https://evil.example/", "/\\evil.example", "javascript:x"])
def test_login_next_never_leaves_the_site(client, target):
    """An open redirect through ?next= is not possible."""
    html = client.get("/login", query_string={"next": target}).get_data(as_text=True)
    assert 'data-next="/"' in html


def test_logout_revokes_the_session(admin):
    """POST /auth/logout with the CSRF header; afterwards the pages ask for a login again."""
    assert admin.post("/auth/logout", headers=csrf(admin)).status_code == 200
    assert admin.get("/").status_code == 302


# ------------------------------------------------------------------ pages


@pytest.mark.parametrize("path", USER_PAGES + ADMIN_PAGES)
def test_admin_sees_every_page(admin, path):
    """Every page renders as HTML with the nav, a CSP and no caching."""
    response = admin.get(path)
    assert response.status_code == 200 and response.mimetype == "text/html"
    html = response.get_data(as_text=True)
    assert 'id="logout"' in html and 'href="/ui/admin"' in html
    assert "default-src 'self'" in response.headers["Content-Security-Policy"]
    assert response.headers["Cache-Control"] == "no-store"


@pytest.mark.parametrize("path", ADMIN_PAGES)
def test_admin_pages_are_a_readable_403_for_users(user, path):
    """A user gets an HTML page that explains, never the JSON error."""
    response = user.get(path)
    assert response.status_code == 403 and response.mimetype == "text/html"
    assert "Administrators only" in response.get_data(as_text=True)


@pytest.mark.parametrize("path", USER_PAGES)
def test_users_see_their_pages_without_the_admin_link(user, path):
    """User pages render; the Admin link is not offered."""
    response = user.get(path)
    assert response.status_code == 200
    assert 'href="/ui/admin"' not in response.get_data(as_text=True)


def test_account_page_shows_the_user_and_links_from_the_top_bar(user):
    html = user.get("/ui/account").get_data(as_text=True)
    assert "alice" in html and 'id="password-form"' in html and 'href="/ui/account"' in html


def test_registration_page_only_when_registration_is_on(app, client, admin):
    """404 with an explanation by default; with ALLOW_REGISTRATION a form, linked from the login page."""
    response = client.get("/ui/register")
    assert response.status_code == 404 and "created by an administrator" in response.get_data(as_text=True)
    assert 'href="/ui/register"' not in client.get("/login").get_data(as_text=True)
    app.config["ALLOW_REGISTRATION"] = True
    assert 'id="register-form"' in client.get("/ui/register").get_data(as_text=True)
    assert 'href="/ui/register"' in client.get("/login").get_data(as_text=True)
    assert admin.get("/ui/register").status_code == 302  # already signed in


def test_dashboard_offers_installed_models_and_highlights_a_job(admin, app):
    """Model choices come from the models folder; Dubarr's /?job=<id> marks the job."""
    html = admin.get("/?job=abc123").get_data(as_text=True)
    assert 'data-highlight="abc123"' in html
    assert f'value="{app.config["DEFAULT_MODEL"]}" selected' in html
    assert 'id="file-input"' in html and "multiple" in html
    assert 'data-chunk-threshold="26214400"' in html


def test_server_control_buttons_only_when_enabled(admin, tmp_path):
    """The buttons follow ENABLE_SERVER_CONTROL."""
    assert "data-control" not in admin.get("/ui/admin").get_data(as_text=True)
    enabled = create_app(
        {
            "TESTING": True,
            "DATA_DIR": str(tmp_path / "other"),
            "MODELS_DIR": str(MODELS_DIR),
            "ADMIN_PASSWORD": ADMIN_PASSWORD,
            "ENABLE_SERVER_CONTROL": True,
        }
    )
    html = signed_in(enabled).get("/ui/admin").get_data(as_text=True)
    assert 'data-control="restart"' in html and 'data-control="shutdown"' in html


def test_job_page_shows_transcript_with_timestamps(admin, stub_engine, drain, uploaded_job):
    """A completed job: segments with seek buttons, the player, downloads and the log panel."""
    job_id = uploaded_job(admin, csrf(admin))["job_id"]  # with the cookie session
    drain()
    response = admin.get(f"/ui/jobs/{job_id}")
    assert response.status_code == 200
    html = response.get_data(as_text=True)
    assert html.count('class="segment"') >= 10  # the stub engine makes one segment per second
    assert 'data-start="1.0"' in html and ">0:01</button>" in html
    assert f'src="/ui/jobs/{job_id}/media"' in html and "<audio" in html
    assert 'data-download="srt"' in html and 'id="log"' in html


def test_other_users_jobs_are_not_found(admin, user, stub_engine, drain, uploaded_job):
    """Someone else's job is a 404 page, and its media a 404."""
    job_id = uploaded_job(admin, csrf(admin))["job_id"]  # with the cookie session
    drain()
    page = user.get(f"/ui/jobs/{job_id}")
    assert page.status_code == 404 and page.mimetype == "text/html"
    assert user.get(f"/ui/jobs/{job_id}/media").status_code == 404


def test_media_streams_the_upload_with_range_support(admin, client, stub_engine, drain, uploaded_job):
    """The player gets the original file, in parts when it asks; not without a session."""
    job_id = uploaded_job(admin, csrf(admin))["job_id"]  # with the cookie session
    drain()
    whole = admin.get(f"/ui/jobs/{job_id}/media")
    assert whole.status_code == 200 and whole.mimetype == "audio/flac"
    assert whole.data == (AUDIO / "jfk.flac").read_bytes()
    part = admin.get(f"/ui/jobs/{job_id}/media", headers={"Range": "bytes=100-199"})
    assert part.status_code == 206 and len(part.data) == 100
    assert part.headers["Content-Range"].startswith("bytes 100-199/")
    assert client.get(f"/ui/jobs/{job_id}/media").status_code == 401


# ------------------------------------------------------------------ routes and assets


def test_page_routes_stay_out_of_the_api_namespaces(app):
    """Pages live at /, /login and under /ui/ only; the JSON APIs keep their paths."""
    rules = [r.rule for r in app.url_map.iter_rules() if r.endpoint.startswith("dashboard.")]
    assert rules and all(r in ("/", "/login") or r.startswith("/ui/") for r in rules), rules


def test_every_asset_a_page_names_is_served(admin):
    """Scripts, styles and icons referenced by the pages exist."""
    seen = set()
    for path in USER_PAGES + ADMIN_PAGES:
        html = admin.get(path).get_data(as_text=True)
        seen |= {url for url in _URL_ATTR.findall(html) if url.startswith("/static/")}
    assert len(seen) >= 8
    for url in seen:
        assert admin.get(url).status_code == 200, url


def test_no_external_urls_in_templates_or_static_files():
    """Nothing is loaded from a CDN or any other origin: no absolute URL in any template or asset."""
    files = [p for folder in ("templates", "static") for p in (WEB_DIR / folder).rglob("*") if p.is_file()]
    assert len(files) >= 10
    for path in files:
        text = path.read_text(encoding="utf-8").replace(_SVG_NAMESPACE, "")
        assert not _ABSOLUTE.findall(text), f"{path.name}: {_ABSOLUTE.findall(text)}"
        assert not re.search(r'(?:src|href)="//', text), path.name  # protocol-relative: another origin too


def test_rendered_pages_link_only_to_this_origin(admin, client):
    """Every src/href in the rendered pages is a same-origin path."""
    pages = [(admin, p) for p in USER_PAGES + ADMIN_PAGES] + [(client, "/login")]
    for who, path in pages:
        for url in _URL_ATTR.findall(who.get(path).get_data(as_text=True)):
            assert url.startswith("/") and not url.startswith("//"), (path, url)
