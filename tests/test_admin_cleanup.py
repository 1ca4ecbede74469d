"""Cleanup rules: the config routes, the service on files with faked ages, and the periodic task."""

from __future__ import annotations

import logging
import os
import time
import uuid
from datetime import timedelta
from pathlib import Path

import pytest

from app.models import AuditLog, Job, utcnow
from app.services import cleanup
from tests.helpers import assert_error

pytestmark = pytest.mark.database  # scripts/test runs these on PostgreSQL too

DAY = 86400
NOW = time.time()


def aged(path: Path, days: float, data: bytes = b"x" * 100) -> Path:
    """Write a file whose modification time is ``days`` ago."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    os.utime(path, (NOW - days * DAY, NOW - days * DAY))
    return path


def make_job(app, status: str, days: float, *, transcript: bool = False, finished_days: float | None = None) -> Job:
    """A job row with an upload (and transcript, job log) ``days`` old."""
    root = Path(app.config["DATA_DIR"])
    job_id = uuid.uuid4().hex
    aged(root / "uploads" / f"{job_id}.flac", days)
    aged(root / "logs" / "jobs" / f"{job_id}.log", days)
    if transcript:
        aged(root / "transcripts" / f"{job_id}.json", days)
    done = utcnow() - timedelta(days=finished_days if finished_days is not None else days)
    return Job.create(
        id=job_id,
        original_filename="a.flac",
        upload_path=f"uploads/{job_id}.flac",
        model="tiny.en",
        status=status,
        completed_at=done if status in ("completed", "failed", "cancelled") else None,
    )


def exists(app, relative: str) -> bool:
    """True when the file is still in the data dir."""
    return (Path(app.config["DATA_DIR"]) / relative).exists()


# ------------------------------------------------------------------ routes


def test_cleanup_config_defaults_update_and_audit(client, admin_headers):
    """GET shows the defaults; POST changes some fields and keeps the others; the audit log records it."""
    body = client.get("/admin/cleanup-config", headers=admin_headers).get_json()
    assert body == {**cleanup.DEFAULTS, "last_run": None}
    changed = client.post(
        "/admin/cleanup-config", headers=admin_headers, json={"uploads_days": 7, "max_disk_percent": 85}
    )
    assert changed.status_code == 200
    assert changed.get_json() == {**cleanup.DEFAULTS, "uploads_days": 7, "max_disk_percent": 85, "last_run": None}
    assert client.get("/admin/cleanup-config", headers=admin_headers).get_json()["uploads_days"] == 7
    entry = AuditLog.search(action="admin_cleanup_config_changed").first()
    assert entry.detail["new"]["uploads_days"] == 7 and entry.detail["old"]["uploads_days"] == 30


@pytest.mark.parametrize(
    "body",
    [
        {},
        {"uploads_days": -1},
        {"logs_days": "7"},
        {"logs_days": True},
        {"max_disk_percent": 100},
        {"transcripts_days": 1.5},
        {"keep": 3},
    ],
)
def test_cleanup_config_rejects_bad_values(client, admin_headers, body):
    """Unknown names, wrong types and values out of range are a 422; nothing is saved."""
    assert_error(client.post("/admin/cleanup-config", headers=admin_headers, json=body), 422)
    assert client.get("/admin/cleanup-config", headers=admin_headers).get_json()["uploads_days"] == 30


def test_cleanup_config_posted_back_ignores_last_run(app, client, admin_headers):
    """GET's body posts back with one rule changed; the client's last_run neither fails nor overwrites the task's."""
    with app.app_context():
        cleanup.run_cleanup(app.config)
    body = client.get("/admin/cleanup-config", headers=admin_headers).get_json()
    assert body["last_run"]["at"]
    changed = client.post(
        "/admin/cleanup-config",
        headers=admin_headers,
        json={**body, "uploads_days": 9, "last_run": {"at": "2000-01-01T00:00:00Z"}},
    )
    assert changed.status_code == 200, changed.get_json()
    assert changed.get_json() == {**body, "uploads_days": 9}
    assert cleanup.last_run() == body["last_run"]


def test_cleanup_config_with_malformed_json_is_400(client, admin_headers):
    """Not JSON: 400."""
    assert_error(
        client.post("/admin/cleanup-config", headers=admin_headers, data="x", content_type="application/json"),
        400,
        "INVALID_JSON",
    )


def test_cleanup_is_a_periodic_task_every_ten_minutes(app, monkeypatch):
    """The workers' scheduler runs it at :00, :10, ...; it applies the rules to the configured data dir."""
    from datetime import datetime

    from workers import tasks
    from workers.queue import huey

    task = next(t for t in huey._registry.periodic_tasks if t.name == "cleanup")
    assert task.validate_datetime(datetime(2030, 1, 1, 12, 10)) and not task.validate_datetime(
        datetime(2030, 1, 1, 12, 15)
    )
    monkeypatch.setenv("WT_DATA_DIR", app.config["DATA_DIR"])
    cleanup.set_config({"logs_days": 1})
    old = aged(Path(app.config["DATA_DIR"]) / "logs" / "old.log", 5)
    tasks.cleanup.call_local()
    assert not old.exists()


# ------------------------------------------------------------------ the rules


def test_old_uploads_of_finished_jobs_go_but_queued_and_recent_stay(app, caplog):
    """uploads_days removes old media of finished jobs and orphans; queued, processing and recent media stay."""
    cleanup.set_config({"uploads_days": 10})
    old_done = make_job(app, "completed", 20, transcript=True)
    old_failed = make_job(app, "failed", 20)
    old_queued = make_job(app, "queued", 20)
    old_running = make_job(app, "processing", 20)
    recent = make_job(app, "completed", 2)
    orphan = aged(Path(app.config["DATA_DIR"]) / "uploads" / "orphan.wav", 30)
    with caplog.at_level(logging.INFO, logger="app.services.cleanup"):
        report = cleanup.run_cleanup(app.config, now=NOW)
    assert sorted(report["removed"]) == sorted([old_done.upload_path, old_failed.upload_path, "uploads/orphan.wav"])
    assert not orphan.exists()
    for job in (old_queued, old_running, recent):
        assert exists(app, job.upload_path)
    assert exists(app, f"transcripts/{old_done.id}.json") and Job.get_by_id(old_done.id).status == "completed"
    assert f"cleanup removed {old_done.upload_path}" in caplog.text
    assert cleanup.last_run()["files_removed"] == 3


def test_old_transcripts_delete_their_finished_jobs(app):
    """transcripts_days deletes finished jobs (rows and files) whose transcript is older; never active ones."""
    cleanup.set_config({"transcripts_days": 5, "uploads_days": 0})
    old = make_job(app, "completed", 9, transcript=True)
    young = make_job(app, "completed", 1, transcript=True)
    running = make_job(app, "processing", 9, transcript=True)  # e.g. a restarted job with an old transcript
    report = cleanup.run_cleanup(app.config, now=NOW)
    assert report["jobs_deleted"] == [old.id]
    assert Job.get_or_none(Job.id == old.id) is None
    assert not exists(app, old.upload_path) and not exists(app, f"transcripts/{old.id}.json")
    assert not exists(app, f"logs/jobs/{old.id}.log")
    assert Job.get_or_none(Job.id == young.id) and exists(app, f"transcripts/{young.id}.json")
    assert Job.get_or_none(Job.id == running.id) and exists(app, f"transcripts/{running.id}.json")


def test_old_logs_go_except_the_log_of_a_running_job(app):
    """logs_days covers system, rotated and job logs; an active job's log stays."""
    cleanup.set_config({"logs_days": 3, "uploads_days": 0})
    logs = Path(app.config["DATA_DIR"]) / "logs"
    rotated = aged(logs / "system.log.2", 10)
    fresh = aged(logs / "system.log.1", 1)
    done = make_job(app, "completed", 10)
    running = make_job(app, "processing", 10)
    cleanup.run_cleanup(app.config, now=NOW)
    assert not rotated.exists() and fresh.exists()
    assert not exists(app, f"logs/jobs/{done.id}.log") and exists(app, f"logs/jobs/{running.id}.log")


def test_zero_days_keeps_everything(app):
    """0 means keep forever."""
    cleanup.set_config({"uploads_days": 0, "logs_days": 0, "transcripts_days": 0})
    job = make_job(app, "completed", 5000, transcript=True)
    assert cleanup.run_cleanup(app.config, now=NOW)["removed"] == []
    assert exists(app, job.upload_path) and exists(app, f"logs/jobs/{job.id}.log")


def test_disk_ceiling_removes_uploads_of_the_oldest_finished_jobs_first(app, caplog):
    """Above the ceiling: oldest finished job's upload first, until below; queued jobs' uploads never."""
    cleanup.set_config({"uploads_days": 0, "max_disk_percent": 80})
    queued = make_job(app, "queued", 1)
    oldest = make_job(app, "completed", 1, finished_days=30)
    middle = make_job(app, "failed", 1, finished_days=20)
    newest = make_job(app, "completed", 1, finished_days=1)
    readings = iter([95.0, 85.0, 79.0])
    with caplog.at_level(logging.INFO, logger="app.services.cleanup"):
        report = cleanup.run_cleanup(app.config, now=NOW, disk_percent=lambda path: next(readings))
    assert report["removed"] == [oldest.upload_path, middle.upload_path] and report["disk_percent"] == 79.0
    assert exists(app, newest.upload_path) and exists(app, queued.upload_path)
    assert "above the 80% ceiling" in caplog.text


def test_disk_ceiling_never_touches_active_jobs_even_when_still_full(app, caplog):
    """With only queued and processing jobs left, nothing is removed and a warning says so."""
    cleanup.set_config({"uploads_days": 0, "max_disk_percent": 50})
    jobs = [make_job(app, "queued", 1), make_job(app, "processing", 1)]
    with caplog.at_level(logging.WARNING, logger="app.services.cleanup"):
        report = cleanup.run_cleanup(app.config, now=NOW, disk_percent=lambda path: 99.0)
    assert report["removed"] == [] and all(exists(app, j.upload_path) for j in jobs)
    assert "still 99.0% full" in caplog.text


def test_disk_below_the_ceiling_removes_nothing(app):
    """A ceiling that is not reached does nothing."""
    cleanup.set_config({"uploads_days": 0, "max_disk_percent": 90})
    job = make_job(app, "completed", 1)
    assert cleanup.run_cleanup(app.config, now=NOW, disk_percent=lambda path: 40.0)["removed"] == []
    assert exists(app, job.upload_path)
