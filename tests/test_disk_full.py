"""A full data disk: 507 INSUFFICIENT_STORAGE instead of 500s, uploads refused early, logins kept, whole log lines.

The tests marked with ``small_disk`` run on a tmpfs of a few MB that the test mounts (as root); where mounting
is not allowed they are skipped.
"""

from __future__ import annotations

import errno
import json
import logging
import os
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import peewee
import pytest
import requests

from app.logging_setup import JsonFormatter, SharedRotatingFileHandler
from app.services import disk
from tests.conftest import ADMIN_PASSWORD, build_app, launch_appliance
from tests.helpers import AUDIO, assert_error, post_clip, reference, wer

JFK = (AUDIO / "jfk.flac").read_bytes()
MB = 1024**2


@pytest.fixture
def small_disk(tmp_path) -> Iterator[Path]:
    """An 8 MB tmpfs mounted for this test only."""
    mount = tmp_path / "disk"
    mount.mkdir()
    if os.geteuid() != 0 or shutil.which("mount") is None:
        pytest.skip("mounting a tmpfs needs root and mount(8)")
    result = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=8m", "tmpfs", str(mount)], capture_output=True, text=True, check=False
    )
    if result.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {result.stderr.strip()}")
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=False)


def fill(folder: Path) -> Path:
    """Write one file until the disk has not a byte left; return it (removing it frees the disk again)."""
    filler = folder / "filler"
    with open(filler, "wb", buffering=0) as f:
        for size in (MB, 4096, 1):
            try:
                while True:
                    f.write(b"\0" * size)
            except OSError as exc:
                assert exc.errno == errno.ENOSPC
    assert shutil.disk_usage(folder).free == 0
    return filler


def temp_files(app) -> list[Path]:
    """What uploads left in tmp/ and uploads/."""
    root = Path(app.config["DATA_DIR"])
    return [p for folder in ("tmp", "uploads") for p in (root / folder).iterdir()]


# ------------------------------------------------------------ the error handler (no mount needed)


@pytest.mark.parametrize(
    "error",
    [
        OSError(errno.ENOSPC, "No space left on device"),
        OSError(errno.EDQUOT, "Disk quota exceeded"),
        peewee.OperationalError("database or disk is full"),
    ],
)
def test_a_disk_full_error_anywhere_is_a_507_in_the_standard_body(client, admin_headers, monkeypatch, error):
    """Not a 500: the client learns the server is out of space."""
    from app.services import jobs

    def fail(*args, **kwargs):
        try:
            raise error
        except Exception as exc:
            raise RuntimeError("while listing") from exc  # found behind the exception it caused, too

    monkeypatch.setattr(jobs, "list_jobs", fail)
    body = assert_error(client.get("/api/jobs/", headers=admin_headers), 507, "INSUFFICIENT_STORAGE")
    assert "disk is full" in body["detail"]


def test_other_os_errors_stay_500(client, admin_headers, monkeypatch):
    """Only a full disk or quota is a 507."""
    from app.services import jobs

    def fail(*args, **kwargs):
        raise OSError(errno.EIO, "Input/output error")

    monkeypatch.setattr(jobs, "list_jobs", fail)
    assert_error(client.get("/api/jobs/", headers=admin_headers), 500, "INTERNAL_ERROR")


# ------------------------------------------------------------ the floor (no mount needed)

UPLOAD_ROUTES = [
    "/api/jobs/",
    "/jobs/",
    "/jobs",
    "/upload",
    "/api/upload",
    "/v1/audio/transcriptions",
    "/v1/audio/translations",
]


@pytest.mark.parametrize("path", UPLOAD_ROUTES)
def test_uploads_are_refused_before_their_body_is_read_below_the_floor(app, client, admin_headers, monkeypatch, path):
    """Every dialect's upload: 507 while under WT_MIN_FREE_MB, and nothing of the body reaches the disk."""
    monkeypatch.setattr(disk, "free_bytes", lambda _: 100 * MB)
    body = assert_error(post_clip(client, admin_headers, path=path), 507, "INSUFFICIENT_STORAGE")
    assert "100 MB free" in body["detail"] and "500 MB must stay free" in body["detail"]
    assert temp_files(app) == []


def test_chunked_uploads_are_refused_below_the_floor(client, admin_headers, monkeypatch):
    """Starting one, sending a chunk and assembling the file all store data."""
    base = "/api/chunked-uploads"
    session = client.post(
        f"{base}/initialize",
        headers=admin_headers,
        json={"filename": "jfk.flac", "file_size": len(JFK), "chunk_size": len(JFK), "content_type": "audio/flac"},
    )
    session_id = session.get_json()["session_id"]
    monkeypatch.setattr(disk, "free_bytes", lambda _: 100 * MB)
    assert_error(
        client.post(
            f"{base}/{session_id}/chunks/1", headers=admin_headers, data=JFK, content_type="application/octet-stream"
        ),
        507,
        "INSUFFICIENT_STORAGE",
    )
    assert_error(
        client.post(f"{base}/{session_id}/finalize", headers=admin_headers, json={"chunk_checksums": []}),
        507,
        "INSUFFICIENT_STORAGE",
    )
    assert_error(client.post(f"{base}/initialize", headers=admin_headers, json={}), 507, "INSUFFICIENT_STORAGE")


def test_an_upload_bigger_than_the_room_above_the_floor_is_refused_by_its_content_length(
    app, client, admin_headers, monkeypatch
):
    """Free space minus the declared body must stay above the floor; a smaller body still gets through."""
    floor = 500 * MB
    monkeypatch.setattr(disk, "free_bytes", lambda _: floor + len(JFK) // 2)
    body = assert_error(post_clip(client, admin_headers), 507, "INSUFFICIENT_STORAGE")
    assert "for an upload of" in body["detail"]
    monkeypatch.setattr(disk, "free_bytes", lambda _: floor + 2 * len(JFK))
    assert post_clip(client, admin_headers).status_code == 201


def test_the_floor_can_be_turned_off(app, client, admin_headers, monkeypatch):
    """WT_MIN_FREE_MB=0: only a body that cannot fit at all is refused."""
    app.config["MIN_FREE_MB"] = 0
    monkeypatch.setattr(disk, "free_bytes", lambda _: 3 * len(JFK))
    assert post_clip(client, admin_headers).status_code == 201


def test_health_says_the_disk_is_low_and_degraded_but_still_answers_200(client, monkeypatch):
    """A liveness probe keeps passing; status and disk tell a monitor what is wrong."""
    assert client.get("/health").get_json()["disk"] == "ok"
    monkeypatch.setattr(disk, "free_bytes", lambda _: 499 * MB)
    response = client.get("/health")
    assert response.status_code == 200
    body = response.get_json()
    assert (body["status"], body["disk"], body["disk_free_mb"], body["database"]) == ("degraded", "low", 499, "ok")


# ------------------------------------------------------------ a real full disk


def test_an_upload_that_runs_out_of_disk_midway_is_507_and_leaves_nothing(small_disk, monkeypatch):
    """Another program filled the disk after the check: the stream fails with ENOSPC, the answer is a 507."""
    app = build_app(small_disk / "data")
    client = app.test_client()
    token = client.post("/auth/login", json={"username": "admin", "password": ADMIN_PASSWORD}).get_json()
    headers = {"Authorization": f"Bearer {token['access_token']}"}
    monkeypatch.setattr(disk, "free_bytes", lambda _: 10**12)  # the floor check passes; the disk does not
    response = post_clip(client, headers, data=os.urandom(12 * MB))  # more than the whole disk
    assert_error(response, 507, "INSUFFICIENT_STORAGE")
    assert temp_files(app) == []
    assert shutil.disk_usage(small_disk).free > 6 * MB  # the partial upload is gone


def test_a_database_that_cannot_even_open_on_a_full_disk_is_507_and_health_still_answers(small_disk):
    """With no other process holding it open, SQLite cannot create its -shm file: requests are 507, /health 200."""
    app = build_app(small_disk / "data", MIN_FREE_MB=2)
    client = app.test_client()
    token = client.post("/auth/login", json={"username": "admin", "password": ADMIN_PASSWORD}).get_json()
    fill(small_disk)
    health = client.get("/health")
    assert health.status_code == 200
    assert health.get_json()["status"] == "degraded" and health.get_json()["disk"] == "low"
    assert health.get_json()["database"].startswith("error")
    assert_error(
        client.get("/api/jobs/", headers={"Authorization": f"Bearer {token['access_token']}"}),
        507,
        "INSUFFICIENT_STORAGE",
    )


def test_log_lines_on_a_really_full_disk_are_whole_or_missing(small_disk):
    """No torn JSON line, however the last free block is shared out; the loss is counted once space returns."""
    path = small_disk / "system.log"
    handler = SharedRotatingFileHandler(path)
    handler.setFormatter(JsonFormatter("web"))

    def emit(message: str) -> None:
        handler.emit(logging.makeLogRecord({"msg": message, "levelname": "INFO", "levelno": logging.INFO}))

    emit("before")  # the file's last page now has room left that the disk's other space does not show
    filler = fill(small_disk)
    for i in range(200):
        emit(f"while full {i} " + "x" * 200)
    filler.unlink()
    emit("after")
    handler.close()
    entries = [json.loads(line) for line in path.read_text().splitlines()]  # every line parses
    messages = [entry["message"] for entry in entries]
    assert messages[0] == "before" and messages[-1] == "after"
    written = [m for m in messages if m.startswith("while full")]
    assert messages[-2] == f"{200 - len(written)} log lines were dropped: the disk was full"


@pytest.mark.e2e
@pytest.mark.slow
def test_a_full_disk_refuses_uploads_keeps_logins_reports_low_disk_and_recovers(small_disk):
    """The appliance on a disk that something else filled to the last byte, then freed again."""
    data_dir = small_disk / "data"
    with launch_appliance(data_dir, "disk-full-server.log", WT_MIN_FREE_MB="2") as server:
        assert server.get("/health").json()["disk"] == "ok"
        filler = fill(small_disk)

        refused = upload_file(server)
        assert refused.status_code == 507 and refused.json()["error_code"] == "INSUFFICIENT_STORAGE", refused.text
        for _ in range(3):  # each records a token and an audit entry in a database on a full disk
            login = requests.post(
                server.url + "/auth/login", timeout=10, json={"username": "admin", "password": ADMIN_PASSWORD}
            )
            assert login.status_code == 200, login.text
        token = {"Authorization": f"Bearer {login.json()['access_token']}"}
        assert requests.get(server.url + "/api/jobs/", headers=token, timeout=10).status_code == 200
        health = requests.get(server.url + "/health", timeout=10)
        assert health.status_code == 200
        assert (health.json()["status"], health.json()["disk"]) == ("degraded", "low")

        filler.unlink()
        assert requests.get(server.url + "/health", timeout=10).json()["disk"] == "ok"
        job = server.wait(server.submit(AUDIO / "jfk.flac", model="tiny.en"))
        assert job["status"] == "completed", job
        assert wer(reference("jfk.flac"), job["transcript"]["text"]) <= 0.10
    logs = sorted((data_dir / "logs").rglob("*.log"))
    lines = [line for log in logs if log.parent.name == "logs" for line in log.read_text().splitlines()]
    assert lines and all(json.loads(line) for line in lines)  # whole JSON lines only, in every shared log
    assert any("log lines were dropped" in json.loads(line)["message"] for line in lines)


def upload_file(server) -> requests.Response:
    """Upload jfk.flac to the live appliance."""
    with open(AUDIO / "jfk.flac", "rb") as f:
        return server.post("/api/jobs/", files={"file": ("jfk.flac", f)})
