"""scripts/install and scripts/uninstall staged into a throwaway root, and the systemd units they install."""

from __future__ import annotations

import os
import re
import shutil
import stat
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.helpers import ROOT

INSTALL = ROOT / "scripts" / "install"
UNINSTALL = ROOT / "scripts" / "uninstall"
UNITS = (
    "whisper-transcriber-web.service",
    "whisper-transcriber-worker@.service",
    "whisper-transcriber-wyoming.service",
    "whisper-transcriber.target",
)
PREFIX = "opt/whisper-transcriber"
DATA_DIR = "var/lib/whisper-transcriber"
CONF_DIR = "etc/whisper-transcriber"
ENV_FILE = f"{CONF_DIR}/whisper-transcriber.env"
UNIT_DIR = "etc/systemd/system"
VENV = Path(sys.prefix)  # the venv running the tests is linked in, instead of a 2-minute pip install


@dataclass
class Staged:
    root: Path
    output: str

    def path(self, relative: str) -> Path:
        """A path inside the staged root."""
        return self.root / relative


def run_script(script: Path, destdir: Path, *args: str) -> subprocess.CompletedProcess:
    """Run an install script in fast staging mode: files only, no user, apt or service manager."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("WT_") and k != "SECRET_KEY"}
    env.update(DESTDIR=str(destdir), WT_INSTALL_SKIP_SYSTEM="1", WT_INSTALL_VENV_FROM=str(VENV))
    result = subprocess.run(["bash", str(script), *args], env=env, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr
    return result


def stage(destdir: Path) -> Staged:
    """Install into ``destdir``."""
    return Staged(destdir, run_script(INSTALL, destdir).stdout)


def read_env(path: Path) -> dict[str, str]:
    """The KEY=VALUE lines of an env file."""
    lines = (line.split("=", 1) for line in path.read_text().splitlines() if line and not line.startswith("#"))
    return {key: value for key, value in lines}


def unit_settings(path: Path) -> dict[str, list[str]]:
    """Every ``Key=value`` of a unit file; a key may repeat."""
    settings: dict[str, list[str]] = {}
    for line in path.read_text().splitlines():
        if "=" in line and not line.startswith(("#", ";", "[")):
            key, value = line.split("=", 1)
            settings.setdefault(key.strip(), []).append(value.strip())
    return settings


@pytest.fixture(scope="module")
def installed(tmp_path_factory) -> Staged:
    """One staged install shared by the read-only checks."""
    if not (VENV / "bin" / "whisper-transcriber").exists():
        pytest.skip(f"{VENV} has no whisper-transcriber entry point")
    return stage(tmp_path_factory.mktemp("install") / "root")


def test_install_lays_out_source_venv_data_and_units(installed: Staged) -> None:
    """The tree under DESTDIR matches the documented layout."""
    src = installed.path(f"{PREFIX}/src")
    assert (src / "config" / "defaults.py").is_file()  # settings find it next to the app package
    assert (src / "app" / "cli.py").is_file()
    for skipped in (".git", ".venv", "data", "test-output"):
        assert not (src / skipped).exists(), skipped
    assert installed.path(f"{PREFIX}/venv").resolve() == VENV.resolve()
    assert installed.path(f"{DATA_DIR}/models/ggml-tiny.en.bin").stat().st_size > 1_000_000
    for unit in UNITS:
        assert installed.path(f"{UNIT_DIR}/{unit}").read_text() == (ROOT / "systemd" / unit).read_text()


@pytest.mark.skipif(shutil.which("systemctl") is None, reason="systemctl is not installed")
def test_install_enables_web_worker_one_and_target(installed: Staged) -> None:
    """Enabling (offline, with systemctl --root) wires web and worker@1 into the target, the target into boot.

    The Wyoming server is installed but not enabled: the protocol has no authentication.
    """
    wants = installed.path(f"{UNIT_DIR}/whisper-transcriber.target.wants")
    assert sorted(p.name for p in wants.iterdir()) == [
        "whisper-transcriber-web.service",
        "whisper-transcriber-worker@1.service",
    ]
    assert installed.path(f"{UNIT_DIR}/multi-user.target.wants/whisper-transcriber.target").is_symlink()


def test_install_writes_private_production_env_file(installed: Staged) -> None:
    """The env file is 0640 and holds a strong secret, production mode and the data dir."""
    path = installed.path(ENV_FILE)
    assert stat.S_IMODE(path.stat().st_mode) == 0o640
    env = read_env(path)
    assert len(env["SECRET_KEY"]) >= 48
    assert env["WT_ENV"] == "production"
    assert env["WT_DATA_DIR"] == "/var/lib/whisper-transcriber"
    assert env["WT_HOST"] == "127.0.0.1" and env["WT_PORT"] == "8000"
    assert len(env["WT_ADMIN_PASSWORD"]) >= 16


def test_install_prints_url_and_admin_password(installed: Staged) -> None:
    """The summary names the URL and the password written to the env file."""
    env = read_env(installed.path(ENV_FILE))
    assert "http://127.0.0.1:8000" in installed.output
    assert re.search(rf"Admin password:\s+{re.escape(env['WT_ADMIN_PASSWORD'])}$", installed.output, re.M)


def test_installed_env_file_starts_the_app_in_production(installed: Staged, tmp_path: Path) -> None:
    """The app accepts the generated settings and the printed password logs the admin in."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("WT_") and k != "SECRET_KEY"}
    env.update(read_env(installed.path(ENV_FILE)))
    env.update(WT_DATA_DIR=str(tmp_path / "data"), WT_MODELS_DIR=str(installed.path(f"{DATA_DIR}/models")))
    script = (
        "import sys\n"
        "from app import create_app\n"
        "app = create_app()\n"
        "assert app.config['ENV'] == 'production'\n"
        "r = app.test_client().post('/auth/login', json={'username': 'admin', 'password': sys.argv[1]})\n"
        "assert r.status_code == 200, r.get_json()\n"
    )
    python = installed.path(f"{PREFIX}/venv/bin/python")
    result = subprocess.run(
        [str(python), "-c", script, env["WT_ADMIN_PASSWORD"]],
        env=env,
        cwd="/",
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    cli = installed.path(f"{PREFIX}/venv/bin/whisper-transcriber")
    listing = subprocess.run([str(cli), "models", "list"], env=env, capture_output=True, text=True, timeout=60)
    assert listing.stdout.startswith("tiny.en"), listing.stderr


def test_reinstall_keeps_env_file_and_secret(installed: Staged) -> None:
    """A second install keeps the settings, so sessions and the admin password stay valid."""
    before = installed.path(ENV_FILE).read_bytes()
    again = stage(installed.root)
    assert installed.path(ENV_FILE).read_bytes() == before
    assert read_env(installed.path(ENV_FILE))["WT_ADMIN_PASSWORD"] in again.output
    assert installed.path(f"{DATA_DIR}/models/ggml-tiny.en.bin").exists()


def test_units_keep_signals_timeouts_and_sandbox() -> None:
    """The units keep the settings the services depend on."""
    web = unit_settings(ROOT / "systemd" / "whisper-transcriber-web.service")
    worker = unit_settings(ROOT / "systemd" / "whisper-transcriber-worker@.service")
    assert web["Type"] == ["notify"] and web["Restart"] == ["on-failure"]
    assert worker["KillSignal"] == ["SIGINT"] and worker["Restart"] == ["always"]
    assert worker["TimeoutStopSec"] == ["6h"] and worker["MemoryMax"]
    for unit in (web, worker):
        assert unit["ExecReload"] == ["/bin/kill -HUP $MAINPID"]
        assert unit["EnvironmentFile"] == ["/etc/whisper-transcriber/whisper-transcriber.env"]
        assert unit["User"] == ["whisper"] and unit["ProtectSystem"] == ["strict"]
        assert unit["ReadWritePaths"] == ["/var/lib/whisper-transcriber"]
        assert unit["PrivateTmp"] == unit["NoNewPrivileges"] == ["true"]
        assert unit["PartOf"] == unit["WantedBy"] == ["whisper-transcriber.target"]
        assert unit["KillMode"] == ["mixed"]  # signals reach the main process only, not ffmpeg children
        assert "MemoryDenyWriteExecute" not in unit


def test_wyoming_unit_runs_the_server_sandboxed_at_normal_priority() -> None:
    """The Wyoming unit starts `wyoming` as the service user, sandboxed like the others, without a lower Nice=."""
    unit = unit_settings(ROOT / "systemd" / "whisper-transcriber-wyoming.service")
    assert unit["ExecStart"] == ["/opt/whisper-transcriber/venv/bin/whisper-transcriber wyoming"]
    assert unit["KillSignal"] == ["SIGTERM"] and unit["Restart"] == ["always"]
    assert unit["EnvironmentFile"] == ["/etc/whisper-transcriber/whisper-transcriber.env"]
    assert unit["User"] == ["whisper"] and unit["ProtectSystem"] == ["strict"]
    assert unit["ReadWritePaths"] == ["/var/lib/whisper-transcriber"]
    assert unit["PartOf"] == unit["WantedBy"] == ["whisper-transcriber.target"]
    assert "Nice" not in unit  # commands are interactive: they get the CPU before the workers (Nice=10)


@pytest.mark.skipif(
    shutil.which("systemd-analyze") is None, reason="systemd-analyze is missing (Debian package: systemd)"
)
def test_installed_units_pass_systemd_analyze_verify(installed: Staged, tmp_path: Path) -> None:
    """systemd-analyze verify accepts the units, with their paths pointed into the staged root."""
    # verify checks that ExecStart exists, and --root= wants a whole OS tree; so rewrite the paths.
    for unit in UNITS:
        text = installed.path(f"{UNIT_DIR}/{unit}").read_text()
        for absolute in ("/opt/whisper-transcriber", "/etc/whisper-transcriber", "/var/lib/whisper-transcriber"):
            text = text.replace(absolute, str(installed.root) + absolute)
        (tmp_path / unit).write_text(text)
    names = [*UNITS, "whisper-transcriber-worker@2.service"]
    result = subprocess.run(
        ["systemd-analyze", "verify", *(f"./{n}" for n in names)],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
    )
    ours = [line for line in (result.stdout + result.stderr).splitlines() if "whisper-transcriber" in line]
    assert result.returncode == 0 and not ours, result.stdout + result.stderr


def test_uninstall_keeps_data_until_purge(tmp_path: Path) -> None:
    """Uninstall removes code, config and units but keeps the data; --purge removes the data too."""
    if not (VENV / "bin" / "whisper-transcriber").exists():
        pytest.skip(f"{VENV} has no whisper-transcriber entry point")
    staged = stage(tmp_path / "root")
    run_script(UNINSTALL, staged.root)
    assert not staged.path(PREFIX).exists() and not staged.path(CONF_DIR).exists()
    leftovers = [p for p in staged.path(UNIT_DIR).rglob("*") if "whisper-transcriber" in p.name]
    assert leftovers == []
    assert staged.path(f"{DATA_DIR}/models/ggml-tiny.en.bin").exists()
    assert (VENV / "bin" / "python").exists()  # the linked venv was unlinked, not emptied
    run_script(UNINSTALL, staged.root, "--purge")
    assert not staged.path(DATA_DIR).exists()


@pytest.mark.skipif(shutil.which("shellcheck") is None, reason="shellcheck is not installed (scripts/test installs it)")
def test_every_shell_script_passes_shellcheck() -> None:
    """install, uninstall, run, test, their shared setup and the CI entry point are shellcheck-clean."""
    scripts = [
        INSTALL,
        UNINSTALL,
        *(ROOT / "scripts" / name for name in ("run", "test", "_setup.sh")),
        ROOT / ".ci" / "run",
    ]
    result = subprocess.run(["shellcheck", "-x", *map(str, scripts)], capture_output=True, text=True, cwd="/")
    assert result.returncode == 0, result.stdout


def test_worker_only_installs_the_worker_unit_alone_with_the_shared_database_and_queue(tmp_path: Path) -> None:
    """A worker box: the worker unit and the target, no web server; its env file names PostgreSQL, Redis,
    its worker name and its own models folder (outside the shared data folder), and holds no secret."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("WT_") and k != "SECRET_KEY"}
    env.update(DESTDIR=str(tmp_path), WT_INSTALL_SKIP_SYSTEM="1", WT_INSTALL_VENV_FROM=str(VENV))
    env.update(WT_DATABASE_URL="postgresql://wt:pw@web-box/whisper", WT_QUEUE_URL="redis://web-box:6379/0")
    env.update(WT_WORKER_NAME="nas")
    done = subprocess.run(["bash", str(INSTALL), "--worker-only"], env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stdout + done.stderr
    units = sorted(p.name for p in (tmp_path / UNIT_DIR.lstrip("/")).iterdir() if p.is_file())
    assert units == ["whisper-transcriber-worker@.service", "whisper-transcriber.target"]
    written = read_env(tmp_path / ENV_FILE.lstrip("/"))
    assert written["WT_DATABASE_URL"] == "postgresql://wt:pw@web-box/whisper"
    assert written["WT_QUEUE_URL"] == "redis://web-box:6379/0" and written["WT_WORKER_NAME"] == "nas"
    assert written["WT_DATA_DIR"] == f"/{DATA_DIR}" and not written["WT_MODELS_DIR"].startswith(f"/{DATA_DIR}")
    assert "SECRET_KEY" not in written and "WT_ADMIN_PASSWORD" not in written
    assert written["WT_LOG_DIR"] == "/var/log/whisper-transcriber"  # not the share: the unit's LogsDirectory=
    assert (tmp_path / written["WT_MODELS_DIR"].lstrip("/") / "ggml-tiny.en.bin").stat().st_size > 1_000_000
    assert "worker is installed" in done.stdout and "nas" in done.stdout


def test_worker_only_refuses_without_the_shared_database(tmp_path: Path) -> None:
    """A worker box with SQLite would be a box of its own: the installer says what it needs."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("WT_") and k != "SECRET_KEY"}
    env.update(DESTDIR=str(tmp_path), WT_INSTALL_SKIP_SYSTEM="1", WT_INSTALL_VENV_FROM=str(VENV))
    done = subprocess.run(["bash", str(INSTALL), "--worker-only"], env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode != 0 and "WT_DATABASE_URL" in done.stderr
