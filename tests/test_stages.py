"""Cached, resumable stages and the engine circuit breaker (real pipeline and ffmpeg, stub engine)."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from app.services.breaker import configure_breaker
from tests.helpers import AUDIO, post_clip
from workers import stages


def job(client, headers, job_id: str) -> dict:
    """The job's details."""
    return client.get(f"/api/jobs/{job_id}", headers=headers).get_json()


def test_job_details_show_every_stage_with_timestamps(client, admin_headers, stub_engine, drain, uploaded_job):
    """Pending before the worker runs; done with start and finish times after."""
    job_id = uploaded_job(client, admin_headers)["job_id"]
    before = job(client, admin_headers, job_id)["stages"]
    assert [(s["name"], s["status"]) for s in before] == [
        ("decode", "pending"),
        ("transcribe", "pending"),
        ("finalize", "pending"),
    ]
    drain()
    after = job(client, admin_headers, job_id)["stages"]
    assert all(s["status"] == "done" and s["progress"] == 100.0 for s in after)
    assert all(s["started_at"] <= s["finished_at"] for s in after)
    assert after[0]["output"].endswith("audio.s16")


def test_retry_after_a_forced_failure_skips_the_finished_stages(
    client, admin_headers, stub_engine, drain, monkeypatch, uploaded_job
):
    """The decode and transcribe outputs are reused: their timestamps do not move, the engine runs once."""
    job_id = uploaded_job(client, admin_headers)["job_id"]
    real = stages.STAGES["finalize"]

    def broken(ctx):
        raise RuntimeError("disk on fire")

    monkeypatch.setitem(stages.STAGES, "finalize", stages.Stage("finalize", "finalizing", real.weight, broken))
    drain()
    failed = job(client, admin_headers, job_id)
    assert failed["status"] == "failed" and "disk on fire" in failed["error"]
    first = {s["name"]: s for s in failed["stages"]}
    assert first["finalize"]["status"] == "failed" and first["transcribe"]["status"] == "done"

    monkeypatch.setitem(stages.STAGES, "finalize", real)
    time.sleep(1.1)  # stage timestamps have one-second resolution
    assert client.post(f"/api/jobs/{job_id}/restart", headers=admin_headers).status_code == 200
    drain()
    done = job(client, admin_headers, job_id)
    second = {s["name"]: s for s in done["stages"]}
    assert done["status"] == "completed"
    for name in ("decode", "transcribe"):
        assert second[name]["started_at"] == first[name]["started_at"]
        assert second[name]["finished_at"] == first[name]["finished_at"]
    assert second["finalize"]["finished_at"] > first["transcribe"]["finished_at"]
    assert len(stub_engine.calls) == 1


def test_a_missing_cache_file_reruns_its_stage(client, admin_headers, stub_engine, drain, app, uploaded_job):
    """A stage counts as cached only while its output exists."""
    job_id = uploaded_job(client, admin_headers)["job_id"]
    drain()
    cache = Path(app.config["DATA_DIR"]) / "cache" / job_id
    (cache / "transcript.json").unlink()
    with app.app_context():
        from app.models import Job

        Job.update(status="failed").where(Job.id == job_id).execute()
    client.post(f"/api/jobs/{job_id}/restart", headers=admin_headers)
    drain()
    assert job(client, admin_headers, job_id)["status"] == "completed"
    assert len(stub_engine.calls) == 2 and (cache / "transcript.json").exists()


def test_engine_failures_open_the_breaker_and_a_good_trial_closes_it(
    app, client, admin_headers, stub_engine, drain, monkeypatch, uploaded_job
):
    """Three failures pause new work with 503 and Retry-After; after the pause a successful job closes it."""
    app.config.update(BREAKER_FAIL_MAX=3, BREAKER_RESET_SECONDS=1)
    configure_breaker(app.config)
    healthy_transcribe = stub_engine.transcribe

    def crash(self, *args, **kwargs):
        raise RuntimeError("whisper.cpp crashed")

    monkeypatch.setattr(stub_engine, "transcribe", crash)
    for _ in range(3):
        uploaded_job(client, admin_headers)
        drain()
    jobs = client.get("/api/jobs/?status=failed", headers=admin_headers).get_json()
    assert jobs["total"] == 3
    refused = post_clip(client, admin_headers)
    assert refused.status_code == 503
    assert refused.get_json()["error_code"] == "ENGINE_UNAVAILABLE" and int(refused.headers["Retry-After"]) >= 1

    monkeypatch.setattr(stub_engine, "transcribe", healthy_transcribe)
    time.sleep(1.1)
    job_id = uploaded_job(client, admin_headers)["job_id"]
    drain()
    assert job(client, admin_headers, job_id)["status"] == "completed"
    with app.app_context():
        from app.services.breaker import engine_breaker

        assert engine_breaker.current_state == "closed"


def test_bad_media_does_not_count_against_the_engine(app, client, admin_headers, stub_engine, drain, uploaded_job):
    """Truncated uploads fail their jobs but never open the breaker."""
    app.config.update(BREAKER_FAIL_MAX=1)
    configure_breaker(app.config)
    data = (AUDIO / "jfk.flac").read_bytes()[:60000]
    for _ in range(2):
        post_clip(client, admin_headers, data=data, name="cut.flac")
    drain()
    assert uploaded_job(client, admin_headers)["job_id"]  # still accepted


@pytest.fixture(autouse=True)
def _restore_breaker_defaults(app):
    yield
    configure_breaker(app.config | {"BREAKER_FAIL_MAX": 3, "BREAKER_RESET_SECONDS": 60})


class InterleavingEngine:
    """Reports like whisper.cpp does: window percents and segment ends, not always in step."""

    def __init__(self, model_path, threads=0, backend="whispercpp"):
        self.model_path, self.label = str(model_path), "interleaving"

    def transcribe(self, samples, *, on_segment=None, on_progress=None, **kwargs):
        from workers import engine

        seconds = samples.size / 16000
        segments = [
            engine.EngineSegment(0.0, 0.5 * seconds, "first"),
            engine.EngineSegment(0.5 * seconds, 0.6 * seconds, "second"),
        ]
        on_progress(0)
        on_segment(segments[0])
        on_progress(83)
        on_segment(segments[1])  # ends at 60 %, behind the window's 83 %
        on_progress(100)
        return engine.EngineResult(segments, "en")


def test_transcribe_progress_never_goes_back_and_stays_below_100(
    client, admin_headers, drain, monkeypatch, uploaded_job
):
    """Below 100 while the engine runs, whatever order its reports come in; 100 with exact counts at the end."""
    from workers import engine, pipeline

    reported: list[tuple] = []
    original = pipeline.Progress.report
    monkeypatch.setattr(
        pipeline.Progress, "report", lambda self, *args: (reported.append((self, args)), original(self, *args))
    )
    monkeypatch.setattr(pipeline, "monotonic", lambda: 0.0)  # no time passes: nothing is extrapolated
    monkeypatch.setattr(engine, "build", InterleavingEngine)
    engine._cache.clear()
    try:
        job_id = uploaded_job(client, admin_headers)["job_id"]
        drain()
    finally:
        engine._cache.clear()
    # Only this job's reports: a thread left by an earlier test may still report on its own Progress.
    ours = reported[-1][0]
    reported = [args for progress, args in reported if progress is ours]
    # A report repeated by a progress tick (the runner's thread, timing-dependent) changes nothing: drop repeats.
    reported = [r for i, r in enumerate(reported) if i == 0 or r != reported[i - 1]]
    assert [r[0] for r in reported] == pytest.approx([0.0, 50.0, 83.0, 83.0, 99.0, 100.0])
    assert [r[1] for r in reported] == [0, 1, 1, 2, 2, 2]
    assert reported[-1][2] == 2  # the exact count once the engine is done
    assert job(client, admin_headers, job_id)["status"] == "completed"
