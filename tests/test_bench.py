"""``whisper-transcriber bench`` runs with one command and reports every figure the README quotes."""

from __future__ import annotations

import os
import re
import subprocess
import sys

import pytest

from tests.helpers import AUDIO, MODELS_DIR, ROOT

pytestmark = pytest.mark.e2e


def test_bench_reports_times_ratios_and_worker_rss_for_both_clips(tmp_path):
    env = {**os.environ, "WT_MODELS_DIR": str(MODELS_DIR), "WT_DATA_DIR": str(tmp_path / "data")}
    result = subprocess.run(
        [sys.executable, "-m", "app.cli", "bench", "--runs", "1", "--audio-dir", str(AUDIO)],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr
    number = r"\s+(\d+\.\d+)"
    for clip, seconds in (("jfk.flac", 11.0), ("OSR_us_000_0034_8k.flac", 35.5)):
        row = re.search(re.escape(clip) + number * 6, result.stdout)
        assert row, result.stdout
        length, bare, served, bare_rtf, served_rtf, ratio = (float(v) for v in row.groups())
        assert length == pytest.approx(seconds, abs=0.1)
        assert bare > 0 and served > 0 and ratio == pytest.approx(served / bare, rel=0.05)
        assert bare_rtf == pytest.approx(bare / length, abs=0.002)
    assert re.search(r"worker peak RSS: \d+ MB", result.stdout), result.stdout
