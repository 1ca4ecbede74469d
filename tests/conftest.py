"""Shared fixtures: a fresh app per test, users, uploaded jobs, a stub engine, the queue and a live server."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import tempfile
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import pytest
import requests
from argon2 import PasswordHasher
from flask import Flask
from flask.testing import FlaskClient

from app import security
from tests.helpers import MODELS_DIR, OUTPUT, ROOT, post_clip, wait_for
from tests.servers import PostgresServer, RedisServer, running
from workers import engine

ADMIN_PASSWORD = "admin-password-123"
USER_PASSWORD = "correct-horse-battery"  # of the accounts user_headers makes

# Full-strength argon2 costs ~0.1 s per hash and every test hashes and verifies; the parameters
# travel inside each hash, so cheap ones exercise exactly the same code paths.
security._hasher = PasswordHasher(time_cost=1, memory_cost=1024, parallelism=1)


class ClosedOnce:
    """A test response whose ``close`` runs once, however often it is called (by the test, then after it)."""

    _closed = False

    def close(self) -> None:
        """Close the body (a file for ``send_file``) and run the close callbacks, the first time only."""
        if not self._closed:
            self._closed = True
            super().close()


class ClosingClient(FlaskClient):
    """The Flask test client, closing what a WSGI server closes: each request body once answered, and each
    response after the test (see ``_close_responses``) unless the test closed it itself."""

    unclosed: list = []  # the responses of the running test

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.response_wrapper = type("ClosedOnceResponse", (ClosedOnce, self.response_wrapper), {})

    def open(self, *args, **kwargs):
        """Send the request; close its body (werkzeug spools uploads over 500 KB to a temporary file)."""
        response = super().open(*args, **kwargs)
        for answered in (*response.history, response):
            answered.request.environ["wsgi.input"].close()
        ClosingClient.unclosed.append(response)
        return response


# Every app of the tests, also the ones a test builds itself. A file left to the garbage collector is a
# ResourceWarning, and warnings are errors: it would fail whichever test runs when the collector gets to it.
Flask.test_client_class = ClosingClient


@pytest.fixture(autouse=True)
def _close_responses() -> Iterator[None]:
    """After each test, close the responses it left open, as a server closes each one once it is sent."""
    yield
    while ClosingClient.unclosed:
        ClosingClient.unclosed.pop(0).close()


# WT_TEST_DATABASE=postgresql: the app fixture runs on a throwaway PostgreSQL server (one database per test)
# instead of a SQLite file; scripts/test runs the tests marked `database` that way a second time.
TEST_DATABASE = os.environ.get("WT_TEST_DATABASE", "sqlite")


@pytest.fixture(scope="session")
def postgres_server() -> Iterator[PostgresServer]:
    """A PostgreSQL server for the whole session, in its own temp dir (its user must own it), on a free port."""
    with running(PostgresServer(Path(tempfile.mkdtemp(prefix="wt-pg-")))) as server:
        yield server


@pytest.fixture(scope="session")
def redis_server() -> Iterator[RedisServer]:
    """A redis-server for the whole session: free port, temp dir, nothing saved."""
    with running(RedisServer(Path(tempfile.mkdtemp(prefix="wt-redis-")))) as server:
        yield server


@pytest.fixture
def database_url(request) -> Iterator[str]:
    """The test's database: empty (the SQLite file in its data dir) or a fresh PostgreSQL database."""
    if TEST_DATABASE != "postgresql":
        yield ""
        return
    server = request.getfixturevalue("postgres_server")
    name = server.create_database()
    yield server.url(name)
    from app import models

    if not models.db.is_closed():
        models.db.close()
    server.drop_database(name)


def build_app(data_dir: Path, **config):
    """An app as the tests build it: ``data_dir``, the shared models, the admin password, in-memory rate limits.

    ``config`` adds or overrides settings (``MODELS_DIR``, ``TESTING``, limits ...).
    """
    from app import create_app

    return create_app(
        {
            "TESTING": True,
            "DATA_DIR": str(data_dir),
            "MODELS_DIR": str(MODELS_DIR),
            "ADMIN_PASSWORD": ADMIN_PASSWORD,
            "RATELIMIT_STORAGE_URI": "memory://",
            **config,
        }
    )


@pytest.fixture
def app(tmp_path, database_url):
    """A fresh app: temp data dir, its own database (SQLite file or PostgreSQL) and queue file, the shared models."""
    yield build_app(tmp_path / "data", DATABASE_URL=database_url)


@pytest.fixture
def client(app):
    """A test client for ``app``."""
    return app.test_client()


def login(client, username: str = "admin", password: str = ADMIN_PASSWORD) -> dict[str, str]:
    """Bearer headers for a user."""
    response = client.post("/auth/login", json={"username": username, "password": password})
    assert response.status_code == 200, response.get_json()
    return {"Authorization": f"Bearer {response.get_json()['access_token']}"}


@pytest.fixture
def admin_headers(client):
    """Bearer headers of the bootstrap admin."""
    return login(client)


@pytest.fixture
def user_headers(app) -> Callable[..., dict[str, str]]:
    """A factory that makes an account, logs it in and returns its bearer headers.

    ``user_headers()`` is a plain user called alice; ``user_headers("bob", admin=True, password=...)``.
    """
    from app.services.users import create_user

    def make(username: str = "alice", *, admin: bool = False, password: str = USER_PASSWORD) -> dict[str, str]:
        with app.app_context():
            create_user(username, password, role="admin" if admin else "user")
        # A client without cookies, so this login's session never rides along on the test's own client.
        return login(app.test_client(use_cookies=False), username, password)

    return make


@pytest.fixture
def uploaded_job() -> Callable[..., dict]:
    """A factory that uploads a clip as a job, asserts the 201 and returns the response body.

    ``uploaded_job(client, headers, clip="jfk.flac", path="/api/jobs/", name=None, **form)``: the clip is a name
    under tests/data or a path; ``path`` picks the dialect's upload route, ``name`` the file name sent.
    """

    def upload(client, headers: dict[str, str], clip: str | Path = "jfk.flac", **form) -> dict:
        response = post_clip(client, headers, clip, **form)
        assert response.status_code == 201, response.get_json()
        return response.get_json()

    return upload


class StubEngine:
    """Stands in for whisper.cpp: one segment per second of audio, with a fixed text."""

    calls: list[dict] = []

    multilingual = False

    def __init__(self, model_path, threads=0, backend="whispercpp"):
        self.model_path = str(model_path)
        self.label = f"stub:{Path(model_path).name}"

    def transcribe(
        self,
        audio,
        *,
        language=None,
        translate=False,
        prompt=None,
        words=False,
        on_segment=None,
        on_progress=None,
        should_abort=None,
    ):
        StubEngine.calls.append({"language": language, "translate": translate, "prompt": prompt, "words": words})
        seconds = max(1, int(audio.size / 16000))
        segments = []
        for i in range(seconds):
            if should_abort and should_abort():
                raise engine.Aborted()
            seg = engine.EngineSegment(
                float(i),
                float(i + 1),
                f"word{i}",
                0.9,
                [{"word": f"word{i}", "start": float(i), "end": i + 0.5, "probability": 0.9}] if words else None,
            )
            segments.append(seg)
            if on_segment:
                on_segment(seg)
            if on_progress:
                on_progress(100.0 * (i + 1) / seconds)
        return engine.EngineResult(segments, language or "en")


@pytest.fixture
def stub_engine(monkeypatch):
    """Replace the engine with :class:`StubEngine` for this test."""
    StubEngine.calls = []
    monkeypatch.setattr(engine, "build", StubEngine)
    engine._cache.clear()
    yield StubEngine
    engine._cache.clear()


@pytest.fixture
def drain(app):
    """Run every queued job through the real pipeline, in this process."""
    from app.models import Job
    from workers import pipeline

    def run() -> None:
        pipeline.configure(dict(app.config))
        with app.app_context():
            for job in list(Job.in_status("queued")):
                pipeline.run(job.id)

    return run


@pytest.fixture
def background_worker(app, drain):
    """Drain the queue in a thread while a synchronous request (OpenAI's /v1/audio) waits."""
    stop = threading.Event()

    def loop() -> None:
        while not stop.is_set():
            drain()
            stop.wait(0.05)

    thread = threading.Thread(target=loop, daemon=True)
    thread.start()
    yield
    stop.set()
    thread.join()


# ------------------------------------------------------------------ live server


def free_port() -> int:
    """An unused TCP port on loopback."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class LiveServer:
    url: str
    data_dir: Path
    process: subprocess.Popen
    token: str
    library: Path | None  # a media root (WT_MEDIA_ROOTS) for webhook tests

    def headers(self) -> dict[str, str]:
        """Admin bearer headers."""
        return {"Authorization": f"Bearer {self.token}"}

    def get(self, path: str, **kw) -> requests.Response:
        """GET with admin credentials."""
        kw.setdefault("headers", self.headers())
        return requests.get(self.url + path, timeout=30, **kw)

    def post(self, path: str, **kw) -> requests.Response:
        """POST with admin credentials."""
        kw.setdefault("headers", self.headers())
        return requests.post(self.url + path, timeout=60, **kw)

    def submit(self, path: Path, **data) -> str:
        """Upload a file as a job; return its id."""
        with open(path, "rb") as f:
            response = self.post("/api/jobs/", files={"file": (path.name, f)}, data=data)
        assert response.status_code == 201, response.text
        return response.json()["job_id"]

    def wait(self, job_id: str, timeout: float = 180) -> dict:
        """Wait for a job to finish; return its details."""

        def finished():
            job = self.get(f"/api/jobs/{job_id}?wait=20").json()  # a long poll: answers when the job finishes
            return job if job["status"] in ("completed", "failed", "cancelled") else None

        return wait_for(finished, timeout=timeout, interval=0.25)


@contextmanager
def launch_appliance(
    data_dir: Path, log_name: str, *, library: Path | None = None, stop_timeout: float = 30, **env: str
) -> Iterator[LiveServer]:
    """``whisper-transcriber run`` on a free port with its own data dir, logged in as admin; stopped afterwards."""
    port = free_port()
    full_env = {
        **os.environ,
        "WT_DATA_DIR": str(data_dir),
        "WT_PORT": str(port),
        "WT_HOST": "127.0.0.1",
        "WT_MODELS_DIR": str(MODELS_DIR),
        "WT_ADMIN_PASSWORD": ADMIN_PASSWORD,
        # Calibrating takes ~30 s of both cores; tests that want it (test_tuning) turn it back on.
        "WT_TUNE_ON_START": "false",
        **({"WT_MEDIA_ROOTS": str(library)} if library else {}),
        **env,
    }
    OUTPUT.mkdir(exist_ok=True)
    log = open(OUTPUT / log_name, "wb")  # noqa: SIM115
    process = subprocess.Popen(
        [sys.executable, "-m", "app.cli", "run"], cwd=ROOT, env=full_env, stdout=log, stderr=subprocess.STDOUT
    )
    url = f"http://127.0.0.1:{port}"

    def healthy():
        try:
            return requests.get(url + "/health", timeout=2).json().get("worker_alive")
        except requests.RequestException:
            return False

    try:
        wait_for(healthy, timeout=90)
        token = requests.post(
            url + "/auth/login", json={"username": "admin", "password": ADMIN_PASSWORD}, timeout=10
        ).json()["access_token"]
        yield LiveServer(url, data_dir, process, token, library)
    finally:
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(timeout=stop_timeout)
            except subprocess.TimeoutExpired:
                process.kill()
        log.close()


@pytest.fixture(scope="session")
def live_server(tmp_path_factory):
    """The shared appliance of the end-to-end tests, with a media library root for webhooks."""
    data_dir = tmp_path_factory.mktemp("live") / "data"
    library = data_dir.parent / "library"
    library.mkdir()
    # Tests poll as one admin for minutes; the limits themselves are tested with the Flask client.
    with launch_appliance(
        data_dir,
        "live-server.log",
        library=library,
        ENABLE_SERVER_CONTROL="false",
        WT_RATELIMIT_USER="100000 per minute",
        WT_RATELIMIT_ADMIN="100000 per minute",
    ) as server:
        yield server
