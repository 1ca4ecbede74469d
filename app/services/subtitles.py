"""Subtitle cues people can read: broadcast line and cue limits, timed by the words.

Every SRT and VTT the appliance writes is laid out here (the renderers live in ``exports``). By default:
at most 42 characters per line and 2 lines per cue, cues of 1–7 s, reading speed at most about
20 characters per second where the speech leaves the time, breaks at punctuation and pauses and never
inside a word, and never one cue for two sentences that a pause separates. Times come from the engine's
word timestamps; a segment without them (CTranslate2 jobs that did not ask, transcripts from before)
spreads its segment's time over its words by their length. ``max_line_width=0`` keeps one cue per segment.

Pure functions over plain data, no Flask: the worker's mux and sidecar stages use them too.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

SENTENCE_END = ".?!…。？！"
CLAUSE_END = ",;:—–、，；："
CLOSERS = "\"'”’»)]}"

# whisper.cpp hands the silence after a word to that word: a word lasting longer than its letters need
# (this much plus this much per character) ends in a pause.
WORD_BASE_SECONDS = 0.15
WORD_CHAR_SECONDS = 0.07
SENTENCE_PAUSE = 0.25  # a sentence end followed by this much silence always ends the cue
SEGMENT_PAUSE = 0.4  # so does the end of an engine segment (whisper's own phrase end) followed by this much
LONG_PAUSE = 1.5  # and any silence this long

# The cost of a layout (lower is better): cues, extra lines, breaks in bad places, cues too short or too fast.
CUE_COST = 0.5
LINE_COST = 0.25
BREAK_WEIGHT = 3.0
MIX_COST = 0.8  # a cue holding the end of one sentence and the start of the next
SEGMENT_MIX_COST = 0.4  # or of one engine segment and the next (what is left when there is no punctuation)
SHORT_COST = 2.0
FAST_COST = 0.5
CLAUSE_BADNESS = 0.3
SEGMENT_END_FACTOR = 0.3
HALF_BADNESS_PAUSE = 0.15
UNTIMED_BADNESS = 0.5
LINE_BREAK_WEIGHT = 3.0
LINE_BALANCE_WEIGHT = 10.0
LINE_LAYOUT_BUDGET = 1_000_000  # beyond this many steps a cue's lines are filled greedily instead


@dataclass(frozen=True)
class Layout:
    """The limits a cue keeps; ``max_line_width`` 0 means one cue per segment, ``max_line_count`` 0 no limit."""

    max_line_width: int = 42
    max_line_count: int = 2
    max_cue_seconds: float = 7.0
    highlight_words: bool = False
    min_cue_seconds: float = 1.0
    max_chars_per_second: float = 20.0

    @property
    def per_segment(self) -> bool:
        """True when cues follow the engine's segments as they are (the layout before these rules)."""
        return self.max_line_width <= 0

    @property
    def line_count(self) -> int:
        """The line limit as a number (0 stands for no limit)."""
        return self.max_line_count if self.max_line_count > 0 else 1_000_000


LIMITS = {"max_line_width": (0, 1000), "max_line_count": (0, 100), "max_cue_seconds": (1.0, 60.0)}  # accepted ranges


def layout(
    max_line_width: int | str | None = None,
    max_line_count: int | str | None = None,
    max_cue_seconds: float | str | None = None,
    highlight_words: bool | str | None = None,
) -> Layout:
    """A checked :class:`Layout`; ``None`` keeps a default. Raises ``ValueError`` naming the bad option."""
    values: dict[str, Any] = {}
    for name, raw in (
        ("max_line_width", max_line_width),
        ("max_line_count", max_line_count),
        ("max_cue_seconds", max_cue_seconds),
    ):
        if raw is None or (isinstance(raw, str) and not raw.strip()):
            continue
        lo, hi = LIMITS[name]
        problem = f"{name} must be {'a number' if name == 'max_cue_seconds' else 'an integer'} from {lo:g} to {hi:g}"
        try:
            value = float(raw.strip() if isinstance(raw, str) else raw)
        except (TypeError, ValueError) as exc:
            raise ValueError(problem) from exc
        if isinstance(raw, bool) or not math.isfinite(value) or not lo <= value <= hi:
            raise ValueError(problem)
        if name != "max_cue_seconds":
            if not value.is_integer():
                raise ValueError(problem)
            value = int(value)
        values[name] = value
    if highlight_words is not None:
        values["highlight_words"] = _flag(highlight_words)
    return Layout(**values)


def _flag(raw: bool | str) -> bool:
    if isinstance(raw, bool):
        return raw
    text = str(raw).strip().lower()
    if text in ("true", "1", "yes", "on"):
        return True
    if text in ("false", "0", "no", "off", ""):
        return False
    raise ValueError("highlight_words must be true or false")


@dataclass
class Word:
    """One word as shown, with its time; ``timed`` is False when the time was spread over the segment."""

    text: str
    start: float
    end: float
    timed: bool = True
    segment_end: bool = False  # the last word of an engine segment


@dataclass
class Cue:
    """One subtitle: its time and its lines, each a list of words."""

    start: float
    end: float
    lines: list[list[Word]] = field(default_factory=list)

    @property
    def words(self) -> list[Word]:
        """The cue's words in order."""
        return [w for line in self.lines for w in line]

    @property
    def text(self) -> str:
        """The lines joined by newlines, the words of a line by spaces."""
        return "\n".join(" ".join(w.text for w in line) for line in self.lines)


# ------------------------------------------------------------------ words


def segment_words(segment: Mapping[str, Any]) -> list[Word]:
    """The segment's text split at white space, each piece timed by the engine's words when they match it."""
    tokens = str(segment.get("text") or "").split()
    if not tokens:
        return []
    start = float(segment["start"])
    end = max(float(segment["end"]), start)
    times = align(tokens, segment.get("words") or [])
    timed = times is not None
    if times is None:
        times = interpolate(tokens, start, end)
    words, floor = [], start
    for token, (t0, t1) in zip(tokens, times, strict=True):
        t0 = min(max(t0, floor), end)  # inside the segment and never before the previous word
        t1 = min(max(t1, t0), end)
        words.append(Word(token, t0, t1, timed))
        floor = t0
    words[-1].segment_end = True
    return words


def align(tokens: list[str], engine_words: Iterable[Mapping[str, Any]]) -> list[tuple[float, float]] | None:
    """Each token's (start, end) from the engine's words, matched character by character; None if they differ.

    The engine's words are usually the same pieces, but not always (a word of several tokens, punctuation
    glued on), so the times go by characters: a token starts with the word holding its first character.
    """
    owners: list[int] = []
    spans: list[tuple[float, float]] = []
    letters = []
    for w in engine_words:
        text = "".join(str(w.get("word") or "").split())
        if not text:
            continue
        owners.extend([len(spans)] * len(text))
        spans.append((float(w["start"]), float(w["end"])))
        letters.append(text)
    if not spans or "".join(letters) != "".join(tokens):
        return None
    times, at = [], 0
    for token in tokens:
        first, last = owners[at], owners[at + len(token) - 1]
        times.append((spans[first][0], spans[last][1]))
        at += len(token)
    return times


def interpolate(tokens: list[str], start: float, end: float) -> list[tuple[float, float]]:
    """Spread ``start``–``end`` over the tokens by their length: each holds until the next starts, the last
    until ``end`` (no pauses are made up where nothing is known)."""
    offsets, at = [], 0
    for token in tokens:
        offsets.append(at)
        at += len(token) + 1
    scale = (end - start) / max(at - 1, 1)
    starts = [start + offset * scale for offset in offsets]
    return list(zip(starts, [*starts[1:], end], strict=True))


def words_of(segments: Iterable[Mapping[str, Any]]) -> list[Word]:
    """Every segment's words, in order of time (a word never starts before the one before it)."""
    words: list[Word] = []
    for segment in segments:
        for word in segment_words(segment):
            if words and word.start < words[-1].start:
                word.start = words[-1].start
                word.end = max(word.end, word.start)
            words.append(word)
    return words


# ------------------------------------------------------------------ where to break


def _bare(text: str) -> str:
    return text.rstrip(CLOSERS)


def is_sentence_end(text: str) -> bool:
    """True when the word ends a sentence (closing quotes and brackets aside)."""
    bare = _bare(text)
    return bool(bare) and bare[-1] in SENTENCE_END


def is_clause_end(text: str) -> bool:
    """True when the word ends with a comma, semicolon, colon or dash."""
    bare = _bare(text)
    return bool(bare) and bare[-1] in CLAUSE_END


def pause_after(words: list[Word], k: int) -> float:
    """Seconds of silence between word ``k`` and the next: the gap, plus what word ``k`` lasts beyond its letters."""
    word, following = words[k], words[k + 1]
    gap = max(0.0, following.start - word.end)
    if not word.timed:
        return gap
    needed = WORD_BASE_SECONDS + WORD_CHAR_SECONDS * len(word.text)
    return gap + max(0.0, word.end - word.start - needed)


def must_break(words: list[Word], k: int) -> bool:
    """True when no cue may hold both word ``k`` and the next: a sentence or segment end with a pause, a long pause."""
    pause = pause_after(words, k)
    return (
        pause >= LONG_PAUSE
        or (pause >= SENTENCE_PAUSE and is_sentence_end(words[k].text))
        or (pause >= SEGMENT_PAUSE and words[k].segment_end)
    )


def break_badness(words: list[Word], k: int) -> float:
    """How bad a break after word ``k`` is: 0 after a sentence, 0.3 after a clause, 1 mid-phrase.

    A pause makes any break better, the longer the better (0.15 s halves the badness), and so does the
    end of an engine segment, where whisper itself heard a phrase end.
    """
    word = words[k]
    base = 0.0 if is_sentence_end(word.text) else CLAUSE_BADNESS if is_clause_end(word.text) else 1.0
    if word.segment_end:
        base *= SEGMENT_END_FACTOR
    elif not word.timed:
        base += UNTIMED_BADNESS  # the break's time would be a guess: split an untimed segment only if it must
    return base / (1.0 + (pause_after(words, k) / HALF_BADNESS_PAUSE) ** 2)


# ------------------------------------------------------------------ cues


def plan(words: list[Word], rules: Layout) -> list[tuple[int, int]]:
    """The best split of ``words`` into cues, as (first, end) index pairs, by dynamic programming.

    A cue must fit its lines (a word longer than a line gets a line of its own) and ``max_cue_seconds``
    (a single word always fits) and hold no forced break; among the splits that do, the cheapest wins.
    """
    n = len(words)
    if not n:
        return []
    forced = [must_break(words, k) for k in range(n - 1)]
    badness = [break_badness(words, k) for k in range(n - 1)] + [0.0]
    # What a cue pays for each sentence or segment that ends inside it.
    # (inside a segment without word times a sentence end is no place to cut: its time would be a guess).
    mix = [
        MIX_COST * (is_sentence_end(w.text) and (w.timed or w.segment_end)) + SEGMENT_MIX_COST * w.segment_end
        for w in words
    ]
    width, count = rules.max_line_width, rules.line_count
    best = [0.0] + [math.inf] * n
    back = [0] * (n + 1)
    for j in range(1, n + 1):
        last = words[j - 1]
        next_start = words[j].start if j < n else math.inf
        line, lines, chars, mixed = 0, 1, 0, 0.0
        for i in range(j - 1, -1, -1):
            size = len(words[i].text)
            if i == j - 1:
                line, chars = size, size
            else:
                # Lines filled from the end backwards: the fewest lines these words can take.
                if line + 1 + size <= width:
                    line += 1 + size
                else:
                    lines, line = lines + 1, size
                chars += 1 + size
                if lines > count or last.end - words[i].start > rules.max_cue_seconds or forced[i]:
                    break
                mixed += mix[i]
            cost = best[i] + cue_cost(words[i].start, last.end, next_start, chars, lines, mixed, rules)
            if j < n:
                cost += BREAK_WEIGHT * badness[j - 1]
            if cost < best[j]:
                best[j], back[j] = cost, i
    spans, j = [], n
    while j > 0:
        spans.append((back[j], j))
        j = back[j]
    return spans[::-1]


def cue_cost(start: float, end: float, next_start: float, chars: int, lines: int, mixed: float, rules: Layout) -> float:
    """The cost of one cue from its speech time, the time it may stay up, its size and what ends inside it."""
    span = max(end - start, 0.0)
    room = min(max(next_start - start, span), rules.max_cue_seconds)  # the cue may stay until the next one
    cost = CUE_COST + LINE_COST * (lines - 1) + mixed
    if room < rules.min_cue_seconds:
        cost += SHORT_COST * (rules.min_cue_seconds - room) / rules.min_cue_seconds
    speed = chars / max(room, 0.001)
    if speed > rules.max_chars_per_second:
        cost += FAST_COST * (speed - rules.max_chars_per_second) / rules.max_chars_per_second
    return cost


def wrap(words: list[Word], width: int) -> list[list[Word]]:
    """The words in as few lines as fit ``width``, as even as can be, broken at punctuation and pauses.

    A word longer than ``width`` gets a line of its own: lines never break inside a word.
    """
    greedy = _greedy(words, width)  # filling each line in turn gives the fewest lines
    lines = len(greedy)
    if lines <= 1 or len(words) * len(words) * lines > LINE_LAYOUT_BUDGET:
        return greedy
    sizes = [len(w.text) for w in words]
    average = (sum(sizes) + len(words) - lines) / lines
    m = len(words)
    cost = [[math.inf] * (lines + 1) for _ in range(m + 1)]
    back = [[0] * (lines + 1) for _ in range(m + 1)]
    cost[0][0] = 0.0
    for end in range(1, m + 1):
        size, after = -1, LINE_BREAK_WEIGHT * break_badness(words, end - 1) if end < m else 0.0
        for first in range(end - 1, -1, -1):
            size += sizes[first] + 1
            if size > width and end - first > 1:
                break
            step = after + LINE_BALANCE_WEIGHT * ((size - average) / max(width, 1)) ** 2
            for used in range(1, lines + 1):
                total = cost[first][used - 1] + step
                if total < cost[end][used]:
                    cost[end][used], back[end][used] = total, first
    if math.isinf(cost[m][lines]):
        return greedy
    out, end, used = [], m, lines
    while end > 0:
        first = back[end][used]
        out.append(words[first:end])
        end, used = first, used - 1
    return out[::-1]


def _greedy(words: list[Word], width: int) -> list[list[Word]]:
    lines: list[list[Word]] = []
    size = 0
    for word in words:
        if lines and size + 1 + len(word.text) <= width:
            lines[-1].append(word)
            size += 1 + len(word.text)
        else:
            lines.append([word])
            size = len(word.text)
    return lines


def retime(cues: list[Cue], rules: Layout) -> list[Cue]:
    """Give each cue time to be read: at least ``min_cue_seconds`` and ~20 characters a second where the
    silence after it allows, never over ``max_cue_seconds``, never overlapping, always increasing."""
    previous_end = 0.0
    for k, cue in enumerate(cues):
        next_start = cues[k + 1].start if k + 1 < len(cues) else math.inf
        cue.start = max(cue.start, previous_end)
        cue.end = min(max(cue.end, cue.start), cue.start + rules.max_cue_seconds)
        chars = len(cue.text.replace("\n", " "))
        wanted = min(max(rules.min_cue_seconds, chars / rules.max_chars_per_second), rules.max_cue_seconds)
        if cue.end - cue.start < wanted:
            cue.end = max(cue.end, min(cue.start + wanted, next_start))
        if cue.end - cue.start < rules.min_cue_seconds:  # squeezed by the next cue: start a little earlier
            cue.start = max(previous_end, min(cue.start, cue.end - rules.min_cue_seconds))
        cue.end = max(cue.end, cue.start + 0.001)
        previous_end = cue.end
    return cues


def build_cues(segments: Iterable[Mapping[str, Any]], rules: Layout | None = None) -> list[Cue]:
    """The transcript's segments as readable cues (or one cue per segment when ``max_line_width`` is 0)."""
    rules = rules or Layout()
    segments = list(segments)
    if rules.per_segment:
        return per_segment_cues(segments, words=rules.highlight_words)
    words = words_of(segments)
    cues = [
        Cue(words[i].start, words[j - 1].end, wrap(words[i:j], rules.max_line_width)) for i, j in plan(words, rules)
    ]
    return retime(cues, rules)


def per_segment_cues(segments: Iterable[Mapping[str, Any]], *, words: bool = False) -> list[Cue]:
    """One cue per segment with its text as the engine wrote it; ``words`` splits it into timed words instead."""
    cues = []
    for s in segments:
        if words and (timed := segment_words(s)):
            lines = [timed]
        else:
            # A blank line would end the cue early in both SRT and VTT.
            texts = [line for line in str(s.get("text") or "").strip().splitlines() if line.strip()] or [" "]
            lines = [[Word(text, float(s["start"]), float(s["end"]), False)] for text in texts]
        cues.append(Cue(float(s["start"]), float(s["end"]), lines))
    return cues


def highlight_steps(cue: Cue) -> list[tuple[float, float, list[int]]]:
    """For karaoke: (start, end, indexes of the words being spoken) spans that cover the cue in order.

    Each word holds from its start (the cue's start for the first) until the next word starts (the
    cue's end for the last); a word that starts no later than the one before, or not before the cue's
    end, joins that one's span.
    """
    steps: list[tuple[float, float, list[int]]] = []
    for k, word in enumerate(cue.words):
        start = cue.start if k == 0 else max(word.start, cue.start)
        if steps and (start <= steps[-1][0] or start >= cue.end):
            steps[-1][2].append(k)
            continue
        if steps:
            steps[-1] = (steps[-1][0], start, steps[-1][2])
        steps.append((start, cue.end, [k]))
    return steps
