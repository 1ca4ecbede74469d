"""CTranslate2 through faster-whisper: the second speech engine, with the same interface as whisper.cpp.

Audio of up to 30 s is one whisper window and is decoded sequentially, without VAD, as whisper.cpp does.
Longer audio goes through faster-whisper's ``BatchedInferencePipeline``. Silero VAD (shipped in the
faster-whisper wheel) finds the pauses longer than ``PAUSE_MS``, which are taken out but for a margin;
``workers.silence`` then cuts what is left at its quietest moments into pieces close to 30 s (CTranslate2
always encodes a whole window, so fewer, fuller pieces cost less), and ``batch_size`` pieces share one
encoder call; speech too short to fill a batch that way is cut into as many pieces as the batch holds.
faster-whisper's own VAD chunks join speech at any 160 ms gap and cut wherever 30 s run out:
on OSR x17 (tiny.en) they read "gold ring" as "golden ring" 16 times (WER 0.0137, 19 windows), where
these pieces gave 0.0032 in 17 windows (and pause cuts without VAD 0.0089 in 23).
Batched decoding has no temperature fallback, so a piece whose text repeats itself (whisper's well-known
loop) is decoded again sequentially, where faster-whisper falls back to higher temperatures. The model
loads from a local CTranslate2 directory and never touches the network.
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import threading
from collections.abc import Callable, Generator, Iterable
from pathlib import Path

import numpy as np

from workers.audio import PcmFile, to_float32
from workers.engine import Aborted, EngineResult, EngineSegment
from workers.modelstore import ModelError, is_ct2_dir
from workers.silence import Timeline, split_at_silences

log = logging.getLogger(__name__)

SAMPLE_RATE = 16000
WINDOW_SECONDS = 30.0  # one whisper window; longer audio is cut at pauses and decoded in batches
PIECE_SECONDS = 28.0  # the batched pieces' target length: near a whole window, with room to find a pause
MIN_PIECE_SECONDS = 10.0  # ... but never shorter than this, so that a batch is not filled with padding
PAUSE_MS = 600  # pauses at least this long are taken out of long audio before it is cut into pieces
PAD_MS = 200  # ... but for this much audio kept on either side, so no word loses its edges
VAD_BLOCK_SECONDS = 60.0  # Silero VAD reads about this much at a time, cut at a quiet moment
BLOCK_SECONDS = 600.0  # longer audio is fed to faster-whisper in blocks of about this length, cut at pauses
MAX_COMPRESSION_RATIO = 2.4  # faster-whisper's own threshold: text that compresses this well is looping
# Pieces per encoder call: each holds its own attention matrices while the batch encodes. On 2 cores a batch
# of 2 decoded 10 minutes (OSR x17, tiny.en) as fast as 4 (8.9 vs 9.1 s, median of 3) at a 500 MB peak
# instead of 660 MB; a box with more cores gets a batch per two threads, up to 4.
MAX_BATCH = 4
MIN_CONFIDENCE = 1e-9  # exp() of a very negative log probability underflows to 0; a confidence stays above 0


class CTranslate2Engine:
    """One faster-whisper model on the CPU (int8 weights). Never share it between threads."""

    name = "ctranslate2"

    def __init__(self, model_dir: Path | str, threads: int = 0, batch_size: int = 0) -> None:
        self.model_dir = Path(model_dir)
        self.model_path = str(model_dir)  # the Engine protocol's name for what was loaded (load_engine's cache key)
        # Without tokenizer.json faster-whisper downloads a tokenizer from the Hugging Face Hub: refuse instead.
        if not is_ct2_dir(self.model_dir):
            raise ModelError(
                f"{self.model_dir} is not a complete CTranslate2 Whisper directory (model.bin, "
                "config.json, tokenizer.json, vocabulary): install or import the model again"
            )
        # Belt and braces: should any code path still reach for the Hub, it fails instead of waiting on a socket.
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        from faster_whisper import BatchedInferencePipeline, WhisperModel

        self.threads = threads or os.cpu_count() or 1
        self.batch_size = batch_size or min(MAX_BATCH, max(2, self.threads // 2))
        self._model = WhisperModel(
            str(self.model_dir), device="cpu", compute_type="int8", cpu_threads=self.threads, local_files_only=True
        )
        self._batched = BatchedInferencePipeline(self._model)
        self._lock = threading.Lock()
        self.multilingual = bool(self._model.model.is_multilingual)

    @property
    def label(self) -> str:
        """What ran a job, for its record: the engine and the model directory."""
        return f"{self.name}:{self.model_dir.name}"

    def transcribe(
        self,
        audio: np.ndarray | PcmFile,
        *,
        language: str | None = None,
        translate: bool = False,
        prompt: str | None = None,
        words: bool = False,
        on_segment: Callable[[EngineSegment], None] | None = None,
        on_progress: Callable[[float], None] | None = None,
        should_abort: Callable[[], bool] | None = None,
    ) -> EngineResult:
        """Transcribe (or translate to English) mono 16 kHz audio: float32 in [-1, 1], 16-bit PCM or a PcmFile.

        ``on_segment`` gets each segment (in file time) as faster-whisper yields it, ``on_progress`` the
        percent of the audio covered so far (never decreasing, ending at 100.0). Audio longer than
        ``BLOCK_SECONDS`` goes to faster-whisper one block at a time, each cut at a pause and converted
        to float32 on its own: faster-whisper copies its input and computes every piece's features up
        front, which for hours of audio would take gigabytes.
        """
        samples = audio if isinstance(audio, np.ndarray | PcmFile) else np.asarray(audio, dtype=np.float32)
        duration = len(samples) / SAMPLE_RATE
        options = {
            # An English-only model never detects: it transcribes English whatever it is told.
            "language": language if self.multilingual else "en",
            "task": "translate" if translate else "transcribe",
            "beam_size": 1,  # greedy, like whisper.cpp's default
            "initial_prompt": prompt or None,
            "word_timestamps": words,
        }
        aborting = should_abort or (lambda: False)
        reported = 0.0

        def progress(percent: float) -> None:
            nonlocal reported
            percent = min(max(percent, 0.0), 100.0)
            if percent > reported or (percent == 100.0 and reported < 100.0):
                reported = percent
                if on_progress is not None:
                    on_progress(percent)

        with self._lock:
            if aborting():
                raise Aborted()
            result = EngineResult(language=options["language"])
            blocks = split_at_silences(samples, target=BLOCK_SECONDS, longest=1.5 * BLOCK_SECONDS) or [(0, 0)]
            for index, (start, end) in enumerate(blocks):
                if aborting():
                    raise Aborted()
                block = self._block(
                    to_float32(samples[start:end]), start / SAMPLE_RATE, options, words, result, aborting
                )
                with contextlib.closing(block):  # a failing callback stops faster-whisper's generator at once
                    for item in block:
                        result.segments.append(item)
                        if on_segment is not None:
                            on_segment(item)
                        progress(100.0 * item.end / duration if duration else 0.0)
                if index == 0:
                    options["language"] = result.language  # detected on the first block, kept for the others
        progress(100.0)
        return result

    def _block(
        self,
        samples: np.ndarray,
        offset: float,
        options: dict,
        words: bool,
        result: EngineResult,
        aborting: Callable[[], bool],
    ) -> Generator[EngineSegment, None, None]:
        """The segments of one float32 block, ``offset`` seconds into the file, in file time."""

        def to_file(seconds: float) -> float:
            return offset + seconds

        batched = len(samples) / SAMPLE_RATE > WINDOW_SECONDS
        if batched:
            spans = _speech_spans(samples)
            if not spans:
                return  # no speech at all: nothing to decode, and nothing for whisper to imagine
            timeline = Timeline(spans)
            samples = np.concatenate([samples[start:end] for start, end in spans])

            def to_file(seconds: float) -> float:
                return offset + timeline.to_original(seconds)

            # Word timing state left behind by an aborted run must not shift this run's words.
            self._batched.last_speech_timestamp = 0.0
            # Batched mode decodes without timestamps (faster-whisper's default): one segment per piece.
            # With timestamps it drops the unfinished last sentence of a piece (no later window decodes it
            # again), which loses text (a whole sentence of the OSR clip).
            segments, info = self._batched.transcribe(
                samples,
                batch_size=self.batch_size,
                without_timestamps=True,
                vad_filter=False,
                clip_timestamps=[{"start": a / SAMPLE_RATE, "end": b / SAMPLE_RATE} for a, b in self._pieces(samples)],
                **options,
            )
        else:
            # One window: decoded whole, as whisper.cpp decodes short audio.
            segments, info = self._model.transcribe(samples, vad_filter=False, **options)
        result.language = result.language or info.language
        try:
            for segment in segments:
                if batched and segment.compression_ratio > MAX_COMPRESSION_RATIO:
                    yield from self._redecode(
                        samples, segment, {**options, "language": info.language}, aborting, to_file
                    )
                    result.loops_suppressed += 1
                else:
                    yield _segment(segment, words, to_file)
                # Segments are decoded lazily: stopping here saves the rest of the work.
                if aborting():
                    raise Aborted()
        finally:
            segments.close()  # stop the generator now, not whenever it is garbage-collected

    def _pieces(self, samples: np.ndarray) -> list[tuple[int, int]]:
        """Where the batched pipeline cuts speech: pieces near ``PIECE_SECONDS``, or enough to fill a batch.

        The pieces of a batch are encoded in one call, so speech shorter than a batch of whole windows is
        cut into as many pieces as the batch holds: OSR (35.5 s, 29.4 s of speech) took 0.90 s as one
        window and 0.62 s as two pieces of 15 s, with WER 0.014 and 0.000 (tiny.en, 2 threads).
        """
        seconds = len(samples) / SAMPLE_RATE
        target = max(MIN_PIECE_SECONDS, min(PIECE_SECONDS, seconds / self.batch_size))
        return split_at_silences(samples, target=target, longest=min(WINDOW_SECONDS, 1.5 * target))

    def _redecode(
        self,
        samples: np.ndarray,
        looping,
        options: dict,
        aborting: Callable[[], bool],
        to_file: Callable[[float], float],
    ) -> list[EngineSegment]:
        """Decode a looping batched piece again, sequentially with temperature fallback, in file time."""
        start = float(looping.start)
        piece = samples[int(start * SAMPLE_RATE) : math.ceil(float(looping.end) * SAMPLE_RATE)]
        log.info(
            "re-decoding a looping piece at %.1f s (compression ratio %.1f)", to_file(start), looping.compression_ratio
        )
        segments, _ = self._model.transcribe(piece, vad_filter=False, **options)
        items: list[EngineSegment] = []
        try:
            for segment in segments:
                items.append(_segment(segment, options["word_timestamps"], lambda t: to_file(start + t)))
                if aborting():
                    raise Aborted()
        finally:
            segments.close()
        return items


def _speech_spans(samples: np.ndarray) -> list[tuple[int, int]]:
    """Sample ranges of ``samples`` that hold speech, by Silero VAD, each with PAD_MS of margin.

    The VAD runs on about a minute at a time, cut at the quietest moments: faster-whisper feeds it the
    whole input at once, which took 230 MB on ten minutes against 90 MB in minutes (tiny.en, same spans
    on OSR x17). Spans that meet across a cut are joined.
    """
    from faster_whisper.vad import VadOptions, get_speech_timestamps  # late: as the model, on first use

    options = VadOptions(min_silence_duration_ms=PAUSE_MS, speech_pad_ms=PAD_MS)
    pause = PAUSE_MS * SAMPLE_RATE // 1000
    spans: list[tuple[int, int]] = []
    for first, last in split_at_silences(samples, target=VAD_BLOCK_SECONDS, longest=1.5 * VAD_BLOCK_SECONDS):
        for span in get_speech_timestamps(samples[first:last], options):
            start, end = first + int(span["start"]), first + int(span["end"])
            if spans and start - spans[-1][1] < pause:  # no real pause between them: one span
                spans[-1] = (spans[-1][0], max(end, spans[-1][1]))
            else:
                spans.append((start, end))
    return spans


def _confidence(avg_logprob: float) -> float | None:
    """The segment's mean token probability, in (0, 1]."""
    if avg_logprob is None or math.isnan(avg_logprob):
        return None
    return min(1.0, max(math.exp(avg_logprob), MIN_CONFIDENCE))


def _words(words: Iterable | None, to_file: Callable[[float], float]) -> list[dict]:
    """faster-whisper's words in the shape the whisper.cpp engine reports them, in file time."""
    return [
        {
            "word": w.word.strip(),
            "start": round(to_file(w.start), 3),
            "end": round(to_file(w.end), 3),
            "probability": round(float(w.probability), 4),
        }
        for w in words or []
        if w.word.strip()
    ]


def _segment(segment, words: bool, to_file: Callable[[float], float]) -> EngineSegment:
    """One faster-whisper segment as an ``EngineSegment``, its times moved to file time by ``to_file``."""
    return EngineSegment(
        round(to_file(segment.start), 3),
        round(to_file(segment.end), 3),
        segment.text,
        _confidence(segment.avg_logprob),
        _words(segment.words, to_file) if words else None,
    )
