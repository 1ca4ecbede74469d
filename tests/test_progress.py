"""Progress while a job runs: a percent that moves smoothly, a time left that never grows while it rises,
segment counts, and how ``GET /api/progress`` shows them (stub engine, plus one run on the live server)."""

from __future__ import annotations

import random
import time

import pytest

from app.services import transitions
from app.services.jobs import duration_text
from tests.conftest import StubEngine
from tests.helpers import AUDIO, make_long_audio
from workers import engine, pipeline
from workers.stages import AudioProgress

pytestmark = pytest.mark.database  # scripts/test runs these on PostgreSQL too


class Clock:
    """A clock the test moves by hand."""

    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def never_grows_while_rising(samples: list[tuple[float, float | None]]) -> bool:
    """True when every later sample with a higher percent shows no more time left than an earlier one."""
    known = [(p, eta) for p, eta in samples if eta is not None]
    return all(
        later[1] <= earlier[1] + 1e-9
        for i, earlier in enumerate(known)
        for later in known[i + 1 :]
        if later[0] > earlier[0]
    )


# ------------------------------------------------------------------ the transcription's percent


def test_percent_moves_on_between_whisper_windows_but_not_past_the_window():
    """After a window, the percent keeps rising at the measured speed, and stops short of the next window."""
    clock = Clock()
    tracker = AudioProgress(300.0, clock=clock)
    tracker.engine_percent(0)
    clock.now = 10.0
    for end in (9.0, 19.0, 28.0):  # a window's segments arrive together: 2.8 s of audio per second
        tracker.segment(end)
    assert tracker.snapshot()[0] == pytest.approx(100 * 28 / 300)
    seen = []
    for step in range(1, 21):
        clock.now = 10.0 + step
        seen.append(tracker.snapshot()[0])
    assert seen[0] == pytest.approx(100 * (28 + 2.8) / 300)
    assert len(set(seen)) >= 9 and seen == sorted(seen)
    assert seen[-1] == pytest.approx(100 * (28 + 27) / 300)  # no further than the window can reach


def test_percent_never_goes_back_when_a_window_lands_behind_the_estimate():
    clock = Clock()
    tracker = AudioProgress(100.0, clock=clock)
    clock.now = 10.0
    tracker.segment(30.0)
    clock.now = 15.0
    ahead = tracker.snapshot()[0]
    tracker.segment(35.0)  # less than the extrapolation had guessed
    assert tracker.snapshot()[0] >= ahead


def test_first_window_moves_at_the_models_speed_on_earlier_jobs():
    """Before whisper.cpp reports anything, the model's recent speed moves the percent; without one it waits."""
    clock = Clock()
    informed, blind = AudioProgress(600.0, speed=4.0, clock=clock), AudioProgress(600.0, clock=clock)
    clock.now = 3.0
    assert informed.snapshot()[0] == pytest.approx(2.0) and blind.snapshot()[0] == 0.0


def test_percent_stays_below_100_until_the_engine_is_done():
    clock = Clock()
    tracker = AudioProgress(60.0, clock=clock)
    clock.now = 5.0
    tracker.engine_percent(100)
    assert tracker.snapshot()[0] == 99.0
    tracker.finish(12)
    assert tracker.snapshot() == (100.0, 12, 12)


def test_total_segments_is_unknown_then_extrapolated_then_exact():
    clock = Clock()
    tracker = AudioProgress(120.0, clock=clock)
    assert tracker.snapshot()[1:] == (0, None)
    for end in (5.0, 10.0, 15.0, 20.0, 30.0):
        tracker.segment(end)
    assert tracker.snapshot()[1:] == (5, 20)  # 5 segments in 30 s of audio: about 20 in 120 s
    tracker.finish(17)
    assert tracker.snapshot()[1:] == (17, 17)


# ------------------------------------------------------------------ time left


def test_time_left_is_unknown_until_the_transcription_has_a_pace():
    clock = Clock()
    eta = pipeline.Eta([5, 85, 2], anchor=1, clock=clock)
    eta.start_stage(0)
    clock.now = 1.0
    assert eta.update(50.0, 2.7) is None  # decoding says nothing about whisper.cpp's speed
    eta.start_stage(1)
    assert eta.update(0.0, 5.4) is None
    clock.now = 5.0
    assert eta.update(10.0, 14.7) == pytest.approx((85 * 0.9 + 2) * 4 / 8.5)


def test_time_left_never_grows_while_the_percent_rises_even_when_the_engine_slows_down():
    clock, samples = Clock(), []
    eta = pipeline.Eta([5, 85, 2], anchor=1, clock=clock)
    eta.start_stage(1)
    percent = 0.0
    for step in range(60):
        clock.now += 1.0
        percent += 3.0 if step < 20 else 0.5  # a third of the way in, it gets six times slower
        overall = 100 * (5 + 85 * percent / 100) / 92
        samples.append((overall, eta.update(percent, overall)))
    assert never_grows_while_rising(samples)
    assert samples[-1][1] > 0  # it stopped falling rather than running out while work remained


def test_time_left_holds_while_the_percent_stands_still_and_falls_once_it_moves_again():
    """A reading taken during a stall must not exceed one taken earlier at a lower percent."""
    clock = Clock()
    eta = pipeline.Eta([85], anchor=0, clock=clock)
    clock.now = 10.0
    before = eta.update(10.0, 10.0)
    for _ in range(10):
        clock.now += 5.0
        assert eta.update(10.0, 10.0) == before
    shown = [before]
    for percent in (30.0, 60.0, 90.0):  # it catches up quickly
        clock.now += 1.0
        shown.append(eta.update(percent, percent))
    assert shown == sorted(shown, reverse=True) and shown[-1] < before


def test_time_left_never_grows_between_any_two_readings_with_rising_percent():
    """Random paces, stalls and stage changes: whichever two readings a client happens to take."""
    rng = random.Random(7)
    for _ in range(50):
        clock, samples = Clock(), []
        weights = [5, 85, 2, 8]
        eta = pipeline.Eta(weights, anchor=1, clock=clock)
        base = 0.0
        for index, weight in enumerate(weights):
            eta.start_stage(index)
            overall = 100 * base / sum(weights)
            samples.append((overall, eta.update(0.0, overall)))
            percent = 0.0
            while percent < 100:
                clock.now += rng.uniform(0.1, 3.0)
                percent = min(100.0, percent + rng.choice([0.0, 0.0, rng.uniform(0.1, 15.0)]))
                overall = min(99.0, 100 * (base + weight * percent / 100) / sum(weights))
                samples.append((overall, eta.update(percent, overall)))
            base += weight
        assert never_grows_while_rising(samples)


@pytest.mark.parametrize(
    ("seconds", "text"),
    [
        (None, None),
        (0, "0s"),
        (0.4, "0s"),
        (45, "45s"),
        (59.4, "59s"),
        (59.6, "1m 0s"),
        (90, "1m 30s"),
        (3599.4, "59m 59s"),
        (3600, "1h 0m"),
        (3720, "1h 2m"),
        (3719, "1h 2m"),
        (36000, "10h 0m"),
    ],
)
def test_time_left_reads_like_people_write_it(seconds, text):
    assert duration_text(seconds) == text


# ------------------------------------------------------------------ through the pipeline and the API


class PacedEngine(StubEngine):
    """The stub engine, with the test's clock moving half a second per second of audio, and a probe."""

    clock = Clock()
    probe = None

    def transcribe(self, audio, *, on_segment=None, **kwargs):
        """The stub's segments and percents, spread over (fake) time."""

        def paced(segment: engine.EngineSegment) -> None:
            PacedEngine.clock.now += 0.5
            on_segment(segment)
            if PacedEngine.probe is not None:
                PacedEngine.probe(segment)

        return super().transcribe(audio, on_segment=paced, **kwargs)


@pytest.fixture
def paced(stub_engine, monkeypatch):
    """Run jobs on :class:`PacedEngine` with the pipeline on its clock; record every progress write."""
    PacedEngine.clock, PacedEngine.probe = Clock(), None
    monkeypatch.setattr(engine, "build", PacedEngine)
    monkeypatch.setattr(pipeline, "monotonic", PacedEngine.clock)
    writes: list[tuple[str, float, float | None]] = []
    original = transitions.set_progress

    def recording(job_id, stage, percent, **extra):
        writes.append((stage, percent, extra.get("eta_seconds")))
        original(job_id, stage, percent, **extra)

    monkeypatch.setattr(transitions, "set_progress", recording)
    return writes


def test_percent_rises_through_transcription_and_time_left_never_grows(
    client, admin_headers, drain, paced, uploaded_job
):
    uploaded_job(client, admin_headers)
    drain()
    transcribing = [percent for stage, percent, _ in paced if stage == "transcribing"]
    assert len({p for p in transcribing if 5.4 < p < 99}) >= 4, transcribing
    assert transcribing == sorted(transcribing)
    assert any(eta is not None for *_, eta in paced)
    assert never_grows_while_rising([(percent, eta) for _, percent, eta in paced])


def test_progress_route_shows_time_left_and_segment_counts_while_running_and_after(
    client, admin_headers, drain, paced, uploaded_job
):
    job_id = uploaded_job(client, admin_headers)["job_id"]
    queued = client.get(f"/api/progress/{job_id}", headers=admin_headers).get_json()
    assert (queued["estimated_time_remaining"], queued["estimated_time_remaining_text"], queued["total_segments"]) == (
        None,
        None,
        None,
    )
    running: list[dict] = []

    def probe(segment: engine.EngineSegment) -> None:
        if segment.end == 8.0:  # well into the transcription
            running.append(client.get(f"/api/progress/{job_id}", headers=admin_headers).get_json())

    PacedEngine.probe = probe
    drain()
    body = running[0]
    assert body["status"] == "processing" and body["stage"] == "transcribing"
    assert body["estimated_time_remaining"] > 0
    assert body["estimated_time_remaining_text"] == duration_text(body["estimated_time_remaining"])
    assert 0 < body["current_segment"] <= body["total_segments"]
    assert body["total_segments"] == 11  # the stub makes one segment per second: the estimate is right
    done = client.get(f"/api/progress/{job_id}", headers=admin_headers).get_json()
    assert (done["status"], done["estimated_time_remaining"], done["estimated_time_remaining_text"]) == (
        "completed",
        0,
        "0s",
    )
    assert done["current_segment"] == done["total_segments"] == 11


def test_a_retry_starts_with_fresh_counts(app, client, admin_headers, drain, paced, uploaded_job):
    """A second attempt does not show the first attempt's segment counts or time left."""
    from app.models import Job

    job_id = uploaded_job(client, admin_headers)["job_id"]
    with app.app_context():
        Job.update(segments_done=7, total_segments=9, eta_seconds=42.0).where(Job.id == job_id).execute()
    seen = []
    PacedEngine.probe = lambda segment: (
        seen.append(client.get(f"/api/progress/{job_id}", headers=admin_headers).get_json())
        if segment.end == 1.0
        else None
    )
    drain()
    assert seen[0]["current_segment"] <= 1 and seen[0]["total_segments"] in (None, 11)
    assert seen[0]["estimated_time_remaining"] != 42.0


def test_total_segments_of_a_job_completed_before_counts_were_kept_is_counted(
    app, client, admin_headers, drain, stub_engine, uploaded_job
):
    from app.models import Job

    job_id = uploaded_job(client, admin_headers)["job_id"]
    drain()
    with app.app_context():
        Job.update(total_segments=None).where(Job.id == job_id).execute()
    assert client.get(f"/api/progress/{job_id}", headers=admin_headers).get_json()["total_segments"] == 11


# ------------------------------------------------------------------ live server


@pytest.mark.e2e
def test_live_progress_rises_smoothly_and_time_left_never_grows(live_server, tmp_path):
    """Polling a longer job on the real engine: many distinct percents, and no rising time left."""
    long = make_long_audio(AUDIO / "OSR_us_000_0034_8k.flac", tmp_path / "long.wav", 8)
    job_id = live_server.submit(long, model="tiny.en")
    samples: list[dict] = []
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        body = live_server.get(f"/api/progress/{job_id}").json()
        samples.append(body)
        if body["status"] in ("completed", "failed", "cancelled"):
            break
        time.sleep(0.2)
    assert samples[-1]["status"] == "completed", samples[-1]
    running = [s for s in samples if s["status"] == "processing"]
    assert len({s["progress"] for s in running if 0 < s["progress"] < 100}) >= 4, [s["progress"] for s in running]
    for earlier, later in zip(running, running[1:], strict=False):
        if later["progress"] > earlier["progress"] and None not in (
            earlier["estimated_time_remaining"],
            later["estimated_time_remaining"],
        ):
            assert later["estimated_time_remaining"] <= earlier["estimated_time_remaining"], (earlier, later)
    timed = [s for s in running if s["estimated_time_remaining"] is not None]
    assert timed and all(s["estimated_time_remaining_text"] for s in timed)
    job = live_server.get(f"/api/jobs/{job_id}").json()
    assert samples[-1]["total_segments"] == samples[-1]["current_segment"] == len(job["transcript"]["segments"])
    assert samples[-1]["estimated_time_remaining_text"] == "0s"
