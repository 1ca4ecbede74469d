"""Probe media in-process with PyAV and decode it with ffmpeg: anything ffmpeg reads becomes 16 kHz mono PCM.

Jobs decode to a 16-bit file within the length limit and read it back as a memory map, piece by piece.
"""

from __future__ import annotations

import subprocess
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from workers.atomicfile import AtomicFile
from workers.engine import Aborted

if TYPE_CHECKING:
    import av

SAMPLE_RATE = 16000
LIMIT_MARGIN_SECONDS = 1.0  # ffmpeg decodes this much past WT_MAX_MEDIA_SECONDS: audio that reaches it is too long
POLL_SECONDS = 0.1  # how often a running decode checks for a cancel, its timeout and its progress
STDERR_TAIL = 8192  # bytes of ffmpeg's error output kept for the message (a damaged file can log per frame)
# Media up to this size is decoded in the worker by PyAV (the same FFmpeg libraries): an ffmpeg process takes
# ~70 ms to start, most of a short job's overhead (jfk: 4 ms in-process against 77 ms). Larger media goes to
# an ffmpeg process, which a timeout can kill whatever its decoder does.
IN_PROCESS_BYTES = 16 * 2**20


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


def _too_slow(what: str, timeout: float) -> MediaError:
    """The error for media work stopped by its timeout."""
    return MediaError(f"{what} took longer than {timeout:.0f} s and was stopped", "MEDIA_TIMEOUT")


def _check_running(should_abort: Callable[[], bool] | None, deadline: float, timeout: float, what: str) -> None:
    """A running decode's regular check: Aborted on a cancel, MEDIA_TIMEOUT once past its deadline."""
    if should_abort is not None and should_abort():
        raise Aborted()
    if time.monotonic() >= deadline:
        raise _too_slow(what, timeout)


def _run(cmd: list[str], timeout: float) -> subprocess.CompletedProcess:
    try:
        return subprocess.run(cmd, capture_output=True, timeout=timeout, check=False)
    except subprocess.TimeoutExpired as exc:
        raise _too_slow("ffmpeg", timeout) from exc
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
        raise _too_slow("Reading the media", timeout) from exc
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
            {
                "index": s.index,
                "codec": s.codec_context.name,
                "channels": s.codec_context.channels,
                "language": s.metadata.get("language"),
            }
            for s in audio
        ],
    )


def duration_text(seconds: float) -> str:
    """A length in the unit that reads best: ``4.0 h``, ``1.5 min``, ``12 s``."""
    if seconds >= 3600:
        return f"{seconds / 3600:.1f} h"
    return f"{seconds / 60:.1f} min" if seconds >= 60 else f"{seconds:.0f} s"


def check_duration(info: MediaInfo, max_seconds: float) -> None:
    """Refuse media longer than the configured maximum."""
    if info.duration > max_seconds:
        raise MediaError(
            f"The media is {duration_text(info.duration)} long; the limit is {duration_text(max_seconds)} "
            "(WT_MAX_MEDIA_SECONDS)",
            "MEDIA_TOO_LONG",
        )


def _check_decoded(stderr: str, decoded: float, expected_seconds: float | None) -> None:
    if decoded <= 0:
        raise MediaError("The media decoded to no audio; it may be truncated or damaged")
    if stderr and expected_seconds and decoded < 0.9 * expected_seconds - 0.5:
        raise MediaError(
            f"The media is truncated or damaged: only {decoded:.1f} s of {expected_seconds:.1f} s could be decoded"
        )


def decode_command(
    path: Path | str, output: str, max_seconds: float | None = None, output_format: tuple[str, ...] | None = None
) -> list[str]:
    """ffmpeg arguments: the first audio track as 16 kHz mono PCM (raw or ``output_format``), up to ``max_seconds``."""
    # -t is an output option here: it bounds the audio written, whatever the container claims.
    limit = ["-t", f"{max_seconds:.3f}"] if max_seconds else []
    return [
        "ffmpeg",
        "-nostdin",
        "-v",
        "error",
        "-y",
        "-i",
        str(path),
        "-map",
        "0:a:0",
        "-vn",
        "-ac",
        "1",
        "-ar",
        str(SAMPLE_RATE),
        *limit,
        *(output_format or PCM_FORMAT),
        output,
    ]


PCM_FORMAT = ("-f", "s16le", "-acodec", "pcm_s16le")  # what the decode stage caches: 16 kHz mono 16-bit
WAV_FORMAT = ("-c:a", "pcm_s16le", "-f", "wav")  # the same samples with a WAV header


def decode(path: Path | str, timeout: float = 900, expected_seconds: float | None = None) -> np.ndarray:
    """Decode the first audio track to 16 kHz mono float32 in [-1, 1], in memory (clips and tools, not jobs).

    When ffmpeg reports errors and yields much less audio than ``expected_seconds`` (the
    probed duration), the file is truncated or damaged and a MediaError says so.
    """
    result = _run(decode_command(path, "-"), timeout)
    stderr = result.stderr.decode("utf-8", "replace").strip()
    if result.returncode != 0:
        raise MediaError(f"The media could not be decoded: {_last_line(stderr)}")
    samples = np.frombuffer(result.stdout, dtype="<i2").astype(np.float32) / 32768.0
    _check_decoded(stderr, samples.size / SAMPLE_RATE, expected_seconds)
    return samples


def _run_polled(
    cmd: list[str], timeout: float, should_abort: Callable[[], bool] | None, on_tick: Callable[[], None] | None
) -> tuple[int, str]:
    """Run ffmpeg, checking every ``POLL_SECONDS`` for a cancel and the timeout; kill it on either.

    Returns the exit code and the tail of its error output. Raises Aborted on cancel and MediaError
    (MEDIA_TIMEOUT) on timeout, in both cases only once ffmpeg is gone.
    """
    with tempfile.TemporaryFile() as errors:  # a file, not a pipe: a chatty ffmpeg can never block on it
        try:
            proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=errors)
        except FileNotFoundError as exc:
            raise MediaError(f"{cmd[0]} is not installed", "FFMPEG_MISSING") from exc
        deadline = time.monotonic() + timeout
        try:
            while True:
                try:
                    proc.wait(timeout=max(0.0, min(POLL_SECONDS, deadline - time.monotonic())))
                    break
                except subprocess.TimeoutExpired:
                    pass
                _check_running(should_abort, deadline, timeout, "ffmpeg")
                if on_tick is not None:
                    on_tick()
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
        size = errors.seek(0, 2)
        errors.seek(max(0, size - STDERR_TAIL))
        return proc.returncode, errors.read().decode("utf-8", "replace").strip()


def decode_to_file(
    path: Path | str,
    out: Path,
    timeout: float = 900,
    expected_seconds: float | None = None,
    *,
    max_seconds: float | None = None,
    should_abort: Callable[[], bool] | None = None,
    on_progress: Callable[[float], None] | None = None,
) -> float:
    """Decode to a raw 16 kHz mono s16le file (streamed by ffmpeg, never in memory); returns seconds.

    At most ``max_seconds`` plus a margin is decoded, whatever the container claims: audio that reaches
    the margin is too long (MEDIA_TOO_LONG). ``should_abort`` is polled while ffmpeg runs; a cancel stops
    it at once (Aborted). ``on_progress`` gets the seconds decoded so far. The partial output
    (``<out>.part``) is removed on every failure: an error, the timeout, a cancel, too long.
    """
    tmp = out.with_name(out.name + ".part")
    cap = max_seconds + LIMIT_MARGIN_SECONDS if max_seconds else None

    def tick() -> None:
        if on_progress is None:
            return
        try:
            size = tmp.stat().st_size
        except FileNotFoundError:  # removed meanwhile (the job's cache was purged)
            return
        if size:  # nothing decoded yet (ffmpeg is still starting): nothing to report
            on_progress(size / 2 / SAMPLE_RATE)

    with AtomicFile(out, temp=tmp):
        if Path(path).stat().st_size <= IN_PROCESS_BYTES:
            stderr = _decode_in_process(path, tmp, cap, timeout, should_abort, tick)
        else:
            returncode, stderr = _run_polled(decode_command(path, str(tmp), cap), timeout, should_abort, tick)
            if returncode != 0:
                raise MediaError(f"The media could not be decoded: {_last_line(stderr)}")
        seconds = tmp.stat().st_size / 2 / SAMPLE_RATE
        # Half the margin: a file at the limit whose decoder adds a few ms of padding still passes.
        if max_seconds and seconds > max_seconds + LIMIT_MARGIN_SECONDS / 2:
            claim = f", although the file claims {duration_text(expected_seconds)}" if expected_seconds else ""
            raise MediaError(
                f"MEDIA_TOO_LONG: the audio goes on past the limit of {duration_text(max_seconds)} "
                f"(WT_MAX_MEDIA_SECONDS){claim}; decoding stopped there",
                "MEDIA_TOO_LONG",
            )
        _check_decoded(stderr, seconds, expected_seconds)
    return seconds


def _decode_in_process(
    path: Path | str,
    out: Path,
    max_seconds: float | None,
    timeout: float,
    should_abort: Callable[[], bool] | None,
    on_tick: Callable[[], None],
) -> str:
    """What ``decode_command`` asks of ffmpeg, done by PyAV in this process; returns the decoder's complaints.

    As ffmpeg's command line does, a damaged packet is skipped and noted, and decoding goes on. The cancel,
    the timeout and the length limit are checked as the audio comes, so a small file that unpacks into
    hours of audio stops at the limit.
    """
    import av  # here, not at the top: as in probe()

    deadline = time.monotonic() + timeout
    limit = int(max_seconds * SAMPLE_RATE) if max_seconds else None
    written = 0
    complaints: list[str] = []
    try:
        with av.open(str(path), timeout=timeout) as container, open(out, "wb") as sink:
            if not container.streams.audio:
                raise MediaError("The media could not be decoded: the file has no audio track")
            stream = container.streams.audio[0]
            resampler = av.AudioResampler(format="s16", layout="mono", rate=SAMPLE_RATE)

            def write(frame: av.AudioFrame | None) -> bool:
                """Resample and store; False once the length limit is reached."""
                nonlocal written
                for chunk in resampler.resample(frame):
                    samples = chunk.to_ndarray().reshape(-1).astype("<i2", copy=False)
                    if limit is not None:
                        samples = samples[: limit - written]
                    sink.write(samples.tobytes())
                    written += samples.size
                return limit is None or written < limit

            polled = time.monotonic()
            for packet in container.demux(stream):
                try:
                    frames = packet.decode()
                except av.FFmpegError as exc:  # a damaged packet: skipped, as ffmpeg does
                    complaints.append(_reason(exc))
                    continue
                if not all(write(frame) for frame in frames):
                    break
                if time.monotonic() - polled >= POLL_SECONDS:
                    polled = time.monotonic()
                    _check_running(should_abort, deadline, timeout, "Decoding")
                    sink.flush()
                    on_tick()
            else:
                write(None)  # what the resampler still holds
    except av.ExitError as exc:
        raise _too_slow("Reading the media", timeout) from exc
    except (av.FFmpegError, UnicodeDecodeError, ValueError) as exc:
        if not written:
            raise MediaError(f"The media could not be decoded: {_reason(exc)}") from exc
        complaints.append(_reason(exc))  # the rest of the file is unreadable: keep what came before, as ffmpeg does
    return "\n".join(complaints)[-STDERR_TAIL:]


def _reason(exc: Exception) -> str:
    """FFmpeg's words for an error, without the server's file path that PyAV appends."""
    return getattr(exc, "strerror", None) or str(exc)


class PcmFile:
    """16 kHz mono s16le audio in a file, read a slice at a time as float32: hours of audio never sit in memory.

    It stands in for the 1-D float32 array the engines take (``len``, ``size``, ``dtype``, contiguous
    slices); ``np.asarray`` reads it whole, for code that needs all of it at once. Reads, not a memory
    map: mapped pages would count in the worker's RSS (460 MB for 4 h), and a cache file removed under a
    running job would kill the worker with SIGBUS instead of failing the job.
    """

    dtype = np.dtype(np.float32)
    ndim = 1

    def __init__(self, path: Path | str):
        self.path = Path(path)
        self.size = self.path.stat().st_size // 2
        self.shape = (self.size,)

    def __len__(self) -> int:
        return self.size

    def __getitem__(self, key: slice) -> np.ndarray:
        if not isinstance(key, slice):
            raise TypeError("PcmFile is read by slices")
        start, stop, step = key.indices(self.size)
        if step != 1:
            raise IndexError("PcmFile slices must be contiguous")
        with open(self.path, "rb") as f:
            f.seek(2 * start)
            return to_float32(np.fromfile(f, dtype="<i2", count=max(0, stop - start)))

    def __array__(self, dtype: Any = None, copy: bool | None = None) -> np.ndarray:
        samples = self[:]
        return samples if dtype is None else samples.astype(dtype, copy=False)


def load_pcm(path: Path) -> PcmFile:
    """The samples of a file written by :func:`decode_to_file`, read lazily (see :class:`PcmFile`).

    A 4 h file is 920 MB as float32; the engines read the pieces they work on, so memory stays
    bounded by a piece, not the file.
    """
    return PcmFile(path)


def to_float32(samples: np.ndarray) -> np.ndarray:
    """Samples as contiguous float32 in [-1, 1]: 16-bit PCM is scaled, float audio passes (no copy if it can)."""
    if samples.dtype.kind == "i" and samples.dtype.itemsize == 2:
        out = np.asarray(samples, dtype=np.float32)  # a plain array, even from a memory map
        out *= 1.0 / 32768.0
        return out
    return np.ascontiguousarray(samples, dtype=np.float32)


def _last_line(stderr: str) -> str:
    return stderr.splitlines()[-1] if stderr else "unknown error"
