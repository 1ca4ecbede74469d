"""Plain helpers shared by the tests: reference audio, word error rate, media, uploads, polling, errors."""

from __future__ import annotations

import io
import json
import os
import re
import subprocess
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import jiwer
import pytest

ROOT = Path(__file__).resolve().parent.parent
AUDIO = ROOT / "tests" / "data"  # the clips the suite needs, shipped with the repository
# Optional extra clips beside the repository; a test that wants one skips when it is absent.
EXTRA_AUDIO = Path(os.environ.get("WT_SHARED_DIR", ROOT.parent / "shared")) / "audio"
MODELS_DIR = Path(os.environ.get("WT_MODELS_DIR", ROOT / "data" / "models"))
OUTPUT = ROOT / "test-output"


def manifest() -> dict[str, dict[str, Any]]:
    """The shipped clips by file name."""
    data = json.loads((AUDIO / "manifest.json").read_text())
    return {clip["file"]: clip for clip in data["clips"]}


def extra_clip(name: str) -> Path:
    """An optional clip from ``../shared/audio``; skips the calling test when it is not there."""
    path = EXTRA_AUDIO / name
    if not path.is_file():
        pytest.skip(f"optional clip {name} not found in {EXTRA_AUDIO}")
    return path


def reference(name: str, key: str = "reference") -> str:
    """The published reference transcript of a clip."""
    return manifest()[name][key]


def _normalise(text: str) -> str:
    text = text.lower().replace("-", " ")
    return " ".join(re.sub(r"[^\w\s']", " ", text).split())


def wer(ref: str, hyp: str) -> float:
    """Word error rate after lower-casing and dropping punctuation."""
    return jiwer.wer(_normalise(ref), _normalise(hyp) or "<empty>")


def word_recall(ref: str, hyp: str) -> float:
    """The share of the reference's words found, in order, in ``hyp``: words ``hyp`` adds cost nothing."""
    words = jiwer.process_words(_normalise(ref), _normalise(hyp) or "<empty>")
    return words.hits / max(1, len(_normalise(ref).split()))


def ffmpeg(*args: str) -> None:
    """Run ffmpeg quietly; raise on failure."""
    subprocess.run(["ffmpeg", "-nostdin", "-y", "-v", "error", *args], check=True, timeout=120)


def ffprobe_streams(path: Path | str) -> list[dict]:
    """The streams of a media file, by ffprobe."""
    out = subprocess.run(
        ["ffprobe", "-v", "error", "-print_format", "json", "-show_streams", str(path)], capture_output=True, check=True
    ).stdout
    return json.loads(out)["streams"]


def make_video(source: Path, out: Path) -> Path:
    """A small mp4: a colour source with ``source`` as its audio track."""
    ffmpeg(
        "-f",
        "lavfi",
        "-i",
        "color=c=blue:s=160x120:r=10",
        "-i",
        str(source),
        "-shortest",
        "-c:v",
        "libx264",
        "-preset",
        "ultrafast",
        "-c:a",
        "aac",
        str(out),
    )
    return out


def make_long_audio(source: Path, out: Path, repeats: int) -> Path:
    """``source`` played ``repeats`` times in a row (for jobs that take a while)."""
    ffmpeg("-stream_loop", str(repeats - 1), "-i", str(source), "-ac", "1", "-ar", "16000", str(out))
    return out


def wait_for(predicate: Callable[[], Any], timeout: float = 120, interval: float = 0.2) -> Any:
    """Poll until ``predicate`` returns something truthy; fail after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    raise AssertionError(f"condition not met within {timeout} s")


def post_clip(
    client,
    headers: dict[str, str],
    clip: str | Path = "jfk.flac",
    *,
    path: str = "/api/jobs/",
    data: bytes | None = None,
    name: str | None = None,
    **form: Any,
):
    """POST a clip (a name under tests/data, or a path) as the multipart ``file`` with form fields; the response.

    ``data`` replaces the clip's bytes and ``name`` the file name the client sends (for the bad-input tests).
    """
    source = AUDIO / clip  # an absolute path stays as it is
    payload = source.read_bytes() if data is None else data
    return client.post(path, headers=headers, data={"file": (io.BytesIO(payload), name or source.name), **form})


ERROR_KEYS = {"detail", "error_code", "timestamp", "request_id"}


def assert_error(response, status: int, code: str | None = None) -> dict:
    """The response is the standard JSON error with this status (and code), tied to its X-Request-ID."""
    assert response.status_code == status, response.get_data(as_text=True)
    body = response.get_json()
    assert set(body) >= ERROR_KEYS, body
    assert body["request_id"] == response.headers["X-Request-ID"]
    if code:
        assert body["error_code"] == code, body
    return body


GERMAN_SENTENCES = ("Das Haus ist sehr groß.", "Ich trinke jeden Morgen eine Tasse Kaffee.")
DUB_TONE_HZ = 440


def make_german_video(folder: Path) -> Path:
    """A ~7 s mp4: two German sentences (espeak-ng ``-v de``) with a pause, over a quiet 440 Hz tone."""
    parts = []
    for i, sentence in enumerate(GERMAN_SENTENCES):
        part = folder / f"de{i}.wav"
        subprocess.run(["espeak-ng", "-v", "de", "-s", "150", "-w", str(part), sentence], check=True)
        parts.append(part)
    speech = folder / "speech.wav"
    ffmpeg(
        "-i", str(parts[0]), "-f", "lavfi", "-i", "anullsrc=r=22050:cl=mono:d=1.5", "-i", str(parts[1]),
        "-f", "lavfi", "-i", "anullsrc=r=22050:cl=mono:d=2",
        "-filter_complex", "[0:a][1:a][2:a][3:a]concat=n=4:v=0:a=1[s]", "-map", "[s]", "-ar", "16000", str(speech),
    )  # fmt: skip
    mixed = folder / "german.wav"
    ffmpeg(
        "-i", str(speech), "-f", "lavfi", "-i", f"sine=frequency={DUB_TONE_HZ}:sample_rate=16000",
        "-filter_complex", "[1:a]volume=0.03[t];[0:a][t]amix=inputs=2:duration=first:normalize=0[m]",
        "-map", "[m]", str(mixed),
    )  # fmt: skip
    return make_video(mixed, folder / "german.mp4")
