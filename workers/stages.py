"""Job stages. Each caches its output under ``cache/<job id>/``, so a retry resumes after the last finished one.

A job's kind picks its plan (list of stage names); the runner in ``workers/pipeline.py`` walks
it, skipping stages whose record says done and whose output file still exists.
"""

from __future__ import annotations

import json
import os
import subprocess
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from app.models import Job
from app.services import exports, languages, transitions
from app.services.breaker import engine_breaker
from app.services.storage import Layout
from workers import audio, dsp, dubbing, engine, modelstore, tuning
from workers.atomicfile import PUBLIC, AtomicFile, atomic_write

AUDIO_CACHE = "audio.s16"  # 16 kHz mono s16le, written by the decode stage
TRANSCRIPT_CACHE = "transcript.json"
WINDOW_SECONDS = 30.0  # whisper.cpp decodes up to 30 s of audio per window and reports once per window

# What a stage's live progress gives: (percent of the stage, segments so far, total segments or None).
Snapshot = tuple[float, int, int | None]


def _no_follow(source: Callable[[], Snapshot]) -> None:
    """A context that polls nothing (tests, tools)."""


@dataclass
class StageContext:
    """What a stage may use: the job, settings, its cache folder and progress/log/abort hooks."""

    job: Job
    cfg: Mapping[str, Any]
    log: Callable[[str, str], None]
    report: Callable[..., None]  # (percent of this stage, segments so far[, total segments])
    should_abort: Callable[[], bool]
    follow: Callable[[Callable[[], Snapshot]], None] = _no_follow  # the runner polls this between reports
    clock: Callable[[], float] = time.monotonic

    @property
    def cache(self) -> Path:
        """The job's cache folder (created on demand)."""
        folder = Layout(self.cfg["DATA_DIR"]).job_cache(self.job.id)
        folder.mkdir(parents=True, exist_ok=True)
        return folder

    def source(self) -> Path:
        """The job's input: a media-library file or the stored upload."""
        path = self.job.source_file(self.cfg["DATA_DIR"])
        if path is None:
            raise audio.MediaError("the job has no input file")
        return path

    def media(self) -> Path:
        """The newest audio to work on: the cleaned audio when a cleanup stage made one, else the input."""
        cleaned = self.cache / "cleaned.wav"
        return cleaned if cleaned.exists() else self.source()


@dataclass(frozen=True)
class Stage:
    name: str
    label: str  # what Job.stage shows while it runs
    weight: float  # share of the job's overall progress
    run: Callable[[StageContext], Path | None]


# ------------------------------------------------------------------ transcription


class AudioProgress:
    """How far the transcription is, from the audio time whisper.cpp has done, moving smoothly in between.

    whisper.cpp reports its percent once per 30 s window, and a window's segments all arrive as it ends.
    Between those reports the position moves on at the speed measured so far (before the first window
    ends: ``speed``, the model's speed on earlier jobs, when known), never further than the window can
    reach. The percent never goes back and stays below 100 until the engine is done.
    """

    def __init__(self, duration: float, *, speed: float | None = None, clock: Callable[[], float] = time.monotonic):
        self.duration, self.speed, self.clock = max(duration, 0.001), speed, clock
        self.started = self.done_at = clock()
        self.done = 0.0  # seconds of audio known to be transcribed
        self.segments, self.last_end = 0, 0.0
        self._shown = 0.0
        self._finished = False
        self._lock = threading.Lock()  # the engine's callbacks and the runner's polls come from two threads

    def engine_percent(self, value: float) -> None:
        """whisper.cpp's own percent: everything before that point is done."""
        with self._lock:
            self._advance(self.duration * value / 100.0)

    def segment(self, end: float) -> None:
        """A new segment that ends ``end`` seconds into the audio."""
        with self._lock:
            self.segments += 1
            self.last_end = max(self.last_end, end)
            self._advance(end)

    def _advance(self, position: float) -> None:
        if position <= self.done:
            return
        now = self.clock()
        self.done, self.done_at = min(position, self.duration), now
        if now > self.started:
            self.speed = self.done / (now - self.started)

    def finish(self, segments: int) -> None:
        """The engine is done: 100 %, and the segment count is exact."""
        with self._lock:
            self._finished, self.segments = True, segments

    def snapshot(self) -> Snapshot:
        """Percent (extrapolated to now), segments so far, and the total they point to (None before the first)."""
        with self._lock:
            if self._finished:
                return 100.0, self.segments, self.segments
            position = self.done
            if self.speed:
                position += min(self.speed * (self.clock() - self.done_at), 0.9 * WINDOW_SECONDS)
            self._shown = max(self._shown, min(99.0, 100.0 * min(position, self.duration) / self.duration))
            total = None
            if self.last_end > 0:  # segments per second of audio so far, over the whole audio
                total = max(self.segments, round(self.segments * self.duration / self.last_end))
            return self._shown, self.segments, total


def decode(ctx: StageContext) -> Path:
    """Any audio or video → 16 kHz mono PCM in the cache, at most ``MAX_MEDIA_SECONDS`` of it.

    The limit is enforced here, on the audio itself: a header can claim any length (a FLAC that says 1 s
    may hold 10 h). A cancel stops ffmpeg within a poll.
    """
    out = ctx.cache / AUDIO_CACHE
    media = ctx.media()
    limit = float(ctx.cfg["MAX_MEDIA_SECONDS"])
    expected = ctx.job.duration if media == ctx.source() else None  # a cleaned file has no probed length of its own
    scale = min(expected or limit, limit) + audio.LIMIT_MARGIN_SECONDS

    def progress(seconds: float) -> None:
        ctx.report(min(99.0, 100.0 * seconds / scale), 0)

    seconds = audio.decode_to_file(
        media,
        out,
        timeout=ctx.cfg["FFMPEG_TIMEOUT_SECONDS"],
        expected_seconds=expected,
        max_seconds=limit,
        should_abort=ctx.should_abort,
        on_progress=progress,
    )
    ctx.log("INFO", f"decoded {seconds:.1f} s of audio")
    return out


# Backends whose word timestamps cost next to nothing: whisper.cpp times every token as it decodes (one
# pass over the samples' energy and a sum per token), so its words are always kept for the subtitles.
# faster-whisper aligns words with an extra decoder pass: there only jobs that ask for them pay for them.
FREE_WORD_TIMESTAMPS = frozenset({"whispercpp"})


def wants_words(job: Job, backend: str) -> bool:
    """True when the engine should time each word: the job asked, or the backend gives them for free."""
    return bool((job.options or {}).get("word_timestamps")) or backend in FREE_WORD_TIMESTAMPS


def transcribe(ctx: StageContext) -> Path:
    """The engine over the decoded audio → transcript.json in the cache.

    Which engine and model file: ``WT_ENGINE`` and, for ``auto``, the calibration's pick for audio this long.
    """
    job = ctx.job
    samples = audio.load_pcm(ctx.cache / AUDIO_CACHE)  # read lazily: the engines take it a piece at a time
    duration = max(samples.size / audio.SAMPLE_RATE, 0.001)
    try:
        choice = tuning.choose(ctx.cfg, job.model, duration)
    except modelstore.ModelError as exc:
        raise audio.MediaError(f"model {job.model} is no longer installed") from exc
    tracker = AudioProgress(duration, speed=transitions.recent_speed(job.model), clock=ctx.clock)
    ctx.follow(tracker.snapshot)  # moves the percent on while whisper.cpp works through a window

    def on_progress(value: float) -> None:
        tracker.engine_percent(value)
        ctx.report(*tracker.snapshot())

    def on_segment(segment: engine.EngineSegment) -> None:
        tracker.segment(segment.end)
        ctx.report(*tracker.snapshot())

    def load_and_transcribe() -> engine.EngineResult:
        model = engine.load_engine(choice.path, int(ctx.cfg["ENGINE_THREADS"]), choice.backend)
        return model.transcribe(
            samples,
            language=job.language,
            translate=job.task == "translate",
            prompt=job.prompt,
            words=wants_words(job, choice.backend),
            on_segment=on_segment,
            on_progress=on_progress,
            should_abort=ctx.should_abort,
        )

    started = time.monotonic()
    # Loading and transcribing are one guarded call, so a load that works cannot reset the failure count.
    result = engine_breaker.call(load_and_transcribe)
    elapsed = time.monotonic() - started
    tracker.finish(len(result.segments))
    ctx.report(*tracker.snapshot())
    out = ctx.cache / TRANSCRIPT_CACHE
    atomic_write(
        out,
        json.dumps(
            {
                "language": result.language,
                "engine_seconds": elapsed,
                "audio_seconds": duration,
                "engine": choice.label,
                "loops_suppressed": result.loops_suppressed,
                "segments": [
                    {"start": s.start, "end": s.end, "text": s.text, "confidence": s.confidence, "words": s.words}
                    for s in result.segments
                ],
            }
        ),
    )
    ctx.log(
        "INFO",
        f"transcribed {len(result.segments)} segments with {choice.label}, language "
        f"{result.language}, {elapsed:.2f} s (real-time factor {elapsed / duration:.3f})"
        + (f", {result.loops_suppressed} looping pieces decoded again" if result.loops_suppressed else ""),
    )
    return out


def finalize(ctx: StageContext) -> None:
    """Store the cached transcript in the database and as ``transcripts/<id>.json``."""
    data = json.loads((ctx.cache / TRANSCRIPT_CACHE).read_text())
    transitions.store_transcript(
        ctx.cfg,
        ctx.job,
        data["segments"],
        language=data["language"],
        engine=data.get("engine"),
        loops_suppressed=data.get("loops_suppressed", 0),
    )


# ------------------------------------------------------------------------ media

_SUBTITLE_CODECS = {".mp4": "mov_text", ".mov": "mov_text", ".m4v": "mov_text", ".mkv": "srt", ".webm": "webvtt"}
# ISO 639-1 → 639-2, the form containers store; unknown codes are passed through.
_LANG3 = {
    "en": "eng",
    "de": "deu",
    "fr": "fra",
    "es": "spa",
    "it": "ita",
    "nl": "nld",
    "pt": "por",
    "ru": "rus",
    "ja": "jpn",
    "zh": "zho",
    "ko": "kor",
    "pl": "pol",
    "sv": "swe",
    "tr": "tur",
    "ar": "ara",
    "hi": "hin",
}


def _transcript(ctx: StageContext) -> dict[str, Any]:
    data = json.loads((ctx.cache / TRANSCRIPT_CACHE).read_text())
    return {"segments": data["segments"], "language": data["language"]}


def mux(ctx: StageContext) -> Path:
    """Add the transcript to the video as a subtitle track: streams are copied, nothing is re-encoded."""
    source = ctx.source()
    ext = source.suffix.lower() if source.suffix.lower() in _SUBTITLE_CODECS else ".mkv"
    transcript = _transcript(ctx)
    dub_input, dub_track = _dub_args(ctx, ext)
    subs = ctx.cache / ("subs.vtt" if ext == ".webm" else "subs.srt")
    atomic_write(subs, exports.to_vtt(transcript) if ext == ".webm" else exports.to_srt(transcript))
    out = ctx.cache / f"output{ext}"
    language = transcript["language"] or "und"
    # The temp name ends in the container's extension: ffmpeg picks the format from it.
    with AtomicFile(out, suffix=f".part{ext}") as output:
        cmd = [
            "ffmpeg",
            "-nostdin",
            "-v",
            "error",
            "-y",
            "-i",
            str(source),
            "-i",
            str(subs),
            *dub_input,
            "-map",
            "0",
            "-map",
            "-0:s",
            "-map",
            "1:0",
            *dub_track,
            "-c",
            "copy",
            "-c:s",
            _SUBTITLE_CODECS[ext],
            "-metadata:s:s:0",
            f"language={_LANG3.get(language, language)}",
            str(output.temp),
        ]
        result = subprocess.run(cmd, capture_output=True, timeout=ctx.cfg["FFMPEG_TIMEOUT_SECONDS"], check=False)
        if result.returncode != 0:
            raise audio.MediaError(f"adding the subtitle track failed: {result.stderr.decode(errors='replace')[-300:]}")
    ctx.log("INFO", f"muxed subtitles into {out.name}")
    return out


def _dub_args(ctx: StageContext, ext: str) -> tuple[list[str], list[str]]:
    """The mix stage's dub as an input and as one more audio track after the original ones (none without a dub)."""
    dub = ctx.cache / dubbing.DUB_AUDIO
    language = str((ctx.job.options or {}).get("dub") or "")
    if not language or not dub.exists():
        return [], []
    index = len((ctx.job.media_info or {}).get("audio_streams") or [None])  # the original tracks come first
    title = f"{languages.name_of(language).title()} (dub)"
    return ["-i", str(dub)], dubbing.track_args(index, _LANG3.get(language, language), title, webm=ext == ".webm")


def sidecar_name(video: str, language: str | None) -> str:
    """``Show S01E01.mkv`` + ``en`` → ``Show S01E01.en.srt`` (``und`` when the language is unknown)."""
    return f"{Path(video).stem}.{language or 'und'}.srt"


def sidecar(ctx: StageContext) -> Path:
    """Write ``<video basename>.<lang>.srt`` next to the media (atomically; never clobber unless allowed).

    Jellyfin's and Bazarr's naming; the language is the transcript's, so the detected one when the job named none.
    """
    source = ctx.source()
    transcript = _transcript(ctx)
    target = source.with_name(sidecar_name(source.name, transcript["language"]))
    if target.exists() and not ctx.cfg.get("SIDECAR_OVERWRITE"):
        ctx.log("WARNING", f"{target.name} exists; kept (set WT_SIDECAR_OVERWRITE=true to replace it)")
        return target
    atomic_write(target, exports.to_srt(transcript), mode=PUBLIC)  # a media server reads it
    ctx.log("INFO", f"wrote sidecar {target}")
    return target


STAGES: dict[str, Stage] = {
    s.name: s
    for s in (
        Stage("decode", "decoding", 5, decode),
        Stage("transcribe", "transcribing", 85, transcribe),
        Stage("finalize", "finalizing", 2, finalize),
        Stage("mux", "muxing", 8, mux),
        Stage("export", "exporting", 2, sidecar),
        Stage("ingest", "ingesting", 5, dsp.ingest),
        Stage("denoise", "denoising", 15, dsp.denoise),
        Stage("resample", "resampling", 5, dsp.resample),
    )
}


def register(stage: Stage) -> None:
    """Add a stage defined elsewhere (the audio-cleanup stages live in ``workers/dsp.py``)."""
    STAGES[stage.name] = stage


def is_cached(ctx: StageContext, name: str) -> bool:
    """True when the stage finished before and its output is still on disk."""
    record = ctx.job.stages.get(name) or {}
    if record.get("status") != "done":
        return False
    output = record.get("output")
    return output is None or Path(output if os.path.isabs(output) else ctx.cfg["DATA_DIR"] + "/" + output).exists()
