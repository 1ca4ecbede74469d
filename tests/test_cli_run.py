"""``whisper-transcriber run`` as a person uses it: start it, then press Ctrl-C."""

from __future__ import annotations

import os
import signal
import subprocess
import sys

import psutil
import pytest
import requests

from tests.conftest import ADMIN_PASSWORD, free_port
from tests.helpers import MODELS_DIR, ROOT, wait_for

pytestmark = pytest.mark.e2e


def test_ctrl_c_stops_the_web_server_and_the_worker(tmp_path):
    """A terminal's Ctrl-C signals the whole process group; every process must still exit promptly."""
    port = free_port()
    env = {
        **os.environ,
        "WT_DATA_DIR": str(tmp_path / "data"),
        "WT_PORT": str(port),
        "WT_MODELS_DIR": str(MODELS_DIR),
        "WT_ADMIN_PASSWORD": ADMIN_PASSWORD,
    }
    proc = subprocess.Popen(
        [sys.executable, "-m", "app.cli", "run"],
        cwd=ROOT,
        env=env,
        start_new_session=True,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:

        def up() -> bool:
            try:
                return requests.get(f"http://127.0.0.1:{port}/health", timeout=2).json()["worker_alive"]
            except requests.RequestException:
                return False

        wait_for(up, timeout=60)
        children = [p.pid for p in psutil.Process(proc.pid).children(recursive=True)]
        assert len(children) >= 3  # gunicorn master and worker, the Huey consumer
        os.killpg(proc.pid, signal.SIGINT)
        assert proc.wait(timeout=30) == 0
        wait_for(lambda: not any(psutil.pid_exists(pid) for pid in children), timeout=30)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
