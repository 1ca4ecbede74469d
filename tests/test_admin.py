"""The admin API through HTTP (Flask client, stub engine): access, stats, health, files, reset and the zip."""

from __future__ import annotations

import io
import os
import socket
import zipfile
from pathlib import Path

import pytest

from app.models import ApiKey, AuditLog, Job, User
from tests.helpers import AUDIO, assert_error

ROUTES = [
    ("get", "/admin/stats", None),
    ("get", "/admin/health", None),
    ("get", "/admin/files", None),
    ("delete", "/admin/files", {"folder": "logs", "filename": "x.log"}),
    ("get", "/admin/browse?folder=logs", None),
    ("post", "/admin/reset", {"confirm": "RESET"}),
    ("get", "/admin/download-all", None),
    ("get", "/admin/cleanup-config", None),
    ("post", "/admin/cleanup-config", {"logs_days": 1}),
    ("get", "/admin/concurrency", None),
    ("post", "/admin/concurrency", {"workers": 2}),
    ("get", "/admin/settings", None),
    ("post", "/admin/settings", {"model_aliases": {"medium": "base"}}),
    ("post", "/admin/shutdown", None),
    ("post", "/admin/restart", None),
]


def data_dir(app) -> Path:
    """The test's data dir."""
    return Path(app.config["DATA_DIR"])


# ------------------------------------------------------------------ access


@pytest.mark.parametrize(("method", "path", "body"), ROUTES)
def test_every_admin_route_is_401_anonymous_and_403_for_users(app, user_headers, method, path, body):
    """No credentials: 401; a plain user: 403 with the standard body; nothing happens."""
    call = getattr(app.test_client(use_cookies=False), method)
    assert_error(call(path, json=body), 401, "UNAUTHORIZED")
    assert_error(call(path, json=body, headers=user_headers()), 403, "FORBIDDEN")
    assert User.select().count() == 2


# ------------------------------------------------------------------ settings pairs

# Every GET/POST pair under /admin that holds settings, with one writable field to change.
SETTINGS_PAIRS = [
    ("/admin/cleanup-config", "logs_days", 7),
    ("/admin/concurrency", "workers", 2),
    ("/admin/settings", "model_aliases", {"medium": "base"}),
]


@pytest.mark.parametrize(("path", "field", "value"), SETTINGS_PAIRS)
def test_settings_round_trip_posts_the_get_body_back(app, client, admin_headers, path, field, value):
    """Read-modify-write: GET's body (read-only fields included) posts back as is, and with one field changed."""
    from app.services import cleanup

    with app.app_context():
        cleanup.run_cleanup(app.config)  # so cleanup-config carries a real last_run
    before = client.get(path, headers=admin_headers).get_json()
    unchanged = client.post(path, headers=admin_headers, json=before)
    assert unchanged.status_code == 200, unchanged.get_json()
    assert client.get(path, headers=admin_headers).get_json() == before
    assert AuditLog.select().where(AuditLog.action.endswith("_changed")).count() == 0  # nothing changed

    changed = client.post(path, headers=admin_headers, json={**before, field: value})
    assert changed.status_code == 200, changed.get_json()
    after = client.get(path, headers=admin_headers).get_json()
    assert after[field] == value
    assert {k: v for k, v in after.items() if k != field and not k.endswith("_source")} == {
        k: v for k, v in before.items() if k != field and not k.endswith("_source")
    }


@pytest.mark.parametrize("path", [pair[0] for pair in SETTINGS_PAIRS])
def test_settings_pairs_refuse_unknown_names(client, admin_headers, path):
    """Read-only fields are ignored on POST, but a name that is neither is a 422: typos are never dropped."""
    before = client.get(path, headers=admin_headers).get_json()
    body = assert_error(client.post(path, headers=admin_headers, json={**before, "no_such_setting": 1}), 422)
    assert "no_such_setting" in body["detail"]
    assert client.get(path, headers=admin_headers).get_json() == before


# ------------------------------------------------------------------ stats and health


def test_stats_carry_the_full_api_shape_and_real_figures(app, client, admin_headers, stub_engine, drain, uploaded_job):
    """Counts, performance, RTF, folders, system figures and this web process."""
    from app.supervisor import record_worker
    from workers.queue import huey

    uploaded_job(client, admin_headers)
    uploaded_job(client, admin_headers)
    drain()
    uploaded_job(client, admin_headers)  # stays queued
    record_worker()  # this process stands in for a registered worker
    body = client.get("/admin/stats", headers=admin_headers).get_json()
    assert body["jobs"] == {"total": 3, "queued": 1, "processing": 0, "completed": 2, "failed": 0, "cancelled": 0}
    assert set(body["users"]) == {"total", "active_last_24h", "new_last_7d"} and body["users"]["total"] == 1
    assert body["users"]["active_last_24h"] == 1
    assert set(body["storage"]) == {"total_files", "total_size_gb", "avg_file_size_mb"}
    assert body["storage"]["total_files"] >= 5  # three uploads, two transcripts, job logs
    perf = body["performance"]
    assert perf["success_rate"] == 100.0 and perf["throughput_per_hour"] == 2
    assert perf["avg_processing_time"].endswith("s") and perf["avg_processing_seconds"] >= 0
    assert body["real_time_factor"] is not None and body["real_time_factor"] >= 0
    assert body["queue_depth"] == huey.pending_count() == 3  # drain() runs jobs without popping their tasks
    assert body["storage_by_folder"]["uploads"]["files"] == 3
    assert body["storage_by_folder"]["transcripts"]["files"] == 2
    assert body["storage_by_folder"]["database"]["bytes"] > 0
    system = body["system"]
    assert 0 <= system["cpu_percent"] <= 100 and len(system["load_average"]) == 3
    assert system["memory"]["total_mb"] > 0 and 0 < system["disk"]["percent"] < 100
    processes = body["processes"]
    assert processes["web_pid"] == os.getpid() and processes["web_rss_mb"] > 0
    assert processes["workers"] == [
        {
            "name": app.config["WORKER_NAME"],
            "host": socket.gethostname(),
            "local": True,
            "pid": os.getpid(),
            "rss_mb": processes["workers"][0]["rss_mb"],
            "threads": 0,
            "uptime_seconds": processes["workers"][0]["uptime_seconds"],
            "last_heartbeat": processes["workers"][0]["last_heartbeat"],
            "job_id": None,
            "model": None,
            "engine": None,
            "drained": False,
        }
    ]


def test_health_has_the_full_api_shape_and_never_claims_redis(app, client, admin_headers):
    """Without a worker whisper is unhealthy; with one everything configured is healthy; Redis is not used."""
    from app.supervisor import forget_worker, record_worker

    body = client.get("/admin/health", headers=admin_headers).get_json()
    assert set(body) >= {"status", "timestamp", "services", "metrics"}
    assert body["services"] == {
        "database": "healthy",
        "redis": "not_configured",
        "whisper": "unhealthy",
        "storage": "healthy",
    }
    assert body["status"] == "degraded" and body["timestamp"].endswith("Z")
    metrics = body["metrics"]
    assert set(metrics) >= {"uptime", "active_jobs", "queue_size", "memory_usage", "cpu_usage"}
    assert metrics["memory_usage"].endswith("%") and metrics["cpu_usage"].endswith("%")
    record_worker()
    try:
        body = client.get("/admin/health", headers=admin_headers).get_json()
    finally:
        forget_worker()
    assert body["services"]["whisper"] == "healthy" and body["status"] == "healthy"


def test_health_counts_queued_jobs(client, admin_headers, uploaded_job):
    """queue_size and active_jobs come from the job table."""
    uploaded_job(client, admin_headers)
    metrics = client.get("/admin/health", headers=admin_headers).get_json()["metrics"]
    assert metrics["queue_size"] == 1 and metrics["active_jobs"] == 0


# ------------------------------------------------------------------ files


def test_files_lists_uploads_transcripts_and_logs_with_sizes(
    app, client, admin_headers, stub_engine, drain, uploaded_job
):
    """Every file appears once with its size and an ISO date; job logs under jobs/."""
    job_id = uploaded_job(client, admin_headers)["job_id"]
    drain()
    body = client.get("/admin/files", headers=admin_headers).get_json()
    assert [f["name"] for f in body["transcripts"]] == [f"{job_id}.json"]
    assert [f["name"] for f in body["uploads"]] == [f"{job_id}.flac"]
    assert f"jobs/{job_id}.log" in [f["name"] for f in body["logs"]]
    upload_file = body["uploads"][0]
    assert upload_file["size"] == (AUDIO / "jfk.flac").stat().st_size and upload_file["modified"].endswith("Z")
    assert body["total_files"] == sum(len(body[k]) for k in ("logs", "uploads", "transcripts"))


def test_delete_file_removes_it_and_writes_the_audit_log(app, client, admin_headers):
    """A plain log file goes; the answer names it; the audit log says who did it."""
    (data_dir(app) / "logs" / "foo.log").write_text("old lines\n")
    response = client.delete("/admin/files", headers=admin_headers, json={"folder": "logs", "filename": "foo.log"})
    assert response.status_code == 200, response.get_json()
    assert response.get_json()["filename"] == "foo.log" and response.get_json()["size"] == 10
    assert not (data_dir(app) / "logs" / "foo.log").exists()
    entry = AuditLog.search(action="admin_file_deleted").first()
    assert entry.target == "logs/foo.log" and entry.username == "admin"
    assert_error(
        client.delete("/admin/files", headers=admin_headers, json={"folder": "logs", "filename": "foo.log"}),
        404,
        "NOT_FOUND",
    )


def test_files_of_queued_jobs_are_409_and_of_finished_jobs_deletable(
    app, client, admin_headers, stub_engine, drain, uploaded_job
):
    """The worker still needs a queued job's upload; a completed job's upload and transcript may go."""
    queued = uploaded_job(client, admin_headers)["job_id"]
    assert_error(
        client.delete("/admin/files", headers=admin_headers, json={"folder": "uploads", "filename": f"{queued}.flac"}),
        409,
        "JOB_ACTIVE",
    )
    drain()
    for folder, name in (("uploads", f"{queued}.flac"), ("transcripts", f"{queued}.json")):
        response = client.delete("/admin/files", headers=admin_headers, json={"folder": folder, "filename": name})
        assert response.status_code == 200 and response.get_json()["job_id"] == queued
    job = client.get(f"/api/jobs/{queued}", headers=admin_headers).get_json()
    assert job["status"] == "completed" and job["transcript"]["text"]  # the database keeps the transcript


@pytest.mark.parametrize("body", [{}, {"folder": "logs"}, {"filename": "x"}, {"folder": 1, "filename": "x"}])
def test_delete_file_needs_folder_and_filename(client, admin_headers, body):
    """Missing or non-string fields are a 422."""
    assert_error(client.delete("/admin/files", headers=admin_headers, json=body), 422)


def test_delete_file_with_malformed_json_is_400(client, admin_headers):
    """A body that is not JSON is a 400."""
    assert_error(
        client.delete("/admin/files", headers=admin_headers, data="nope", content_type="application/json"),
        400,
        "INVALID_JSON",
    )


@pytest.fixture
def probes(app):
    """Symlinks inside the known folders that point outside: at /etc/passwd, the database and the secret."""
    root = data_dir(app)
    (root / "logs" / "passwd.log").symlink_to("/etc/passwd")
    (root / "uploads" / "db.flac").symlink_to(root / "whisper.db")
    (root / "transcripts" / "secret.json").symlink_to(root / "secret_key")
    (root / "logs" / "outside").symlink_to(root / "models", target_is_directory=True)
    (root / "logs" / "inside.log").symlink_to(root / "logs" / "jobs")  # a link that stays inside
    return root


BAD_PATHS = [
    ("logs", "../whisper.db", 400),
    ("logs", "jobs/../../secret_key", 400),
    ("logs", "/etc/passwd", 400),
    ("logs", "a\x00b.log", 400),
    ("logs", "..", 400),
    ("uploads", "../../etc/passwd", 400),
    ("logs", "passwd.log", 400),
    ("uploads", "db.flac", 400),
    ("transcripts", "secret.json", 400),
    ("logs", "outside/tiny.en", 400),
    ("models", "ggml-tiny.en.bin", 400),
    ("../models", "x", 400),
    (".", "whisper.db", 400),
    ("secret_key", "x", 400),
    ("logs", "missing.log", 404),
]


@pytest.mark.parametrize(("folder", "filename", "status"), BAD_PATHS)
def test_delete_file_confinement_probes(app, client, admin_headers, probes, folder, filename, status):
    """Traversal, absolute paths, NUL bytes and escaping symlinks are refused; nothing outside is touched."""
    assert_error(
        client.delete("/admin/files", headers=admin_headers, json={"folder": folder, "filename": filename}), status
    )
    assert Path("/etc/passwd").exists() and (probes / "whisper.db").exists() and (probes / "secret_key").exists()


@pytest.mark.parametrize(("folder", "path", "status"), BAD_PATHS + [("cache", "../secret_key", 400)])
def test_browse_confinement_probes(app, client, admin_headers, probes, folder, path, status):
    """The same probes through GET /admin/browse (query string, NUL encoded)."""
    from urllib.parse import urlencode

    assert_error(
        client.get(f"/admin/browse?{urlencode({'folder': folder, 'path': path})}", headers=admin_headers), status
    )


def test_listings_and_archive_skip_links_that_lead_outside(app, client, admin_headers, probes):
    """No probe shows up in /admin/files, /admin/browse or the zip."""
    body = client.get("/admin/files", headers=admin_headers).get_json()
    names = [f["name"] for k in ("logs", "uploads", "transcripts") for f in body[k]]
    assert not {"passwd.log", "db.flac", "secret.json"} & set(names)
    assert not any(n.startswith("outside/") for n in names)
    entries = client.get("/admin/browse?folder=logs", headers=admin_headers).get_json()["entries"]
    assert {e["name"] for e in entries} >= {"jobs", "inside.log"} and "passwd.log" not in {e["name"] for e in entries}
    archive = zipfile.ZipFile(io.BytesIO(client.get("/admin/download-all", headers=admin_headers).data))
    assert not any("passwd" in n or "secret" in n or "outside" in n for n in archive.namelist())


def test_browse_lists_subfolders_and_refuses_files(app, client, admin_headers, stub_engine, drain, uploaded_job):
    """folder + path walk down; a file path is a 400; an unknown folder a 400."""
    job_id = uploaded_job(client, admin_headers)["job_id"]
    drain()
    top = client.get("/admin/browse?folder=logs", headers=admin_headers).get_json()
    assert top["folder"] == "logs" and top["path"] == ""
    folder = next(e for e in top["entries"] if e["name"] == "jobs")
    assert folder["type"] == "directory" and folder["size"] is None
    jobs = client.get("/admin/browse?folder=logs&path=jobs", headers=admin_headers).get_json()
    assert jobs["path"] == "jobs" and [e["name"] for e in jobs["entries"]] == [f"{job_id}.log"]
    assert jobs["entries"][0]["type"] == "file" and jobs["entries"][0]["size"] > 0
    assert_error(
        client.get(f"/admin/browse?folder=logs&path=jobs/{job_id}.log", headers=admin_headers), 400, "NOT_A_DIRECTORY"
    )
    assert_error(client.get("/admin/browse", headers=admin_headers), 400, "INVALID_FOLDER")
    assert client.get("/admin/browse?folder=cache", headers=admin_headers).status_code == 200


# ------------------------------------------------------------------ reset


@pytest.mark.parametrize("body", [{}, {"confirm": "reset"}, {"confirm": True}, {"confirm": "YES"}])
def test_reset_without_the_exact_confirmation_is_400_and_keeps_everything(client, admin_headers, body, uploaded_job):
    """Only {"confirm": "RESET"} resets."""
    job_id = uploaded_job(client, admin_headers)["job_id"]
    assert_error(client.post("/admin/reset", headers=admin_headers, json=body), 400, "CONFIRMATION_REQUIRED")
    assert client.get(f"/api/jobs/{job_id}", headers=admin_headers).status_code == 200


def test_reset_removes_jobs_files_and_queue_but_keeps_users_and_keys(
    app, client, admin_headers, stub_engine, drain, uploaded_job
):
    """Everything of every job goes; accounts, keys and the audit log stay; live logs are emptied."""
    from workers.queue import huey

    key = client.post(
        "/api/api-keys/", headers=admin_headers, json={"name": "ci", "permissions": ["jobs:read"]}
    ).get_json()["api_key"]
    done = uploaded_job(client, admin_headers)["job_id"]
    drain()
    uploaded_job(client, admin_headers)
    root = data_dir(app)
    (root / "cache" / "x").mkdir()
    (root / "cache" / "x" / "stage.bin").write_bytes(b"1")
    (root / "tmp" / "left.part").write_bytes(b"1")
    (root / "logs" / "system.log.1").write_text("rotated\n")
    assert huey.pending_count() == 2  # drain() leaves the finished job's task behind; fine for this count
    response = client.post("/admin/reset", headers=admin_headers, json={"confirm": "RESET"})
    assert response.status_code == 200, response.get_json()
    body = response.get_json()
    assert body["jobs_deleted"] == 2 and body["queue_entries_removed"] == 2 and body["files_removed"] >= 6
    assert Job.select().count() == 0 and huey.pending_count() == 0
    for folder in ("uploads", "transcripts", "cache", "tmp"):
        assert list((root / folder).iterdir()) == [], folder
    assert list((root / "logs" / "jobs").iterdir()) == [] and not (root / "logs" / "system.log.1").exists()
    assert all(p.stat().st_size < 2000 for p in (root / "logs").glob("*.log"))  # emptied, then this request
    assert client.get(f"/api/jobs/{done}", headers=admin_headers).status_code == 404
    assert client.get("/api/jobs/", headers={"X-API-Key": key}).get_json()["total"] == 0  # the key still works
    assert User.select().count() == 1 and ApiKey.select().count() == 1
    assert AuditLog.search(action="admin_reset").first().detail["jobs_deleted"] == 2
    assert uploaded_job(client, admin_headers)["job_id"]  # the appliance keeps working


# ------------------------------------------------------------------ download-all


def test_download_all_streams_a_zip_of_logs_and_transcripts(
    app, client, admin_headers, stub_engine, drain, uploaded_job
):
    """The response is streamed; unzipped, it holds every transcript and log byte for byte, no uploads."""
    job_id = uploaded_job(client, admin_headers)["job_id"]
    drain()
    root = data_dir(app)
    (root / "logs" / "big.log").write_bytes(os.urandom(3 * 1024 * 1024))  # incompressible, several chunks
    response = client.get("/admin/download-all", headers=admin_headers)
    assert response.status_code == 200 and response.is_streamed
    assert response.mimetype == "application/zip" and "attachment" in response.headers["Content-Disposition"]
    archive = zipfile.ZipFile(io.BytesIO(response.data))
    assert archive.testzip() is None
    names = set(archive.namelist())
    assert {f"transcripts/{job_id}.json", f"logs/jobs/{job_id}.log", "logs/big.log"} <= names
    assert not any(n.startswith("uploads/") for n in names)
    assert archive.read("logs/big.log") == (root / "logs" / "big.log").read_bytes()
    assert archive.read(f"transcripts/{job_id}.json") == (root / "transcripts" / f"{job_id}.json").read_bytes()


def test_zip_is_produced_chunk_by_chunk(tmp_path):
    """A 12 MB member comes out in many chunks, none much larger than the read size."""
    from app.services.files import CHUNK, stream_zip

    big = tmp_path / "big.log"
    big.write_bytes(os.urandom(12 * 1024 * 1024))
    chunks = [c for c in stream_zip([(big, "logs/big.log")]) if c]
    assert len(chunks) > 20 and max(len(c) for c in chunks) <= 2 * CHUNK
    assert zipfile.ZipFile(io.BytesIO(b"".join(chunks))).read("logs/big.log") == big.read_bytes()
