"""Logs over HTTP (Flask client): job logs, confined log files, the access log, JSON lines, rotation."""

from __future__ import annotations

import errno
import json
import logging
import multiprocessing
import os
from pathlib import Path

import pytest

from app.logging_setup import JsonFormatter, SharedRotatingFileHandler, configure_logging
from app.services.logfiles import LogFollower, confined_log_file, tail_offset
from tests.conftest import ADMIN_PASSWORD, login
from tests.helpers import assert_error

UPGRADE = {
    "Upgrade": "websocket",
    "Connection": "Upgrade",
    "Sec-WebSocket-Key": "dGhlIHNhbXBsZSBub25jZQ==",
    "Sec-WebSocket-Version": "13",
}


def logs_dir(app) -> Path:
    """The test app's logs folder."""
    return Path(app.config["DATA_DIR"]) / "logs"


def json_lines(path: Path) -> list[dict]:
    """Every line of a JSON-lines file, parsed."""
    return [json.loads(line) for line in path.read_text().splitlines()]


# ------------------------------------------------------------------ job logs


def test_job_log_is_readable_by_its_owner_and_admins_and_404_for_others(
    app, client, admin_headers, stub_engine, user_headers, uploaded_job, drain
):
    """The owner and an admin read the worker's lines; another user gets the standard 404."""
    alice, bob = user_headers("alice"), user_headers("bob")
    job_id = uploaded_job(client, alice)["job_id"]
    drain()
    for headers in (alice, admin_headers):
        response = client.get(f"/log/{job_id}", headers=headers)
        assert response.status_code == 200 and response.mimetype == "text/plain"
        text = response.get_data(as_text=True)
        assert "started attempt 1" in text and "completed" in text.splitlines()[-1]
    assert_error(client.get(f"/log/{job_id}", headers=bob), 404, "NOT_FOUND")
    assert_error(client.get("/log/" + "0" * 32, headers=admin_headers), 404, "NOT_FOUND")
    assert_error(app.test_client().get(f"/log/{job_id}"), 401, "UNAUTHORIZED")


def test_job_log_tail_returns_only_the_last_lines(app, client, admin_headers, stub_engine, uploaded_job, drain):
    """``tail=1`` is the last line of the full log."""
    job_id = uploaded_job(client, admin_headers)["job_id"]
    drain()
    full = client.get(f"/log/{job_id}", headers=admin_headers).get_data(as_text=True).splitlines()
    last = client.get(f"/log/{job_id}?tail=1", headers=admin_headers).get_data(as_text=True).splitlines()
    assert len(full) >= 3 and last == full[-1:]
    assert_error(client.get(f"/log/{job_id}?tail=x", headers=admin_headers), 400, "INVALID_PARAMETER")


def test_job_lines_go_to_processing_log_as_json_with_the_job_id(
    app, client, admin_headers, stub_engine, uploaded_job, drain
):
    """Every job line is also a JSON line in processing.log, and not in system.log."""
    job_id = uploaded_job(client, admin_headers)["job_id"]
    drain()
    lines = [r for r in json_lines(logs_dir(app) / "processing.log") if r["job_id"] == job_id]
    assert lines[0]["message"].startswith("started attempt 1") and lines[0]["logger"] == "processing"
    assert {"ts", "level", "logger", "message", "job_id", "request_id", "pid"} <= set(lines[0])
    system = (logs_dir(app) / "system.log").read_text() if (logs_dir(app) / "system.log").exists() else ""
    assert "started attempt" not in system


# ------------------------------------------------------------------ shared logs


def test_shared_log_files_are_admin_only(app, client, admin_headers, user_headers):
    """A user gets 403 and an anonymous caller 401 for /logs/<name> and /logs/access."""
    alice = user_headers()
    logging.getLogger("app.test").warning("something for the system log")
    assert client.get("/logs/system.log", headers=admin_headers).status_code == 200
    for path in ("/logs/system.log", "/logs/access"):
        assert_error(client.get(path, headers=alice), 403, "FORBIDDEN")
        assert_error(app.test_client().get(path), 401, "UNAUTHORIZED")


PROBES = (
    "..",
    "...",
    "..%2Fsecret_key",
    "%2E%2E%2Fsecret_key",
    "..%5Csecret_key",
    "system.log%00.txt",
    ".rotate.lock",
    "jobs",
    "missing.log",
    "%2Fetc%2Fpasswd",
    "outside.log",
)


def test_log_file_probes_outside_the_logs_folder_are_refused(app, client, admin_headers):
    """Traversal, NUL bytes, hidden files, folders and a symlink out of the folder: 400 or 404, never content."""
    secret = (Path(app.config["DATA_DIR"]) / "secret_key").read_text()
    (logs_dir(app) / "outside.log").symlink_to(Path(app.config["DATA_DIR"]) / "secret_key")
    for probe in PROBES:
        response = client.get(f"/logs/{probe}", headers=admin_headers)
        assert response.status_code in (400, 404), probe
        assert_error(response, response.status_code)
        assert secret not in response.get_data(as_text=True)


def test_confinement_rejects_absolute_and_traversing_names(tmp_path):
    """The check itself, without URL decoding in between."""
    (tmp_path / "logs").mkdir()
    (tmp_path / "logs" / "ok.log").write_text("fine\n")
    assert confined_log_file(tmp_path / "logs", "ok.log") == (tmp_path / "logs" / "ok.log").resolve()
    for name in ("/etc/passwd", "../ok.log", "a/../ok.log", "ok.log\x00", "..", ""):
        with pytest.raises(Exception) as caught:
            confined_log_file(tmp_path / "logs", name)
        assert caught.value.status == 400, name


def test_rotated_log_files_are_readable_by_name(app, client, admin_headers):
    """``/logs/system.log.1`` serves a rotated file; ``tail`` limits it."""
    (logs_dir(app) / "system.log.1").write_text("one\ntwo\nthree\n")
    assert client.get("/logs/system.log.1", headers=admin_headers).get_data(as_text=True) == "one\ntwo\nthree\n"
    assert client.get("/logs/system.log.1?tail=2", headers=admin_headers).get_data(as_text=True) == "two\nthree\n"


def test_access_log_has_one_json_line_per_request_without_the_query_string(app, client, admin_headers):
    """Method, path, status, duration, request id, address and user; a ?token= never reaches the file."""
    response = client.get("/auth/me?token=very-secret-token", headers=admin_headers)
    client.get("/api/jobs/", headers=admin_headers)
    records = json_lines(logs_dir(app) / "access.log")
    mine = next(r for r in records if r["request_id"] == response.headers["X-Request-ID"])
    assert mine["method"] == "GET" and mine["path"] == "/auth/me" and mine["status"] == response.status_code
    assert mine["duration_ms"] >= 0 and mine["remote_addr"] == "127.0.0.1" and mine["user_id"] == 1
    assert "very-secret-token" not in (logs_dir(app) / "access.log").read_text()
    body = client.get("/logs/access", headers=admin_headers).get_data(as_text=True)
    assert response.headers["X-Request-ID"] in body


def test_access_log_switched_off_writes_nothing_and_answers_404(tmp_path):
    """With ACCESS_LOG false there is no access.log and /logs/access is 404."""
    from app import create_app
    from tests.helpers import MODELS_DIR

    app = create_app(
        {
            "TESTING": True,
            "DATA_DIR": str(tmp_path / "data"),
            "MODELS_DIR": str(MODELS_DIR),
            "ADMIN_PASSWORD": ADMIN_PASSWORD,
            "ACCESS_LOG": False,
        }
    )
    client = app.test_client()
    headers = login(client)
    assert_error(client.get("/logs/access", headers=headers), 404, "ACCESS_LOG_DISABLED")
    assert not (logs_dir(app) / "access.log").exists()


def test_system_log_lines_carry_the_request_id(app, client, admin_headers):
    """A log call inside a request is a JSON line in system.log with that request's id."""
    from flask import g

    with app.test_request_context("/anything"):
        g.request_id = "req-123"
        logging.getLogger("app.test").warning("inside a request", extra={"job_id": "job-9"})
    record = next(r for r in json_lines(logs_dir(app) / "system.log") if r["message"] == "inside a request")
    assert record["request_id"] == "req-123" and record["job_id"] == "job-9" and record["level"] == "WARNING"
    assert record["pid"] == os.getpid() and record["logger"] == "app.test"


# ------------------------------------------------------------------ WebSocket refusals


def test_websocket_without_valid_credentials_is_refused_before_the_handshake(app, client, admin_headers):
    """No credentials, a bad JWT or a bad API key: the standard 401 instead of 101."""
    anonymous = app.test_client()
    for path in (
        "/ws/logs/system",
        "/ws/logs",
        "/ws/logs/" + "0" * 32,
        "/ws/logs/system?token=not-a-jwt",
        "/ws/logs?token=wt_not_a_key",
    ):
        assert_error(anonymous.get(path, headers=UPGRADE), 401, "UNAUTHORIZED")


def test_websocket_shared_logs_are_admin_only_and_foreign_jobs_404(
    app, client, admin_headers, stub_engine, user_headers, uploaded_job, drain
):
    """A user may not follow the system or processing log, nor another user's job."""
    alice, bob = user_headers("alice"), user_headers("bob")
    job_id = uploaded_job(client, alice)["job_id"]
    drain()
    anonymous = app.test_client()
    token = bob["Authorization"].split()[1]
    for path in ("/ws/logs/system", "/ws/logs"):
        assert_error(anonymous.get(f"{path}?token={token}", headers=UPGRADE), 403, "FORBIDDEN")
    assert_error(anonymous.get(f"/ws/logs/{job_id}?token={token}", headers=UPGRADE), 404, "NOT_FOUND")


def test_websocket_with_a_session_cookie_from_another_origin_is_refused(app, client, admin_headers):
    """Cross-site WebSocket hijacking: the cookie alone is not enough when Origin is foreign."""
    assert client.get_cookie("wt_session") is not None  # admin_headers logged in with this client
    response = client.get("/ws/logs/system", headers={**UPGRADE, "Origin": "https://evil.example"})
    assert_error(response, 403, "FORBIDDEN")


def test_plain_http_request_to_a_websocket_route_is_400(app, client, admin_headers):
    """Without the upgrade headers the route does not exist for HTTP."""
    assert_error(client.get("/ws/logs/system", headers=admin_headers), 400)


def test_websocket_bad_parameters_are_refused_before_the_handshake(app, client, admin_headers):
    """``lines`` out of range or an unknown ``log`` are 400 before any socket is opened."""
    assert_error(client.get("/ws/logs?lines=-1", headers={**admin_headers, **UPGRADE}), 400, "INVALID_PARAMETER")
    assert_error(client.get("/ws/logs/system?log=secrets", headers={**admin_headers, **UPGRADE}), 400)


def test_websocket_pings_are_configured(app):
    """flask-sock passes SOCK_SERVER_OPTIONS to simple-websocket: pings every WS_PING_INTERVAL seconds."""
    assert app.config["SOCK_SERVER_OPTIONS"]["ping_interval"] == app.config["WS_PING_INTERVAL"] == 25


def test_socket_slots_refuse_beyond_the_limit():
    """Past WS_MAX_CONNECTIONS a handshake is 503; giving one back lets the next in."""
    from app.api.log_routes import _Slots
    from app.errors import AppError

    slots = _Slots()
    slots.take(2)
    slots.take(2)
    with pytest.raises(AppError) as caught:
        slots.take(2)
    assert caught.value.status == 503
    slots.give_back()
    slots.take(2)


# ------------------------------------------------------------------ files: rotation and following


def _write_lines(path: str, tag: str, count: int) -> None:
    handler = SharedRotatingFileHandler(path, max_bytes=8_000, backups=50)
    handler.setFormatter(logging.Formatter("%(message)s"))
    for i in range(count):
        handler.emit(logging.makeLogRecord({"msg": json.dumps({"tag": tag, "i": i, "pad": "x" * 60})}))
    handler.close()


def test_shared_handler_rotates_once_when_several_processes_write(tmp_path):
    """Four processes, one file, a small size limit: every line arrives whole and files stay near the limit."""
    path = tmp_path / "shared.log"
    ctx = multiprocessing.get_context("fork")
    procs = [ctx.Process(target=_write_lines, args=(str(path), f"p{n}", 400)) for n in range(4)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(60)
        assert p.exitcode == 0
    files = [path, *sorted(tmp_path.glob("shared.log.*"))]
    records = [json.loads(line) for f in files for line in f.read_text().splitlines()]
    assert len(records) == 1600  # nothing lost (50 backups hold it all), nothing torn
    assert {(r["tag"], r["i"]) for r in records} == {(f"p{n}", i) for n in range(4) for i in range(400)}
    assert len(files) > 5 and all(f.stat().st_size < 8_000 + 2_000 for f in files)
    assert not list(tmp_path.glob("shared.log.51"))


def test_shared_handler_keeps_only_the_configured_backups(tmp_path):
    """x.log, x.log.1 … x.log.N: the oldest file falls off the end."""
    handler = SharedRotatingFileHandler(tmp_path / "x.log", max_bytes=200, backups=2)
    handler.setFormatter(logging.Formatter("%(message)s"))
    for i in range(50):
        handler.emit(logging.makeLogRecord({"msg": f"line {i:03d} " + "y" * 40}))
    handler.close()
    assert sorted(p.name for p in tmp_path.iterdir() if not p.name.startswith(".")) == ["x.log", "x.log.1", "x.log.2"]
    assert "line 049" in (tmp_path / "x.log").read_text()


def _json_handler(path: Path) -> SharedRotatingFileHandler:
    handler = SharedRotatingFileHandler(path)
    handler.setFormatter(JsonFormatter("web"))
    return handler


def test_a_short_write_near_a_full_disk_is_taken_back_so_no_line_is_torn(tmp_path, monkeypatch):
    """The kernel wrote only what fitted: the fragment is cut off again and the count of lost lines follows."""
    handler = _json_handler(tmp_path / "system.log")
    real_write = os.write

    def short_for_the_second_line(fd: int, data: bytes) -> int:
        if fd == handler._fd and b"second" in data:
            return real_write(fd, data[:25])  # what fits in the last free block
        return real_write(fd, data)

    monkeypatch.setattr(os, "write", short_for_the_second_line)
    for message in ("first", "second", "third"):
        handler.emit(logging.makeLogRecord({"msg": message, "levelname": "INFO"}))
    handler.close()
    messages = [entry["message"] for entry in json_lines(tmp_path / "system.log")]
    assert messages == ["first", "1 log lines were dropped: the disk was full", "third"]


def test_a_full_disk_drops_whole_lines_without_tracebacks_on_stderr(tmp_path, monkeypatch, capsys):
    """ENOSPC loses the line and says so later, instead of a logging traceback per line."""
    handler = _json_handler(tmp_path / "system.log")
    real_write = os.write
    full = [False]

    def write(fd: int, data: bytes) -> int:
        if fd == handler._fd and full[0]:
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_write(fd, data)

    monkeypatch.setattr(os, "write", write)
    handler.emit(logging.makeLogRecord({"msg": "before"}))
    full[0] = True
    for i in range(5):
        handler.emit(logging.makeLogRecord({"msg": f"lost {i}"}))
    full[0] = False
    handler.emit(logging.makeLogRecord({"msg": "after"}))
    handler.close()
    messages = [entry["message"] for entry in json_lines(tmp_path / "system.log")]
    assert messages == ["before", "5 log lines were dropped: the disk was full", "after"]
    assert "Logging error" not in capsys.readouterr().err


def test_configure_logging_twice_replaces_the_handlers(tmp_path):
    """Each app (each test) writes to its own data dir, never to an earlier one."""
    configure_logging({"DATA_DIR": str(tmp_path / "a")}, "worker")
    configure_logging({"DATA_DIR": str(tmp_path / "b")}, "worker")
    logging.getLogger("app.test").warning("only in b")
    assert (
        not (tmp_path / "a" / "logs" / "system.log").exists()
        or "only in b" not in (tmp_path / "a" / "logs" / "system.log").read_text()
    )
    assert "only in b" in (tmp_path / "b" / "logs" / "system.log").read_text()


def run_housekeeping(app) -> None:
    """What the worker's consumer does every minute: the scheduler queues the periodic tasks, a worker runs them,
    plus one ordinary task."""
    import threading
    from datetime import datetime

    from huey.consumer import Scheduler

    from workers import pipeline, tasks
    from workers.queue import huey

    pipeline.configure(dict(app.config))
    Scheduler(huey, threading.Event(), 1, True).enqueue_periodic_tasks(datetime(2024, 1, 1, 0, 10))
    tasks.process_job("no-such-job")
    with app.app_context():
        for _ in range(huey.pending_count()):  # an empty dequeue would wait for a wake-up
            huey.execute(huey.dequeue())


def test_housekeeping_that_finds_nothing_to_do_leaves_no_lines_in_the_system_log(app):
    """Reconcile, watch folders and cleanup every minute: Huey's routine lines about them stay out;
    an ordinary task's lines stay in."""
    run_housekeeping(app)
    messages = [r["message"] for r in json_lines(logs_dir(app) / "system.log") if r["logger"].startswith("huey")]
    assert not [m for m in messages if any(name in m for name in ("reconcile", "watch_folders", "cleanup"))], messages
    assert any(m.startswith("Executing workers.tasks.process_job") for m in messages), messages


def test_housekeeping_that_did_something_still_logs_it(app, client, admin_headers, uploaded_job):
    from app.models import Job

    job_id = uploaded_job(client, admin_headers)["job_id"]
    with app.app_context():
        Job.update(status="processing", worker_id="999999:1.00", attempts=1).where(Job.id == job_id).execute()
    run_housekeeping(app)
    lines = json_lines(logs_dir(app) / "system.log")
    assert any(f"job={job_id} re-queued" in r["message"] and r["level"] == "WARNING" for r in lines)


def test_housekeeping_lines_show_at_debug_level(app, tmp_path):
    configure_logging({"DATA_DIR": str(tmp_path / "debug"), "LOG_LEVEL": "DEBUG"}, "worker")
    try:
        run_housekeeping(app)
    finally:
        configure_logging(app.config, "web")
    lines = json_lines(tmp_path / "debug" / "logs" / "system.log")
    assert any(r["level"] == "DEBUG" and r["message"].startswith("Executing workers.tasks.reconcile") for r in lines)


@pytest.mark.e2e
def test_the_live_workers_system_log_has_no_idle_housekeeping_lines(live_server):
    """A real consumer queues and runs the periodic tasks as it starts (and every minute after)."""
    lines = json_lines(live_server.data_dir / "logs" / "system.log")
    assert any(r["message"].startswith("Huey consumer started") for r in lines)  # the worker does log here
    assert not [
        r
        for r in lines
        if r["logger"] in ("huey", "huey.consumer.Scheduler") and "workers.tasks.reconcile" in r["message"]
    ]


def test_tail_offset_finds_the_last_lines(tmp_path):
    """With and without a final newline, and for more lines than the file has."""
    path = tmp_path / "t.log"
    path.write_bytes(b"a\nb\nc\n")
    with open(path, "rb") as f:
        assert [tail_offset(f, n) for n in (0, 1, 2, 3, 9)] == [6, 4, 2, 0, 0]
    path.write_bytes(b"a\nb\nc")
    with open(path, "rb") as f:
        assert [tail_offset(f, n) for n in (1, 2)] == [4, 2]


def test_follower_survives_rotation_truncation_and_partial_lines(tmp_path):
    """New lines after a rename, a removed file coming back, a truncated file, and a line written in halves."""
    path = tmp_path / "f.log"
    path.write_text("old 1\nold 2\n")
    follower = LogFollower(path, last=1)
    assert follower.poll() == ["old 2"]
    with open(path, "a") as f:
        f.write("half")
    assert follower.poll() == []
    with open(path, "a") as f:
        f.write(" and half\n")
    assert follower.poll() == ["half and half"]
    os.replace(path, tmp_path / "f.log.1")
    with open(tmp_path / "f.log.1", "a") as f:
        f.write("late writer\n")
    path.write_text("after rotation\n")
    assert follower.poll() == ["late writer", "after rotation"]
    path.unlink()
    assert follower.poll() == []
    path.write_text("recreated\n")
    assert follower.poll() == ["recreated"]
    path.write_text("")  # truncated in place (same inode)
    with open(path, "a") as f:
        f.write("x\n")
    assert follower.poll() == ["x"]
    follower.close()


def test_follower_of_a_missing_file_starts_at_its_beginning(tmp_path):
    """A job log that does not exist yet is read from its first line once the worker creates it."""
    follower = LogFollower(tmp_path / "job.log")
    assert follower.poll() == []
    (tmp_path / "job.log").write_text("first\nsecond\n")
    assert follower.poll() == ["first", "second"]
    follower.close()


class FakeSocket:
    """Records what ``stream`` does to a socket; the client never sends anything."""

    def __init__(self) -> None:
        self.sent: list[str] = []
        self.closed: tuple[int, str] | None = None

    def send(self, line: str) -> None:
        self.sent.append(line)

    def receive(self, timeout: float | None = None) -> None:
        return None

    def close(self, reason: int, message: str) -> None:
        self.closed = (reason, message)


class Lines:
    """A follower with fixed lines, then an optional failure."""

    def __init__(self, lines: list[str], fail: bool = False) -> None:
        self.lines, self.fail = lines, fail

    def poll(self) -> list[str]:
        if self.fail and not self.lines:
            raise RuntimeError("disk went away")
        lines, self.lines = self.lines, []
        return lines


def test_stream_closes_with_1008_once_credentials_are_revoked(monkeypatch):
    from app.api import log_routes

    monkeypatch.setattr(log_routes, "RECHECK_SECONDS", 0.0)
    monkeypatch.setattr(log_routes, "POLL_SECONDS", 0.0)
    answers = iter([True, False])
    ws = FakeSocket()
    log_routes.stream(ws, Lines(["one", "two"]), authorized=lambda: next(answers))
    assert ws.sent == ["one", "two"] and ws.closed == (1008, "credentials revoked")


def test_stream_closes_with_1011_instead_of_hanging_when_it_fails(monkeypatch):
    from app.api import log_routes

    monkeypatch.setattr(log_routes, "POLL_SECONDS", 0.0)
    ws = FakeSocket()
    log_routes.stream(ws, Lines(["one"], fail=True))
    assert ws.sent == ["one"] and ws.closed == (1011, "internal error")


def test_stream_closes_with_1001_when_the_server_stops(monkeypatch):
    from app.api import log_routes
    from app.shutdown import stopping

    monkeypatch.setattr(log_routes, "POLL_SECONDS", 0.0)
    ws = FakeSocket()
    stopping.set()
    try:
        log_routes.stream(ws, Lines(["never sent"]))
    finally:
        stopping.clear()
    assert ws.closed == (1001, "server stopping")
