"""A dub end to end: German speech over a tone → /upload with dub → an English track beside the original."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import numpy as np
import pytest

from tests.helpers import DUB_TONE_HZ, ffprobe_streams, make_german_video, wer, word_recall

pytestmark = pytest.mark.e2e

WINDOW = 1600  # 100 ms at 16 kHz


def track(media: Path, selector: str, out: Path) -> np.ndarray:
    """One audio track of ``media`` as 16 kHz mono float samples (also written to ``out`` as WAV)."""
    subprocess.run(
        ["ffmpeg", "-nostdin", "-v", "error", "-y", "-i", str(media), "-map", selector, "-ac", "1", "-ar", "16000",
         str(out)],
        check=True,
    )  # fmt: skip
    raw = subprocess.run(
        ["ffmpeg", "-nostdin", "-v", "error", "-i", str(out), "-f", "s16le", "-"], capture_output=True, check=True
    ).stdout
    return np.frombuffer(raw, dtype=np.int16).astype(np.float64) / 32768


def _magnitudes(samples: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    count = samples.size // WINDOW
    frames = samples[: count * WINDOW].reshape(count, WINDOW) * np.hanning(WINDOW)
    return np.abs(np.fft.rfft(frames, axis=1)), np.fft.rfftfreq(WINDOW, 1 / 16000)


def tone(samples: np.ndarray) -> np.ndarray:
    """Per 100 ms window: the tone's amplitude (within 30 Hz of it)."""
    spectrum, freqs = _magnitudes(samples)
    return np.sqrt((spectrum[:, np.abs(freqs - DUB_TONE_HZ) < 30] ** 2).sum(axis=1))


def spectra(samples: np.ndarray) -> np.ndarray:
    """Per 100 ms window: the speech band's magnitudes (150-4000 Hz, the tone left out)."""
    spectrum, freqs = _magnitudes(samples)
    return spectrum[:, (freqs > 150) & (freqs < 4000) & (np.abs(freqs - DUB_TONE_HZ) > 60)]


def appliance_text(live_server, path: Path, **form) -> str:
    """The appliance's text for a file (through HTTP, the queue and the engine)."""
    job = live_server.wait(live_server.submit(path, **form), timeout=300)
    assert job["status"] == "completed", job
    return job["transcript"]["text"]


def test_german_video_gains_an_english_dub_inside_the_segments_with_the_tone_kept(live_server, tmp_path):
    """ffprobe: video + original audio + ``eng`` dub; dub speech in its slots; tone audible outside speech; WER."""
    video = make_german_video(tmp_path)
    with open(video, "rb") as f:
        response = live_server.post(
            "/upload", files={"file": ("german.mp4", f)}, data={"dub": "en", "language": "de"}, allow_redirects=False
        )
    assert response.status_code == 303, response.text
    job = live_server.wait(response.headers["X-Job-ID"], timeout=300)
    assert job["status"] == "completed", job

    out = tmp_path / "dubbed.mp4"
    download = live_server.get(f"/download/{job['job_id']}")
    assert download.status_code == 200, download.text
    out.write_bytes(download.content)
    streams = ffprobe_streams(out)
    kinds = [s["codec_type"] for s in streams]
    assert kinds.count("video") == 1 and kinds.count("audio") == 2 and "subtitle" in kinds
    assert [s["tags"]["language"] for s in streams if s["codec_type"] == "audio"][1] == "eng"

    original = track(out, "0:a:0", tmp_path / "original.wav")
    dub = track(out, "0:a:1", tmp_path / "dub.wav")
    size = min(original.size, dub.size)
    tone_orig, tone_dub = tone(original[:size]), tone(dub[:size])
    # Where the dub differs from the original in the speech band: its speech, and the original lowered under it.
    spectra_dub, spectra_orig = spectra(dub[:size]), spectra(original[:size])
    difference = np.sqrt(((spectra_dub - spectra_orig) ** 2).sum(axis=1))
    spoken = difference > 0.1 * difference.max()
    assert spoken.sum() >= 10, "no dub speech found"

    segments = json.loads((live_server.data_dir / "cache" / job["job_id"] / "translation.json").read_text())["segments"]
    media_end = size / 16000
    slots = [
        (s["start"], segments[i + 1]["start"] if i + 1 < len(segments) else media_end) for i, s in enumerate(segments)
    ]
    for w in np.flatnonzero(spoken):
        t = (w + 0.5) * WINDOW / 16000
        assert any(a - 0.2 <= t <= b + 0.2 for a, b in slots), f"dub speech at {t:.1f} s is outside {slots}"

    # Outside the segments and away from the dub's speech the tone plays at its own level; under it, lowered.
    centres = (np.arange(size // WINDOW) + 0.5) * WINDOW / 16000
    in_segment = np.array([any(s["start"] - 0.3 <= t <= s["end"] + 0.3 for s in segments) for t in centres])
    quiet = ~in_segment & ~(np.convolve(spoken, np.ones(7), mode="same") > 0)
    assert quiet.sum() >= 5, f"no window outside speech: {segments}"
    ratio = np.median(tone_dub[quiet]) / np.median(tone_orig[quiet])
    assert 0.7 < ratio < 1.4, f"the tone outside speech is at {ratio:.2f} of the original"
    assert np.median(tone_dub[spoken]) > 0.04 * np.median(tone_orig[spoken]), "the tone vanished under the dub"

    # The dub says what whisper's own translation of the German says: its voice, word for word ...
    reference = appliance_text(live_server, video, task="translate", model="base", language="de")
    voice = live_server.data_dir / "cache" / job["job_id"] / "voice.wav"
    heard = appliance_text(live_server, voice, model="base", language="en")
    assert wer(reference, heard) <= 0.35, (reference, heard)
    # ... and most of its words come through the mix. Not word for word: where the translation is one long
    # segment, the original goes on 20 dB down after the dub's words end, and base may transcribe it too.
    in_mix = appliance_text(live_server, tmp_path / "dub.wav", model="base", language="en")
    assert word_recall(reference, in_mix) >= 0.6, (reference, in_mix)
