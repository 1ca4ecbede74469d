"""Subtitles people can read: line and cue limits, timing from the words, karaoke, and the old layout on request."""

from __future__ import annotations

import json
import random
import re
import shutil
import subprocess
from dataclasses import dataclass
from itertools import pairwise

import pytest

from app.errors import AppError
from app.services import exports, subtitles
from tests.conftest import StubEngine
from tests.helpers import AUDIO, MODELS_DIR, assert_error, make_video, reference, wer
from workers import audio, engine, stages

TIME = r"(\d\d):(\d\d):(\d\d)[,.](\d{3})"


@dataclass
class Shown:
    start: int  # milliseconds
    end: int
    lines: list[str]

    @property
    def text(self) -> str:
        """The lines as one line."""
        return " ".join(self.lines)


def _ms(match: tuple[str, ...]) -> int:
    hours, minutes, seconds, ms = (int(x) for x in match)
    return ((hours * 60 + minutes) * 60 + seconds) * 1000 + ms


def parse(body: str) -> list[Shown]:
    """The cues of an SRT or WebVTT document (numbering checked for SRT)."""
    vtt = body.startswith("WEBVTT")
    blocks = body.strip().split("\n\n")[1 if vtt else 0 :]
    cues = []
    for number, block in enumerate(blocks, start=1):
        lines = block.splitlines()
        if not vtt:
            assert lines.pop(0) == str(number), block
        times = re.fullmatch(f"{TIME} --> {TIME}", lines[0])
        assert times, block
        cues.append(Shown(_ms(times.groups()[:4]), _ms(times.groups()[4:]), lines[1:]))
    return cues


def assert_readable(cues: list[Shown], text: str, *, width: int = 42, count: int = 2, longest: float = 7.0) -> None:
    """Every limit of the issue, on rendered cues, and their text joined is the transcript's text."""
    assert cues
    for k, cue in enumerate(cues):
        assert 1 <= len(cue.lines) <= count, cue
        assert all(line and (len(line) <= width or " " not in line) for line in cue.lines), cue
        assert 0 < cue.end - cue.start <= longest * 1000, cue
        touches_next = k + 1 < len(cues) and cue.end == cues[k + 1].start
        touches_previous = k > 0 and cue.start == cues[k - 1].end
        # At least 1 s and at most ~20 characters a second, unless the next cue leaves no time.
        assert cue.end - cue.start >= 1000 or (touches_next and touches_previous), cue
        speed = len(cue.text) / ((cue.end - cue.start) / 1000)
        assert speed <= 20.5 or touches_next or cue.end - cue.start >= longest * 1000 - 1, (cue, speed)
    for before, after in pairwise(cues):
        assert before.start < after.start and before.end <= after.start, (before, after)
    assert " ".join(c.text for c in cues) == " ".join(text.split())


# ----------------------------------------------------------------- synthetic


def timed_segment(spec: list[tuple[str, float, float]]) -> dict:
    """A segment from (word, start, end) triples, with the engine's word list."""
    return {
        "start": spec[0][1],
        "end": spec[-1][2],
        "text": " ".join(w for w, _, _ in spec),
        "words": [{"word": w, "start": s, "end": e, "probability": 0.9} for w, s, e in spec],
    }


def spoken(
    text: str, start: float, *, per_char: float = 0.06, gap: float = 0.05, pauses: dict[str, float] | None = None
) -> list[tuple[str, float, float]]:
    """Words at a steady pace from ``start``; ``pauses`` adds silence after the named words."""
    out, at = [], start
    for word in text.split():
        end = at + 0.1 + per_char * len(word)
        out.append((word, round(at, 3), round(end, 3)))
        at = end + gap + (pauses or {}).get(word, 0.0)
    return out


def test_a_sentence_followed_by_a_pause_ends_its_cue_and_quick_ones_may_share():
    """Two sentences with a pause between them never share a cue; said in one breath, they may."""
    paused = timed_segment(spoken("Come here. Sit down.", 0.0, pauses={"here.": 0.6}))
    cues = subtitles.build_cues([paused])
    assert [c.text for c in cues] == ["Come here.", "Sit down."]
    quick = timed_segment(spoken("Come here. Sit down.", 0.0, gap=0.02))
    assert [c.text for c in subtitles.build_cues([quick])] == ["Come here. Sit down."]


def test_long_speech_breaks_lines_at_punctuation_and_never_inside_a_word():
    """A cue too long for one line breaks after the comma; no line passes 42 characters."""
    text = "When the storm finally passed over the valley, the farmers went out to count their sheep."
    cues = subtitles.build_cues([timed_segment(spoken(text, 0.0))])
    shown = [line for cue in cues for line in cue.text.splitlines()]
    assert all(len(line) <= 42 for line in shown)
    assert any(line.endswith("valley,") for line in shown), shown
    assert " ".join(shown).split() == text.split()


def test_a_word_longer_than_a_line_keeps_its_own_line_whole():
    """Lines never break inside a word, even one longer than the limit."""
    word = "Donaudampfschifffahrtsgesellschaftskapitänsmützenabzeichen"
    cues = subtitles.build_cues([timed_segment(spoken(f"Look at this {word} here.", 0.0))])
    lines = [line for cue in cues for line in cue.text.splitlines()]
    assert word in lines and all(len(line) <= 42 for line in lines if line != word)


def test_a_cue_never_lasts_longer_than_max_cue_seconds():
    """Slow speech is split before 7 s (or the option's limit), a word drawn out alone is cut at the limit."""
    slow = timed_segment(spoken("we are going very slowly now and nobody is in a hurry at all", 0.0, per_char=0.25))
    for longest in (7.0, 3.0):
        cues = subtitles.build_cues([slow], subtitles.layout(max_cue_seconds=longest))
        assert all(c.end - c.start <= longest + 1e-9 for c in cues) and len(cues) > 1
    drawn = timed_segment([("Noooooo", 0.0, 12.0)])
    assert [(c.start, c.end) for c in subtitles.build_cues([drawn])] == [(0.0, 7.0)]


def test_short_cues_stay_up_a_second_and_long_enough_to_read_when_silence_follows():
    """A quick 'Yes.' followed by silence stays 1 s; a fast line stays until read (20 characters a second)."""
    cues = subtitles.build_cues(
        [
            timed_segment([("Yes.", 1.0, 1.2)]),
            timed_segment(spoken("Absolutely everything considered, certainly not.", 5.0, per_char=0.01)),
        ]
    )
    assert (cues[0].start, cues[0].end) == (1.0, 2.0)
    assert cues[1].end - cues[1].start >= len(cues[1].text) / 20 - 1e-9


def test_options_set_the_line_width_count_and_cue_length():
    """max_line_width, max_line_count and max_cue_seconds bound every cue."""
    text = " ".join(["alpha beta gamma delta epsilon zeta eta theta"] * 6)
    segment = timed_segment(spoken(text, 0.0))
    body = exports.to_srt({"segments": [segment]}, max_line_width=20, max_line_count=1, max_cue_seconds=3)
    assert_readable(parse(body), text, width=20, count=1, longest=3)


def test_segments_without_word_times_spread_their_time_by_length():
    """Old transcripts and CTranslate2 jobs without words: a segment's time is shared by its words."""
    words = subtitles.segment_words({"start": 10.0, "end": 12.0, "text": " Hello there, world."})
    assert [w.text for w in words] == ["Hello", "there,", "world."] and not any(w.timed for w in words)
    assert words[0].start == 10.0 and words[-1].end == 12.0
    assert all(a.end == b.start for a, b in pairwise(words))


def test_word_times_are_matched_to_the_text_by_characters():
    """Engine words cut differently from the text's words still time them; words that do not match are ignored."""
    segment = {
        "start": 0.0,
        "end": 2.0,
        "text": "Mr. Smith's car.",
        "words": [
            {"word": "Mr", "start": 0.1, "end": 0.3},
            {"word": ".", "start": 0.3, "end": 0.4},
            {"word": "Smith", "start": 0.5, "end": 0.9},
            {"word": "'s", "start": 0.9, "end": 1.0},
            {"word": "car.", "start": 1.2, "end": 1.6},
        ],
    }
    words = subtitles.segment_words(segment)
    assert [(w.text, w.start, w.end) for w in words] == [("Mr.", 0.1, 0.4), ("Smith's", 0.5, 1.0), ("car.", 1.2, 1.6)]
    segment["words"][2]["word"] = "Smyth"
    assert not any(w.timed for w in subtitles.segment_words(segment))


def test_ten_minutes_without_punctuation_keep_every_limit_and_break_at_pauses():
    """No punctuation at all: the limits still hold, and cues end mostly where the speaker paused."""
    rng = random.Random(14)
    vocabulary = [
        "the",
        "a",
        "we",
        "it",
        "and",
        "so",
        "then",
        "there",
        "people",
        "river",
        "window",
        "quickly",
        "morning",
        "remember",
    ]
    segments, at, pauses = [], 0.0, set()
    while at < 600:
        spec = []
        for _ in range(rng.randint(15, 40)):
            word = rng.choice(vocabulary)
            end = at + 0.1 + 0.05 * len(word) + rng.random() * 0.1
            spec.append((word, round(at, 3), round(end, 3)))
            at = end + (rng.uniform(0.4, 0.9) if rng.random() < 0.08 else rng.uniform(0.0, 0.08))
            if at - end >= 0.4:
                pauses.add(round(end, 3))
        segments.append(timed_segment(spec))
        at += rng.uniform(0.0, 0.5)
    text = " ".join(s["text"] for s in segments)
    cues = parse(exports.to_srt({"segments": segments}))
    assert_readable(cues, text)
    assert segments[-1]["end"] > 600 and len(cues) > 100
    at_pause = sum(1 for c in cues if c.end / 1000 in pauses or any(abs(c.end / 1000 - p) < 0.002 for p in pauses))
    assert at_pause >= 0.3 * len(cues)  # pauses follow only ~8 % of the words


def test_max_line_width_zero_keeps_one_cue_per_segment_exactly_as_before():
    """The layout before this issue: one cue per segment, the engine's text with blank lines dropped."""
    transcript = {
        "segments": [
            {"start": 0.0, "end": 1.5, "text": " Hello there."},
            {
                "start": 3725.25,
                "end": 3727.999,
                "text": "General\tKenobi.\n\nYou are --> bold.",
                "words": [{"word": "General", "start": 3725.3, "end": 3725.6}],
            },
            {"start": 3728.0, "end": 3740.0, "text": " ".join(["word"] * 40)},
        ]
    }
    srt = exports.to_srt(transcript, max_line_width=0)
    assert srt == (
        "1\n00:00:00,000 --> 00:00:01,500\nHello there.\n\n"
        "2\n01:02:05,250 --> 01:02:07,999\nGeneral\tKenobi.\nYou are --> bold.\n\n"
        f"3\n01:02:08,000 --> 01:02:20,000\n{' '.join(['word'] * 40)}\n"
    )
    vtt = exports.to_vtt(transcript, max_line_width="0")
    assert vtt.startswith("WEBVTT\n\n00:00:00.000 --> 00:00:01.500\nHello there.\n\n")
    assert "01:02:05.250 --> 01:02:07.999\nGeneral\tKenobi.\nYou are -> bold.\n" in vtt
    assert len(parse(vtt)) == 3


def test_karaoke_vtt_tags_each_word_when_it_is_spoken():
    """highlight_words: every word after a cue's first carries an increasing timestamp inside the cue."""
    segments = [
        timed_segment(
            spoken(
                "And so, my fellow Americans: ask not what your country can do for you.",
                0.3,
                pauses={"Americans:": 0.8},
            )
        )
    ]
    plain = parse(exports.to_vtt({"segments": segments}))
    body = exports.to_vtt({"segments": segments}, highlight_words=True)
    karaoke = parse(body)
    assert [(c.start, c.end) for c in karaoke] == [(c.start, c.end) for c in plain]
    for cue, flat in zip(karaoke, plain, strict=True):
        tags = [_ms(t) for t in re.findall(f"<{TIME}>", cue.text)]
        assert len(tags) == len(flat.text.split()) - 1
        assert cue.start < tags[0] and tags == sorted(set(tags)) and tags[-1] < cue.end
        assert re.sub(f"<{TIME}>", "", cue.text) == flat.text


def test_highlighted_srt_underlines_one_word_at_a_time():
    """SRT has no timestamp tags: each word gets a cue of its own span with that word underlined."""
    segment = timed_segment(spoken("ask what you can do", 1.0))
    blocks = parse(exports.to_srt({"segments": [segment]}, highlight_words="true"))
    assert len(blocks) == 5 and [b.text.count("<u>") for b in blocks] == [1] * 5
    assert all(a.end == b.start for a, b in pairwise(blocks)) and blocks[0].start == 1000
    assert [re.search("<u>(.*?)</u>", b.text).group(1) for b in blocks] == ["ask", "what", "you", "can", "do"]


@pytest.mark.parametrize(
    "options",
    [
        {"max_line_width": -1},
        {"max_line_width": "wide"},
        {"max_line_count": 101},
        {"max_cue_seconds": 0.5},
        {"max_cue_seconds": "nan"},
        {"max_line_width": 4.5},
        {"highlight_words": "maybe"},
        {"colour": "red"},
    ],
)
def test_bad_options_are_a_400_naming_the_option(options):
    """A renderer refuses bad values (for every format) with the standard error."""
    transcript = {"segments": [{"start": 0.0, "end": 1.0, "text": "hi"}]}
    for fmt in ("srt", "vtt", "txt"):
        with pytest.raises(AppError) as info:
            exports.render(transcript, fmt, **options)
        assert info.value.status == 400 and info.value.error_code == "INVALID_PARAMETER"
        assert next(iter(options)) in info.value.detail


def test_sidecar_names_follow_jellyfin_and_bazarr():
    """``<video basename>.<lang>.srt``; und when the language is unknown."""
    assert stages.sidecar_name("Show S01E01.mkv", "en") == "Show S01E01.en.srt"
    assert stages.sidecar_name("Film (2020).en.mkv", None) == "Film (2020).en.und.srt"


# ------------------------------------------------------------- real engine

MODEL = MODELS_DIR / "ggml-tiny.en.bin"


@pytest.fixture(scope="module")
def real() -> dict[str, dict]:
    """jfk and OSR transcribed by whisper.cpp with word times, as the transcribe stage stores them."""
    model = engine.load_engine(MODEL, 2)
    out = {}
    try:
        for clip in ("jfk.flac", "OSR_us_000_0034_8k.flac"):
            result = model.transcribe(audio.decode(AUDIO / clip), words=True)
            segments = [
                {"start": s.start, "end": s.end, "text": s.text.strip(), "words": s.words} for s in result.segments
            ]
            out[clip] = {"segments": segments, "text": " ".join(s["text"] for s in segments if s["text"])}
    finally:
        engine.unload()
    return out


@pytest.mark.parametrize("clip", ["jfk.flac", "OSR_us_000_0034_8k.flac"])
def test_srt_and_vtt_of_the_real_clips_keep_every_limit(real, clip):
    """Every cue respects the limits, times increase, and the cues joined are the transcript."""
    transcript = real[clip]
    assert all(s["words"] for s in transcript["segments"])  # whisper.cpp timed every word
    for body in (exports.to_srt(transcript), exports.to_vtt(transcript)):
        cues = parse(body)
        assert_readable(cues, transcript["text"])
        assert wer(reference(clip), " ".join(c.text for c in cues)) <= 0.15
    if clip.startswith("OSR"):  # read with a pause after every sentence: never two in one cue
        cues = parse(exports.to_srt(transcript))
        assert len(cues) >= 10
        assert all(not re.search(r"[.?!] ", c.text) for c in cues), [c.text for c in cues]


def test_ten_minutes_of_real_word_times_without_punctuation(real):
    """The OSR clip's real word times repeated to 10 minutes with every punctuation mark stripped."""
    osr = real["OSR_us_000_0034_8k.flac"]["segments"]
    bare = lambda text: re.sub(r"[^\w\s']", "", text)  # noqa: E731
    segments = []
    for lap in range(17):
        offset = lap * 35.5
        for s in osr:
            words = [
                {"word": bare(w["word"]), "start": w["start"] + offset, "end": w["end"] + offset}
                for w in s["words"]
                if bare(w["word"]).strip()
            ]
            if bare(s["text"]).strip():
                segments.append(
                    {"start": s["start"] + offset, "end": s["end"] + offset, "text": bare(s["text"]), "words": words}
                )
    text = " ".join(s["text"] for s in segments)
    assert segments[-1]["end"] > 600 and not re.search(r"[.,?!]", text)
    assert_readable(parse(exports.to_srt({"segments": segments})), text)


# --------------------------------------------------------- through the app


class TalkStub(StubEngine):
    """One 9 s segment of two sentences with a pause between them, timed word by word when asked."""

    language = "en"
    TEXT = "First sentence here. And then the second one follows, a little later, as sentences do."

    def transcribe(
        self,
        audio,
        *,
        language=None,
        translate=False,
        prompt=None,
        words=False,
        on_segment=None,
        on_progress=None,
        should_abort=None,
    ):
        StubEngine.calls.append({"language": language, "translate": translate, "prompt": prompt, "words": words})
        spec = spoken(self.TEXT, 0.2, pauses={"here.": 0.8})
        segment = engine.EngineSegment(0.0, 9.0, self.TEXT, 0.9, timed_segment(spec)["words"] if words else None)
        if on_segment:
            on_segment(segment)
        return engine.EngineResult([segment], language or self.language)


@pytest.fixture
def talk(monkeypatch, stub_engine):
    """The engine is :class:`TalkStub`."""
    monkeypatch.setattr(engine, "build", TalkStub)
    engine._cache.clear()
    yield TalkStub
    engine._cache.clear()


def test_exports_are_timed_by_the_stored_words_and_the_options_come_from_the_query(
    client, admin_headers, talk, drain, uploaded_job
):
    """whisper.cpp jobs store word times without being asked; the transcript shows them only when asked."""
    job_id = uploaded_job(client, admin_headers)["job_id"]
    drain()
    assert talk.calls[-1]["words"] is True
    job = client.get(f"/api/jobs/{job_id}", headers=admin_headers).get_json()
    assert "words" not in job["transcript"]["segments"][0]
    url = f"/api/export/download/{job_id}"
    cues = parse(client.get(f"{url}/srt", headers=admin_headers).get_data(as_text=True))
    assert [c.text for c in cues] == [
        "First sentence here.",
        "And then the second one follows, a little later, as sentences do.",
    ]
    assert cues[0].start == 200 and cues[1].start == round(
        timed_segment(spoken(TalkStub.TEXT, 0.2, pauses={"here.": 0.8}))["words"][3]["start"] * 1000
    )
    assert_readable(cues, TalkStub.TEXT)
    old = parse(client.get(f"{url}/srt?max_line_width=0", headers=admin_headers).get_data(as_text=True))
    assert [(c.start, c.end, c.text) for c in old] == [(0, 9000, TalkStub.TEXT)]
    narrow = parse(
        client.get(f"{url}/vtt?max_line_width=20&max_line_count=3", headers=admin_headers).get_data(as_text=True)
    )
    assert_readable(narrow, TalkStub.TEXT, width=20, count=3)
    karaoke = client.get(f"/jobs/{job_id}/download?format=vtt&highlight_words=true", headers=admin_headers)
    assert karaoke.status_code == 200 and re.search(f"<{TIME}>then", karaoke.get_data(as_text=True))
    assert_error(client.get(f"{url}/srt?max_line_count=abc", headers=admin_headers), 400, "INVALID_PARAMETER")


def test_openai_srt_and_vtt_answers_follow_the_rules(client, admin_headers, talk, background_worker):
    """/v1/audio/transcriptions with response_format srt or vtt is laid out like an export."""
    for fmt in ("srt", "vtt"):
        with open(AUDIO / "jfk.flac", "rb") as f:
            response = client.post(
                "/v1/audio/transcriptions",
                headers=admin_headers,
                data={"file": (f, "jfk.flac"), "model": "whisper-1", "response_format": fmt},
            )
        assert response.status_code == 200, response.get_data(as_text=True)
        cues = parse(response.get_data(as_text=True))
        assert cues[0].text == "First sentence here." and len(cues) == 2


@pytest.fixture
def library(app, tmp_path):
    """A media root with one episode, configured as WT_MEDIA_ROOTS."""
    root = tmp_path / "library"
    root.mkdir()
    shutil.copy(AUDIO / "jfk.flac", root / "Show S01E01.flac")
    app.config["MEDIA_ROOTS"] = str(root)
    return root


def test_sidecar_takes_the_detected_language_and_is_laid_out(client, admin_headers, talk, drain, library):
    """A webhook without a language: the sidecar is named after the language the engine heard."""
    talk.language = "fr"
    try:
        response = client.post(
            "/webhook",
            headers=admin_headers,
            content_type="application/json",
            data=json.dumps({"path": str(library / "Show S01E01.flac")}),
        )
        assert response.status_code == 200, response.get_json()
        drain()
    finally:
        talk.language = "en"
    sidecar = library / "Show S01E01.fr.srt"
    assert sidecar.exists() and not (library / "Show S01E01.en.srt").exists()
    assert [c.text for c in parse(sidecar.read_text())][0] == "First sentence here."


def test_muxed_subtitle_track_is_laid_out(app, client, admin_headers, talk, drain, tmp_path):
    """The subtitle track added to a video is written by the same rules."""
    video = make_video(AUDIO / "jfk.flac", tmp_path / "clip.mkv")
    with open(video, "rb") as f:
        response = client.post("/upload", headers=admin_headers, data={"file": (f, "clip.mkv")})
    task_id = response.headers["X-Job-ID"]
    drain()
    out = tmp_path / "out.mkv"
    download = client.get(f"/download/{task_id}", headers=admin_headers)
    out.write_bytes(download.data)
    download.close()  # send_file's open file
    track = subprocess.run(
        ["ffmpeg", "-v", "error", "-i", str(out), "-map", "0:s:0", "-f", "srt", "-"], capture_output=True, check=True
    ).stdout.decode()
    assert [c.text for c in parse(track)] == [
        "First sentence here.",
        "And then the second one follows, a little later, as sentences do.",
    ]


@pytest.mark.e2e
def test_export_of_a_real_job_is_readable(live_server):
    """HTTP, the queue and whisper.cpp: the SRT and karaoke VTT of OSR keep every limit and match the speech."""
    job_id = live_server.submit(AUDIO / "OSR_us_000_0034_8k.flac")
    job = live_server.wait(job_id)
    assert job["status"] == "completed", job
    text = job["transcript"]["text"]
    srt = live_server.get(f"/api/export/download/{job_id}/srt")
    assert srt.status_code == 200
    cues = parse(srt.text)
    assert_readable(cues, text)
    assert not any(re.search(r"[.?!] ", c.text) for c in cues)  # a pause follows every sentence of this clip
    assert wer(reference("OSR_us_000_0034_8k.flac"), " ".join(c.text for c in cues)) <= 0.15
    karaoke = live_server.get(f"/api/export/download/{job_id}/vtt", params={"highlight_words": "true"}).text
    assert karaoke.startswith("WEBVTT") and re.search(f"<{TIME}>", karaoke)
    old = parse(live_server.get(f"/api/export/download/{job_id}/srt", params={"max_line_width": 0}).text)
    assert len(old) == len(job["transcript"]["segments"])
