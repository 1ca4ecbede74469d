"""Transcript export formats: txt, srt, vtt, json and tsv."""

from __future__ import annotations

import html
import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from app.errors import AppError
from app.services import subtitles


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
        ExportFormat(
            "tsv", "Tab-separated start, end (milliseconds) and text", "text/tab-separated-values; charset=utf-8", True
        ),
    )
}


def format_list() -> list[dict[str, Any]]:
    """The formats, as the API lists them."""
    return [
        {
            "name": f.name,
            "description": f.description,
            "mime_type": f.mime_type.split(";")[0],
            "supports_timestamps": f.supports_timestamps,
        }
        for f in FORMATS.values()
    ]


def timestamp(seconds: float, separator: str = ",") -> str:
    """``HH:MM:SS,mmm`` (SRT) or with ``.`` (VTT); hours grow past 99 if they must."""
    total_ms = max(0, round(seconds * 1000))
    hours, rest = divmod(total_ms, 3_600_000)
    minutes, rest = divmod(rest, 60_000)
    secs, ms = divmod(rest, 1000)
    return f"{hours:02d}:{minutes:02d}:{secs:02d}{separator}{ms:03d}"


def to_txt(transcript: dict[str, Any]) -> str:
    """One segment per line."""
    return "\n".join(s["text"].strip() for s in transcript["segments"]) + "\n"


SUBTITLE_OPTIONS = ("max_line_width", "max_line_count", "max_cue_seconds", "highlight_words")


def subtitle_layout(options: Mapping[str, Any] | None = None) -> subtitles.Layout:
    """The subtitle options (``max_line_width``, ``max_line_count``, ``max_cue_seconds``, ``highlight_words``)
    checked; a bad value is a 400 naming it, an unknown name a 400 too."""
    options = dict(options or {})
    unknown = set(options) - set(SUBTITLE_OPTIONS)
    if unknown:
        raise AppError(400, "INVALID_PARAMETER", f"Unknown subtitle option {sorted(unknown)[0]!r}")
    try:
        return subtitles.layout(**options)
    except ValueError as exc:
        raise AppError(400, "INVALID_PARAMETER", str(exc)) from exc


def to_srt(transcript: dict[str, Any], **options: Any) -> str:
    """SubRip cues numbered from 1, laid out for reading (``max_line_width=0``: one cue per segment).

    Options: ``max_line_width`` (42), ``max_line_count`` (2), ``max_cue_seconds`` (7), ``highlight_words``
    (each word underlined while it is spoken, as whisper's writer does).
    """
    rules = subtitle_layout(options)
    cues = subtitles.build_cues(transcript["segments"], rules)
    blocks = []
    for cue in cues:
        if rules.highlight_words:
            blocks += [
                (start, end, _marked(cue, spoken, "<u>", "</u>"))
                for start, end, spoken in subtitles.highlight_steps(cue)
            ]
        else:  # an arrow in the text could pass for a timing line (one cue per segment keeps the text as it was)
            blocks.append((cue.start, cue.end, cue.text if rules.per_segment else cue.text.replace("-->", "->")))
    return "\n".join(
        f"{i}\n{timestamp(start)} --> {timestamp(end)}\n{text}\n"
        for i, (start, end, text) in enumerate(blocks, start=1)
    )


def to_vtt(transcript: dict[str, Any], **options: Any) -> str:
    """WebVTT with a header, laid out like :func:`to_srt`; ``highlight_words`` adds karaoke timestamp tags."""
    rules = subtitle_layout(options)
    cues = subtitles.build_cues(transcript["segments"], rules)
    body = [
        f"{timestamp(c.start, '.')} --> {timestamp(c.end, '.')}\n"
        f"{_karaoke(c) if rules.highlight_words else c.text.replace('-->', '->')}\n"
        for c in cues
    ]
    return "WEBVTT\n\n" + "\n".join(body)


def _marked(cue: subtitles.Cue, spoken: list[int], before: str, after: str) -> str:
    """The cue's text with the words at ``spoken`` (indexes into its words) wrapped in ``before``/``after``."""
    lines, k = [], 0
    for line in cue.lines:
        texts = []
        for word in line:
            texts.append(f"{before}{word.text}{after}" if k in spoken else word.text)
            k += 1
        lines.append(" ".join(texts))
    return "\n".join(lines)


def _karaoke(cue: subtitles.Cue) -> str:
    """WebVTT karaoke: a ``<hh:mm:ss.mmm>`` tag before each word from the moment it is spoken (players
    style the spoken and the coming words with ``::cue(:past)`` and ``::cue(:future)``)."""
    tags = {spoken[0]: start for start, _, spoken in subtitles.highlight_steps(cue)[1:]}
    lines, k = [], 0
    for line in cue.lines:
        texts = []
        for word in line:
            text = html.escape(word.text, quote=False).replace("--&gt;", "-&gt;")
            texts.append(f"<{timestamp(tags[k], '.')}>{text}" if k in tags else text)
            k += 1
        lines.append(" ".join(texts))
    return "\n".join(lines)


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


SUBTITLE_FORMATS = ("srt", "vtt")


def render(transcript: dict[str, Any], fmt: str, **options: Any) -> tuple[str, str]:
    """Render a transcript; returns (body, content type). Unknown formats are a 400.

    ``options`` are the subtitle options of :func:`to_srt`; they shape srt and vtt and are checked for
    every format, so a bad value is a 400 whatever the format.
    """
    fmt = (fmt or "").lower()
    if fmt not in RENDERERS:
        raise AppError(400, "UNSUPPORTED_FORMAT", f"Unknown format {fmt!r}; use one of {', '.join(FORMATS)}")
    if fmt in SUBTITLE_FORMATS:
        return RENDERERS[fmt](transcript, **options), FORMATS[fmt].mime_type
    subtitle_layout(options)
    return RENDERERS[fmt](transcript), FORMATS[fmt].mime_type


def to_openai_verbose(transcript: dict[str, Any], *, task: str, duration: float | None, words: bool) -> dict[str, Any]:
    """OpenAI's ``verbose_json`` transcription object."""
    segments = [
        {
            "id": s["id"],
            "seek": 0,
            "start": s["start"],
            "end": s["end"],
            "text": s["text"],
            "tokens": [],
            "temperature": 0.0,
            "avg_logprob": 0.0,
            "compression_ratio": 0.0,
            "no_speech_prob": 0.0,
        }
        for s in transcript["segments"]
    ]
    body: dict[str, Any] = {
        "task": task,
        "language": transcript.get("language") or "",
        "duration": duration or 0.0,
        "text": transcript["text"],
        "segments": segments,
    }
    if words:
        body["words"] = [
            {"word": w["word"], "start": w["start"], "end": w["end"]}
            for s in transcript["segments"]
            for w in s.get("words") or []
        ]
    return body
