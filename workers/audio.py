"""Probe media in-process with PyAV and decode it with ffmpeg: anything ffmpeg reads becomes 16 kHz mono float32."""

from __future__ import annotations

import subprocess
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    import av

SAMPLE_RATE = 16000


class MediaError(Exception):
    """The media cannot be used; the message says why in words a user understands."""

    def __init__(self, message: str, error_code: str = "INVALID_MEDIA"):
        super().__init__(message)
        self.error_code = error_code


@dataclass
class MediaInfo:
    """What FFmpeg's demuxer says about a file."""

    duration: float
    format_name: str
    codec: str | None
    sample_rate: int | None
    channels: int | None
    has_video: bool
    audio_streams: list[dict[str, Any]] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        """A JSON-friendly copy."""
        return asdict(self)


def _run(cmd: list[str], timeout: float) -> subprocess.CompletedProcess:
    try:
        return subprocess.run(cmd, capture_output=True, timeout=timeout, check=False)
    except subprocess.TimeoutExpired as exc:
        raise MediaError(f"ffmpeg took longer than {timeout:.0f} s and was stopped", "MEDIA_TIMEOUT") from exc
    except FileNotFoundError as exc:
        raise MediaError(f"{cmd[0]} is not installed", "FFMPEG_MISSING") from exc


def probe(path: Path | str, timeout: float = 60) -> MediaInfo:
    """Read duration, streams and audio properties; raise MediaError if there is no usable audio.

    FFmpeg's demuxers run in-process through PyAV: an ffprobe process costs ~0.1 s to start,
    which was most of the time an upload request took.
    """
    import av  # here, not at the top: workers seldom probe, and PyAV's libraries cost them ~17 MB resident

    if Path(path).stat().st_size == 0:
        raise MediaError("The file is empty", "EMPTY_FILE")
    try:
        # The timeout reaches FFmpeg's interrupt callback, so a demuxer that stalls is stopped.
        with av.open(str(path), timeout=timeout) as container:
            return _media_info(container)
    except av.ExitError as exc:
        raise MediaError(f"Reading the media took longer than {timeout:.0f} s and was stopped",
                         "MEDIA_TIMEOUT") from exc
    except (av.FFmpegError, UnicodeDecodeError, ValueError) as exc:
        raise MediaError("The file is not audio or video that ffmpeg can read", "UNSUPPORTED_MEDIA") from exc


def _media_info(container: av.container.InputContainer) -> MediaInfo:
    import av
    streams = list(container.streams)
    audio = [s for s in streams if s.type == "audio"]
    if not audio:
        raise MediaError("The file has no audio track", "NO_AUDIO")
    video = any(s.type == "video" and not s.disposition & av.stream.Disposition.attached_pic for s in streams)
    first = audio[0]
    duration = container.duration / av.time_base if container.duration else 0.0
    if duration <= 0 and first.duration and first.time_base:
        duration = float(first.duration * first.time_base)
    if duration <= 0:
        raise MediaError("The file's duration cannot be read; it may be truncated", "UNSUPPORTED_MEDIA")
    return MediaInfo(
        duration=duration,
        format_name=container.format.name,
        codec=first.codec_context.name,
        sample_rate=first.codec_context.sample_rate or None,
        channels=first.codec_context.channels or None,
        has_video=video,
        audio_streams=[
            {"index": s.index, "codec": s.codec_context.name, "channels": s.codec_context.channels,
             "language": s.metadata.get("language")}
            for s in audio
        ],
    )


def check_duration(info: MediaInfo, max_seconds: float) -> None:
    """Refuse media longer than the configured maximum."""
    if info.duration > max_seconds:
        raise MediaError(
            f"The media is {info.duration / 3600:.1f} h long; the limit is {max_seconds / 3600:.1f} h "
            "(WT_MAX_MEDIA_SECONDS)",
            "MEDIA_TOO_LONG",
        )


def _check_decoded(stderr: str, decoded: float, expected_seconds: float | None) -> None:
    if decoded <= 0:
        raise MediaError("The media decoded to no audio; it may be truncated or damaged")
    if stderr and expected_seconds and decoded < 0.9 * expected_seconds - 0.5:
        raise MediaError(f"The media is truncated or damaged: only {decoded:.1f} s of "
                         f"{expected_seconds:.1f} s could be decoded")


def _decode_command(path: Path | str, output: str) -> list[str]:
    return ["ffmpeg", "-nostdin", "-v", "error", "-y", "-i", str(path), "-map", "0:a:0", "-vn",
            "-ac", "1", "-ar", str(SAMPLE_RATE), *PCM_FORMAT, output]


PCM_FORMAT = ("-f", "s16le", "-acodec", "pcm_s16le")  # what the decode stage caches: 16 kHz mono 16-bit


def decode(path: Path | str, timeout: float = 900, expected_seconds: float | None = None) -> np.ndarray:
    """Decode the first audio track to 16 kHz mono float32 in [-1, 1], in memory.

    When ffmpeg reports errors and yields much less audio than ``expected_seconds`` (the
    probed duration), the file is truncated or damaged and a MediaError says so.
    """
    result = _run(_decode_command(path, "-"), timeout)
    stderr = result.stderr.decode("utf-8", "replace").strip()
    if result.returncode != 0:
        raise MediaError(f"The media could not be decoded: {_last_line(stderr)}")
    samples = np.frombuffer(result.stdout, dtype="<i2").astype(np.float32) / 32768.0
    _check_decoded(stderr, samples.size / SAMPLE_RATE, expected_seconds)
    return samples


def decode_to_file(path: Path | str, out: Path, timeout: float = 900, expected_seconds: float | None = None) -> float:
    """Decode to a raw 16 kHz mono s16le file (streamed by ffmpeg, never in memory); returns seconds."""
    tmp = out.with_name(out.name + ".part")
    result = _run(_decode_command(path, str(tmp)), timeout)
    stderr = result.stderr.decode("utf-8", "replace").strip()
    try:
        if result.returncode != 0:
            raise MediaError(f"The media could not be decoded: {_last_line(stderr)}")
        seconds = tmp.stat().st_size / 2 / SAMPLE_RATE
        _check_decoded(stderr, seconds, expected_seconds)
        tmp.replace(out)
    finally:
        tmp.unlink(missing_ok=True)
    return seconds


def load_pcm(path: Path) -> np.ndarray:
    """Read a file written by :func:`decode_to_file` as float32 in [-1, 1]."""
    return np.fromfile(path, dtype="<i2").astype(np.float32) / 32768.0


def _last_line(stderr: str) -> str:
    return stderr.splitlines()[-1] if stderr else "unknown error"
