"""One boot path: the web app and the worker start through ``app.boot.boot``, with settings from one module."""

from __future__ import annotations

import json
import logging
import os
import runpy
import subprocess
import sys

import pytest

from app.boot import boot
from app.settings import load_settings
from tests.helpers import MODELS_DIR, ROOT

WEB_STACK = ("flask_limiter", "flask_sock", "jwt", "argon2")

# Runs the real `worker` command with the consumer's loop replaced by a report of the process's state.
_WORKER_PROBE = """
import json, logging, os, sys
from huey.consumer import Consumer

def report(self):
    print(json.dumps({"modules": sorted({m.split(".")[0] for m in sys.modules}),
                      "level": logging.getLogger().level, "nice": os.getpriority(os.PRIO_PROCESS, 0)}))

Consumer.run = report
from app import cli
cli.main(["worker"], standalone_mode=False)
"""


@pytest.fixture
def restore_root_level():
    """Booting sets the root logger's level for the whole process; put it back for the other tests."""
    level = logging.getLogger().level
    yield
    logging.getLogger().setLevel(level)


def test_a_worker_boots_without_the_web_stack(tmp_path):
    """The worker command loads no flask_limiter, flask_sock, jwt or argon2, and boots at its level and nice."""
    env = {
        **os.environ,
        "WT_DATA_DIR": str(tmp_path / "data"),
        "WT_MODELS_DIR": str(MODELS_DIR),
        "WT_LOG_LEVEL": "warning",
        "WT_WORKER_NICE": str(max(os.nice(0), 7)),
    }
    done = subprocess.run(
        [sys.executable, "-c", _WORKER_PROBE], cwd=ROOT, env=env, capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr
    state = json.loads(done.stdout.strip().splitlines()[-1])
    assert "huey" in state["modules"] and [name for name in WEB_STACK if name in state["modules"]] == []
    assert (state["level"], state["nice"]) == (logging.WARNING, max(os.nice(0), 7))
    assert (tmp_path / "data" / "whisper.db").is_file() and (tmp_path / "data" / "queue.db").is_file()
    assert (tmp_path / "data" / "logs" / "jobs").is_dir()


def test_wt_log_level_sets_the_level_of_the_apps_own_logs(tmp_path, monkeypatch, restore_root_level):
    """WT_LOG_LEVEL=debug puts DEBUG lines into system.log, not only into Gunicorn's own log."""
    from app import create_app

    monkeypatch.setenv("WT_LOG_LEVEL", "debug")
    app = create_app({"TESTING": True, "DATA_DIR": str(tmp_path / "data"), "MODELS_DIR": str(MODELS_DIR)})
    assert app.config["LOG_LEVEL"] == "DEBUG"
    assert logging.getLogger().level == logging.DEBUG
    logging.getLogger("tests.boot").debug("a debug line")
    assert "a debug line" in (tmp_path / "data" / "logs" / "system.log").read_text()


def test_an_unknown_log_level_stops_the_start(monkeypatch):
    """A typo in WT_LOG_LEVEL is named at once, in every process, rather than failing one of them later."""
    monkeypatch.setenv("WT_LOG_LEVEL", "verbose")
    with pytest.raises(RuntimeError, match="WT_LOG_LEVEL"):
        load_settings()


def test_boot_knows_only_the_web_and_worker_roles(tmp_path):
    """A role boot does not know is refused before anything is created."""
    with pytest.raises(ValueError, match="role"):
        boot({"DATA_DIR": str(tmp_path / "data")}, "scheduler")
    assert not (tmp_path / "data").exists()


def test_web_boot_fills_in_the_secret_key(tmp_path, restore_root_level):
    """The web role generates the signing key once into the data dir; the settings returned carry it."""
    settings = boot({"DATA_DIR": str(tmp_path / "data"), "MODELS_DIR": str(MODELS_DIR)}, "web")
    assert settings["SECRET_KEY"] == (tmp_path / "data" / "secret_key").read_text().strip()
    assert len(settings["SECRET_KEY"]) >= 32


def test_gunicorn_takes_its_settings_from_the_settings_module(tmp_path, monkeypatch):
    """Threads, level, address and files come from load_settings, so a WT_CONFIG file sets them too."""
    config = tmp_path / "appliance.py"
    config.write_text('WEB_THREADS = 8\nLOG_LEVEL = "WARNING"\nHOST = "0.0.0.0"\nPORT = 8123\n')
    monkeypatch.setenv("WT_CONFIG", str(config))
    monkeypatch.setenv("WT_DATA_DIR", str(tmp_path / "data"))
    monkeypatch.setenv("WT_ACCESS_LOG", "-")
    gunicorn = runpy.run_path(str(ROOT / "config" / "gunicorn.conf.py"))
    assert (gunicorn["threads"], gunicorn["loglevel"], gunicorn["bind"]) == (8, "warning", "0.0.0.0:8123")
    assert gunicorn["accesslog"] == "-"
    assert gunicorn["pidfile"] == str(tmp_path / "data" / "gunicorn.pid")
    monkeypatch.delenv("WT_ACCESS_LOG")
    monkeypatch.setenv("WT_WEB_THREADS", "16")
    gunicorn = runpy.run_path(str(ROOT / "config" / "gunicorn.conf.py"))
    assert (gunicorn["threads"], gunicorn["accesslog"]) == (16, None)


def test_the_systemd_worker_unit_numbers_its_worker_through_a_setting(monkeypatch):
    """worker@N sets WT_WORKER_INDEX=N; the settings carry it to prepare_worker (standby above the count)."""
    unit = (ROOT / "systemd" / "whisper-transcriber-worker@.service").read_text()
    assert "Environment=WT_WORKER_INDEX=%i" in unit
    monkeypatch.setenv("WT_WORKER_INDEX", "3")
    assert load_settings()["WORKER_INDEX"] == 3
    monkeypatch.delenv("WT_WORKER_INDEX")
    assert load_settings()["WORKER_INDEX"] == 0


def test_the_database_and_the_queue_default_to_the_data_dirs_files(tmp_path, monkeypatch):
    """Unset URLs: the single box's SQLite file and queue, memory rate limits, the breaker in the database."""
    from app.db import database_url

    monkeypatch.setenv("WT_DATA_DIR", str(tmp_path / "data"))
    settings = load_settings()
    assert (settings["DATABASE_URL"], settings["QUEUE_URL"], settings["BREAKER_STORAGE_URL"]) == ("", "", "")
    assert database_url(settings) == f"sqlite:///{tmp_path / 'data' / 'whisper.db'}"
    assert settings["RATELIMIT_STORAGE_URI"] == "memory://"


def test_a_redis_queue_carries_the_rate_limits_and_the_breaker_unless_told_otherwise(monkeypatch):
    """WT_QUEUE_URL=redis://... is the default of the two other shared stores; each can be set apart."""
    monkeypatch.setenv("WT_QUEUE_URL", "redis://box-a:6379/0")
    settings = load_settings()
    assert settings["RATELIMIT_STORAGE_URI"] == settings["BREAKER_STORAGE_URL"] == "redis://box-a:6379/0"
    monkeypatch.setenv("WT_RATELIMIT_STORAGE_URI", "memory://")
    monkeypatch.setenv("WT_BREAKER_STORAGE_URL", "database")
    settings = load_settings()
    assert (settings["RATELIMIT_STORAGE_URI"], settings["BREAKER_STORAGE_URL"]) == ("memory://", "")


@pytest.mark.parametrize(
    ("name", "value"),
    [("WT_DATABASE_URL", "mysql://box-a/whisper"), ("WT_QUEUE_URL", "amqp://box-a"), ("WT_BREAKER_STORAGE_URL", "x")],
)
def test_an_unsupported_url_stops_the_start(monkeypatch, name, value):
    """Only SQLite or PostgreSQL, and Redis: a typo is named at start, not at the first query."""
    monkeypatch.setenv(name, value)
    with pytest.raises(RuntimeError, match=name):
        load_settings()


def test_several_web_processes_need_shared_rate_limits_and_sum_their_metrics(tmp_path, monkeypatch):
    """WT_WEB_PROCESSES=2 without Redis is refused (each process would count its own budget); with Redis,
    Gunicorn runs two processes and prometheus_client's multiprocess mode sums their request counters."""
    monkeypatch.setenv("WT_DATA_DIR", str(tmp_path / "data"))
    monkeypatch.setenv("WT_WEB_PROCESSES", "2")
    with pytest.raises(RuntimeError, match="WT_WEB_PROCESSES"):
        load_settings()
    monkeypatch.setenv("WT_QUEUE_URL", "redis://box-a:6379/0")
    monkeypatch.setenv("PROMETHEUS_MULTIPROC_DIR", str(tmp_path / "metrics"))  # restored after the test
    gunicorn = runpy.run_path(str(ROOT / "config" / "gunicorn.conf.py"))
    assert gunicorn["workers"] == 2 and callable(gunicorn["child_exit"])
