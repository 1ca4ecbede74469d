"""Choosing the engine: the WT_ENGINE setting, the calibration record, and the calibration itself."""

from __future__ import annotations

import json
import platform
from pathlib import Path

import pytest

from tests.helpers import MODELS_DIR, wait_for
from workers import modelstore, tuning


@pytest.fixture
def models(tmp_path) -> Path:
    """A models folder with tiny.en as f16, q8_0 and CTranslate2 files (empty: choosing never opens them)."""
    folder = tmp_path / "models"
    folder.mkdir()
    for name in ("tiny.en", "tiny.en-q8_0", "base"):
        modelstore.model_path(folder, name).write_bytes(b"")
    ct2 = modelstore.ct2_dir(folder, "tiny.en")
    ct2.mkdir()
    for name in ("model.bin", "config.json", "tokenizer.json", "vocabulary.txt"):
        (ct2 / name).write_text("{}")
    return folder


def config(tmp_path: Path, models: Path, engine: str = "auto") -> dict:
    """The settings choose() reads."""
    return {"DATA_DIR": str(tmp_path), "MODELS_DIR": str(models), "ENGINE": engine}


def write_record(tmp_path: Path, picks: dict, host: str | None = None) -> None:
    """A calibration record as calibrate() writes it."""
    record = {"host": host or platform.node(), "models": {"tiny.en": picks}}
    (tmp_path / tuning.TUNING_FILE).write_text(json.dumps(record))


def test_without_a_record_jobs_run_on_whisper_cpp_with_the_q8_0_file(tmp_path, models):
    choice = tuning.choose(config(tmp_path, models), "tiny.en", 600)
    assert (choice.backend, choice.path.name) == ("whispercpp", "ggml-tiny.en-q8_0.bin")
    assert tuning.choose(config(tmp_path, models), "base", 5).path.name == "ggml-base.bin"  # no q8_0 built


def test_auto_follows_the_record_by_the_length_of_the_audio(tmp_path, models):
    write_record(
        tmp_path,
        {
            "short": "whispercpp:ggml-tiny.en-q8_0.bin",
            "long": "ctranslate2:ct2-tiny.en",
            "whispercpp_file": "ggml-tiny.en.bin",
        },
    )
    cfg = config(tmp_path, models)
    assert tuning.choose(cfg, "tiny.en", 11).label == "whispercpp:ggml-tiny.en-q8_0.bin"
    assert tuning.choose(cfg, "tiny.en", 600).label == "ctranslate2:ct2-tiny.en"
    # Forcing whisper.cpp keeps the calibration's file choice (f16 here: its q8_0 lost accuracy, say).
    assert tuning.choose(config(tmp_path, models, "whispercpp"), "tiny.en", 600).label == "whispercpp:ggml-tiny.en.bin"


def test_a_record_made_on_another_host_is_ignored(tmp_path, models):
    write_record(tmp_path, {"short": "ctranslate2:ct2-tiny.en", "long": "ctranslate2:ct2-tiny.en"}, host="other-box")
    assert tuning.read_record(config(tmp_path, models)) is None
    assert tuning.choose(config(tmp_path, models), "tiny.en", 11).backend == "whispercpp"


def test_forcing_ctranslate2_falls_back_to_whisper_cpp_without_its_weights(tmp_path, models):
    cfg = config(tmp_path, models, "ctranslate2")
    assert tuning.choose(cfg, "tiny.en", 11).label == "ctranslate2:ct2-tiny.en"
    assert tuning.choose(cfg, "base", 11).backend == "whispercpp"
    with pytest.raises(modelstore.ModelError):
        tuning.choose(cfg, "small", 11)


def test_the_pick_is_the_fastest_within_one_point_of_the_best_wer():
    results = {
        "a": {"seconds": 1.0, "wer": 0.05},
        "b": {"seconds": 2.0, "wer": 0.00},
        "c": {"seconds": 1.5, "wer": 0.009},
    }
    assert tuning._best(results) == "c"


def test_layouts_compare_one_worker_on_all_cores_with_one_per_core():
    assert tuning.layouts(2) == [(1, 2), (2, 1)]
    assert tuning.layouts(8) == [(1, 8), (2, 4), (8, 1)]


@pytest.mark.parametrize(
    ("seconds", "picked"),
    [
        ({"1x2": 10.0, "2x1": 9.5}, (1, 2)),  # 5 % sooner: not worth a second model in memory
        ({"1x2": 10.0, "2x1": 8.0}, (2, 1)),
    ],
)
def test_a_deep_queue_gets_more_workers_only_when_they_are_clearly_faster(monkeypatch, seconds, picked):
    monkeypatch.setattr(tuning, "_queue_seconds", lambda choice, samples, w, t: seconds[f"{w}x{t}"])
    layout = tuning.measure_layout(tuning.Choice("whispercpp", Path("ggml-tiny.en.bin")), None, 2)
    assert (layout["workers"], layout["threads"]) == picked and layout["seconds"] == seconds


def test_a_bad_engine_setting_stops_the_start(monkeypatch):
    from app.settings import load_settings

    monkeypatch.setenv("WT_ENGINE", "fastest")
    with pytest.raises(RuntimeError, match="WT_ENGINE"):
        load_settings()


@pytest.mark.slow
def test_calibration_times_every_engine_and_model_file_and_records_the_choice(tmp_path):
    cfg = {"DATA_DIR": str(tmp_path), "MODELS_DIR": str(MODELS_DIR), "ENGINE_THREADS": 2}
    lines: list[str] = []
    record = tuning.calibrate(cfg, ["tiny.en"], runs=1, echo=lines.append)
    entry = record["models"]["tiny.en"]
    labels = {c.label for c in tuning.candidates(MODELS_DIR, "tiny.en")}
    assert set(entry["results"]) == labels and len(lines) == len(labels)
    assert {"whispercpp:ggml-tiny.en.bin", "ctranslate2:ct2-tiny.en"} <= labels
    for kind in ("short", "long"):
        best = min(r[kind]["wer"] for r in entry["results"].values())
        assert entry["results"][entry[kind]][kind]["wer"] <= best + tuning.WER_MARGIN
        assert all(r[kind]["wer"] <= 0.15 and r[kind]["seconds"] > 0 for r in entry["results"].values())
    assert record["cpu"]["whisper_cpp"] and tuning.read_record(cfg) == record
    assert "layout" not in record, "with the threads set, the workers x threads layout is not the calibration's"


def test_calibration_with_every_core_times_a_deep_queue_per_layout(tmp_path, monkeypatch):
    monkeypatch.setattr(tuning, "LAYOUT_JOBS", 2)  # the rule is tested above; here the real engines run
    monkeypatch.setattr(tuning, "available_cores", lambda: 2)
    cfg = {"DATA_DIR": str(tmp_path), "MODELS_DIR": str(MODELS_DIR), "ENGINE_THREADS": 0}
    record = tuning.calibrate(cfg, ["tiny.en"], runs=1, echo=lambda line: None)
    layout = record["layout"]
    assert set(layout["seconds"]) == {"1x2", "2x1"} and all(s > 0 for s in layout["seconds"].values())
    assert (layout["workers"], layout["threads"]) in tuning.layouts(2)
    assert layout["engine"] == record["models"]["tiny.en"]["long"]


@pytest.mark.e2e
def test_the_first_start_calibrates_and_jobs_record_the_engine_they_ran_on(tmp_path):
    from tests.conftest import launch_appliance
    from tests.helpers import AUDIO, reference, wer

    with launch_appliance(tmp_path / "data", "tuning-first-start.log", WT_TUNE_ON_START="true") as server:
        record_file = tmp_path / "data" / tuning.TUNING_FILE
        wait_for(record_file.exists, timeout=420, interval=1)  # ~1 min on a quiet box; CI may be busy
        record = json.loads(record_file.read_text())
        job = server.wait(server.submit(AUDIO / "jfk.flac"))
        assert job["status"] == "completed" and wer(reference("jfk.flac"), job["transcript"]["text"]) <= 0.10
        assert job["engine"] == record["models"]["tiny.en"]["short"]
        stats = server.get("/admin/stats").json()
        assert stats["engine"]["setting"] == "auto"
        assert stats["engine"]["calibration"]["models"]["tiny.en"]["short"] == job["engine"]


@pytest.mark.e2e
def test_a_forced_ctranslate2_engine_serves_jobs_end_to_end(tmp_path):
    from tests.conftest import launch_appliance
    from tests.helpers import AUDIO, reference, wer

    with launch_appliance(tmp_path / "data", "ctranslate2-engine.log", WT_ENGINE="ctranslate2") as server:
        for name, limit in (("jfk.flac", 0.10), ("OSR_us_000_0034_8k.flac", 0.15)):
            job = server.wait(server.submit(AUDIO / name))
            assert job["status"] == "completed" and job["engine"] == "ctranslate2:ct2-tiny.en", job
            assert wer(reference(name), job["transcript"]["text"]) <= limit
            srt = server.get(f"/api/export/download/{job['job_id']}/srt")
            assert srt.status_code == 200 and "-->" in srt.text


def test_the_benchmark_runs_the_anchor_with_libgomps_defaults_not_the_appliances(monkeypatch):
    from workers import compare, engine

    monkeypatch.setenv("OMP_WAIT_POLICY", "ACTIVE")
    shipped = compare.child_env(compare.AS_SHIPPED)
    assert "OMP_WAIT_POLICY" not in shipped and shipped["GOMP_SPINCOUNT"] == "300000"
    assert compare.child_env(engine.OPENMP_DEFAULTS)["OMP_WAIT_POLICY"] == "ACTIVE"
