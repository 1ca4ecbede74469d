"""Transcript figures and analysis (the legacy API): metadata, a local extractive analysis, a remote chat model.

``POST /jobs/{id}/analyze`` asks an OpenAI-style chat-completions endpoint (``OPENAI_BASE_URL``,
``OPENAI_MODEL``) when ``OPENAI_API_KEY`` is set, and otherwise answers from the transcript alone:
the highest-scoring sentences by word frequency, the most frequent content words, and counts.
Remote calls go through :data:`analysis_breaker`: after repeated outages the endpoint is left alone
for a while and callers get 503 with ``Retry-After``. The key is sent, never logged.
"""

from __future__ import annotations

import json
import logging
import math
import re
from collections import Counter
from collections.abc import Mapping
from typing import Any

import pybreaker
import requests

from app.errors import AppError
from app.models import Job
from app.services import jobs
from app.services.breaker import retry_after

log = logging.getLogger(__name__)

SUMMARY_SENTENCES = 3
TOP_KEYWORDS = 10
MAX_PROMPT_CHARS = 60_000  # keeps a long transcript within a small model's context window
BREAKER_FAIL_MAX = 3  # consecutive outages (timeouts, 5xx, 429, garbage) that open the breaker
BREAKER_RESET_SECONDS = 60

_WORD = re.compile("\\w+(?:['\u2019]\\w+)*")
_SENTENCE_END = re.compile("(?<=[.!?\u2026])\\s+")
_STOP_WORD_TEXT = """
a about above after again against all also am an and any are as at be because been before being below
between both but by can could did do does doing down during each few for from further had has have having
he her here hers herself him himself his how i if in into is it its itself just let me more most my myself
no nor not now of off on once only or other our ours ourselves out over own same she should so some such
than that the their theirs them themselves then there these they this those through to too under until up
very was we were what when where which while who whom why will with would you your yours yourself
yourselves im ive youre dont didnt cant wont isnt thats theres okay yeah uh um oh like well really
going get got gonna one two know think said say says make made way thing things even still
"""
STOP_WORDS = frozenset(_STOP_WORD_TEXT.split())  # a small English list: enough for keywords and summaries

SYSTEM_PROMPT = (
    "You analyse transcripts of recorded speech. Reply with a JSON object with two string fields: "
    '"summary" (a concise summary of what is said) and "analysis" (the main topics, the tone, and any '
    "decisions, questions or action items). Use the language of the transcript."
)


class RemoteFailed(Exception):
    """The endpoint is down, slow, overloaded or answered nonsense: counts towards opening the breaker."""


class RemoteRejected(Exception):
    """The endpoint refused the request (a 4xx such as a wrong key): a setup problem, not an outage."""


analysis_breaker = pybreaker.CircuitBreaker(
    fail_max=BREAKER_FAIL_MAX,
    reset_timeout=BREAKER_RESET_SECONDS,
    name="analysis",
    exclude=[RemoteRejected],
)


def reset_breaker() -> None:
    """Close the breaker and forget past failures (tests, and an operator who fixed the endpoint)."""
    analysis_breaker.close()
    analysis_breaker._state_storage.reset_counter()  # close() keeps the count when already closed


# ------------------------------------------------------------------ text figures


def words(text: str) -> list[str]:
    """The words of a text, lower-cased (digits count as words; apostrophes stay inside)."""
    return [w.replace("\u2019", "'") for w in _WORD.findall(text.lower())]


def content_words(text: str) -> list[str]:
    """Words that carry meaning: alphabetic, three letters or more, not a stop word."""
    return [
        w for w in words(text) if len(w) >= 3 and w.replace("'", "").isalpha() and w.replace("'", "") not in STOP_WORDS
    ]


def keywords(text: str, limit: int = TOP_KEYWORDS) -> list[dict[str, Any]]:
    """The most frequent content words, ties in order of first use."""
    return [{"keyword": w, "count": n} for w, n in Counter(content_words(text)).most_common(limit)]


def sentences(text: str, segment_texts: list[str] | None = None) -> list[str]:
    """Split on sentence punctuation; unpunctuated text falls back to the engine's segments."""
    found = [s.strip() for s in _SENTENCE_END.split(text.strip()) if s.strip()]
    segments = [s.strip() for s in segment_texts or [] if s.strip()]
    if len(found) <= 1 and len(segments) > 1:
        return segments
    return found


def summary_sentences(units: list[str], limit: int = SUMMARY_SENTENCES) -> list[str]:
    """The ``limit`` sentences whose words are most frequent in the whole text, in their original order."""
    frequency = Counter(w for s in units for w in content_words(s))
    if not frequency:
        return units[:limit]
    top = max(frequency.values())

    def score(sentence: str) -> float:
        # Normalised frequencies, softened by length so that long sentences do not always win.
        return sum(frequency[w] / top for w in content_words(sentence)) / math.sqrt(max(1, len(words(sentence))))

    ranked = sorted(range(len(units)), key=lambda i: (-score(units[i]), i))[:limit]
    return [units[i] for i in sorted(ranked)]


def per_minute(count: int, seconds: float | None) -> float | None:
    """A count per minute of media, or None without a duration."""
    return round(count * 60 / seconds, 1) if seconds and seconds > 0 else None


def statistics(text: str, units: list[str], duration: float | None) -> dict[str, Any]:
    """Word, sentence and vocabulary counts of a transcript."""
    all_words = words(text)
    return {
        "word_count": len(all_words),
        "unique_words": len(set(all_words)),
        "sentence_count": len(units),
        "average_sentence_words": round(len(all_words) / len(units), 1) if units else 0.0,
        "lexical_diversity": round(len(set(all_words)) / len(all_words), 3) if all_words else 0.0,
        "duration": duration,
        "words_per_minute": per_minute(len(all_words), duration),
    }


# -------------------------------------------------------------------- metadata


def metadata(job: Job) -> dict[str, Any]:
    """Duration, language, model, counts, speed and the input's audio format of a completed job (else 409)."""
    transcript = jobs.require_transcript(job)
    segments = transcript["segments"]
    word_count = sum(len(words(s["text"])) for s in segments)
    media = job.media_info or {}
    rtf = None
    if job.processing_seconds is not None and job.duration:
        rtf = round(job.processing_seconds / job.duration, 3)
    return {
        "id": job.id,
        "job_id": job.id,
        "filename": job.original_filename,
        "duration": job.duration,
        "language": transcript["language"] or job.language,
        "model": job.model,
        "segment_count": len(segments),
        "word_count": word_count,
        "words_per_minute": per_minute(word_count, job.duration),
        "processing_seconds": job.processing_seconds,
        "real_time_factor": rtf,
        "codec": media.get("codec"),
        "sample_rate": media.get("sample_rate"),
        "channels": media.get("channels"),
        "format": media.get("format_name"),
        "keywords": keywords(transcript["text"]),
    }


# -------------------------------------------------------------------- analysis


def analyze(cfg: Mapping[str, Any], job: Job) -> dict[str, Any]:
    """The remote analysis when an API key is configured, otherwise the local one; 409 before completion."""
    transcript = jobs.require_transcript(job)
    text = transcript["text"]
    units = sentences(text, [s["text"] for s in transcript["segments"]])
    found = keywords(text)
    stats = statistics(text, units, job.duration)
    body: dict[str, Any] = {"job_id": job.id}
    if cfg.get("OPENAI_API_KEY"):
        summary, analysis = remote_analysis(cfg, text)
        body.update(provider="openai", model=cfg["OPENAI_MODEL"], summary=summary, analysis=analysis)
    else:
        chosen = summary_sentences(units)
        body.update(
            provider="local",
            model=None,
            summary=" ".join(chosen),
            summary_sentences=chosen,
            analysis=_local_analysis(stats, found),
        )
    body.update(keywords=found, statistics=stats)
    return body


def _local_analysis(stats: dict[str, Any], found: list[dict[str, Any]]) -> str:
    parts = [f"{stats['word_count']} words in {stats['sentence_count']} sentences"]
    if stats["words_per_minute"] is not None:
        parts.append(f"spoken at {stats['words_per_minute']} words per minute")
    if found:
        parts.append("most frequent topics: " + ", ".join(k["keyword"] for k in found[:5]))
    return "; ".join(parts) + "."


def remote_analysis(cfg: Mapping[str, Any], text: str) -> tuple[str, Any]:
    """Summary and analysis from the chat-completions endpoint: 502 when it fails, 503 while the breaker is open."""
    try:
        with analysis_breaker.calling():  # holds pybreaker's lock only for the state check, not the request
            content = _ask(cfg, text)
    except pybreaker.CircuitBreakerError as exc:
        wait = retry_after(analysis_breaker) or int(analysis_breaker.reset_timeout)
        raise AppError(
            503,
            "ANALYSIS_UNAVAILABLE",
            f"The analysis endpoint failed repeatedly; try again in {wait} s",
            {"Retry-After": str(wait)},
        ) from exc
    except RemoteRejected as exc:
        raise AppError(502, "ANALYSIS_REJECTED", str(exc)) from exc
    except RemoteFailed as exc:
        raise AppError(502, "ANALYSIS_FAILED", str(exc)) from exc
    return parse_reply(content)


def _ask(cfg: Mapping[str, Any], text: str) -> str:
    url = str(cfg.get("OPENAI_BASE_URL") or "https://api.openai.com/v1").rstrip("/") + "/chat/completions"
    payload = {
        "model": cfg["OPENAI_MODEL"],
        "messages": [
            {"role": "system", "content": SYSTEM_PROMPT},
            {"role": "user", "content": "Transcript:\n" + text[:MAX_PROMPT_CHARS]},
        ],
        "temperature": 0.2,
    }
    headers = {"Authorization": f"Bearer {cfg['OPENAI_API_KEY']}"}
    try:
        response = requests.post(
            url, json=payload, headers=headers, timeout=float(cfg.get("ANALYSIS_TIMEOUT_SECONDS") or 60)
        )
    except requests.RequestException as exc:
        # The exception's text may carry the URL but never the headers; the type is enough for the client.
        log.warning("analysis endpoint unreachable: %s", type(exc).__name__)
        raise RemoteFailed(f"The analysis endpoint could not be reached ({type(exc).__name__})") from exc
    if response.status_code == 429 or response.status_code >= 500:
        log.warning("analysis endpoint answered %s", response.status_code)
        raise RemoteFailed(f"The analysis endpoint answered {response.status_code}")
    if response.status_code >= 400:
        log.warning("analysis endpoint refused the request with %s", response.status_code)
        raise RemoteRejected(
            f"The analysis endpoint refused the request ({response.status_code}); "
            "check OPENAI_API_KEY, OPENAI_BASE_URL and OPENAI_MODEL"
        )
    try:
        content = response.json()["choices"][0]["message"]["content"]
    except (ValueError, KeyError, IndexError, TypeError) as exc:
        raise RemoteFailed("The analysis endpoint's answer is not a chat completion") from exc
    if not isinstance(content, str) or not content.strip():
        raise RemoteFailed("The analysis endpoint's answer is empty")
    return content


def parse_reply(content: str) -> tuple[str, Any]:
    """``(summary, analysis)`` from the model's JSON reply; plain text becomes the summary."""
    stripped = content.strip()
    fenced = re.fullmatch(r"```(?:json)?\s*(.*?)\s*```", stripped, re.DOTALL)
    if fenced:
        stripped = fenced.group(1)
    try:
        data = json.loads(stripped)
    except ValueError:
        return content.strip(), None
    if not isinstance(data, dict) or "summary" not in data:
        return content.strip(), None
    return str(data["summary"]), data.get("analysis")
