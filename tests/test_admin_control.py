"""Concurrency and server control: HTTP checks with stand-in processes, then real appliances.

The live tests start their own ``whisper-transcriber run`` (ENABLE_SERVER_CONTROL=true) so that
restarting, rescaling and shutting down never disturb the shared ``live_server``.
"""

from __future__ import annotations

import json
import os
import platform
import sqlite3
import subprocess
import sys
from pathlib import Path

import psutil
import pytest
import requests

from app.models import AuditLog, Setting
from app.supervisor import record_worker
from tests.conftest import LiveServer, launch_appliance
from tests.helpers import AUDIO, assert_error, wait_for

# A stand-in for Gunicorn, the supervisor or a worker: it records the signals it gets.
FAKE = """
import signal, sys, time
out = open(sys.argv[1], "a", buffering=1)
for sig in (signal.SIGHUP, signal.SIGINT, signal.SIGTERM):
    signal.signal(sig, lambda s, f: out.write(signal.Signals(s).name + "\\n"))
out.write("READY\\n")
time.sleep(120)
"""


@pytest.fixture
def fakes(tmp_path):
    """Start stand-in processes by role; each records signals in its own file; all are killed afterwards."""
    started: list[subprocess.Popen] = []

    def start(role: str) -> tuple[psutil.Process, Path]:
        marker = tmp_path / f"{role}-{len(started)}.signals"
        proc = subprocess.Popen([sys.executable, "-c", FAKE, str(marker), role])
        started.append(proc)
        wait_for(lambda: marker.exists() and "READY" in marker.read_text(), timeout=10)
        return psutil.Process(proc.pid), marker

    yield start
    for proc in started:
        proc.kill()
        proc.wait()


def received(marker: Path, name: str) -> bool:
    """True once the stand-in recorded this signal."""
    return name in marker.read_text().split()


def control(app) -> Path:
    """Enable server control for this app; return its data dir."""
    app.config["ENABLE_SERVER_CONTROL"] = True
    return Path(app.config["DATA_DIR"])


# ------------------------------------------------------------------ concurrency through HTTP


def test_concurrency_defaults_save_and_audit(app, client, admin_headers):
    """GET shows one worker and the configured threads; POST saves the Setting the processes read."""
    body = client.get("/admin/concurrency", headers=admin_headers).get_json()
    assert (body["workers"], body["threads_per_worker"], body["running_workers"]) == (1, 0, 0)
    assert body["supervisor"] is None and body["limits"]["workers"] == [1, 16]
    saved = client.post("/admin/concurrency", headers=admin_headers, json={"workers": 3, "threads": 2})
    assert saved.status_code == 200
    assert (saved.get_json()["workers"], saved.get_json()["threads_per_worker"]) == (3, 2)
    assert Setting.read("concurrency") == {"workers": 3, "threads": 2}
    client.post("/admin/concurrency", headers=admin_headers, json={"threads_per_worker": 4})
    assert Setting.read("concurrency") == {"workers": 3, "threads": 4}
    entry = AuditLog.search(action="admin_concurrency_changed").first()
    assert entry.detail["new"] == {"workers": 3, "threads": 4}


@pytest.mark.parametrize(
    "body",
    [
        {},
        {"workers": 0},
        {"workers": 17},
        {"workers": "2"},
        {"workers": True},
        {"threads_per_worker": -1},
        {"threads_per_worker": 65},
        {"workers": 1.5},
    ],
)
def test_concurrency_rejects_bad_values(client, admin_headers, body):
    """Out of range, wrong types or nothing to change: 422, nothing saved."""
    assert_error(client.post("/admin/concurrency", headers=admin_headers, json=body), 422)
    assert Setting.read("concurrency") is None


def test_auto_workers_follow_the_calibrated_layout_unless_set(app, tmp_path):
    """WT_WORKERS=0 takes the calibration's workers x threads; settings and the saved value win over it."""
    from app import supervisor
    from workers import tuning

    settings = {**app.config, "WORKERS": 0, "ENGINE_THREADS": 0}
    assert supervisor.read_concurrency(settings) == {"workers": 1, "threads": 0}  # not calibrated yet
    record = {"host": platform.node(), "models": {}, "layout": {"workers": 2, "threads": 1}}
    tuning.tuning_path(settings).write_text(json.dumps(record))
    assert supervisor.read_concurrency(settings) == {"workers": 2, "threads": 1}
    assert supervisor.read_concurrency({**settings, "WORKERS": 3}) == {"workers": 3, "threads": 0}
    assert supervisor.read_concurrency({**settings, "ENGINE_THREADS": 2}) == {"workers": 1, "threads": 2}
    Setting.write("concurrency", {"workers": 1, "threads": 2})
    assert supervisor.read_concurrency(settings) == {"workers": 1, "threads": 2}


def test_worker_reads_threads_from_the_saved_concurrency(app, monkeypatch):
    """``prepare_worker`` sets ENGINE_THREADS; a worker index above the wanted count waits on standby."""
    from app import supervisor

    monkeypatch.setattr(supervisor, "_threads", supervisor._threads)  # prepare_worker sets this process-wide
    Setting.write("concurrency", {"workers": 2, "threads": 3})
    settings = dict(app.config)
    assert supervisor.prepare_worker(settings) == {"workers": 2, "threads": 3}
    assert settings["ENGINE_THREADS"] == 3
    settings["WORKER_INDEX"] = 3  # WT_WORKER_INDEX=3, as the systemd unit worker@3 sets it
    monkeypatch.setattr(supervisor, "POLL_SECONDS", 0.01)
    reads = iter([{"workers": 2, "threads": 1}, {"workers": 2, "threads": 1}, {"workers": 3, "threads": 1}])
    monkeypatch.setattr(supervisor, "read_concurrency", lambda s: next(reads))
    assert supervisor.prepare_worker(settings) == {"workers": 3, "threads": 1}


# ------------------------------------------------------------------ server control through HTTP


@pytest.mark.parametrize("path", ["/admin/shutdown", "/admin/restart"])
def test_server_control_is_403_unless_enabled(app, client, admin_headers, path):
    """The default refuses with the standard body and writes no audit entry."""
    assert_error(client.post(path, headers=admin_headers), 403, "SERVER_CONTROL_DISABLED")
    assert AuditLog.search(action=f"admin_{path.rsplit('/', 1)[1]}").count() == 0


@pytest.mark.parametrize("path", ["/admin/shutdown", "/admin/restart"])
def test_server_control_without_gunicorn_is_503(app, client, admin_headers, path):
    """Under the test client there is no Gunicorn pid file; a stale one (not Gunicorn) counts as none."""
    data = control(app)
    assert_error(client.post(path, headers=admin_headers), 503, "SERVER_CONTROL_UNAVAILABLE")
    (data / "gunicorn.pid").write_text(f"{os.getpid()}\n")  # alive, but not Gunicorn
    assert_error(client.post(path, headers=admin_headers), 503, "SERVER_CONTROL_UNAVAILABLE")


def test_restart_sends_sighup_to_gunicorn_and_workers_after_answering(app, client, admin_headers, fakes):
    """Without a supervisor: SIGHUP to the master and to every registered worker, once the answer is sent."""
    data = control(app)
    master, master_signals = fakes("gunicorn")
    worker, worker_signals = fakes("worker")
    (data / "gunicorn.pid").write_text(f"{master.pid}\n")
    record_worker(worker)
    response = client.post("/admin/restart", headers=admin_headers)
    assert response.status_code == 200 and response.get_json()["mode"] == "direct"
    assert response.get_json()["workers"] == [worker.pid]
    response.close()  # the WSGI server closes the response once sent; the signals follow
    wait_for(lambda: received(master_signals, "SIGHUP") and received(worker_signals, "SIGHUP"), timeout=10)
    entry = AuditLog.search(action="admin_restart").first()
    assert entry.username == "admin" and entry.detail["web_master_pid"] == master.pid


def test_shutdown_without_supervisor_stops_workers_gently_and_gunicorn(app, client, admin_headers, fakes):
    """Direct mode (systemd): SIGINT to workers (they finish their job), SIGTERM to the master."""
    data = control(app)
    master, master_signals = fakes("gunicorn")
    worker, worker_signals = fakes("worker")
    (data / "gunicorn.pid").write_text(f"{master.pid}\n")
    record_worker(worker)
    response = client.post("/admin/shutdown", headers=admin_headers)
    assert response.status_code == 200 and response.get_json()["mode"] == "direct"
    response.close()
    wait_for(lambda: received(master_signals, "SIGTERM") and received(worker_signals, "SIGINT"), timeout=10)
    assert not received(worker_signals, "SIGTERM")
    assert AuditLog.search(action="admin_shutdown").first().detail["mode"] == "direct"


def test_shutdown_and_restart_under_the_supervisor_go_through_it(app, client, admin_headers, fakes):
    """With ``run``: shutdown is SIGTERM and restart SIGHUP to the supervisor only; it handles its children."""
    data = control(app)
    master, master_signals = fakes("gunicorn")
    sup, sup_signals = fakes("run")
    (data / "gunicorn.pid").write_text(f"{master.pid}\n")
    (data / "supervisor.pid").write_text(f"{sup.pid} {sup.create_time():.2f}\n")
    for path, name in (("/admin/restart", "SIGHUP"), ("/admin/shutdown", "SIGTERM")):
        response = client.post(path, headers=admin_headers)
        assert response.status_code == 200 and response.get_json()["mode"] == "supervisor"
        response.close()
        wait_for(lambda name=name: received(sup_signals, name), timeout=10)
    assert master_signals.read_text().split() == ["READY"]


# ------------------------------------------------------------------ real appliances


def appliance(data_dir: Path, name: str):
    """``whisper-transcriber run`` with server control on; stopped afterwards if still up."""
    return launch_appliance(
        data_dir,
        f"admin-control-{name}.log",
        stop_timeout=120,
        ENABLE_SERVER_CONTROL="true",
        WT_RATELIMIT_ENABLED="false",
    )


def workers_of(process: subprocess.Popen) -> list[psutil.Process]:
    """The supervisor's worker processes."""
    try:
        return [p for p in psutil.Process(process.pid).children() if "worker" in p.cmdline()]
    except psutil.Error:
        return []


def safe_get(server: LiveServer, path: str):
    """GET that treats a connection hiccup (a reloading server) as no answer."""
    try:
        response = server.get(path)
        return response.json() if response.status_code == 200 else None
    except requests.RequestException:
        return None


@pytest.fixture(scope="module")
def controlled(tmp_path_factory):
    """One appliance for the restart and concurrency tests."""
    with appliance(tmp_path_factory.mktemp("control") / "data", "control") as server:
        yield server


def restarts_logged(server: LiveServer) -> int:
    """How often a Huey consumer of this appliance said it would restart."""
    logs = (server.data_dir / "logs").glob("system.log*")
    return sum(path.read_text().count("Consumer will restart") for path in logs)


@pytest.mark.e2e
def test_restart_reloads_gunicorn_and_workers_and_keeps_serving(controlled):
    """SIGHUP reaches Gunicorn (new web pid, same master) and the workers (Huey restarts); jobs still run."""
    before = controlled.get("/admin/stats").json()["processes"]
    restarts = restarts_logged(controlled)
    response = controlled.post("/admin/restart")
    assert response.status_code == 200 and response.json()["mode"] == "supervisor"
    after = wait_for(
        lambda: (
            (s := safe_get(controlled, "/admin/stats"))
            and s["processes"]["web_pid"] != before["web_pid"]
            and s["processes"]
        ),
        timeout=60,
    )
    assert after["web_master_pid"] == before["web_master_pid"]
    wait_for(lambda: restarts_logged(controlled) > restarts, timeout=60)
    job = controlled.wait(controlled.submit(AUDIO / "jfk.flac"))
    assert job["status"] == "completed"
    audit = controlled.get("/admin/audit?action=admin_restart").json()
    assert audit["total"] >= 1


@pytest.mark.e2e
def test_concurrency_change_spawns_and_retires_workers_without_losing_jobs(controlled):
    """2 workers appear; new threads restart them in place; back to 1; every queued job completes."""
    assert controlled.post("/admin/concurrency", json={"workers": 2}).status_code == 200
    wait_for(lambda: len(workers_of(controlled.process)) == 2, timeout=60)
    wait_for(lambda: controlled.get("/admin/concurrency").json()["running_workers"] == 2, timeout=60)
    jobs = [controlled.submit(AUDIO / "jfk.flac") for _ in range(3)]
    assert all(controlled.wait(j)["status"] == "completed" for j in jobs)

    pids = sorted(p.pid for p in workers_of(controlled.process))
    assert controlled.post("/admin/concurrency", json={"threads_per_worker": 1}).status_code == 200
    wait_for(
        lambda: [w["threads"] for w in controlled.get("/admin/stats").json()["processes"]["workers"]] == [1, 1],
        timeout=90,
    )
    assert sorted(p.pid for p in workers_of(controlled.process)) == pids  # restarted in place by Huey

    queued = controlled.submit(AUDIO / "jfk.flac")
    assert controlled.post("/admin/concurrency", json={"workers": 1, "threads_per_worker": 0}).status_code == 200
    wait_for(lambda: len(workers_of(controlled.process)) == 1, timeout=120)
    assert controlled.wait(queued)["status"] == "completed"
    assert controlled.wait(controlled.submit(AUDIO / "jfk.flac"))["status"] == "completed"


def job_rows(data_dir: Path) -> dict[str, tuple[str, int]]:
    """Status and attempts of every job, read straight from the database of a stopped appliance."""
    with sqlite3.connect(data_dir / "whisper.db") as conn:
        return {row[0]: (row[1], row[2]) for row in conn.execute("SELECT id, status, attempts FROM job")}


@pytest.mark.e2e
def test_shutdown_lets_the_running_job_finish_and_keeps_queued_jobs(tmp_path):
    """`run` exits 0 once the running job has finished; the queued one waits and completes after a restart."""
    data_dir = tmp_path / "data"
    with appliance(data_dir, "shutdown") as server:
        running = server.submit(AUDIO / "OSR_us_000_0034_8k.flac")
        wait_for(lambda: server.get(f"/api/progress/{running}").json()["stage"] == "transcribing", timeout=90)
        waiting = server.submit(AUDIO / "jfk.flac")
        response = server.post("/admin/shutdown")
        assert response.status_code == 200 and response.json()["mode"] == "supervisor"
        assert server.process.wait(timeout=300) == 0
    rows = job_rows(data_dir)
    assert rows[running] == ("completed", 1) and rows[waiting] == ("queued", 0)  # finished, not abandoned
    assert not (data_dir / "supervisor.pid").exists()
    with appliance(data_dir, "shutdown-again") as server:
        assert server.wait(running)["status"] == "completed"
        assert server.wait(waiting)["status"] == "completed"
        assert server.get("/admin/audit?action=admin_shutdown").json()["total"] == 1
