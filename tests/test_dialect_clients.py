"""Acceptance: the API documents' own client code runs unmodified against the live appliance.

- the full-API document's Python client (``WhisperTranscriberClient``), copied verbatim into
  ``tests/data/clients/full_api_client.py``;
- the legacy API document's curl example (``tests/data/clients/legacy_api_curl.txt``), run with the real ``curl``.
"""

from __future__ import annotations

import json
import shlex
import subprocess
import threading
from pathlib import Path
from typing import Any

import pytest
import requests

from tests.conftest import ADMIN_PASSWORD
from tests.helpers import AUDIO, ffmpeg, reference, wait_for, wer

pytestmark = pytest.mark.e2e

CLIENTS = AUDIO / "clients"
MAX_WER = 0.10
JOB_TIMEOUT = 300  # seconds; the machine may be busy with other test runs


def python_client_source() -> str:
    """The full-API document's Python integration example, as shipped with the tests."""
    return (CLIENTS / "full_api_client.py").read_text()


def call_with_deadline(func, *args: Any, timeout: float, **kwargs: Any) -> Any:
    """Run ``func`` in a daemon thread and fail the test if it has not returned within ``timeout`` seconds."""
    outcome: dict[str, Any] = {}

    def target() -> None:
        try:
            outcome["value"] = func(*args, **kwargs)
        except BaseException as exc:  # handed to the test below
            outcome["error"] = exc

    thread = threading.Thread(target=target, daemon=True)
    thread.start()
    thread.join(timeout)
    if thread.is_alive():
        pytest.fail(f"{func.__name__} did not return within {timeout} s")
    if "error" in outcome:
        raise outcome["error"]
    return outcome["value"]


def test_full_api_python_client_runs_unmodified(live_server):
    """create_job then wait_for_completion with an API key; the transcript matches the reference."""
    namespace: dict[str, Any] = {"__name__": "full_api_client"}
    exec(compile(python_client_source(), "full-api-python-client", "exec"), namespace)  # noqa: S102
    created = live_server.post(
        "/api/api-keys/", json={"name": "full API client", "permissions": ["jobs:read", "jobs:create"]}
    )
    assert created.status_code == 201, created.text
    client = namespace["WhisperTranscriberClient"](live_server.url, created.json()["api_key"])

    job = client.create_job(str(AUDIO / "jfk.flac"), model="tiny.en", language="en")
    assert job["status"] == "queued" and job["job_id"]
    done = call_with_deadline(client.wait_for_completion, job["job_id"], poll_interval=1, timeout=JOB_TIMEOUT)
    assert done["status"] == "completed", done
    assert wer(reference("jfk.flac"), done["transcript"]["text"]) <= MAX_WER


def test_legacy_api_curl_example_works_as_written(live_server, tmp_path: Path):
    """The documented ``curl -F 'file=@audio.wav' .../jobs`` call, with a token from /token and a real wav."""
    ffmpeg("-i", str(AUDIO / "jfk.flac"), str(tmp_path / "audio.wav"))
    token = requests.post(
        live_server.url + "/token", data={"username": "admin", "password": ADMIN_PASSWORD}, timeout=30
    )
    assert token.status_code == 200, token.text
    bearer = token.json()["access_token"]

    line = (CLIENTS / "legacy_api_curl.txt").read_text().strip()
    command = line.replace("http://localhost:8000", live_server.url).replace("<token>", bearer)
    result = subprocess.run(
        shlex.split(command), cwd=tmp_path, capture_output=True, text=True, timeout=120, check=False
    )
    assert result.returncode == 0, result.stderr
    body = json.loads(result.stdout)
    job_id = body["id"]
    assert body["status"] == "queued"

    headers = {"Authorization": f"Bearer {bearer}"}

    def finished() -> dict | None:
        job = requests.get(f"{live_server.url}/jobs/{job_id}", headers=headers, timeout=30).json()
        return job if job["status"] in ("completed", "failed", "cancelled") else None

    job = wait_for(finished, timeout=JOB_TIMEOUT, interval=0.5)
    assert job["status"] == "completed", job
    assert job["original_filename"] == "audio.wav" and job["id"] == job_id
    text = requests.get(f"{live_server.url}/jobs/{job_id}/download?format=txt", headers=headers, timeout=30)
    assert text.status_code == 200
    assert wer(reference("jfk.flac"), text.text) <= MAX_WER
