"""The one helper of each shared idiom: atomic file writes, the UTC timestamp format, a job's source path."""

from __future__ import annotations

import json
import os
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path

import pytest

from app.models import Job, isoformat
from workers import stages
from workers.atomicfile import PUBLIC, AtomicFile, atomic_write
from workers.timestamps import utc_iso

# ------------------------------------------------------------------ atomic writes


@pytest.fixture
def disk_log(monkeypatch) -> list[tuple[str, str]]:
    """Every fsync (of which file) and rename (to which file), in order."""
    events: list[tuple[str, str]] = []
    real_fsync, real_replace = os.fsync, os.replace

    def fsync(fd: int) -> None:
        events.append(("fsync", os.readlink(f"/proc/self/fd/{fd}")))
        real_fsync(fd)

    def replace(src, dst) -> None:
        events.append(("rename", str(dst)))
        real_replace(src, dst)

    monkeypatch.setattr(os, "fsync", fsync)
    monkeypatch.setattr(os, "replace", replace)
    return events


def test_atomic_write_puts_the_whole_content_on_disk_before_renaming(tmp_path, disk_log):
    target = tmp_path / "deep" / "record.json"
    atomic_write(target, "first")
    atomic_write(target, b"second")
    assert target.read_bytes() == b"second"
    assert os.listdir(target.parent) == ["record.json"]  # no temp file left
    temp, renamed = disk_log[-2][1], disk_log[-1]
    assert Path(temp).parent == target.parent and Path(temp).name.startswith(".record.json.")
    assert renamed == ("rename", str(target))


def test_a_failed_write_keeps_the_old_file_and_removes_the_temp(tmp_path):
    target = tmp_path / "model.bin"
    target.write_text("old")
    with pytest.raises(RuntimeError), AtomicFile(target) as part:
        part.temp.write_text("half")
        raise RuntimeError("disk on fire")
    assert target.read_text() == "old" and os.listdir(tmp_path) == ["model.bin"]


def test_commit_renames_at_the_callers_moment_and_the_exit_does_not_rename_again(tmp_path, disk_log):
    target = tmp_path / "1.part"
    with AtomicFile(target, suffix=".tmp") as part:
        part.temp.write_text("chunk")
        part.sync()
        assert not target.exists()
        part.commit()
        assert target.read_text() == "chunk"
    assert [kind for kind, _ in disk_log] == ["fsync", "rename"]
    assert os.listdir(tmp_path) == ["1.part"]


def test_new_files_are_private_unless_others_must_read_them(tmp_path):
    old = os.umask(0o022)
    try:
        atomic_write(tmp_path / "transcript.json", "{}")
        atomic_write(tmp_path / "episode.en.srt", "1", mode=PUBLIC)
    finally:
        os.umask(old)
    assert (tmp_path / "transcript.json").stat().st_mode & 0o777 == 0o600
    assert (tmp_path / "episode.en.srt").stat().st_mode & 0o777 == 0o644


def test_a_fixed_temp_name_is_reused_after_a_crash_left_it_behind(tmp_path):
    target = tmp_path / "audio.s16"
    leftover = tmp_path / "audio.s16.part"
    leftover.write_bytes(b"stale data from a killed worker")
    with AtomicFile(target, temp=leftover) as part:
        assert part.temp.stat().st_size == 0  # emptied for the new writer
        part.temp.write_bytes(b"pcm")
    assert target.read_bytes() == b"pcm" and not leftover.exists()


def test_the_sidecar_stage_syncs_the_subtitles_before_renaming_them(tmp_path, disk_log):
    """A power cut right after the rename must not leave an empty .srt beside the user's media."""
    media = tmp_path / "library" / "episode.mkv"
    media.parent.mkdir()
    media.write_bytes(b"video")
    job = Job(id="job1", source_path=str(media), original_filename=media.name, model="tiny.en")
    ctx = stages.StageContext(
        job=job,
        cfg={"DATA_DIR": str(tmp_path / "data")},
        log=lambda *a: None,
        report=lambda *a: None,
        should_abort=lambda: False,
    )
    segments = [{"start": 0.0, "end": 1.0, "text": "Hello."}]
    (ctx.cache / stages.TRANSCRIPT_CACHE).write_text(json.dumps({"segments": segments, "language": "en"}))
    disk_log.clear()
    target = stages.sidecar(ctx)
    assert target == media.with_name("episode.en.srt") and "Hello." in target.read_text()
    assert [kind for kind, _ in disk_log] == ["fsync", "rename"]
    assert disk_log[1] == ("rename", str(target))


# ---------------------------------------------------------------- timestamps


def test_one_format_for_stored_aware_and_unix_times():
    moment = datetime(2026, 1, 11, 12, 0, 5, 987654)
    assert utc_iso(moment) == "2026-01-11T12:00:05Z"  # naive: a stored UTC value
    assert isoformat(moment) == "2026-01-11T12:00:05Z" and isoformat(None) is None
    assert utc_iso(moment.replace(tzinfo=timezone(timedelta(hours=2)))) == "2026-01-11T10:00:05Z"
    assert utc_iso(moment.replace(tzinfo=UTC).timestamp()) == "2026-01-11T12:00:05Z"


def test_fractions_are_truncated_to_the_digits_asked_for():
    moment = datetime(2026, 1, 11, 12, 0, 5, 987654, tzinfo=UTC)
    assert utc_iso(moment, digits=3) == "2026-01-11T12:00:05.987Z"
    assert utc_iso(moment, digits=6) == "2026-01-11T12:00:05.987654Z"


def test_now_is_utc():
    before = datetime.now(UTC).replace(microsecond=0)
    stamp = datetime.fromisoformat(utc_iso().replace("Z", "+00:00"))
    assert before <= stamp <= datetime.now(UTC)


# ----------------------------------------------------------- a job's source


def test_a_job_reads_its_library_file_or_its_upload(tmp_path):
    library = Job(source_path="/media/show/episode.mkv")
    upload = Job(upload_path="uploads/abc.flac")
    assert library.source_file(tmp_path) == Path("/media/show/episode.mkv")
    assert upload.source_file(tmp_path) == tmp_path / "uploads" / "abc.flac"
    assert Job().source_file(tmp_path) is None
