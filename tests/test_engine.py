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
    engine.unload()


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


def test_a_short_clip_in_a_sized_context_reads_like_the_full_window(whisper):
    """audio_ctx sized to the clip: the same words as whisper.cpp's padded 30 s window, for less work."""
    from pywhispercpp.model import Model

    full = Model(str(MODEL), redirect_whispercpp_logs_to=None, print_progress=False, n_threads=2)
    jfk, osr_start = audio.decode(AUDIO / "jfk.flac"), audio.decode(AUDIO / "OSR_us_000_0034_8k.flac")[:16000 * 20]
    for samples in (jfk, osr_start):
        sized = whisper.transcribe(samples).text
        padded = " ".join(s.text for s in full.transcribe(samples, language="en", audio_ctx=0))
        assert wer(padded, sized) <= 0.05, (padded, sized)
    assert wer(reference("jfk.flac"), whisper.transcribe(jfk).text) <= 0.10


def test_long_audio_is_decoded_in_pieces_with_timestamps_in_file_time(whisper, osr):
    seen: list[engine.EngineSegment] = []
    result = whisper.transcribe(osr, on_segment=seen.append)
    starts = [s.start for s in result.segments]
    assert starts == sorted(starts) and result.segments[-1].end > 30.0  # the second piece is offset
    assert [s.text for s in seen] == [s.text for s in result.segments]
    assert wer(reference("OSR_us_000_0034_8k.flac"), result.text) <= 0.15 and result.loops_suppressed == 0


def test_a_piece_that_repeats_itself_is_decoded_again(whisper, monkeypatch):
    from workers.backends import whispercpp

    real = whispercpp.WhisperCppEngine._piece
    temperatures: list[float] = []

    def looping_first(self, piece, offset, **options):
        temperatures.append(options.get("temperature", 0.0))
        if len(temperatures) == 1:
            return [engine.EngineSegment(offset + i, offset + i + 1, "The blind man was found on the beach.")
                    for i in range(5)], None
        return real(self, piece, offset, **options)

    monkeypatch.setattr(whispercpp.WhisperCppEngine, "_piece", looping_first)
    result = whisper.transcribe(audio.decode(AUDIO / "jfk.flac"))
    assert result.loops_suppressed == 1 and temperatures[0] == 0.0 and temperatures[1] > 0.0
    assert wer(reference("jfk.flac"), result.text) <= 0.10


def test_repetition_is_measured_by_repeated_sentences_or_compression():
    from workers.backends.whispercpp import looping

    def segs(*texts: str) -> list[engine.EngineSegment]:
        return [engine.EngineSegment(float(i), i + 1.0, t) for i, t in enumerate(texts)]

    assert not looping(segs("A gold ring will please most any girl.", "The long journey home took a year."))
    assert not looping(segs("Yes.", "Yes."))  # a speaker may repeat himself once
    assert looping(segs(*["The blind man was found on the beach."] * 3))
    assert looping(segs("the the the the the the the the the the the the the the the the the the the the the"))
