"""scripts/load in a tiny configuration: its own appliance, a few seconds of load, every job accounted for."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from tests.helpers import ROOT

pytestmark = pytest.mark.e2e


def test_the_load_script_reports_latencies_statuses_and_every_job(tmp_path):
    """A few clients, log sockets and slow clients: percentiles per kind, no 5xx, every created job finished."""
    out = tmp_path / "load.json"
    result = subprocess.run(
        [
            sys.executable,
            str(ROOT / "scripts" / "load"),
            "--clients",
            "4",
            "--log-sockets",
            "2",
            "--slow",
            "3",
            "--duration",
            "4",
            "--jobs",
            "2",
            "--idle",
            "2",
            "--drain-timeout",
            "120",
            "--json-out",
            str(out),
        ],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=ROOT,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    text = result.stdout
    assert "p50 ms" in text and "p99 ms" in text and "every created job accounted for: yes" in text
    summary = json.loads(out.read_text())
    for kind in ("list", "create", "health", "ws_connect"):
        row = summary["requests"][kind]
        assert row["count"] > 0 and 0 < row["p50_ms"] <= row["p95_ms"] <= row["p99_ms"] <= row["max_ms"], (kind, row)
    assert summary["statuses"]["create"] == {"201": 2} and set(summary["statuses"]["list"]) == {"200"}
    assert summary["server_errors"] == 0
    assert summary["ws"]["connected"] == 2 and summary["ws"]["dropped"] == 0
    slow = summary["slow_sockets"]
    assert slow["closed_by_server"] >= 3 and 1.5 < slow["median_open_s"] < 4  # the 2 s idle bound closed them
    jobs = summary["jobs"]
    assert jobs["created"] == 2 and jobs["completed"] == 2 and summary["accounted"] is True


def test_the_load_script_refuses_other_machines():
    """--url must be loopback: this is a tool for one's own appliance, not for someone else's server."""
    result = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "load"), "--url", "http://192.0.2.1:8000", "--password", "x"],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=ROOT,
    )
    assert result.returncode == 2 and "this machine" in result.stderr
