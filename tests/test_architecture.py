"""The architecture holds: imports point down the layers in .importlinter, and workers load no web stack."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
LINT_IMPORTS = Path(sys.executable).parent / "lint-imports"
WEB_STACK = ("flask_limiter", "flask_sock", "jwt", "argon2")


def lint_imports(root: Path) -> subprocess.CompletedProcess:
    """Run import-linter on the packages under ``root`` with its .importlinter."""
    env = {**os.environ, "PYTHONPATH": str(root)}
    return subprocess.run(
        [str(LINT_IMPORTS), "--config", str(root / ".importlinter"), "--no-cache"],
        cwd=root,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )


def test_the_layers_contract_holds():
    result = lint_imports(ROOT)
    assert result.returncode == 0, result.stdout + result.stderr


def test_a_service_that_imports_the_tasks_breaks_the_contract(tmp_path):
    """Services queue jobs through app/services/queueing.py; importing workers.tasks would run back up."""
    for part in ("app", "workers", ".importlinter"):
        copy = shutil.copytree if (ROOT / part).is_dir() else shutil.copy
        copy(
            ROOT / part,
            tmp_path / part,
            **({"ignore": shutil.ignore_patterns("__pycache__")} if (ROOT / part).is_dir() else {}),
        )
    jobs = tmp_path / "app" / "services" / "jobs.py"
    jobs.write_text(jobs.read_text() + "\nfrom workers import tasks  # noqa: E402,F401\n")
    result = lint_imports(tmp_path)
    assert result.returncode != 0
    assert "app.services is not allowed to import workers.tasks" in result.stdout


def test_a_worker_loads_no_web_stack(tmp_path):
    """Boot as a worker and run a task: flask_limiter, flask_sock, jwt and argon2 stay out of the process."""
    script = (
        "import sys\n"
        "import app.cli\n"
        "from app.boot import boot\n"
        "boot(None, 'worker')\n"
        "from workers import dsp, pipeline, recovery, stages, tasks\n"
        "tasks.process_job.call_local('no-such-job')\n"
        "tasks.reconcile.call_local()\n"
        "tasks.cleanup.call_local()\n"
        "tasks.watch_folders.call_local()\n"
        "print(' '.join(sorted(sys.modules)))\n"
    )
    env = {**os.environ, "WT_DATA_DIR": str(tmp_path)}
    result = subprocess.run(
        [sys.executable, "-c", script], cwd=ROOT, env=env, capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stderr
    loaded = set(result.stdout.split())
    assert "workers.pipeline" in loaded
    assert not [name for name in loaded if name.split(".")[0] in WEB_STACK]
