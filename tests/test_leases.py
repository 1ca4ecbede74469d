"""Worker liveness across boxes: a job runs under a lease its worker renews; a lapsed lease gives the job back.

Workers of this box (their WT_WORKER_NAME) are still checked by their pid at once.
"""

from __future__ import annotations

from datetime import timedelta

import pytest

from app.models import Job, utcnow
from tests.helpers import assert_error
from workers import pipeline

pytestmark = pytest.mark.database
ELSEWHERE = "999999:1.00"  # a pid that does not run here: a worker on another box


def running_on(app, job_id: str, name: str, lease_left: float, worker_id: str = ELSEWHERE, attempts: int = 1) -> None:
    """Put the job in processing as if the named worker had claimed it, its lease running out in ``lease_left`` s."""
    with app.app_context():
        Job.update(
            status="processing",
            worker_id=worker_id,
            worker_name=name,
            attempts=attempts,
            lease_expires_at=utcnow() + timedelta(seconds=lease_left),
        ).where(Job.id == job_id).execute()


def test_a_worker_on_another_box_keeps_its_job_while_its_lease_runs(app, client, admin_headers, uploaded_job):
    """Its pid means nothing here: a live lease, not a local process, says it is alive."""
    job_id = uploaded_job(client, admin_headers)["job_id"]
    pipeline.configure(dict(app.config))
    running_on(app, job_id, "other-box", lease_left=30)
    with app.app_context():
        assert pipeline.reconcile() == []
        assert Job.get_by_id(job_id).status == "processing"


def test_a_job_whose_lease_ran_out_is_requeued_and_the_next_claim_counts_an_attempt(
    app, client, admin_headers, uploaded_job
):
    """The worker on the other box died: its job goes back to the queue; taking it again is attempt 2."""
    job_id = uploaded_job(client, admin_headers)["job_id"]
    pipeline.configure(dict(app.config))
    running_on(app, job_id, "other-box", lease_left=-1)
    with app.app_context():
        assert pipeline.reconcile() == [job_id]
        job = Job.get_by_id(job_id)
        assert job.status == "queued" and job.worker_id is None and job.lease_expires_at is None
        assert Job.claim(job_id, pipeline.worker_id(), app.config["WORKER_NAME"], 60)
        assert Job.get_by_id(job_id).attempts == 2


def test_a_lapsed_lease_after_the_last_attempt_fails_the_job(app, client, admin_headers, uploaded_job):
    """MAX_ATTEMPTS holds across boxes too."""
    job_id = uploaded_job(client, admin_headers)["job_id"]
    pipeline.configure(dict(app.config))
    running_on(app, job_id, "other-box", lease_left=-1, attempts=app.config["MAX_ATTEMPTS"])
    with app.app_context():
        assert pipeline.reconcile() == []
        job = Job.get_by_id(job_id)
    assert job.status == "failed" and f"{app.config['MAX_ATTEMPTS']} times" in job.error


def test_a_dead_worker_of_this_box_is_found_by_its_pid_before_its_lease_ends(app, client, admin_headers, uploaded_job):
    """The fast path: same box, the process is gone, no need to wait for the lease."""
    job_id = uploaded_job(client, admin_headers)["job_id"]
    pipeline.configure(dict(app.config))
    running_on(app, job_id, app.config["WORKER_NAME"], lease_left=30)
    with app.app_context():
        assert pipeline.reconcile() == [job_id]


def test_renewing_extends_only_this_workers_leases(app, client, admin_headers, uploaded_job):
    """The heartbeat moves this worker's lease forward and leaves another box's alone."""
    mine = uploaded_job(client, admin_headers)["job_id"]
    theirs = uploaded_job(client, admin_headers)["job_id"]
    pipeline.configure({**app.config, "LEASE_SECONDS": 45})
    running_on(app, mine, app.config["WORKER_NAME"], lease_left=1, worker_id=pipeline.worker_id())
    running_on(app, theirs, "other-box", lease_left=1, worker_id=pipeline.worker_id())  # same pid, other box
    with app.app_context():
        assert pipeline.renew_leases() == 1
        assert Job.get_by_id(mine).lease_expires_at > utcnow() + timedelta(seconds=40)
        assert Job.get_by_id(theirs).lease_expires_at < utcnow() + timedelta(seconds=2)


def test_a_claim_records_the_worker_name_and_a_lease(app, client, admin_headers, uploaded_job):
    """What the admin page and other boxes read: who runs the job, and until when it is theirs."""
    job_id = uploaded_job(client, admin_headers)["job_id"]
    with app.app_context():
        assert Job.claim(job_id, pipeline.worker_id(), "box-a", 20)
        job = Job.get_by_id(job_id)
    assert job.worker_name == "box-a"
    assert utcnow() + timedelta(seconds=15) < job.lease_expires_at <= utcnow() + timedelta(seconds=20)


def test_the_admin_stats_list_a_worker_of_another_box_with_its_job_model_and_heartbeat(
    app, client, admin_headers, uploaded_job
):
    """A registry entry from another box is shown (not dropped for having no local process), with its job."""
    import json
    import time

    from app.supervisor import WORKER_KEY_PREFIX, live_workers
    from workers.queue import huey

    job_id = uploaded_job(client, admin_headers)["job_id"]
    running_on(app, job_id, "nas", lease_left=30)
    with app.app_context():
        Job.update(engine="whispercpp:ggml-tiny.en.bin").where(Job.id == job_id).execute()
    entry = {"pid": 999999, "created": 1.0, "beat": time.time(), "threads": 4, "name": "nas", "host": "nas.lan"}
    huey.storage.put_data(f"{WORKER_KEY_PREFIX}nas:999999", json.dumps(entry).encode())
    workers = client.get("/admin/stats", headers=admin_headers).get_json()["processes"]["workers"]
    assert [(w["name"], w["host"], w["local"], w["job_id"], w["model"]) for w in workers] == [
        ("nas", "nas.lan", False, job_id, "tiny.en")
    ]
    assert workers[0]["engine"].startswith("whispercpp") and workers[0]["last_heartbeat"].endswith("Z")
    assert workers[0]["drained"] is False
    assert live_workers() == []  # concurrency and restarts concern this box's workers only


def test_an_admin_drains_a_worker_of_any_box_by_name_and_resumes_it(app, client, admin_headers, user_headers):
    """The name is stored where every worker reads it; the change is audited; a bad name is a 422."""
    from app.models import AuditLog
    from app.services import draining

    body = client.post("/admin/workers/nas/drain", headers=admin_headers).get_json()
    assert body["drained"] is True and body["name"] == "nas" and body["workers"] == []
    assert client.get("/admin/workers", headers=admin_headers).get_json()["drained"] == ["nas"]
    with app.app_context():
        assert draining.is_drained("nas") and not draining.is_drained("box-a")
        assert AuditLog.search(action="worker_drain").first().target == "nas"
    assert client.post("/admin/workers/nas/resume", headers=admin_headers).get_json()["drained"] is False
    assert client.get("/admin/workers", headers=admin_headers).get_json()["drained"] == []
    assert_error(client.post("/admin/workers/-bad name/drain", headers=admin_headers), 422)
    assert_error(client.post("/admin/workers/nas/drain", headers=user_headers("bob")), 403)
