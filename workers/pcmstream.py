"""Audio that arrives in chunks of any PCM format, kept as 16 kHz mono 16-bit up to a bound.

A Wyoming client announces the rate, sample width (bytes) and channel count of what it sends: Home
Assistant sends 16 kHz mono 16-bit, which passes through untouched; satellites and other clients may
send 22.05, 44.1 or 48 kHz, stereo, 8 to 32 bit. Each chunk is converted on arrival, so only the
converted audio is kept, and the stream refuses audio past ``max_seconds`` instead of growing.
Resampling goes through libswresample (PyAV, already a dependency): it low-pass filters before it
decimates, where dropping samples would fold hiss above 8 kHz down into the speech band.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

SAMPLE_RATE = 16_000
WIDTHS = (1, 2, 3, 4)  # bytes per sample: unsigned 8-bit, then signed 16, 24 and 32-bit little-endian
MIN_RATE, MAX_RATE = 4_000, 192_000
MAX_CHANNELS = 8


class FormatError(ValueError):
    """The announced format is not PCM this stream can take."""


class TooLong(Exception):
    """More audio than the stream's bound."""


@dataclass(frozen=True)
class PcmFormat:
    """Rate in Hz, sample width in bytes, channel count: what a Wyoming ``audio-start`` announces."""

    rate: int
    width: int
    channels: int

    @classmethod
    def parse(cls, data: dict[str, Any]) -> PcmFormat:
        """The format named by an event's data; missing or malformed fields are a :class:`FormatError`."""
        try:
            values = [data[key] for key in ("rate", "width", "channels")]
        except (KeyError, TypeError) as exc:
            raise FormatError("the audio format needs rate, width and channels") from exc
        if not all(isinstance(v, int) and not isinstance(v, bool) for v in values):
            raise FormatError("rate, width and channels must be whole numbers")
        fmt = cls(*values)
        fmt.check()
        return fmt

    def check(self) -> None:
        """Refuse formats this stream cannot convert, naming what is accepted."""
        if self.width not in WIDTHS:
            raise FormatError(f"sample width {self.width} is not supported: 1, 2, 3 or 4 bytes")
        if not MIN_RATE <= self.rate <= MAX_RATE:
            raise FormatError(f"rate {self.rate} Hz is not supported: {MIN_RATE} to {MAX_RATE} Hz")
        if not 1 <= self.channels <= MAX_CHANNELS:
            raise FormatError(f"{self.channels} channels are not supported: 1 to {MAX_CHANNELS}")

    @property
    def frame_bytes(self) -> int:
        """Bytes of one sample on every channel."""
        return self.width * self.channels


def to_mono_float(data: bytes, fmt: PcmFormat) -> np.ndarray:
    """Whole frames of PCM as float32 mono in [-1, 1] (channels averaged)."""
    if fmt.width == 1:
        samples = (np.frombuffer(data, dtype=np.uint8).astype(np.float32) - 128.0) / 128.0
    elif fmt.width == 2:
        samples = np.frombuffer(data, dtype="<i2").astype(np.float32) / 32768.0
    elif fmt.width == 3:
        b = np.frombuffer(data, dtype=np.uint8).reshape(-1, 3).astype(np.int32)
        value = b[:, 0] | (b[:, 1] << 8) | (b[:, 2] << 16)
        samples = (np.where(value & 0x800000, value - 0x1000000, value)).astype(np.float32) / 8388608.0
    else:
        samples = (np.frombuffer(data, dtype="<i4").astype(np.float64) / 2147483648.0).astype(np.float32)
    if fmt.channels > 1:
        samples = samples.reshape(-1, fmt.channels).mean(axis=1, dtype=np.float32)
    return samples


class PcmStream:
    """Chunks in ``fmt`` collected as 16 kHz mono int16; at most ``max_seconds`` of input."""

    def __init__(self, fmt: PcmFormat, max_seconds: float):
        fmt.check()
        self.format = fmt
        self.max_frames = int(max_seconds * fmt.rate)
        self._frames = 0  # input frames taken
        self._pending = b""  # a partial frame, completed by the next chunk
        self._parts: list[np.ndarray] = []
        self._passthrough = fmt == PcmFormat(SAMPLE_RATE, 2, 1)
        self._resampler: Any = None
        if fmt.rate != SAMPLE_RATE:
            import av  # late: only streams that need resampling load it

            self._resampler = av.AudioResampler(format="s16", layout="mono", rate=SAMPLE_RATE)

    @property
    def seconds(self) -> float:
        """Seconds of audio received so far."""
        return self._frames / self.format.rate

    def add(self, data: bytes) -> None:
        """Take one chunk; :class:`TooLong` once the stream would pass its bound (the chunk is not kept)."""
        data = self._pending + data
        usable = len(data) - len(data) % self.format.frame_bytes
        frames = usable // self.format.frame_bytes
        if self._frames + frames > self.max_frames:
            raise TooLong(f"more than {self.max_frames / self.format.rate:.0f} s of audio")
        self._pending = data[usable:]
        if not frames:
            return
        self._frames += frames
        if self._passthrough:
            self._parts.append(np.frombuffer(data[:usable], dtype="<i2").copy())
            return
        mono = to_mono_float(data[:usable], self.format)
        if self._resampler is None:
            self._parts.append(_to_int16(mono))
            return
        import av

        frame = av.AudioFrame.from_ndarray(mono.reshape(1, -1), format="flt", layout="mono")
        frame.sample_rate = self.format.rate
        self._collect(self._resampler.resample(frame))

    def _collect(self, frames: list[Any]) -> None:
        self._parts.extend(f.to_ndarray().reshape(-1).astype(np.int16, copy=False) for f in frames)

    def finish(self) -> np.ndarray:
        """Everything received, as 16 kHz mono int16 (the resampler's tail included)."""
        if self._resampler is not None:
            self._collect(self._resampler.resample(None))
            self._resampler = None
        return np.concatenate(self._parts) if self._parts else np.zeros(0, dtype=np.int16)


def _to_int16(samples: np.ndarray) -> np.ndarray:
    return np.clip(np.round(samples * 32768.0), -32768, 32767).astype(np.int16)
