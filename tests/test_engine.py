"""The engines in-process with the real tiny.en model: text, progress, segments, abort, words, prompts.

The contract tests run against both backends (``any_engine``); the whisper.cpp tests below them cover
what only that backend does (pieces, sized audio_ctx, the loop guard).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from tests.helpers import AUDIO, MODELS_DIR, ffmpeg, reference, wer
from workers import audio, engine, modelstore

MODEL = MODELS_DIR / "ggml-tiny.en.bin"


@pytest.fixture
def whisper() -> engine.Engine:
    """tiny.en as a worker keeps it: loaded once, and again only after another test has freed it."""
    return engine.load_engine(MODEL, 2)


@pytest.fixture(scope="module", autouse=True)
def _free_engines_after_the_module():
    """Leave no model loaded for the next module."""
    yield
    engine.unload()


@pytest.fixture(scope="module", params=["whispercpp", "ctranslate2"])
def any_engine(request) -> engine.Engine:
    """Each backend in turn, with tiny.en: every behaviour a job relies on must hold for both."""
    path = MODEL if request.param == "whispercpp" else modelstore.ct2_dir(MODELS_DIR, "tiny.en")
    loaded = engine.load_engine(path, 2, request.param)
    yield loaded
    engine.unload(request.param)


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


def test_segments_arrive_through_the_callback_in_order_with_confidence(any_engine):
    seen: list[engine.EngineSegment] = []
    result = any_engine.transcribe(audio.decode(AUDIO / "jfk.flac"), language="en", on_segment=seen.append)
    assert [s.text for s in seen] == [s.text for s in result.segments]
    assert all(0 <= s.start < s.end <= 11.5 for s in result.segments)
    assert all(s.confidence is not None and 0 < s.confidence <= 1 for s in result.segments)
    assert result.language == "en" and wer(reference("jfk.flac"), result.text) <= 0.10


def test_abort_stops_the_engine_and_returns_no_partial_text(any_engine, osr):
    progress: list[float] = []
    with pytest.raises(engine.Aborted):
        any_engine.transcribe(osr, language="en", on_progress=progress.append, should_abort=lambda: bool(progress))
    assert progress and progress[-1] < 100.0


def test_a_call_without_callbacks_still_transcribes(any_engine, capfd):
    result = any_engine.transcribe(audio.decode(AUDIO / "jfk.flac"), language="en")
    assert wer(reference("jfk.flac"), result.text) <= 0.10
    assert "Progress:" not in capfd.readouterr().err


def test_an_english_only_model_skips_language_detection(any_engine, capfd):
    """A job that names no language must not pay a detection pass on tiny.en."""
    result = any_engine.transcribe(audio.decode(AUDIO / "jfk.flac"))
    assert "auto-detected language" not in capfd.readouterr().err
    assert result.language == "en" and wer(reference("jfk.flac"), result.text) <= 0.10


def test_a_short_clip_in_a_sized_context_reads_like_the_full_window(whisper):
    """audio_ctx sized to the clip: the same words as whisper.cpp's padded 30 s window, for less work."""
    from pywhispercpp.model import Model

    full = Model(str(MODEL), redirect_whispercpp_logs_to=None, print_progress=False, n_threads=2)
    jfk, osr_start = audio.decode(AUDIO / "jfk.flac"), audio.decode(AUDIO / "OSR_us_000_0034_8k.flac")[: 16000 * 20]
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
            return [
                engine.EngineSegment(offset + i, offset + i + 1, "The blind man was found on the beach.")
                for i in range(5)
            ], None
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


def test_progress_rises_to_100_on_either_engine(any_engine, osr):
    reported: list[float] = []
    result = any_engine.transcribe(osr, on_progress=reported.append)
    assert reported == sorted(reported) and reported[-1] == 100.0 and any(0 < p < 100 for p in reported)
    assert wer(reference("OSR_us_000_0034_8k.flac"), result.text) <= 0.15


def test_word_timestamps_are_ordered_and_inside_their_segment(any_engine):
    result = any_engine.transcribe(audio.decode(AUDIO / "jfk.flac"), words=True)
    words = [w for s in result.segments for w in s.words]
    assert len(words) >= 15 and [w["start"] for w in words] == sorted(w["start"] for w in words)
    assert all(0 <= w["start"] <= w["end"] <= 11.5 and 0 < w["probability"] <= 1 for w in words)
    assert wer(reference("jfk.flac"), " ".join(w["word"] for w in words)) <= 0.10


def test_a_prompt_steers_the_vocabulary_on_either_engine(any_engine):
    result = any_engine.transcribe(audio.decode(AUDIO / "hotwords.mp3"), prompt="ComfyUI")
    assert "comfyui" in result.text.lower().replace(" ", "")


@pytest.mark.parametrize("backend", ["whispercpp", "ctranslate2"])
def test_a_multilingual_model_detects_german_and_translates_it(backend, tmp_path):
    german = tmp_path / "german.wav"
    ffmpeg("-ss", "34", "-i", str(AUDIO / "multilingual.mp3"), "-t", "20", str(german))
    path = MODELS_DIR / "ggml-base.bin" if backend == "whispercpp" else modelstore.ct2_dir(MODELS_DIR, "base")
    base = engine.load_engine(path, 2, backend)
    try:
        heard = base.transcribe(audio.decode(german))
        english = base.transcribe(audio.decode(german), translate=True)
    finally:
        engine.unload(backend)
    assert heard.language == "de"
    words = set(english.text.lower().replace(",", " ").replace(".", " ").split())
    assert len(words & {"the", "software", "permission", "copy", "and", "of", "to"}) >= 3, english.text


def test_switching_models_frees_the_old_one():
    """Each switch loaded a model and never freed the last (pywhispercpp keeps its Model alive)."""
    import psutil

    process = psutil.Process()
    samples = audio.decode(AUDIO / "jfk.flac")[: 16000 * 3]
    rss = []
    try:
        for _ in range(4):
            for path in (MODEL, MODELS_DIR / "ggml-base.bin"):
                engine.load_engine(path, 2).transcribe(samples)
            rss.append(process.memory_info().rss / 2**20)
    finally:
        engine.unload()
    # base alone is ~150 MB of weights: four rounds of leaking would add ~900 MB.
    assert rss[-1] - rss[0] < 150, [round(r) for r in rss]


def test_a_closed_engine_refuses_to_transcribe_instead_of_crashing():
    """A caller still holding a model that a switch freed gets an error, not a segfault in whisper.cpp."""
    loaded = engine.load_engine(MODEL, 2)
    engine.unload()
    with pytest.raises(RuntimeError, match="closed"):
        loaded.transcribe(audio.decode(AUDIO / "jfk.flac")[:16000])


@pytest.mark.parametrize(
    ("given", "expected"),
    [
        ({}, engine.OPENMP_DEFAULTS),
        ({"OMP_WAIT_POLICY": "PASSIVE"}, {"OMP_WAIT_POLICY": "PASSIVE", "GOMP_SPINCOUNT": None}),
        ({"GOMP_SPINCOUNT": "0"}, {"OMP_WAIT_POLICY": None, "GOMP_SPINCOUNT": "0"}),
    ],
)
def test_a_worker_boot_sets_openmp_waits_before_any_engine_loads_unless_the_user_chose(tmp_path, given, expected):
    """libgomp reads its wait policy once: the worker's boot sets it first; other processes leave it alone."""
    probe = (
        "import json, os, app.cli; from app.boot import boot; "
        "untouched = {k: os.environ.get(k) for k in ('OMP_WAIT_POLICY', 'GOMP_SPINCOUNT')}; "
        "boot(None, 'worker'); "
        "loaded = any('libgomp' in line for line in open('/proc/self/maps')); "
        "print(json.dumps([untouched, loaded, {k: os.environ.get(k) for k in ('OMP_WAIT_POLICY', 'GOMP_SPINCOUNT')}]))"
    )
    env = {k: v for k, v in os.environ.items() if k not in engine.OPENMP_DEFAULTS} | given
    env["WT_DATA_DIR"] = str(tmp_path)
    out = subprocess.run([sys.executable, "-c", probe], env=env, capture_output=True, text=True, check=True)
    untouched, libgomp_loaded, seen = json.loads(out.stdout.splitlines()[-1])
    assert untouched == {k: given.get(k) for k in engine.OPENMP_DEFAULTS}  # the Wyoming command sets its own
    assert not libgomp_loaded  # nothing read the environment before it was set
    assert seen == expected
