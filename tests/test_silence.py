"""Cutting long audio at pauses, and sizing whisper.cpp's encoder context to a piece."""

from __future__ import annotations

import numpy as np
import pytest

from tests.helpers import AUDIO
from workers import audio
from workers.silence import SAMPLE_RATE, Timeline, audio_ctx_for, split_at_silences


def speech_with_pauses(bursts: list[float], pause: float = 0.6) -> tuple[np.ndarray, list[tuple[float, float]]]:
    """Noise bursts of the given lengths separated by quiet pauses; the audio and the pauses in seconds."""
    rng = np.random.default_rng(7)
    parts, pauses, now = [], [], 0.0
    for length in bursts:
        parts.append(rng.normal(0, 0.2, int(length * SAMPLE_RATE)).astype(np.float32))
        now += length
        parts.append(rng.normal(0, 0.001, int(pause * SAMPLE_RATE)).astype(np.float32))
        pauses.append((now, now + pause))
        now += pause
    return np.concatenate(parts), pauses


def test_audio_of_one_window_stays_whole():
    assert split_at_silences(np.zeros(29 * SAMPLE_RATE, dtype=np.float32)) == [(0, 29 * SAMPLE_RATE)]
    assert split_at_silences(np.zeros(0, dtype=np.float32)) == []


def test_long_audio_is_cut_inside_pauses_into_pieces_of_at_most_30_seconds():
    samples, pauses = speech_with_pauses([7.3, 5.1, 8.8, 6.0, 9.4, 4.2, 7.7, 8.1, 6.6, 5.5, 9.0])
    pieces = split_at_silences(samples)
    assert pieces[0][0] == 0 and pieces[-1][1] == len(samples)
    assert all(a[1] == b[0] for a, b in zip(pieces, pieces[1:], strict=False))  # contiguous, nothing lost
    assert all((end - start) / SAMPLE_RATE <= 30.0 for start, end in pieces)
    for _, cut in pieces[:-1]:
        seconds = cut / SAMPLE_RATE
        assert any(lo <= seconds <= hi for lo, hi in pauses), f"cut at {seconds:.2f} s is not in a pause"


def test_audio_without_pauses_is_still_cut_within_the_window():
    samples = np.random.default_rng(1).normal(0, 0.2, 95 * SAMPLE_RATE).astype(np.float32)
    pieces = split_at_silences(samples)
    assert len(pieces) >= 4 and all((end - start) / SAMPLE_RATE <= 30.0 for start, end in pieces)


def test_the_osr_clip_is_cut_between_two_of_its_sentences():
    samples = audio.decode(AUDIO / "OSR_us_000_0034_8k.flac")
    (first, second) = split_at_silences(samples)
    cut = samples[first[1] - 1600 : first[1] + 1600]  # 100 ms either side of the cut
    assert float(np.sqrt(np.mean(cut**2))) < 0.1 * float(np.sqrt(np.mean(samples**2)))


@pytest.mark.parametrize(
    ("seconds", "ctx"), [(1.0, 256), (4.0, 256), (11.0, 640), (20.0, 1088), (29.0, 1500), (29.6, 0), (35.0, 0)]
)
def test_audio_ctx_covers_the_piece_with_a_margin(seconds, ctx):
    assert audio_ctx_for(int(seconds * SAMPLE_RATE)) == ctx


def test_a_timeline_maps_shortened_audio_back_to_the_original():
    timeline = Timeline([(0, SAMPLE_RATE), (3 * SAMPLE_RATE, 5 * SAMPLE_RATE)])  # a 2 s pause taken out
    assert timeline.to_original(0.5) == pytest.approx(0.5)
    assert timeline.to_original(1.5) == pytest.approx(3.5)
    assert timeline.to_original(3.0) == pytest.approx(5.0)
    assert timeline.to_original(9.0) == pytest.approx(5.0), "past the end stays at the end"
