"""Probing media in-process: what FFmpeg's demuxers report, and the errors users see."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

from tests.helpers import AUDIO, ffmpeg, make_video
from workers import audio


def ffprobe_duration(path: Path) -> float:
    """The duration the ffprobe command reports, for comparison."""
    out = subprocess.run(
        ["ffprobe", "-v", "error", "-print_format", "json", "-show_format", str(path)],
        capture_output=True,
        check=True,
        timeout=60,
    ).stdout
    return float(json.loads(out)["format"]["duration"])


@pytest.mark.parametrize("name", ["jfk.flac", "OSR_us_000_0034_8k.flac", "hotwords.mp3", "stereo_diarization.flac"])
def test_probe_agrees_with_ffprobe_on_the_shipped_clips(name):
    info = audio.probe(AUDIO / name)
    assert info.duration == pytest.approx(ffprobe_duration(AUDIO / name), abs=0.05)
    assert info.has_video is False and info.sample_rate and info.channels and info.codec
    assert info.audio_streams[0]["index"] == 0


def test_probe_sees_the_video_and_the_tagged_audio_track(tmp_path):
    video = make_video(AUDIO / "jfk.flac", tmp_path / "clip.mp4")
    tagged = tmp_path / "tagged.mkv"
    ffmpeg("-i", str(video), "-c", "copy", "-metadata:s:a:0", "language=eng", str(tagged))
    info = audio.probe(tagged)
    assert info.has_video is True and info.format_name.startswith("matroska")
    assert info.audio_streams == [{"index": 1, "codec": "aac", "channels": 1, "language": "eng"}]


def test_cover_art_does_not_count_as_video(tmp_path):
    cover = tmp_path / "cover.png"
    ffmpeg("-f", "lavfi", "-i", "color=c=red:s=64x64", "-frames:v", "1", str(cover))
    song = tmp_path / "song.mp3"
    ffmpeg(
        "-i",
        str(AUDIO / "jfk.flac"),
        "-i",
        str(cover),
        "-map",
        "0:a",
        "-map",
        "1:v",
        "-c:v",
        "copy",
        "-disposition:v",
        "attached_pic",
        str(song),
    )
    assert audio.probe(song).has_video is False


def test_video_without_sound_is_refused_as_having_no_audio(tmp_path):
    silent = tmp_path / "silent.mp4"
    ffmpeg(
        "-f", "lavfi", "-i", "color=c=blue:s=160x120:r=10:d=1", "-c:v", "libx264", "-preset", "ultrafast", str(silent)
    )
    with pytest.raises(audio.MediaError) as caught:
        audio.probe(silent)
    assert caught.value.error_code == "NO_AUDIO"


@pytest.mark.parametrize("content", [b"\x00", b"just text\n" * 50, bytes(range(256)) * 64, b"RIFF\xff\xff\xff\xffWAVE"])
def test_garbage_is_refused_as_unsupported_media(tmp_path, content):
    path = tmp_path / "upload.wav"
    path.write_bytes(content)
    with pytest.raises(audio.MediaError) as caught:
        audio.probe(path)
    assert caught.value.error_code == "UNSUPPORTED_MEDIA"


def test_empty_file_is_refused_before_probing(tmp_path):
    path = tmp_path / "empty.flac"
    path.touch()
    with pytest.raises(audio.MediaError) as caught:
        audio.probe(path)
    assert caught.value.error_code == "EMPTY_FILE"
