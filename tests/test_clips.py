"""The suite carries its own clips: nothing it needs lives outside the repository."""

from __future__ import annotations

import os
import subprocess
import sys

from tests.helpers import AUDIO, ROOT, manifest
from workers import audio


def test_every_clip_in_the_manifest_ships_with_its_reference():
    clips = manifest()
    assert {"jfk.flac", "OSR_us_000_0034_8k.flac", "multilingual.mp3", "hotwords.mp3"} <= set(clips)
    for name, clip in clips.items():
        assert (AUDIO / name).is_file(), name
        assert clip["source"] and any(key.startswith("reference") for key in clip), name
        assert abs(audio.probe(AUDIO / name).duration - clip["seconds"]) <= 0.15, name


def test_the_suite_collects_without_a_shared_folder_beside_the_repository(tmp_path):
    env = {**os.environ, "WT_SHARED_DIR": str(tmp_path / "no-shared")}
    result = subprocess.run(
        [sys.executable, "-m", "pytest", "--collect-only", "-q", "-p", "no:cacheprovider"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert "error" not in result.stdout.lower().splitlines()[-1]
