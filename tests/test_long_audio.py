"""Ten minutes of speech with every shipped model file: no repetition loop, WER as good as faster-whisper's.

Whole-file decoding with tiny.en f16 fell into a loop on this file ("the blind man was found on the
beach" 47 times, WER 0.33); decoding in pieces cut at pauses, with the loop guard behind it, must
keep every model file within one point of faster-whisper's word error rate on the same weights; so
must the CTranslate2 backend, which batches the pieces of the file's speech.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from tests.helpers import AUDIO, MODELS_DIR, make_long_audio, reference, wer
from workers import audio, engine, modelstore

pytestmark = pytest.mark.slow

REPEATS = 17  # OSR ×17: 10 minutes


@pytest.fixture(scope="module")
def ten_minutes(tmp_path_factory) -> tuple:
    """The 10-minute file's samples and its reference text."""
    path = make_long_audio(AUDIO / "OSR_us_000_0034_8k.flac", tmp_path_factory.mktemp("long") / "long.flac", REPEATS)
    return audio.decode(path), " ".join([reference("OSR_us_000_0034_8k.flac")] * REPEATS)


def faster_whisper_wer(model: str, samples, text: str) -> float:
    """The anchor: faster-whisper int8, greedy, sequential, on the same model's CTranslate2 weights."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from faster_whisper import WhisperModel

    anchor = WhisperModel(
        str(modelstore.ct2_dir(MODELS_DIR, model)),
        device="cpu",
        compute_type="int8",
        cpu_threads=2,
        local_files_only=True,
    )
    segments, _ = anchor.transcribe(samples, beam_size=1, language="en")
    return wer(text, " ".join(s.text for s in segments))


@pytest.mark.parametrize("model", ["tiny.en", "base"])
def test_every_model_file_reads_ten_minutes_as_well_as_faster_whisper(model, ten_minutes):
    samples, text = ten_minutes
    anchor = faster_whisper_wer(model, samples, text)
    files = [
        (Path(MODELS_DIR) / f"ggml-{model}.bin", "whispercpp"),
        (Path(MODELS_DIR) / f"ggml-{model}-q8_0.bin", "whispercpp"),
        (modelstore.ct2_dir(MODELS_DIR, model), "ctranslate2"),  # batched, in pieces of its speech
    ]
    assert all(path.exists() for path, _ in files), "scripts/test installs each model with its q8_0 file"
    for path, backend in files:
        try:
            result = engine.load_engine(path, 2, backend).transcribe(samples, language="en")
        finally:
            engine.unload()
        measured = wer(text, result.text)
        assert measured <= anchor + 0.01, f"{path.name}: WER {measured:.3f} against faster-whisper's {anchor:.3f}"
        assert result.segments[-1].end > 590, "the last piece is in file time"
