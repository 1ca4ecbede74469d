"""Live logs over real WebSockets against the live server (Gunicorn gthread, a Huey worker, whisper.cpp)."""

from __future__ import annotations

import json
import os
import socket
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import requests
from simple_websocket import Client, ConnectionClosed
from simple_websocket import ConnectionError as HandshakeRefused

from tests.helpers import AUDIO, wait_for

pytestmark = pytest.mark.e2e
PASSWORD = "logs-password-123"


def bearer(token: str) -> dict[str, str]:
    """Authorization headers for a token."""
    return {"Authorization": f"Bearer {token}"}


@pytest.fixture(scope="module")
def tokens(live_server) -> dict[str, str]:
    """A second admin and two users (each their own rate-limit bucket), by name: their JWTs."""
    found = {}
    for name, role in (("logs-admin", "admin"), ("logs-alice", "user"), ("logs-bob", "user")):
        response = live_server.post("/admin/users", json={"username": name, "password": PASSWORD, "role": role})
        assert response.status_code in (201, 409), response.text
        login = requests.post(
            live_server.url + "/auth/login", json={"username": name, "password": PASSWORD}, timeout=30
        )
        found[name] = login.json()["access_token"]
    return found


class LogClient(Client):
    """simple-websocket's client, except that frames which came in the same read as the 101 are not held back,
    and that a refused handshake closes its socket.

    Its handshake stops at the 101 and leaves whatever followed it parsed but unread until more bytes arrive: the
    log tail the server sends right behind the 101 waited forever on a quiet log when a busy client read both at once.
    """

    def handshake(self) -> None:
        """Connect, and close the socket when the server refuses (simple-websocket 1.1 leaves it open)."""
        try:
            super().handshake()
        except HandshakeRefused:
            self.sock.close()
            raise

    def _thread(self) -> None:
        if not self._handle_events():  # frames buffered during the handshake, before the first read of the thread
            self.connected = False
            self.event.set()
        super()._thread()


def connect(live_server, path: str, token: str | None = None, *, query: bool = False) -> Client:
    """Open a WebSocket; the token goes in ``?token=`` (as browsers do) or the Authorization header."""
    url = "ws" + live_server.url.removeprefix("http") + path
    headers = None
    if token and query:
        url += ("&" if "?" in url else "?") + f"token={token}"
    elif token:
        headers = bearer(token)
    return LogClient.connect(url, headers=headers)


def collect(
    ws: Client, until: Callable[[list[str]], bool] | None = None, timeout: float = 60
) -> tuple[list[str], ConnectionClosed | None]:
    """Messages until ``until(messages)`` holds (socket still open) or the server closes the socket."""
    messages: list[str] = []
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            message = ws.receive(timeout=0.5)
        except ConnectionClosed as closed:
            return messages, closed
        if message is not None:
            messages.append(message)
            if until and until(messages):
                return messages, None
        elif until is None and not ws.connected:
            break
    raise AssertionError(f"no end within {timeout} s; received {messages[-5:]}")


def saw(marker: str) -> Callable[[list[str]], bool]:
    """A predicate for :func:`collect`: some message contains ``marker``."""
    return lambda messages: any(marker in m for m in messages)


def upload(live_server, token: str, path: Path) -> str:
    """Submit a file as the token's user; the job id."""
    with open(path, "rb") as f:
        response = requests.post(
            live_server.url + "/api/jobs/",
            headers=bearer(token),
            files={"file": (path.name, f)},
            data={"model": "tiny.en"},
            timeout=60,
        )
    assert response.status_code == 201, response.text
    return response.json()["job_id"]


def append_line(path: Path, message: str) -> None:
    """Append a JSON line the way the app's handler does (one O_APPEND write)."""
    line = json.dumps({"ts": "test", "level": "INFO", "logger": "test", "message": message}) + "\n"
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o640)
    try:
        os.write(fd, line.encode())
    finally:
        os.close(fd)


def refused(live_server, path: str, token: str | None = None, **kw) -> int:
    """The HTTP status a refused handshake answered with."""
    with pytest.raises(HandshakeRefused) as caught:
        connect(live_server, path, token, **kw).close()
    return caught.value.status_code


# ------------------------------------------------------------------ job logs


def test_job_log_socket_streams_the_lines_and_closes_when_the_job_ends(live_server, tokens):
    """The owner follows a real JFK job with ?token=: every line of its log, then a normal close."""
    alice = tokens["logs-alice"]
    job_id = upload(live_server, alice, AUDIO / "jfk.flac")
    ws = connect(live_server, f"/ws/logs/{job_id}", alice, query=True)
    messages, closed = collect(ws, timeout=240)
    assert closed is not None and closed.reason == 1000, closed
    job = requests.get(f"{live_server.url}/api/jobs/{job_id}", headers=bearer(alice), timeout=30).json()
    assert job["status"] == "completed", job
    assert "started attempt 1" in messages[0] and "completed" in messages[-1]
    text = requests.get(f"{live_server.url}/log/{job_id}", headers=bearer(alice), timeout=30).text
    assert messages == text.splitlines()  # exactly the job's own file, in order, nothing twice

    # Afterwards the socket sends the existing lines at once and closes again; the admin may watch too.
    again, closed = collect(connect(live_server, f"/ws/logs/{job_id}", tokens["logs-admin"]), timeout=30)
    assert again == messages and closed.reason == 1000
    assert refused(live_server, f"/ws/logs/{job_id}", tokens["logs-bob"], query=True) == 404


def test_job_lines_reach_processing_log_with_the_job_id(live_server, tokens):
    """The worker writes each job line to processing.log as JSON with job_id and its pid."""
    job_id = upload(live_server, tokens["logs-alice"], AUDIO / "jfk.flac")
    live_server.wait(job_id)
    path = live_server.data_dir / "logs" / "processing.log"
    records = wait_for(
        lambda: [
            r
            for line in path.read_text().splitlines()
            if (r := json.loads(line)).get("job_id") == job_id and "completed" in r["message"]
        ],
        timeout=30,
    )
    assert records[0]["role"] == "worker" and records[0]["pid"] != live_server.process.pid


# ------------------------------------------------------------------ shared logs


def test_system_log_socket_is_admin_only(live_server, tokens):
    """A user is refused with 403; an admin gets the last lines and then new ones."""
    assert refused(live_server, "/ws/logs/system", tokens["logs-alice"]) == 403
    assert refused(live_server, "/ws/logs", tokens["logs-alice"], query=True) == 403
    path = live_server.data_dir / "logs" / "system.log"
    append_line(path, "before-connect-marker")
    ws = connect(live_server, "/ws/logs/system?lines=50", tokens["logs-admin"])
    collect(ws, saw("before-connect-marker"), timeout=15)
    append_line(path, "after-connect-marker")
    collect(ws, saw("after-connect-marker"), timeout=15)
    ws.close()


def test_access_log_socket_shows_requests_as_they_happen(live_server, tokens):
    """``?log=access`` follows access.log: a request made after connecting shows up with its request id."""
    ws = connect(live_server, "/ws/logs/system?log=access&lines=0", tokens["logs-admin"])
    response = requests.get(live_server.url + "/auth/me", headers=bearer(tokens["logs-admin"]), timeout=30)
    messages, _ = collect(ws, saw(response.headers["X-Request-ID"]), timeout=15)
    record = json.loads(next(m for m in messages if response.headers["X-Request-ID"] in m))
    assert record["path"] == "/auth/me" and record["status"] == 200 and record["user_id"] is not None
    ws.close()


def test_bad_or_missing_credentials_are_refused_with_401(live_server):
    """No token, a forged JWT, an unknown API key: the handshake fails with the standard JSON 401."""
    assert refused(live_server, "/ws/logs/system") == 401
    assert refused(live_server, "/ws/logs/system", "not.a.jwt", query=True) == 401
    assert refused(live_server, "/ws/logs", "wt_unknown_key", query=True) == 401
    assert refused(live_server, "/ws/logs/" + "0" * 32, "wt_unknown_key") == 401
    response = requests.get(
        live_server.url + "/ws/logs/system?token=forged",
        timeout=30,
        headers={
            "Upgrade": "websocket",
            "Connection": "Upgrade",
            "Sec-WebSocket-Version": "13",
            "Sec-WebSocket-Key": "dGhlIHNhbXBsZSBub25jZQ==",
        },
    )
    assert response.status_code == 401
    assert response.json()["error_code"] == "UNAUTHORIZED" and response.json()["request_id"]


def test_logging_out_ends_an_open_socket_opened_with_that_token(live_server, tokens):
    """The socket re-checks its credentials every few seconds: a revoked token closes it with 1008."""
    fresh = requests.post(
        live_server.url + "/auth/login", json={"username": "logs-admin", "password": PASSWORD}, timeout=30
    ).json()["access_token"]
    ws = connect(live_server, "/ws/logs/system?lines=0", fresh, query=True)
    assert requests.post(live_server.url + "/auth/logout", headers=bearer(fresh), timeout=30).status_code == 200
    _, closed = collect(ws, timeout=30)
    assert closed is not None and closed.reason == 1008, closed
    assert refused(live_server, "/ws/logs/system", fresh, query=True) == 401


def test_processing_log_socket_follows_across_rotation(live_server, tokens):
    """Append, rotate (rename and new file), append: the client sees the lines after the rotation, and
    the worker writes its next job's lines into the new file."""
    path = live_server.data_dir / "logs" / "processing.log"
    ws = connect(live_server, "/ws/logs?lines=0", tokens["logs-admin"])
    append_line(path, "rotation-marker-A")
    collect(ws, saw("rotation-marker-A"), timeout=15)
    os.replace(path, path.with_name("processing.log.1"))
    append_line(path, "rotation-marker-B")
    collect(ws, saw("rotation-marker-B"), timeout=15)
    job_id = upload(live_server, tokens["logs-alice"], AUDIO / "jfk.flac")
    messages, _ = collect(ws, lambda ms: any(job_id in m and "completed" in m for m in ms), timeout=240)
    assert any(job_id in m and "started attempt" in m for m in messages)
    assert job_id in path.read_text()  # the worker reopened the new file itself
    ws.close()


# ------------------------------------------------------------------ capacity and clean endings


def test_twenty_open_sockets_do_not_starve_http(live_server, tokens):
    """With 20 sockets following the system log, HTTP requests still answer, and every socket still follows."""
    admin = tokens["logs-admin"]
    sockets = [connect(live_server, "/ws/logs/system?lines=0", admin) for _ in range(20)]
    try:
        paths = ["/auth/me", "/api/jobs/?limit=1", "/health", "/api/jobs/?limit=5", "/auth/me"] * 2
        with ThreadPoolExecutor(len(paths)) as pool:
            statuses = list(
                pool.map(
                    lambda p: requests.get(live_server.url + p, headers=bearer(admin), timeout=15).status_code, paths
                )
            )
        assert statuses == [200] * len(paths)
        append_line(live_server.data_dir / "logs" / "system.log", "twenty-sockets-marker")
        for ws in sockets:
            collect(ws, saw("twenty-sockets-marker"), timeout=15)
    finally:
        for ws in sockets:
            ws.close()


def test_client_disconnects_free_the_server_without_errors(live_server, tokens):
    """40 sockets (more than WS_MAX_CONNECTIONS) open and leave, cleanly or by dropping the TCP connection:
    every one is accepted, so each gave its slot and thread back, and no error reaches the system log
    (which also receives Gunicorn's own error log)."""
    system_log = live_server.data_dir / "logs" / "system.log"
    system_before = system_log.stat().st_size if system_log.exists() else 0
    for i in range(40):
        ws = wait_for(lambda: _try_connect(live_server, tokens["logs-admin"]), timeout=10, interval=0.1)
        if i % 2:
            ws.close()  # a close frame
        else:
            ws.sock.shutdown(socket.SHUT_RDWR)  # the client just goes away
            ws.sock.close()
    assert requests.get(live_server.url + "/auth/me", headers=bearer(tokens["logs-admin"]), timeout=15).ok
    time.sleep(1)  # let the server threads notice the last departures
    with open(system_log, "rb") as f:
        f.seek(system_before)
        errors = [
            r
            for line in f.read().decode().splitlines()
            if (r := json.loads(line))["level"] in ("ERROR", "CRITICAL") or "exc" in r
        ]
    assert errors == []


def _try_connect(live_server, token: str) -> Client | None:
    """A socket, or None while the server still reports all slots taken (503)."""
    try:
        return connect(live_server, "/ws/logs/system?lines=0", token)
    except HandshakeRefused as exc:
        if exc.status_code == 503:
            return None
        raise


def test_stopping_the_appliance_closes_open_sockets_and_long_polls_at_once(tmp_path):
    """SIGTERM: a log socket gets 1001 and a waiting request its answer, instead of holding the stop for 30 s."""
    import signal
    import threading

    from tests.conftest import launch_appliance

    with launch_appliance(tmp_path / "data", "stop-with-sockets.log", WT_QUEUE_POLL_SECONDS="3600") as server:
        ws = connect(server, "/ws/logs/system?lines=0", server.token, query=True)
        silent = silent_socket(server, f"/ws/logs/system?lines=0&token={server.token}")  # never answers a close
        # The idle worker waits on queue.wake for an hour; without the pipe nothing wakes it, so the job stays queued.
        (server.data_dir / "queue.wake").unlink()
        job_id = upload(server, server.token, AUDIO / "jfk.flac")
        answers: list[requests.Response] = []
        poll = threading.Thread(
            target=lambda: answers.append(
                requests.get(f"{server.url}/api/jobs/{job_id}?wait=60", headers=server.headers(), timeout=90)
            )
        )
        poll.start()
        time.sleep(1)  # both requests are now inside the server
        server.process.send_signal(signal.SIGTERM)
        _, closed = collect(ws, timeout=20)
        assert closed is not None and closed.reason == 1001, closed
        poll.join(timeout=20)
        assert answers and answers[0].status_code == 200 and answers[0].json()["status"] == "queued"
        server.process.wait(timeout=20)  # well before Gunicorn's 30 s graceful timeout or the 25 s ping
        silent.close()


def silent_socket(server, path: str) -> socket.socket:
    """A WebSocket handshake by hand, then silence: the client that never replies to the server's close."""
    host, port = server.url.removeprefix("http://").split(":")
    raw = socket.create_connection((host, int(port)), timeout=30)
    raw.sendall(
        (
            f"GET {path} HTTP/1.1\r\nHost: {host}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
            "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
        ).encode()
    )
    assert raw.recv(4096).startswith(b"HTTP/1.1 101")
    return raw
