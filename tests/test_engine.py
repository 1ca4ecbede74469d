"""The whisper.cpp engine in-process with the real tiny.en model: text, progress, segments and abort."""

from __future__ import annotations

import pytest

from tests.helpers import AUDIO, MODELS_DIR, reference, wer
from workers import audio, engine

MODEL = MODELS_DIR / "ggml-tiny.en.bin"


@pytest.fixture(scope="module")
def whisper() -> engine.Engine:
    """One loaded model for the module, as a worker keeps it."""
    loaded = engine.load_engine(MODEL, 2)
    yield loaded
    engine._cache.clear()


@pytest.fixture(scope="module")
def osr():
    """35.5 s of telephone-band speech: two of whisper.cpp's 30 s windows."""
    return audio.decode(AUDIO / "OSR_us_000_0034_8k.flac")


def test_progress_comes_from_whisper_cpp_and_rises_to_100(whisper, osr, capfd):
    reported: list[float] = []
    result = whisper.transcribe(osr, language="en", on_progress=reported.append)
    assert len(reported) >= 2 and reported == sorted(reported) and reported[-1] == 100.0
    assert any(0 < p < 100 for p in reported)  # a report between the windows, not just start and end
    assert "Progress:" not in capfd.readouterr().err  # the callback replaces whisper.cpp's own printing
    assert wer(reference("OSR_us_000_0034_8k.flac"), result.text) <= 0.15


def test_segments_arrive_through_the_callback_in_order_with_confidence(whisper):
    seen: list[engine.EngineSegment] = []
    result = whisper.transcribe(audio.decode(AUDIO / "jfk.flac"), language="en", on_segment=seen.append)
    assert [s.text for s in seen] == [s.text for s in result.segments]
    assert all(0 <= s.start < s.end <= 11.5 for s in result.segments)
    assert all(s.confidence is not None and 0 < s.confidence <= 1 for s in result.segments)
    assert result.language == "en" and wer(reference("jfk.flac"), result.text) <= 0.10


def test_abort_stops_the_engine_and_returns_no_partial_text(whisper, osr):
    progress: list[float] = []
    with pytest.raises(engine.Aborted):
        whisper.transcribe(osr, language="en", on_progress=progress.append, should_abort=lambda: bool(progress))
    assert progress and progress[-1] < 100.0


def test_a_call_without_callbacks_still_transcribes(whisper, capfd):
    result = whisper.transcribe(audio.decode(AUDIO / "jfk.flac"), language="en")
    assert wer(reference("jfk.flac"), result.text) <= 0.10
    assert "Progress:" not in capfd.readouterr().err


def test_an_english_only_model_skips_language_detection(whisper, capfd):
    """A job that names no language must not pay whisper.cpp's detection pass on tiny.en."""
    result = whisper.transcribe(audio.decode(AUDIO / "jfk.flac"))
    assert "auto-detected language" not in capfd.readouterr().err
    assert result.language == "en" and wer(reference("jfk.flac"), result.text) <= 0.10
