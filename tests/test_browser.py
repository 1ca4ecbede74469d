"""The dashboard in headless Chromium: Debian's chromium driven by Playwright against the live server.

Waits are event-driven (``expect``, ``wait_for_function``) with generous timeouts: the machine is slow
and shared. Screenshots land in ``test-output/screenshots`` as artifacts.
"""

from __future__ import annotations

import re
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
import requests

from tests.conftest import ADMIN_PASSWORD
from tests.helpers import AUDIO, OUTPUT, ffprobe_streams, make_german_video, make_video, reference, wer

pytestmark = [pytest.mark.e2e, pytest.mark.browser]
sync_api = pytest.importorskip("playwright.sync_api", reason="playwright is not installed (pip install .[test])")
expect = sync_api.expect

CHROMIUM = Path("/usr/bin/chromium")
ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--no-first-run",
    "--disable-sync",
]
SHOTS = OUTPUT / "screenshots"
JOB_TIMEOUT = 300_000  # ms: whisper.cpp on a loaded machine
UI_TIMEOUT = 60_000


@pytest.fixture(scope="module")
def chromium():
    """One headless Chromium for the module (Debian's build, never a downloaded one)."""
    if not CHROMIUM.exists():
        pytest.skip("Debian's chromium is missing at /usr/bin/chromium; scripts/test installs it with apt")
    SHOTS.mkdir(parents=True, exist_ok=True)
    with sync_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=str(CHROMIUM), args=ARGS)
        yield browser
        browser.close()


@contextmanager
def session(chromium, name: str, **context_options) -> Iterator:
    """A fresh browser context and page; JS errors fail the test and a failure leaves a screenshot."""
    context = chromium.new_context(
        accept_downloads=True, **{"viewport": {"width": 1280, "height": 900}, **context_options}
    )
    page = context.new_page()
    page.set_default_timeout(UI_TIMEOUT)
    errors: list[str] = []
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    try:
        yield page
        assert not errors, f"JavaScript errors: {errors}"
    except BaseException:
        page.screenshot(path=str(SHOTS / f"failed-{name}.png"), full_page=True)
        raise
    finally:
        context.close()


def shot(page, name: str) -> None:
    """Save a full-page screenshot as an artifact."""
    page.screenshot(path=str(SHOTS / f"{name}.png"), full_page=True)


def log_in(page, url: str, password: str = ADMIN_PASSWORD, username: str = "admin") -> None:
    """Through the login page, as the admin (or another user)."""
    page.goto(url + "/")
    expect(page).to_have_url(re.compile(r"/login\?next=/"))
    page.fill("#username", username)
    page.fill("#password", password)
    page.click("#login-form button[type=submit]")
    if password == ADMIN_PASSWORD or username != "admin":
        expect(page).to_have_url(url + "/")
        expect(page.locator("#logout")).to_be_visible()
        # The nav shows before the scripts at the end of the body have run.
        page.wait_for_load_state("load")


def job_row(page, job_id: str):
    """The jobs-table row of one job."""
    return page.locator(f'#jobs-body tr[data-job-id="{job_id}"]')


def srt_text(srt: str) -> str:
    """The spoken text of an SRT file, after checking that its cues are well formed."""
    cues = [c.splitlines() for c in srt.strip().split("\n\n")]
    assert cues and [c[0] for c in cues] == [str(i) for i in range(1, len(cues) + 1)], srt
    assert all(re.fullmatch(r"\d\d:\d\d:\d\d,\d{3} --> \d\d:\d\d:\d\d,\d{3}", c[1]) for c in cues), srt
    return " ".join(" ".join(c[2:]) for c in cues)


def test_upload_watch_progress_read_transcript_download_and_delete(chromium, live_server):
    """The first-time user's path: log in, upload jfk, follow it to 100 %, use the job page, delete it."""
    url = live_server.url
    with session(chromium, "main") as page:
        page.goto(url + "/")
        expect(page.locator("#login-form")).to_be_visible()
        shot(page, "01-login")
        log_in(page, url, password="wrong-password")
        error = page.locator("#login-error")
        expect(error).to_have_text("Incorrect username or password.")
        log_in(page, url)

        page.set_input_files("#file-input", str(AUDIO / "jfk.flac"))
        uploaded = page.locator(".upload-item.done")
        expect(uploaded).to_have_count(1)
        job_id = uploaded.get_attribute("data-job-id")
        row = job_row(page, job_id)
        expect(row).to_have_class(re.compile(r"\bhighlight\b"))
        shot(page, "02-dashboard-uploaded")
        expect(row.locator(".progress-label")).to_have_text("100%", timeout=JOB_TIMEOUT)
        expect(row.locator(".bar")).to_have_attribute("aria-valuenow", "100")
        expect(row.locator(".badge")).to_have_text("completed")
        shot(page, "03-dashboard-completed")

        row.locator("td.file a").click()
        expect(page).to_have_url(f"{url}/ui/jobs/{job_id}")
        segments = page.locator(".segment .seg-text")
        expect(segments.first).to_be_visible()
        assert wer(reference("jfk.flac"), " ".join(segments.all_inner_texts())) <= 0.10

        # A timestamp seeks the player.
        starts = [float(s) for s in page.locator(".segment .ts").evaluate_all("els => els.map(e => e.dataset.start)")]
        start = max(starts)
        assert start > 0, starts
        page.locator(".segment .ts").nth(starts.index(start)).click()
        page.wait_for_function("s => document.getElementById('player').currentTime >= s - 0.3", arg=start)

        # The log arrives over the WebSocket: the whole job log, then the socket ends with the job.
        page.wait_for_function("() => document.querySelectorAll('#log .log-line').length >= 2")
        expect(page.locator("#log")).to_contain_text("completed")
        expect(page.locator("#log-state")).to_have_text(re.compile("live|job finished"))
        shot(page, "04-job-page")

        with page.expect_download() as download:
            page.click('[data-download="srt"]')
        assert download.value.suggested_filename == "jfk.srt"
        srt = Path(download.value.path()).read_text(encoding="utf-8")
        assert wer(reference("jfk.flac"), srt_text(srt)) <= 0.10

        page.once("dialog", lambda dialog: dialog.accept())
        page.click('#job-actions [data-action="delete"]')
        expect(page).to_have_url(url + "/")
        expect(job_row(page, job_id)).to_have_count(0)
        assert live_server.get(f"/api/jobs/{job_id}").status_code == 404
        shot(page, "05-dashboard-after-delete")


def test_chunked_upload_resumes_after_a_dropped_chunk(chromium, live_server):
    """Forced through the chunked API in 48 KB chunks (1 to 5); chunk 3's first request is cut off and resent."""
    url = live_server.url
    with session(chromium, "chunked") as page:
        log_in(page, url)
        # The fallback hash (for plain-http LAN pages) agrees with the browser's own SHA-256.
        page.wait_for_function("() => window.WT && typeof WT.sha256Fallback === 'function'")
        same = page.evaluate("""async () => {
            const data = new Uint8Array(300001).map((_, i) => (i * 7919) % 251);
            return WT.sha256Fallback(data) === await WT.sha256(data.buffer); }""")
        assert same
        page.evaluate(
            "() => Object.assign(document.getElementById('upload').dataset, "
            "{chunkThreshold: '1', chunkSize: String(48 * 1024)})"
        )
        dropped: list[str] = []
        seen: list[str] = []

        def drop_once(route) -> None:
            if not dropped:
                dropped.append(route.request.url)
                route.abort("connectionreset")
            else:
                route.continue_()

        page.route(re.compile(r"/api/chunked-uploads/\w+/chunks/3$"), drop_once)
        page.on("request", lambda r: seen.append(f"{r.method} {r.url.removeprefix(url)}"))
        page.set_input_files("#file-input", str(AUDIO / "jfk.flac"))
        uploaded = page.locator(".upload-item.done")
        expect(uploaded).to_have_count(1, timeout=120_000)
        job_id = uploaded.get_attribute("data-job-id")
        shot(page, "06-chunked-upload")

        assert len(dropped) == 1
        chunk_posts = [r for r in seen if re.fullmatch(r"POST /api/chunked-uploads/\w+/chunks/\d+", r)]
        assert sorted(int(r.rsplit("/", 1)[1]) for r in chunk_posts) == [1, 2, 3, 3, 4, 5], chunk_posts
        assert any(re.fullmatch(r"GET /api/chunked-uploads/\w+", r) for r in seen), "no resume status request"
        assert any(r.endswith("/finalize") for r in seen)

        expect(job_row(page, job_id).locator(".progress-label")).to_have_text("100%", timeout=JOB_TIMEOUT)
        job = live_server.get(f"/api/jobs/{job_id}").json()
        assert wer(reference("jfk.flac"), job["transcript"]["text"]) <= 0.10  # the file was assembled intact
        assert page.evaluate("() => Object.keys(localStorage).filter(k => k.startsWith('wt-upload:'))") == []
        assert requests.delete(f"{url}/api/jobs/{job_id}", headers=live_server.headers(), timeout=30).ok


def test_chunked_upload_resumes_after_a_reload(chromium, live_server):
    """An upload that stopped after two chunks continues from the third when the same file is chosen again."""
    url = live_server.url
    force_chunks = (
        "() => Object.assign(document.getElementById('upload').dataset, "
        "{chunkThreshold: '1', chunkSize: String(48 * 1024)})"
    )
    with session(chromium, "chunked-reload") as page:
        log_in(page, url)
        page.evaluate(force_chunks)
        refuse = re.compile(r"/api/chunked-uploads/\w+/chunks/[3-9]$")
        page.route(
            refuse,
            lambda route: route.fulfill(
                status=400,
                content_type="application/json",
                body='{"detail": "simulated refusal", "error_code": "TEST", "timestamp": "", "request_id": ""}',
            ),
        )
        page.set_input_files("#file-input", str(AUDIO / "jfk.flac"))
        expect(page.locator(".upload-item.error .state")).to_have_text("Simulated refusal.")
        page.unroute(refuse)

        page.reload()
        page.evaluate(force_chunks)
        sent: list[int] = []
        page.on(
            "request",
            lambda r: sent.append(int(r.url.rsplit("/", 1)[1])) if re.search(r"/chunks/\d+$", r.url) else None,
        )
        page.set_input_files("#file-input", str(AUDIO / "jfk.flac"))
        uploaded = page.locator(".upload-item.done")
        expect(uploaded).to_have_count(1)
        assert sent == [3, 4, 5], sent  # chunks 1 and 2 were already on the server
        job_id = uploaded.get_attribute("data-job-id")
        assert requests.delete(f"{url}/api/jobs/{job_id}", headers=live_server.headers(), timeout=30).ok


def test_phone_layout_and_readable_errors(chromium, live_server):
    """At 390x844 the table becomes cards and nothing scrolls sideways; a rejected file shows a sentence."""
    url = live_server.url
    job_id = live_server.submit(AUDIO / "jfk.flac")
    try:
        with session(
            chromium,
            "phone",
            viewport={"width": 390, "height": 844},
            device_scale_factor=2,
            is_mobile=True,
            has_touch=True,
        ) as page:
            log_in(page, url)
            row = job_row(page, job_id)
            expect(row.locator(".progress-label")).to_have_text("100%", timeout=JOB_TIMEOUT)
            assert page.evaluate("() => document.documentElement.scrollWidth <= window.innerWidth")
            assert row.evaluate("tr => getComputedStyle(tr).display") == "block"
            expect(page.locator(".jobs-table thead")).to_be_hidden()
            shot(page, "07-phone-dashboard")

            page.set_input_files(
                "#file-input",
                files=[
                    {
                        "name": "notes.txt",
                        "mimeType": "text/plain",
                        "buffer": b"these are not the sounds you are looking for",
                    }
                ],
            )
            failed = page.locator(".upload-item.error .state")
            expect(failed).not_to_have_text("", timeout=UI_TIMEOUT)
            message = failed.inner_text()
            toast = page.locator(".toast-error").first
            expect(toast).to_be_visible()
            for text in (message, toast.inner_text()):
                assert "{" not in text and "error_code" not in text and len(text) > 10, text
            shot(page, "08-phone-error")

            row.locator("td.file a").click()
            expect(page.locator(".segment").first).to_be_visible()
            assert page.evaluate("() => document.documentElement.scrollWidth <= window.innerWidth")
            shot(page, "09-phone-job")
    finally:
        requests.delete(f"{url}/api/jobs/{job_id}", headers=live_server.headers(), timeout=30)


def test_a_failed_job_shows_why_in_its_row(chromium, live_server, tmp_path):
    """A file cut short passes the upload check, fails in the worker, and the row says it is truncated."""
    cut = tmp_path / "cut.flac"
    cut.write_bytes((AUDIO / "jfk.flac").read_bytes()[:60000])
    job_id = live_server.submit(cut)
    try:
        with session(chromium, "failed") as page:
            log_in(page, live_server.url)
            row = job_row(page, job_id)
            expect(row.locator(".badge")).to_have_text("failed", timeout=JOB_TIMEOUT)
            expect(row.locator(".row-error")).to_contain_text("truncated")
            expect(row.locator("[data-action=retry]")).to_be_visible()
            shot(page, "10-failed-job")
    finally:
        requests.delete(f"{live_server.url}/api/jobs/{job_id}", headers=live_server.headers(), timeout=30)


def test_a_user_changes_their_password_on_the_account_page(chromium, live_server):
    """From the name in the top bar: a mismatch is caught in the page, then the change works for real."""
    old, new = "browser-old-pass-1", "browser-new-pass-2"
    created = live_server.post("/admin/users", json={"username": "pat", "password": old, "role": "user"})
    assert created.status_code == 201, created.text
    with session(chromium, "account") as page:
        log_in(page, live_server.url, old, username="pat")
        page.click(".who-name")
        expect(page).to_have_url(live_server.url + "/ui/account")
        page.fill("#current", old)
        page.fill("#password", new)
        page.fill("#confirm", new + "x")
        page.click("#password-form button[type=submit]")
        expect(page.locator("#form-error")).to_have_text("The two new passwords differ.")
        page.fill("#confirm", new)
        page.click("#password-form button[type=submit]")
        expect(page.locator("#form-ok")).to_contain_text("Password changed")
        shot(page, "11-account")
        page.goto(live_server.url + "/")  # the session survives its own password change
        expect(page.locator(".who-name")).to_have_text("pat")

    def login(password: str) -> int:
        return requests.post(
            live_server.url + "/auth/login", json={"username": "pat", "password": password}, timeout=30
        ).status_code

    assert (login(old), login(new)) == (401, 200)


def test_registration_page_creates_an_account_and_signs_in(chromium, tmp_path):
    """With ALLOW_REGISTRATION on, the login page links to a form that ends on the dashboard."""
    from tests.conftest import launch_appliance

    with (
        launch_appliance(tmp_path / "data", "register-server.log", ALLOW_REGISTRATION="true") as server,
        session(chromium, "register") as page,
    ):
        page.goto(server.url + "/login")
        page.click("text=Create one")
        expect(page).to_have_url(server.url + "/ui/register")
        page.fill("#username", "newcomer")
        page.fill("#password", "newcomer-pass-123")
        page.fill("#confirm", "newcomer-pass-123")
        shot(page, "12-register")
        page.click("#register-form button[type=submit]")
        expect(page).to_have_url(server.url + "/")
        expect(page.locator(".who-name")).to_have_text("newcomer")
        expect(page.locator('.nav a[href="/ui/admin"]')).to_have_count(0)  # an ordinary user


def test_admin_pages_show_stats_settings_users_keys_and_the_system_log(chromium, live_server):
    """Each admin page loads its data; the system log streams; keys can be created and revoked."""
    url = live_server.url
    with session(chromium, "admin") as page:
        log_in(page, url)
        page.goto(url + "/ui/admin")
        expect(page.locator('[data-stat="completed"]')).not_to_have_text("–")
        expect(page.locator("#cpu-chart .dot, #cpu-chart .line").first).to_be_attached()
        expect(page.locator("#log-state")).to_have_text("live")
        page.wait_for_function("() => document.querySelectorAll('#log .log-line').length > 0")
        expect(page.locator("#server-control")).to_have_count(0)  # ENABLE_SERVER_CONTROL is off here
        shot(page, "10-admin-overview")

        page.goto(url + "/ui/admin/settings")
        expect(page.locator("#uploads_days")).not_to_have_value("")
        expect(page.locator("#workers")).not_to_have_value("")
        shot(page, "11-admin-settings")

        page.goto(url + "/ui/admin/users")
        expect(page.locator('#users-body tr[data-name="admin"]')).to_be_visible()
        shot(page, "12-admin-users")

        page.goto(url + "/ui/admin/files")
        expect(page.locator("#files-summary")).to_contain_text("files")
        shot(page, "13-admin-files")

        page.goto(url + "/ui/keys")
        page.fill("#key-form input[name=name]", "browser test")
        page.click("#key-form button[type=submit]")
        expect(page.locator("#secret-value")).to_have_text(re.compile(r"^wt_"))
        key_row = page.locator('#keys-body tr[data-name="browser test"]')
        expect(key_row).to_be_visible()
        shot(page, "14-api-keys")
        page.once("dialog", lambda dialog: dialog.accept())
        key_row.locator("button").click()
        expect(key_row.locator(".badge")).to_have_text("revoked")

        page.click("#logout")
        expect(page).to_have_url(re.compile(r"/login$"))
        page.goto(url + "/ui/admin")
        expect(page).to_have_url(re.compile(r"/login\?next="))


def subtitle_streams(path: Path) -> list[dict]:
    """The subtitle streams of a media file, by ffprobe."""
    return [s for s in ffprobe_streams(path) if s["codec_type"] == "subtitle"]


def test_api_user_signs_in_downloads_the_subtitled_video_and_purges_and_retries(chromium, tmp_path):
    """Dubarr's Basic account uploads a video, then in the dashboard: Video download, Purge, Retry, again."""
    from tests.conftest import launch_appliance

    library = tmp_path / "library"
    library.mkdir()
    shutil.copy(AUDIO / "jfk.flac", library / "episode.flac")
    account = {"API_USER": "dubarr", "API_PASS": "dubarr-browser-pass-1"}
    basic = ("dubarr", account["API_PASS"])
    with launch_appliance(tmp_path / "data", "dubarr-server.log", library=library, **account) as server:
        url = server.url
        video = make_video(AUDIO / "jfk.flac", tmp_path / "clip.mkv")
        with open(video, "rb") as f:  # as a Dubarr client would: Basic credentials, a 303 to the dashboard
            uploaded = requests.post(
                url + "/upload", files={"file": ("clip.mkv", f)}, auth=basic, timeout=60, allow_redirects=False
            )
        assert uploaded.status_code == 303, uploaded.text
        task_id = uploaded.headers["X-Job-ID"]
        hooked = requests.post(url + "/webhook", json={"path": str(library / "episode.flac")}, auth=basic, timeout=60)
        library_id = hooked.json()["task_id"]

        with session(chromium, "dubarr") as page:
            log_in(page, url, account["API_PASS"], username="dubarr")
            row = job_row(page, task_id)
            expect(row.locator(".badge")).to_have_text("completed", timeout=JOB_TIMEOUT)
            expect(job_row(page, library_id).locator(".badge")).to_have_text("completed", timeout=JOB_TIMEOUT)
            expect(job_row(page, library_id).locator("[data-action=purge]")).to_be_visible()
            expect(job_row(page, library_id).locator('[data-download="video"]')).to_have_count(0)  # an .srt only
            expect(row.locator("[data-action=retry]")).to_have_count(0)
            shot(page, "15-dubarr-dashboard")
            with page.expect_download() as download:
                row.locator('[data-download="video"]').click()
            assert download.value.suggested_filename == "clip.subtitled.mkv"
            assert subtitle_streams(Path(download.value.path()))

            # The list: Purge takes the video away and offers Retry, which makes it again.
            page.once("dialog", lambda dialog: dialog.accept())
            row.locator("[data-action=purge]").click()
            expect(row.locator("[data-action=retry]")).to_be_visible()
            expect(row.locator('[data-download="video"]')).to_have_count(0)
            expect(row.locator("[data-action=purge]")).to_have_count(0)
            assert requests.get(f"{url}/download/{task_id}", auth=basic, timeout=30).status_code == 404
            row.locator("[data-action=retry]").click()
            expect(row.locator('[data-download="video"]')).to_be_visible(timeout=JOB_TIMEOUT)

            # The job page: the same buttons, and Retry after Purge ends with a downloadable video again.
            row.locator("td.file a").click()
            expect(page).to_have_url(f"{url}/ui/jobs/{task_id}")
            actions = page.locator("#job-actions")
            expect(actions.locator("[data-action=retry]")).to_be_hidden()
            page.once("dialog", lambda dialog: dialog.accept())
            actions.locator("[data-action=purge]").click()
            expect(actions.locator("[data-action=retry]")).to_be_visible()
            expect(actions.locator('[data-download="video"]')).to_have_count(0)
            shot(page, "16-dubarr-job-purged")
            actions.locator("[data-action=retry]").click()
            # The page reloads when the job is queued and again when it finishes; only then is the video back.
            expect(actions.locator('[data-download="video"]')).to_be_visible(timeout=JOB_TIMEOUT)
            expect(page.locator("#job-status")).to_have_text("completed")
            with page.expect_download() as download:
                actions.locator('[data-download="video"]').click()
            assert subtitle_streams(Path(download.value.path()))
            shot(page, "17-dubarr-job-retried")

        # Without a session, a Dubarr route's 401 offers Basic, so the browser answers with the account.
        with session(chromium, "dubarr-basic", http_credentials={"username": basic[0], "password": basic[1]}) as page:
            page.goto(url + "/login")
            status = page.evaluate("id => fetch('/download/' + id).then(r => r.status)", task_id)
            assert status == 200


def test_dub_option_on_upload_and_the_dub_plays_and_downloads_on_the_job_page(chromium, live_server, tmp_path):
    """Pick "English" under Dub, upload a German video: the job page plays the dubbed track and downloads it."""
    url = live_server.url
    video = make_german_video(tmp_path)
    with session(chromium, "dub") as page:
        log_in(page, url)
        page.select_option("#opt-dub", "en")
        page.select_option("#opt-language", "de")
        page.set_input_files("#file-input", str(video))
        uploaded = page.locator(".upload-item.done")
        expect(uploaded).to_have_count(1)
        job_id = uploaded.get_attribute("data-job-id")
        row = job_row(page, job_id)
        expect(row.locator(".badge")).to_have_text("completed", timeout=JOB_TIMEOUT)

        page.goto(f"{url}/ui/jobs/{job_id}")
        expect(page.locator("#dub-player")).to_be_visible()
        duration = page.wait_for_function(
            "() => { const p = document.getElementById('dub-player'); return p.duration > 0 && p.duration; }"
        ).json_value()
        assert abs(duration - live_server.get(f"/api/jobs/{job_id}").json()["duration"]) < 1.0
        shot(page, "08-job-page-dub")
        with page.expect_download() as download:
            page.click("#dub-download")
        assert download.value.suggested_filename == "german.en.dub.m4a"
        assert [s["codec_type"] for s in ffprobe_streams(download.value.path())] == ["audio"]
