"""More than one box, end to end on real PostgreSQL and Redis: two web servers and two named workers that
share one data folder (the NFS share of docs/scale-out.md), each worker with its own local models folder.

The processes all run on this machine; the workers' names make them two boxes to each other: neither can see
the other's pid, so only the leases tell whether a worker lives.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import psycopg2
import pytest
import requests

from tests.conftest import ADMIN_PASSWORD, LiveServer, free_port
from tests.helpers import AUDIO, MODELS_DIR, OUTPUT, ROOT, reference, wait_for, wer
from tests.test_ws_logs import LogClient, collect

pytestmark = pytest.mark.e2e
LEASE_SECONDS = 3  # short, so a killed worker's job comes back within seconds
ANON_LIMIT = 10  # per minute and client address, shared by both web processes through Redis


@dataclass
class Cluster:
    webs: list[LiveServer]
    workers: dict[str, subprocess.Popen]
    database_url: str
    root: Path
    logs: list = field(default_factory=list)

    def sql(self, query: str, *params) -> list[tuple]:
        """Rows of a query on the shared database."""
        with psycopg2.connect(self.database_url) as conn, conn.cursor() as cur:
            cur.execute(query, params)
            rows = cur.fetchall()
        conn.close()
        return rows

    def worker_of(self, job_id: str) -> str | None:
        """The name of the worker that holds (or last held) the job."""
        rows = self.sql("SELECT worker_name FROM job WHERE id = %s AND status = 'processing'", job_id)
        return rows[0][0] if rows else None


def _start(cmd: list[str], env: dict[str, str], log_name: str, logs: list) -> subprocess.Popen:
    OUTPUT.mkdir(exist_ok=True)
    log = open(OUTPUT / log_name, "wb")  # noqa: SIM115  (closed with the cluster)
    logs.append(log)
    return subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)


def _stop(process: subprocess.Popen) -> None:
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


@pytest.fixture(scope="module")
def cluster(tmp_path_factory, postgres_server, redis_server) -> Iterator[Cluster]:
    """Two Gunicorn web servers and two workers ("box-a", "box-b") on one PostgreSQL database and one Redis."""
    root = tmp_path_factory.mktemp("scale-out")
    database = postgres_server.create_database()
    database_url = postgres_server.url(database)
    redis_db = 1  # the other tests' Redis users take db 0
    redis_url = redis_server.url(redis_db)
    common = {
        **os.environ,
        "WT_DATA_DIR": str(root / "shared"),  # the NFS share: uploads, transcripts, job logs
        "WT_DATABASE_URL": database_url,
        "WT_QUEUE_URL": redis_url,
        "SECRET_KEY": "scale-out-test-secret-" + "x" * 32,  # every web box signs tokens alike
        "WT_ADMIN_PASSWORD": ADMIN_PASSWORD,
        "WT_TUNE_ON_START": "false",
        "WT_ENGINE": "whispercpp",
        "WT_ENGINE_THREADS": "1",  # two workers on two cores
        "WT_LEASE_SECONDS": str(LEASE_SECONDS),
        "WT_RATELIMIT_ANON": f"{ANON_LIMIT} per minute",
        "WT_TRUSTED_PROXIES": "1",  # the rate-limit test is a client of its own (X-Forwarded-For), with a fresh budget
        "WT_RATELIMIT_USER": "100000 per minute",
        "WT_RATELIMIT_ADMIN": "100000 per minute",
    }
    logs: list = []
    workers = {}
    for name in ("box-a", "box-b"):
        models = root / f"{name}-models"  # each box has its own local models folder
        models.mkdir()
        (models / "ggml-tiny.en.bin").symlink_to(MODELS_DIR / "ggml-tiny.en.bin")
        env = {**common, "WT_WORKER_NAME": name, "WT_MODELS_DIR": str(models), "WT_LOG_DIR": str(root / f"{name}-logs")}
        workers[name] = _start([sys.executable, "-m", "app.cli", "worker"], env, f"scale-out-{name}.log", logs)
    webs, urls = [], []
    for n in (1, 2):
        port = free_port()
        env = {**common, "WT_PORT": str(port), "WT_HOST": "127.0.0.1", "WT_MODELS_DIR": str(MODELS_DIR)}
        env["WT_WEB_PROCESSES"] = str(3 - n)  # the first server runs two Gunicorn processes, the second one
        cmd = [sys.executable, "-m", "gunicorn", "-c", str(ROOT / "config" / "gunicorn.conf.py")]
        # Two web servers on one data folder: each its own pid file and control socket (one web box each).
        cmd += ["--pid", str(root / f"web{n}.pid"), "--control-socket", str(root / f"web{n}.ctl"), "app:create_app()"]
        webs.append(_start(cmd, env, f"scale-out-web{n}.log", logs))
        urls.append(f"http://127.0.0.1:{port}")
    result = Cluster([], workers, database_url, root, logs)
    try:
        for url, process in zip(urls, webs, strict=True):

            def healthy(url: str = url) -> bool:
                try:
                    return bool(requests.get(url + "/health", timeout=2).json().get("worker_alive"))
                except requests.RequestException:
                    return False

            wait_for(healthy, timeout=90)
            token = requests.post(
                url + "/auth/login", json={"username": "admin", "password": ADMIN_PASSWORD}, timeout=10
            ).json()["access_token"]
            result.webs.append(LiveServer(url, root / "shared", process, token, None))
        yield result
    finally:
        for process in [*workers.values(), *webs]:
            _stop(process)
        for log in logs:
            log.close()
        postgres_server.drop_database(database)


def test_jobs_from_both_web_servers_complete_on_both_workers(cluster):
    """Six jobs, submitted alternately to either web server, complete, and both boxes' workers ran some."""
    ids = [cluster.webs[i % 2].submit(AUDIO / "jfk.flac", model="tiny.en") for i in range(6)]
    for i, job_id in enumerate(ids):
        job = cluster.webs[(i + 1) % 2].wait(job_id, timeout=120)  # read from the other web server
        assert job["status"] == "completed", job
        assert wer(reference("jfk.flac"), job["transcript"]["text"]) <= 0.10
    names = cluster.sql("SELECT worker_name, COUNT(*) FROM job WHERE id = ANY(%s) GROUP BY worker_name", ids)
    assert {name for name, _ in names} == {"box-a", "box-b"}, names
    for name, _ in names:  # each box's system log on its own disk, never appended to by another box
        processing = (cluster.root / f"{name}-logs" / "processing.log").read_text()
        ran = {job_id for (job_id,) in cluster.sql("SELECT id FROM job WHERE worker_name = %s", name)}
        assert ran and all(job_id in processing for job_id in ran)
    workers = cluster.webs[0].get("/admin/stats").json()["processes"]["workers"]
    assert {w["name"] for w in workers} == {"box-a", "box-b"} and not any(w["local"] for w in workers)


def test_a_job_log_streams_from_either_web_server_whichever_worker_ran_it(cluster):
    """Job logs live on the shared folder: each web server streams the log of a job of each worker."""
    rows = cluster.sql("SELECT DISTINCT ON (worker_name) id, worker_name FROM job WHERE status = 'completed'")
    assert {name for _, name in rows} == {"box-a", "box-b"}
    for job_id, _ in rows:
        for web in cluster.webs:
            url = "ws" + web.url.removeprefix("http") + f"/ws/logs/{job_id}?token={web.token}"
            messages, closed = collect(LogClient.connect(url), timeout=30)
            assert closed is not None and closed.reason == 1000, closed
            assert "started attempt 1" in messages[0] and "completed" in messages[-1], messages


def test_the_rate_limit_is_one_budget_across_both_web_servers(cluster):
    """An anonymous client alternating between the two servers gets ANON_LIMIT requests in all, not twice that."""
    client = {"X-Forwarded-For": "203.0.113.7"}

    def anonymous(web: LiveServer) -> int:
        return requests.get(web.url + "/api/jobs/", headers=client, timeout=10).status_code

    answers = [anonymous(cluster.webs[i % 2]) for i in range(ANON_LIMIT)]
    assert answers == [401] * ANON_LIMIT, answers
    assert [anonymous(web) for web in cluster.webs] == [429, 429]


def test_metrics_count_the_requests_of_every_web_process(cluster):
    """The first server has two Gunicorn processes: every scrape, whichever process answers, counts all requests."""
    web = cluster.webs[0]
    for _ in range(20):
        assert requests.get(web.url + "/health", timeout=10).status_code == 200  # a new connection each time

    def health_count(text: str) -> float:
        labels = ('endpoint="/health"', 'method="GET"', 'status_code="200"')
        rows = [row for row in text.splitlines() if row.startswith("whisper_http_requests_total{")]
        return sum(float(row.split()[-1]) for row in rows if all(label in row for label in labels))

    counts = [health_count(requests.get(web.url + "/metrics", timeout=10).text) for _ in range(6)]
    assert min(counts) >= 20, counts


def test_a_drained_worker_takes_no_jobs_until_resumed(cluster):
    """Draining box-b from either web server: both new jobs run on box-a; resumed, box-b works again."""
    web = cluster.webs[1]
    assert web.post("/admin/workers/box-b/drain").json()["drained"] is True
    time.sleep(LEASE_SECONDS)  # the worker reads it with its next lease tick (a third of a lease)
    ids = [web.submit(AUDIO / "jfk.flac", model="tiny.en") for _ in range(2)]
    for job_id in ids:
        assert web.wait(job_id, timeout=120)["status"] == "completed"
    assert cluster.sql("SELECT DISTINCT worker_name FROM job WHERE id = ANY(%s)", ids) == [("box-a",)]
    assert web.post("/admin/workers/box-b/resume").json()["drained"] is False


def test_a_job_of_a_killed_worker_completes_on_the_other_after_its_lease(cluster):
    """SIGKILL the worker mid-job: no pid check can see it from the other box; its lease runs out and the
    other worker takes the job, as its second attempt."""
    web = cluster.webs[0]
    job_id = web.submit(AUDIO / "OSR_us_000_0034_8k.flac", model="tiny.en")
    holder = wait_for(lambda: cluster.worker_of(job_id), timeout=60, interval=0.05)
    killed_at = time.monotonic()
    cluster.workers[holder].send_signal(signal.SIGKILL)
    cluster.workers[holder].wait()
    job = web.wait(job_id, timeout=120)
    assert job["status"] == "completed", job
    assert time.monotonic() - killed_at >= LEASE_SECONDS * 0.9  # it waited for the lease, not for a pid
    ((name, attempts),) = cluster.sql("SELECT worker_name, attempts FROM job WHERE id = %s", job_id)
    assert name != holder and attempts == 2
    assert wer(reference("OSR_us_000_0034_8k.flac"), job["transcript"]["text"]) <= 0.15
