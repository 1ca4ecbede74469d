"""The README documents what the code reads."""

from __future__ import annotations

from app.settings import ENV_NAMES
from tests.helpers import ROOT


def test_every_environment_variable_is_in_the_readme_settings_table():
    """A setting nobody can find is a setting nobody can use."""
    readme = (ROOT / "README.md").read_text()
    assert [name for name in ENV_NAMES if f"`{name}`" not in readme] == []
