"""The README documents what the code reads, and the code reads settings only through the settings module."""

from __future__ import annotations

import re

from app.settings import ENV_NAMES
from tests.helpers import ROOT

# Environment variables the code reads that are not settings: the settings file itself (read by
# app/settings.py) and the marker `run` gives its children so they exit with it (workers/lifecycle.py).
NOT_SETTINGS = {"WT_CONFIG", "WT_SUPERVISOR_PID"}
APPLIANCE_CODE = ("app", "workers", "config")  # scripts/ are tools and clients with their own options
_ENV_READ = re.compile(r"""os\.(?:environ(?:\.get|\.setdefault|\.pop)?|getenv)\s*[\[(]\s*["'](WT_\w+)""")
_WT_LITERAL = re.compile(r"""["'](WT_[A-Z0-9_]+)["']""")


def _settings_table() -> set[str]:
    """The variable names in the first column of the README's settings table."""
    section = (ROOT / "README.md").read_text().split("\n## Settings\n", 1)[1].split("\n## ", 1)[0]
    rows = [line for line in section.splitlines() if line.startswith("| `")]
    return {name for row in rows for name in re.findall(r"`([A-Z][A-Z0-9_]*)`", row.split("|")[1])}


def _code_files() -> list:
    return [path for folder in APPLIANCE_CODE for path in sorted((ROOT / folder).rglob("*.py"))]


def test_every_environment_variable_is_in_the_readme_settings_table():
    """A setting nobody can find is a setting nobody can use."""
    readme = (ROOT / "README.md").read_text()
    assert [name for name in ENV_NAMES if f"`{name}`" not in readme] == []
    assert sorted(set(ENV_NAMES) - _settings_table()) == []


def test_every_variable_in_the_readme_settings_table_is_read_by_the_settings_module():
    """A documented variable that nothing reads would be silently ignored."""
    assert sorted(_settings_table() - set(ENV_NAMES)) == []


def test_only_the_settings_module_reads_wt_variables_from_the_environment():
    """Everything else takes its settings from load_settings, so WT_CONFIG and the defaults apply everywhere."""
    reads = [
        f"{path.relative_to(ROOT)}: {name}"
        for path in _code_files()
        if path != ROOT / "app" / "settings.py"
        for name in _ENV_READ.findall(path.read_text())
    ]
    assert reads == []


def test_every_wt_name_in_the_code_is_a_setting():
    """A WT_ name the code spells (say, to pass to a child process) is one the settings module knows."""
    unknown = {
        f"{path.relative_to(ROOT)}: {name}"
        for path in _code_files()
        for name in _WT_LITERAL.findall(path.read_text())
        if name not in ENV_NAMES and name not in NOT_SETTINGS
    }
    assert sorted(unknown) == []
