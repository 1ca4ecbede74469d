"""whisper.cpp through pywhispercpp: one context, fed one piece of at most 30 s at a time.

Each piece is cut at a pause (``workers.silence``) and encoded with an ``audio_ctx`` sized to it,
so short audio never pays for a padded 30 s window (jfk, 11 s: 0.66 s → 0.36 s here). A
multilingual model detects the language on the first piece and keeps it. A piece whose segments
repeat themselves (whisper's well-known loop) is decoded again at a higher temperature.
"""

from __future__ import annotations

import logging
import os
import threading
import zlib
from collections.abc import Callable
from pathlib import Path

import numpy as np

from workers.audio import PcmFile, to_float32
from workers.engine import Aborted, EngineResult, EngineSegment
from workers.silence import SAMPLE_RATE, audio_ctx_for, split_at_silences

log = logging.getLogger(__name__)

RETRY_TEMPERATURES = (0.4, 0.8)  # a looping piece is decoded again at these, until it stops looping
MAX_COMPRESSION_RATIO = 2.4  # faster-whisper's threshold: text that compresses this well is repeating itself
MIN_REPEATS = 3  # the same sentence three times in one piece is a loop, not a speaker repeating himself


class WhisperCppEngine:
    """One whisper.cpp context. Never share it between threads."""

    name = "whispercpp"

    def __init__(self, model_path: Path | str, threads: int = 0):
        import _pywhispercpp as pw
        from pywhispercpp.model import Model

        self.model_path = str(model_path)
        self.threads = threads or os.cpu_count() or 1
        # pywhispercpp calls a Python progress callback only while print_progress is on; with a
        # callback assigned (every transcribe call assigns one) nothing is printed.
        self._model = Model(
            self.model_path,
            redirect_whispercpp_logs_to=None,
            print_progress=True,
            print_realtime=False,
            n_threads=self.threads,
        )
        self._lock = threading.Lock()
        self.multilingual = bool(pw.whisper_is_multilingual(self._model._ctx))

    def close(self) -> None:
        """Free the whisper.cpp context now.

        pywhispercpp hands whisper.cpp a bound method of its Model as the segment callback, which keeps
        the Model alive, so its ``__del__`` (whisper_free) never runs: each model switch leaked ~100-170 MB.
        """
        import _pywhispercpp as pw

        with self._lock:
            ctx, self._model._ctx = self._model._ctx, None
            if ctx is not None:
                pw.whisper_free(ctx)

    @property
    def label(self) -> str:
        """What ran a job, for its record: the engine and the model file."""
        return f"whispercpp:{Path(self.model_path).name}"

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
        """Transcribe (or translate to English) mono 16 kHz audio, piece by piece.

        ``audio`` is float32 in [-1, 1], 16-bit PCM, or the decode stage's :class:`PcmFile`: only the piece
        at hand is read and converted to float32, so hours of audio never sit in memory whole.
        ``on_progress`` gets the percent of the audio done, ``on_segment`` each new segment in file time.
        """
        samples = audio if isinstance(audio, np.ndarray | PcmFile) else np.asarray(audio, dtype=np.float32)
        total = max(len(samples), 1)
        # An English-only model never needs to detect: "auto" would cost a whole extra encoder pass.
        language = language or (None if self.multilingual else "en")
        result = EngineResult(language=language)
        with self._lock:
            if self._model._ctx is None:  # whisper.cpp would dereference the freed context and crash the worker
                raise RuntimeError(f"{self.label} was closed; load the model again")
            for start, end in split_at_silences(samples):
                if should_abort is not None and should_abort():
                    raise Aborted()

                def piece_progress(percent: float, start: int = start, end: int = end) -> None:
                    if on_progress is not None:
                        on_progress(100.0 * (start + percent / 100.0 * (end - start)) / total)

                piece = to_float32(samples[start:end])
                # Per piece: the language is detected on the first one and kept for the rest.
                options = {
                    "language": language,
                    "translate": translate,
                    "prompt": prompt,
                    "words": words,
                    "should_abort": should_abort,
                }
                segments, detected = self._piece(
                    piece, start / SAMPLE_RATE, on_segment=on_segment, on_progress=piece_progress, **options
                )
                if looping(segments):
                    # The retry decodes the piece silently: only the attempt kept is reported, by the result.
                    segments, detected = self._retry(piece, start / SAMPLE_RATE, first=segments, **options)
                    result.loops_suppressed += 1
                if language is None and detected:
                    language = result.language = detected  # detect once, then keep it for every piece
                result.segments.extend(segments)
                if on_progress is not None:
                    on_progress(100.0 * end / total)
        return result

    def _retry(
        self, piece: np.ndarray, offset: float, *, first: list[EngineSegment], **options
    ) -> tuple[list[EngineSegment], str | None]:
        """Decode a looping piece again, hotter, keeping whichever attempt repeats least."""
        best, detected = first, None
        for temperature in RETRY_TEMPERATURES:
            segments, detected = self._piece(piece, offset, temperature=temperature, **options)
            log.info("re-decoded a looping piece at %.1f s with temperature %.1f", offset, temperature)
            if repetition_score(segments) < repetition_score(best):
                best = segments
            if not looping(segments):
                break
        return best, detected

    def _piece(
        self,
        piece: np.ndarray,
        offset: float,
        *,
        language: str | None,
        translate: bool,
        prompt: str | None,
        words: bool,
        temperature: float = 0.0,
        on_segment: Callable[[EngineSegment], None] | None = None,
        on_progress: Callable[[float], None] | None = None,
        should_abort: Callable[[], bool] | None = None,
    ) -> tuple[list[EngineSegment], str | None]:
        """One whisper_full call on at most 30 s; segments in file time and the detected language."""
        import _pywhispercpp as pw

        aborted = threading.Event()

        def abort() -> bool:
            if should_abort is not None and should_abort():
                aborted.set()
            return aborted.is_set()

        def segment(seg) -> None:
            if on_segment is not None:
                on_segment(EngineSegment(offset + seg.t0 / 100.0, offset + seg.t1 / 100.0, seg.text))

        def progress(percent: int) -> None:
            if on_progress is not None:
                on_progress(float(percent))

        pw.assign_progress_callback(self._model._params, progress)
        # pywhispercpp keeps keyword params between calls, so every call sets all of them.
        found = self._model.transcribe(
            piece,
            new_segment_callback=segment,
            abort_callback=abort,
            extract_probability=True,
            language=language or "auto",
            translate=translate,
            initial_prompt=prompt or "",
            token_timestamps=words,
            audio_ctx=audio_ctx_for(len(piece)),
            temperature=temperature,
        )
        if aborted.is_set():
            raise Aborted()
        detected = None
        if self.multilingual and not language:
            lang_id = pw.whisper_full_lang_id(self._model._ctx)
            detected = pw.whisper_lang_str(lang_id) if lang_id >= 0 else None
        ctx = self._model._ctx
        # A sized context covers a little more than the piece: no time may point past the audio it has.
        end = offset + len(piece) / SAMPLE_RATE

        def at(t: int) -> float:
            return min(offset + t / 100.0, end)

        return [
            EngineSegment(
                at(s.t0),
                at(s.t1),
                s.text,
                None if np.isnan(s.probability) else float(s.probability),
                _words(ctx, i, offset, end) if words else None,
            )
            for i, s in enumerate(found)
        ], detected


def _normal(text: str) -> str:
    return " ".join("".join(c for c in text.lower() if c.isalnum() or c.isspace()).split())


def repetition_score(segments: list[EngineSegment]) -> float:
    """How much a piece repeats itself: the most frequent sentence's count, or the text's compression ratio."""
    texts = [_normal(s.text) for s in segments if _normal(s.text)]
    if not texts:
        return 0.0
    most = max(texts.count(t) for t in set(texts))
    joined = " ".join(texts).encode()
    ratio = len(joined) / len(zlib.compress(joined)) if len(joined) > 60 else 0.0
    return max(float(most) if most >= MIN_REPEATS else 0.0, ratio if ratio > MAX_COMPRESSION_RATIO else 0.0)


def looping(segments: list[EngineSegment]) -> bool:
    """True when a piece repeats a sentence three times or its text compresses like a loop."""
    return repetition_score(segments) > 0


def _words(ctx, segment: int, offset: float, end: float) -> list[dict]:
    """Group a segment's text tokens into words (a token starting with a space starts a word)."""
    import _pywhispercpp as pw

    eot = pw.whisper_token_eot(ctx)
    words: list[dict] = []
    pending: dict | None = None
    for j in range(pw.whisper_full_n_tokens(ctx, segment)):
        data = pw.whisper_full_get_token_data(ctx, segment, j)
        if data.id >= eot:  # timestamps and other special tokens
            continue
        piece = pw.whisper_token_to_bytes(ctx, data.id)
        if pending is None or piece.startswith(b" "):
            if pending is not None:
                words.append(pending)
            pending = {"bytes": b"", "start": min(offset + data.t0 / 100.0, end), "probs": []}
        pending["bytes"] += piece
        pending["end"] = max(pending["start"], min(offset + data.t1 / 100.0, end))
        pending["probs"].append(float(data.p))
    if pending is not None:
        words.append(pending)
    return [
        {
            "word": w["bytes"].decode("utf-8", "replace").strip(),
            "start": w["start"],
            "end": w["end"],
            "probability": round(float(np.mean(w["probs"])), 4),
        }
        for w in words
        if w["bytes"].strip()
    ]
