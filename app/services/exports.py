"""Transcript export formats: txt, srt, vtt, json and tsv."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from app.errors import AppError


@dataclass(frozen=True)
class ExportFormat:
    name: str
    description: str
    mime_type: str
    supports_timestamps: bool


FORMATS = {
    f.name: f
    for f in (
        ExportFormat("txt", "Plain text", "text/plain; charset=utf-8", False),
        ExportFormat("srt", "SubRip subtitle format", "application/x-subrip; charset=utf-8", True),
        ExportFormat("vtt", "WebVTT subtitle format", "text/vtt; charset=utf-8", True),
        ExportFormat("json", "Transcript with segments as JSON", "application/json", True),
        ExportFormat("tsv", "Tab-separated start, end (milliseconds) and text",
                     "text/tab-separated-values; charset=utf-8", True),
    )
}


def format_list() -> list[dict[str, Any]]:
    """The formats, as the API lists them."""
    return [
        {"name": f.name, "description": f.description, "mime_type": f.mime_type.split(";")[0],
         "supports_timestamps": f.supports_timestamps}
        for f in FORMATS.values()
    ]


def timestamp(seconds: float, separator: str = ",") -> str:
    """``HH:MM:SS,mmm`` (SRT) or with ``.`` (VTT); hours grow past 99 if they must."""
    total_ms = max(0, round(seconds * 1000))
    hours, rest = divmod(total_ms, 3_600_000)
    minutes, rest = divmod(rest, 60_000)
    secs, ms = divmod(rest, 1000)
    return f"{hours:02d}:{minutes:02d}:{secs:02d}{separator}{ms:03d}"


def _cue_text(text: str) -> str:
    # A blank line would end the cue early in both SRT and VTT.
    return "\n".join(line for line in text.strip().splitlines() if line.strip()) or " "


def to_txt(transcript: dict[str, Any]) -> str:
    """One segment per line."""
    return "\n".join(s["text"].strip() for s in transcript["segments"]) + "\n"


def to_srt(transcript: dict[str, Any]) -> str:
    """SubRip cues numbered from 1."""
    cues = [
        f"{i}\n{timestamp(s['start'])} --> {timestamp(s['end'])}\n{_cue_text(s['text'])}\n"
        for i, s in enumerate(transcript["segments"], start=1)
    ]
    return "\n".join(cues)


def to_vtt(transcript: dict[str, Any]) -> str:
    """WebVTT with a header."""
    cues = [
        f"{timestamp(s['start'], '.')} --> {timestamp(s['end'], '.')}\n{_cue_text(s['text']).replace('-->', '->')}\n"
        for s in transcript["segments"]
    ]
    return "WEBVTT\n\n" + "\n".join(cues)


def to_tsv(transcript: dict[str, Any]) -> str:
    """whisper.cpp's TSV layout: start and end in milliseconds, then text."""
    rows = ["start\tend\ttext"]
    for s in transcript["segments"]:
        text = " ".join(s["text"].split())  # tabs and newlines would break the row
        rows.append(f"{round(s['start'] * 1000)}\t{round(s['end'] * 1000)}\t{text}")
    return "\n".join(rows) + "\n"


def to_json(transcript: dict[str, Any]) -> str:
    """The whole transcript."""
    return json.dumps(transcript, ensure_ascii=False, indent=2)


RENDERERS = {"txt": to_txt, "srt": to_srt, "vtt": to_vtt, "json": to_json, "tsv": to_tsv}


def render(transcript: dict[str, Any], fmt: str) -> tuple[str, str]:
    """Render a transcript; returns (body, content type). Unknown formats are a 400."""
    fmt = (fmt or "").lower()
    if fmt not in RENDERERS:
        raise AppError(400, "UNSUPPORTED_FORMAT", f"Unknown format {fmt!r}; use one of {', '.join(FORMATS)}")
    return RENDERERS[fmt](transcript), FORMATS[fmt].mime_type


def to_openai_verbose(transcript: dict[str, Any], *, task: str, duration: float | None,
                      words: bool) -> dict[str, Any]:
    """OpenAI's ``verbose_json`` transcription object."""
    segments = [
        {"id": s["id"], "seek": 0, "start": s["start"], "end": s["end"], "text": s["text"], "tokens": [],
         "temperature": 0.0, "avg_logprob": 0.0, "compression_ratio": 0.0, "no_speech_prob": 0.0}
        for s in transcript["segments"]
    ]
    body: dict[str, Any] = {"task": task, "language": transcript.get("language") or "", "duration": duration or 0.0,
                            "text": transcript["text"], "segments": segments}
    if words:
        body["words"] = [{"word": w["word"], "start": w["start"], "end": w["end"]}
                         for s in transcript["segments"] for w in s.get("words") or []]
    return body
