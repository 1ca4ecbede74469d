"""A worker's life: it is recycled once it has grown, runs below the web's CPU priority, and dies with ``run``."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import psutil
import pytest

from app.supervisor import Supervisor
from tests.conftest import LiveServer, launch_appliance
from tests.helpers import AUDIO, MODELS_DIR, ROOT, reference, wait_for, wer
from workers import lifecycle

MB = 1024 * 1024


# ------------------------------------------------------------------ the recycling rule


def recycler(tmp_path: Path, **settings: int) -> lifecycle.Recycler:
    """A Recycler over a models folder in ``tmp_path``."""
    (tmp_path / "models").mkdir(exist_ok=True)
    return lifecycle.Recycler({"MODELS_DIR": str(tmp_path / "models"), **settings})


def test_worker_is_recycled_once_its_memory_passes_the_limit(tmp_path):
    """Under the limit nothing happens; past it the reason names the memory, the limit and the setting."""
    rule = recycler(tmp_path, WORKER_MAX_RSS_MB=300)
    assert rule.after_job(rss=299 * MB) is None
    reason = rule.after_job(rss=301 * MB)
    assert reason and "RSS 301 MB" in reason and "limit of 300 MB" in reason and "WT_WORKER_MAX_RSS_MB=300" in reason


def test_worker_is_recycled_after_the_configured_number_of_jobs(tmp_path):
    """WT_WORKER_MAX_JOBS=3: the third job ends the worker's life; 0 never does."""
    rule = recycler(tmp_path, WORKER_MAX_JOBS=3, WORKER_MAX_RSS_MB=-1)
    assert [rule.after_job(rss=10 * MB) for _ in range(2)] == [None, None]
    assert "run 3 jobs (WT_WORKER_MAX_JOBS=3)" in rule.after_job(rss=10 * MB)
    never = recycler(tmp_path, WORKER_MAX_JOBS=0, WORKER_MAX_RSS_MB=-1)
    assert all(never.after_job(rss=100_000 * MB) is None for _ in range(50))


def test_automatic_memory_limit_is_sized_for_the_largest_model_run(tmp_path):
    """0: 1024 MB for tiny.en and base, 512 MB plus three times a bigger model; engine labels name the file."""
    rule = recycler(tmp_path, WORKER_MAX_RSS_MB=0)
    assert rule.limit_mb() == lifecycle.AUTO_FLOOR_MB
    assert rule.after_job("whispercpp:ggml-missing.bin", rss=1000 * MB) is None
    with open(tmp_path / "models" / "ggml-large.bin", "wb") as f:
        f.truncate(1024 * MB)  # sparse: a 1 GB model file that takes no disk
    folder = tmp_path / "models" / "ct2-small"
    folder.mkdir()
    (folder / "model.bin").write_bytes(b"x" * 1000)
    assert lifecycle.model_bytes(tmp_path / "models", "ctranslate2:ct2-small") == 1000
    assert lifecycle.model_bytes(tmp_path / "models", "whispercpp:../escape.bin") == 0
    assert rule.after_job("whispercpp:ggml-large.bin", rss=3000 * MB) is None
    assert rule.limit_mb() == 512 + 3 * 1024
    assert "sized for the model" in rule.after_job("whispercpp:ggml-base.bin", rss=3600 * MB)


def test_supervisor_replaces_a_recycled_worker_at_once_and_a_crashed_one_after_a_delay(tmp_path):
    """Exit code 75 is a planned exit: no back-off; any other exit waits before the next start."""
    sup = Supervisor({"DATA_DIR": str(tmp_path)})
    for code, delayed in ((lifecycle.RECYCLE_EXIT_CODE, False), (1, True)):
        proc = subprocess.Popen([sys.executable, "-c", f"raise SystemExit({code})"])
        proc.wait()
        sup.active, sup.started = [proc], {proc.pid: time.monotonic()}
        sup._reap()
        assert sup.active == []
        assert (sup.next_spawn > time.monotonic()) is delayed


# ------------------------------------------------------------------ priority and parent death, in stand-ins


def run_python(code: str, **env: str) -> subprocess.CompletedProcess:
    """Run a snippet with the project importable."""
    return subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, **env},
    )


def test_lower_priority_reaches_every_thread_and_is_not_applied_twice():
    """A thread started before is lowered too; a second call (a re-executed worker) keeps 10, not 19."""
    done = run_python("""
        import os, threading
        from workers import lifecycle
        ready, tids = threading.Event(), []
        def early():
            tids.append(threading.get_native_id()); ready.set(); threading.Event().wait(5)
        threading.Thread(target=early, daemon=True).start(); ready.wait()
        lifecycle.lower_priority(10); lifecycle.lower_priority(10)
        print(os.getpriority(os.PRIO_PROCESS, 0), os.getpriority(os.PRIO_PROCESS, tids[0]))
    """)
    assert done.stdout.split() == ["10", "10"], done.stderr


# A stand-in for `run`: it starts one "worker" (which starts a child of its own, like ffmpeg) and waits.
FAKE_SUPERVISOR = """
import os, subprocess, sys, time
env = {**os.environ, "WT_SUPERVISOR_PID": str(os.getpid())}
subprocess.Popen([sys.executable, "-c", sys.argv[1]], env=env, process_group=0)
time.sleep(120)
"""

FAKE_WORKER = """
import subprocess, sys, time
from workers import lifecycle
if {no_prctl}:
    lifecycle._parent_death_signal = lambda signum: False  # only the parent check is left
lifecycle.watch_supervisor(interval=0.2)
child = subprocess.Popen(["sleep", "120"])
open({marker!r}, "w").write(f"{{child.pid}}")
time.sleep(120)
"""


@pytest.mark.parametrize("no_prctl", [False, True], ids=["death-signal", "parent-check"])
def test_worker_and_its_children_exit_when_the_supervisor_is_killed(tmp_path, no_prctl):
    """SIGKILL to the supervisor: its worker and the worker's own child are gone within 2 s."""
    marker = tmp_path / "child.pid"
    sup = subprocess.Popen(
        [sys.executable, "-c", FAKE_SUPERVISOR, FAKE_WORKER.format(no_prctl=no_prctl, marker=str(marker))], cwd=ROOT
    )
    try:
        wait_for(lambda: marker.exists() and marker.read_text(), timeout=30)
        worker = psutil.Process(sup.pid).children()[0]
        child = psutil.Process(int(marker.read_text()))
        sup.kill()
        sup.wait()
        assert wait_for(lambda: not alive(worker) and not alive(child), timeout=2, interval=0.05)
    finally:
        sup.kill()


def test_process_whose_supervisor_died_before_it_started_exits_at_once():
    """The race between fork and prctl: a parent that is not the named supervisor means it is gone."""
    done = run_python(
        """
        from workers import lifecycle
        lifecycle.follow_supervisor()
        print("still running")
    """,
        WT_SUPERVISOR_PID="1",
    )
    assert done.returncode == lifecycle.ORPHAN_EXIT_CODE and "still running" not in done.stdout


def alive(proc: psutil.Process) -> bool:
    """True while the process runs (a zombie waiting for its reaper counts as gone)."""
    try:
        return proc.status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


# ------------------------------------------------------------------ real appliances

RSS_LIMIT_MB = 200  # a fresh worker after a tiny.en job is ~160 MB; one that ran base is over it


def workers_of(server: LiveServer) -> list[psutil.Process]:
    """The supervisor's worker processes now."""
    try:
        return [p for p in psutil.Process(server.process.pid).children() if "worker" in p.cmdline()]
    except psutil.Error:
        return []


def system_log(server: LiveServer) -> list[dict]:
    """Every line of the system log."""
    lines = (server.data_dir / "logs" / "system.log").read_text().splitlines()
    return [json.loads(line) for line in lines if line.strip()]


@pytest.fixture(scope="module")
def recycling(tmp_path_factory):
    """An appliance whose workers are recycled past RSS_LIMIT_MB."""
    with launch_appliance(
        tmp_path_factory.mktemp("recycle") / "data",
        "worker-recycle.log",
        WT_WORKER_MAX_RSS_MB=str(RSS_LIMIT_MB),
        WT_RATELIMIT_ENABLED="false",
    ) as server:
        yield server


@pytest.mark.e2e
def test_workers_recycle_between_alternating_models_and_stay_under_the_limit(recycling):
    """tiny.en and base jobs alternate 10 times: every job completes, and between jobs every worker is under the
    limit, because a worker that passed it made way for a fresh one and the system log says why."""
    seen: set[int] = set()

    def under_limit() -> bool:
        found = workers_of(recycling)
        seen.update(p.pid for p in found)
        try:
            return bool(found) and all(p.memory_info().rss < RSS_LIMIT_MB * MB for p in found)
        except psutil.Error:
            return False  # a worker exiting this instant: look again

    for i in range(10):
        model = "tiny.en" if i % 2 == 0 else "base"
        job = recycling.wait(recycling.submit(AUDIO / "jfk.flac", model=model, language="en"))
        assert job["status"] == "completed", job
        assert wer(reference("jfk.flac"), job["transcript"]["text"]) < 0.3
        wait_for(under_limit, timeout=60, interval=0.1)
    recycled = [line for line in system_log(recycling) if line["message"].startswith("recycling worker")]
    assert recycled and len(seen) > 1
    assert all(f"over the limit of {RSS_LIMIT_MB} MB" in line["message"] for line in recycled)
    assert len(recycled) == len(seen) - 1  # each replaced worker said why, and nothing else replaced one


@pytest.mark.e2e
def test_workers_run_below_the_web_servers_cpu_priority(recycling):
    """WT_WORKER_NICE (10): the worker and each of its threads; Gunicorn keeps the priority it was given."""
    # A worker recycled by the test before may be starting up: it lowers itself first thing.
    worker = wait_for(lambda: next((p for p in workers_of(recycling) if p.nice() == 10), None), timeout=60)
    assert recycling.wait(recycling.submit(AUDIO / "jfk.flac"))["status"] == "completed"  # whisper.cpp threads too
    assert {os.getpriority(os.PRIO_PROCESS, t.id) for t in worker.threads()} == {10}
    web = [
        p for p in psutil.Process(recycling.process.pid).children(recursive=True) if "gunicorn" in " ".join(p.cmdline())
    ]
    assert web and all(p.nice() == psutil.Process().nice() for p in web)


@pytest.mark.e2e
def test_worker_without_a_supervisor_recycles_itself_in_place(app, client, admin_headers, tmp_path):
    """Under systemd there is no `run` to start a new worker: past WT_WORKER_MAX_JOBS it re-executes itself
    (same pid, fresh memory) and takes the next job."""
    env = {
        **os.environ,
        "WT_DATA_DIR": app.config["DATA_DIR"],
        "WT_MODELS_DIR": str(MODELS_DIR),
        "WT_WORKER_MAX_JOBS": "1",
    }
    env.pop(lifecycle.SUPERVISOR_ENV, None)
    with open(tmp_path / "worker.log", "wb") as out:
        worker = subprocess.Popen(
            [sys.executable, "-m", "app.cli", "worker"], cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT
        )
    try:
        from app.models import Job

        for _ in range(2):
            with open(AUDIO / "jfk.flac", "rb") as f:
                created = client.post("/api/jobs/", headers=admin_headers, data={"file": (f, "jfk.flac")})
            assert created.status_code == 201, created.get_json()
            job_id = created.get_json()["job_id"]
            wait_for(lambda job_id=job_id: Job.get_by_id(job_id).status == "completed", timeout=120)
            assert Job.get_by_id(job_id).worker_id.split(":")[0] == str(worker.pid)
        wait_for(lambda: (tmp_path / "worker.log").read_text().count("Consumer will restart") >= 2, timeout=30)
        assert worker.poll() is None
        assert (tmp_path / "worker.log").read_text().count("it has run 1 job (WT_WORKER_MAX_JOBS=1)") >= 2
    finally:
        worker.kill()
        worker.wait()


@pytest.mark.e2e
def test_killed_supervisor_leaves_no_process_behind_and_the_next_run_completes_the_job(tmp_path):
    """SIGKILL to `run` mid-job (the calibration running too): within 2 s no worker, web or calibration process
    is left, and the next `run` on the same data dir re-queues and completes the job."""
    data_dir = tmp_path / "data"
    with launch_appliance(data_dir, "worker-orphan.log", WT_TUNE_ON_START="true") as server:
        job_id = server.submit(AUDIO / "OSR_us_000_0034_8k.flac", model="base", language="en")
        wait_for(lambda: server.get(f"/api/progress/{job_id}").json()["stage"] == "transcribing", timeout=120)
        family = psutil.Process(server.process.pid).children(recursive=True)
        roles = " ".join(" ".join(p.cmdline()) for p in family)
        assert "worker" in roles and "gunicorn" in roles and "tune" in roles
        server.process.send_signal(signal.SIGKILL)
        server.process.wait()
        wait_for(lambda: not any(alive(p) for p in family), timeout=2, interval=0.05)
    assert any("supervisor" in line["message"] and "is gone" in line["message"] for line in system_log(server))
    with launch_appliance(data_dir, "worker-orphan-again.log") as again:
        job = again.wait(job_id)
        assert job["status"] == "completed"
        assert wer(reference("OSR_us_000_0034_8k.flac"), job["transcript"]["text"]) < 0.3
