"""Export formats: timestamps, layouts and content types."""

from __future__ import annotations

import json

import pytest

from app.errors import AppError
from app.services import exports

TRANSCRIPT = {
    "text": "Hello there. General Kenobi.",
    "language": "en",
    "confidence": 0.9,
    "segments": [
        {"start": 0.0, "end": 1.5, "text": " Hello there."},
        {"start": 3725.25, "end": 3727.999, "text": "General\tKenobi.\n\nYou are --> bold."},
    ],
}


@pytest.mark.parametrize(
    ("seconds", "srt", "vtt"),
    [
        (0, "00:00:00,000", "00:00:00.000"),
        (1.5, "00:00:01,500", "00:00:01.500"),
        (59.9999, "00:01:00,000", "00:01:00.000"),
        (3725.25, "01:02:05,250", "01:02:05.250"),
        (100 * 3600 + 1, "100:00:01,000", "100:00:01.000"),
        (-1, "00:00:00,000", "00:00:00.000"),
    ],
)
def test_timestamps_round_to_milliseconds_and_pass_one_hour(seconds, srt, vtt):
    """SRT uses a comma, VTT a dot, and hours keep counting past 99."""
    assert exports.timestamp(seconds) == srt
    assert exports.timestamp(seconds, ".") == vtt


def test_srt_numbers_cues_and_never_leaves_blank_lines_inside_a_cue():
    """A blank line inside a cue would end it early in players."""
    body = exports.to_srt(TRANSCRIPT)
    cues = body.strip().split("\n\n")
    assert len(cues) == 2
    assert cues[0].splitlines() == ["1", "00:00:00,000 --> 00:00:01,500", "Hello there."]
    assert cues[1].splitlines()[:2] == ["2", "01:02:05,250 --> 01:02:07,999"]


def test_vtt_has_header_and_escapes_arrows_in_text():
    """The cue text must not contain the timing arrow."""
    body = exports.to_vtt(TRANSCRIPT)
    assert body.startswith("WEBVTT\n\n")
    assert "01:02:05.250 --> 01:02:07.999" in body
    assert body.count("-->") == 2


def test_tsv_uses_milliseconds_and_keeps_one_row_per_segment():
    """Tabs and newlines in text are folded so each segment stays one row."""
    rows = exports.to_tsv(TRANSCRIPT).strip().split("\n")
    assert rows[0] == "start\tend\ttext"
    assert rows[1] == "0\t1500\tHello there."
    assert rows[2].split("\t")[:2] == ["3725250", "3727999"]
    assert len(rows[2].split("\t")) == 3


def test_json_and_txt_keep_the_text():
    """JSON round-trips; TXT has one segment per line."""
    assert json.loads(exports.to_json(TRANSCRIPT))["segments"][1]["start"] == 3725.25
    assert exports.to_txt(TRANSCRIPT).splitlines()[0] == "Hello there."


@pytest.mark.parametrize(
    ("fmt", "mime"),
    [
        ("txt", "text/plain"),
        ("srt", "application/x-subrip"),
        ("vtt", "text/vtt"),
        ("json", "application/json"),
        ("tsv", "text/tab-separated-values"),
    ],
)
def test_render_returns_the_right_content_type(fmt, mime):
    """Each format has its own media type."""
    _, content_type = exports.render(TRANSCRIPT, fmt.upper())
    assert content_type.startswith(mime)


def test_render_refuses_unknown_formats():
    """An unknown format is a 400 naming the choices."""
    with pytest.raises(AppError) as info:
        exports.render(TRANSCRIPT, "docx")
    assert info.value.status == 400 and "srt" in info.value.detail


def test_format_list_names_every_format():
    """The list endpoint's payload covers all renderers."""
    assert {f["name"] for f in exports.format_list()} == set(exports.RENDERERS)
