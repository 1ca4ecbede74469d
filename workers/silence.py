"""Cutting long audio at its quietest moments into pieces the engine encodes one at a time.

whisper.cpp encodes a fixed 30 s window unless told otherwise, so a piece shorter than that,
encoded with an ``audio_ctx`` sized to it, costs less; and a piece that starts at a pause
never splits a word. Pieces of about 20 s were measured fastest here (OSR ×17, tiny.en
q8_0: 18.7 s in 20 s pieces, 20.6 s in 12 s pieces, 30.4 s as one call), and decoding
each piece afresh also ends the repetition loops a whole-file decode falls into.
"""

from __future__ import annotations

import math

import numpy as np

from workers.audio import to_float32

SAMPLE_RATE = 16_000
FRAME = 320  # 20 ms: the resolution of a cut
SMOOTH_FRAMES = 10  # 200 ms: a cut lands in a pause, not in the gap between two syllables
ENERGY_BLOCK_FRAMES = 1500  # 30 s: the loudness of long audio is measured a block at a time
WINDOW_SECONDS = 30.0  # whisper's window: no piece is longer
TARGET_SECONDS = 20.0
ENCODER_POSITIONS_PER_SECOND = 50  # 1500 positions for 30 s
AUDIO_CTX_STEP = 64
# 256 positions (5.1 s) at least: below that tiny.en loses short commands. On 60 spoken commands of 0.9-3.6 s
# (2026-11-29) the mean word error rate was 0.48 with a floor of 128, 0.18 with 256, and 0.175 with the full
# 30 s window, at 0.20, 0.18 and 1.14 CPU-seconds a command: 128 also costs more, in runaway decoding.
AUDIO_CTX_MIN = 256


def split_at_silences(
    samples: np.ndarray, *, target: float = TARGET_SECONDS, longest: float = WINDOW_SECONDS
) -> list[tuple[int, int]]:
    """``(start, end)`` sample offsets that cover ``samples`` in order, each at most ``longest`` seconds.

    Each cut is the quietest 200 ms between half and one and a half times ``target`` after the
    previous one, nudged toward ``target``; audio no longer than ``longest`` stays whole.
    """
    total = len(samples)
    if total <= longest * SAMPLE_RATE:
        return [(0, total)] if total else []
    energy = _smoothed_energy_db(samples)
    per_second = SAMPLE_RATE / FRAME
    pieces: list[tuple[int, int]] = []
    start = 0  # in frames
    frames = len(energy)
    while (frames - start) / per_second > min(longest, target * 1.3):
        low = start + int(target * 0.5 * per_second)
        high = min(frames, start + int(min(longest, target * 1.5) * per_second))
        window = energy[low:high]
        # 1 dB of quiet is worth 2.5 s of distance from the target: pauses win, but not far-off ones.
        distance = np.abs(np.arange(low, high) - (start + target * per_second)) / per_second
        cut = low + int(np.argmin(window + 0.4 * distance))
        pieces.append((start * FRAME, cut * FRAME))
        start = cut
    pieces.append((start * FRAME, total))
    return pieces


def _smoothed_energy_db(samples: np.ndarray) -> np.ndarray:
    """Loudness per 20 ms frame in dB, averaged over 200 ms.

    Computed a block at a time: ``samples`` may be a PcmFile (or 16-bit array) of hours of audio, which
    is never converted to float32 whole.
    """
    frames = len(samples) // FRAME
    power = np.empty(frames, dtype=np.float32)
    for first in range(0, frames, ENERGY_BLOCK_FRAMES):
        last = min(frames, first + ENERGY_BLOCK_FRAMES)
        blocks = to_float32(samples[first * FRAME : last * FRAME]).reshape(last - first, FRAME)
        power[first:last] = np.mean(blocks * blocks, axis=1)
    power += 1e-10
    smooth = np.convolve(power, np.ones(SMOOTH_FRAMES) / SMOOTH_FRAMES, mode="same")
    return 10.0 * np.log10(smooth)


def audio_ctx_for(samples: int) -> int:
    """The encoder context that covers ``samples`` with a margin; 0 (the full window) for 30 s or more."""
    seconds = samples / SAMPLE_RATE
    if seconds >= WINDOW_SECONDS - 0.5:
        return 0
    positions = seconds * ENCODER_POSITIONS_PER_SECOND + AUDIO_CTX_STEP / 2
    return max(AUDIO_CTX_MIN, min(1500, math.ceil(positions / AUDIO_CTX_STEP) * AUDIO_CTX_STEP))


class Timeline:
    """Audio with its long pauses taken out: where each of its moments was in the original audio."""

    def __init__(self, spans: list[tuple[int, int]]) -> None:
        self.spans = spans  # (start, end) sample offsets of the kept audio, in order
        self.starts = np.cumsum([0] + [end - start for start, end in spans[:-1]])  # where each span begins in it

    def to_original(self, seconds: float) -> float:
        """The original time of ``seconds`` into the shortened audio."""
        sample = seconds * SAMPLE_RATE
        index = max(0, int(np.searchsorted(self.starts, sample, side="right")) - 1)
        start, end = self.spans[index]
        return min(start + sample - float(self.starts[index]), end) / SAMPLE_RATE
