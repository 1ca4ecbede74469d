"""The media work of dubbing: speech clips per segment, fitted into their time slots, a voice stem and the mix.

Flask-free and app-free: the stages in ``workers/dub_stages.py`` call these with paths and numbers.
Clips are 24 kHz mono 16-bit WAV, whatever made them (espeak-ng or a remote ``/v1/audio/speech``).
"""

from __future__ import annotations

import shutil
import subprocess
import wave
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import requests

from workers.atomicfile import AtomicFile
from workers.audio import MediaError

DUB_AUDIO = "dub.m4a"  # the mix stage's output in the job's cache, which mux adds as a track
RATE = 24_000  # every clip and the voice stem: enough for speech, small for the mix
DUCK_VOLUME = 0.1  # the original under speech: -20 dB, so music and effects stay audible but speech recedes
DUCK_MARGIN = 0.15  # seconds the ducking starts before a clip and ends after it
# espeak-ng voice per target language; other codes are espeak-ng's own names for most languages.
ESPEAK_VOICES = {"en": "en-us", "pt": "pt-br", "zh": "cmn"}


class RemoteError(Exception):
    """A translation or speech server failed: unreachable, an error status, or an answer that is not usable."""


@dataclass
class Placed:
    """One fitted clip: where it starts in the video, how long it plays, and what fitting it took."""

    index: int
    start: float
    seconds: float
    tempo: float  # 1.0, or the atempo factor it was sped up by
    overflow: float  # seconds it runs past its segment's end (into the following silence)
    path: str
    end: float = 0.0  # the segment's end: the original is lowered over the whole segment, not only the clip

    def to_dict(self) -> dict[str, Any]:
        """A JSON-friendly copy."""
        return asdict(self)


def _ffmpeg(args: list[str], timeout: float, what: str) -> None:
    try:
        result = subprocess.run(
            ["ffmpeg", "-nostdin", "-v", "error", "-y", *args], capture_output=True, timeout=timeout, check=False
        )
    except subprocess.TimeoutExpired as exc:
        raise MediaError(f"{what} took longer than {timeout:.0f} s and was stopped", "MEDIA_TIMEOUT") from exc
    if result.returncode != 0:
        raise MediaError(f"{what} failed: {result.stderr.decode(errors='replace')[-300:]}")


def bearer(key: str | None) -> dict[str, str]:
    """The Authorization header that sends an API key to a server; none without a key."""
    return {"Authorization": f"Bearer {key}"} if key else {}


def tts_url(base: str, path: str) -> str:
    """``path`` on the speech server, whether ``TTS_BASE_URL`` ends in ``/v1`` or not."""
    base = base.rstrip("/")
    return f"{base}/{path}" if base.endswith("/v1") else f"{base}/v1/{path}"


def dub_file_name(video: str, language: str) -> str:
    """``Show S01E01.mkv`` + ``en`` → ``Show S01E01.en.dub.m4a``: the dub's name beside its video, or to download."""
    return f"{Path(video).stem}.{language}.dub.m4a"


def speakable(text: str) -> bool:
    """True when a segment has something to say (letters or digits, not only punctuation or a [music] tag)."""
    stripped = text.strip()
    if not stripped or (stripped.startswith(("[", "(")) and stripped.endswith(("]", ")"))):
        return False
    return any(ch.isalnum() for ch in stripped)


def espeak_voice(language: str) -> str:
    """espeak-ng's voice for a language code."""
    return ESPEAK_VOICES.get(language, language)


def normalize(source: Path, out: Path, timeout: float) -> Path:
    """Any audio → a 24 kHz mono 16-bit WAV clip, written atomically."""
    with AtomicFile(out, suffix=".part.wav") as target:
        args = ["-i", str(source), "-ac", "1", "-ar", str(RATE), "-c:a", "pcm_s16le", str(target.temp)]
        _ffmpeg(args, timeout, "a clip")
    return out


def espeak(text: str, language: str, out: Path, timeout: float) -> Path:
    """Speak ``text`` with espeak-ng into ``out`` (the text goes through stdin, so it is never read as an option)."""
    if shutil.which("espeak-ng") is None:
        raise MediaError("espeak-ng is not installed (apt install espeak-ng), and no WT_TTS_BASE_URL is set")
    raw = out.with_suffix(".espeak.wav")
    try:
        result = subprocess.run(
            ["espeak-ng", "-v", espeak_voice(language), "-w", str(raw), "--stdin"],
            input=text.encode(),
            capture_output=True,
            timeout=timeout,
            check=False,
        )
        if result.returncode != 0 or not raw.exists():
            raise MediaError(f"espeak-ng failed: {result.stderr.decode(errors='replace')[-200:]}")
        return normalize(raw, out, timeout)
    finally:
        raw.unlink(missing_ok=True)


def remote_speech(cfg: dict[str, Any], text: str, out: Path, timeout: float) -> Path:
    """Speak ``text`` through an OpenAI-compatible ``/v1/audio/speech`` server (``TTS_BASE_URL``)."""
    url = tts_url(str(cfg["TTS_BASE_URL"]), "audio/speech")
    headers = bearer(cfg.get("TTS_API_KEY"))
    payload = {"model": cfg["TTS_MODEL"], "voice": cfg["TTS_VOICE"], "input": text, "response_format": "wav"}
    try:
        response = requests.post(url, json=payload, headers=headers, timeout=timeout)
    except requests.RequestException as exc:
        raise RemoteError(f"the speech server {url} could not be reached ({type(exc).__name__})") from exc
    if response.status_code != 200 or not response.content:
        raise RemoteError(f"the speech server {url} answered {response.status_code}: {response.text[:200]}")
    raw = out.with_suffix(".remote")
    raw.write_bytes(response.content)
    try:
        return normalize(raw, out, timeout)
    except MediaError as exc:
        raise RemoteError(f"the speech server {url} sent audio that could not be read") from exc
    finally:
        raw.unlink(missing_ok=True)


def chat_translate(cfg: dict[str, Any], text: str, target: str, timeout: float) -> str:
    """One segment's text in ``target`` (a language name) from an OpenAI-compatible chat-completions server."""
    url = str(cfg["OPENAI_BASE_URL"]).rstrip("/") + "/chat/completions"
    headers = bearer(cfg.get("OPENAI_API_KEY"))
    payload = {
        "model": cfg["OPENAI_MODEL"],
        "messages": [
            {
                "role": "system",
                "content": f"Translate the user's text into {target} for a voice-over. "
                "Reply with the translation only, nothing else.",
            },
            {"role": "user", "content": text},
        ],
        "temperature": 0.1,
    }
    try:
        response = requests.post(url, json=payload, headers=headers, timeout=timeout)
    except requests.RequestException as exc:
        raise RemoteError(f"the translation server {url} could not be reached ({type(exc).__name__})") from exc
    if response.status_code != 200:
        raise RemoteError(f"the translation server {url} answered {response.status_code}: {response.text[:200]}")
    try:
        return str(response.json()["choices"][0]["message"]["content"]).strip()
    except (ValueError, KeyError, IndexError, TypeError) as exc:
        raise RemoteError(f"the translation server {url} sent no chat completion") from exc


def clip_seconds(path: Path) -> float:
    """Length of a WAV clip."""
    with wave.open(str(path), "rb") as w:
        return w.getnframes() / float(w.getframerate())


def _atempo_chain(tempo: float) -> str:
    # One atempo accepts 0.5-2.0 in ffmpeg 5; chain them for anything beyond.
    parts = []
    while tempo > 2.0:
        parts.append("atempo=2.0")
        tempo /= 2.0
    parts.append(f"atempo={tempo:.4f}")
    return ",".join(parts)


def fit(
    index: int, clip: Path, start: float, end: float, limit: float, out: Path, *, max_tempo: float, timeout: float
) -> Placed:
    """Fit a clip into its slot ``start``-``end``: as is, sped up (up to ``max_tempo``), then run on to ``limit``.

    ``limit`` is where the next segment starts (or the media ends): a clip never plays over it; what is
    still too long after the fastest tempo is cut there.
    """
    seconds = clip_seconds(clip)
    slot = max(end - start, 0.05)
    room = max(limit - start, slot)
    tempo = 1.0
    if seconds > slot:
        tempo = min(seconds / slot, max_tempo)
    played = min(seconds / tempo, room)
    filters = [_atempo_chain(tempo)] if tempo > 1.0 else []
    with AtomicFile(out, suffix=".part.wav") as target:
        args = ["-i", str(clip), *(["-af", ",".join(filters)] if filters else []), "-t", f"{played:.3f}"]
        _ffmpeg([*args, "-ac", "1", "-ar", str(RATE), "-c:a", "pcm_s16le", str(target.temp)], timeout, "fitting a clip")
    played = clip_seconds(out)
    return Placed(index, start, played, round(tempo, 3), round(max(0.0, start + played - end), 3), str(out), end)


def voice_stem(placed: list[Placed], total_seconds: float, out: Path) -> Path:
    """Every fitted clip at its start in one track of silence ``total_seconds`` long: the voice-only stem."""
    track = np.zeros(int(round(total_seconds * RATE)) + 1, dtype=np.int16)
    for item in placed:
        with wave.open(item.path, "rb") as w:
            samples = np.frombuffer(w.readframes(w.getnframes()), dtype=np.int16)
        at = int(round(item.start * RATE))
        samples = samples[: max(0, track.size - at)]
        track[at : at + samples.size] = samples  # fitting keeps clips apart, so a plain copy cannot overlap
    with AtomicFile(out, suffix=".part.wav") as target, wave.open(str(target.temp), "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(RATE)
        w.writeframes(track.tobytes())
    return out


def duck_expression(placed: list[Placed]) -> str:
    """ffmpeg's ``enable`` expression: true over each segment and its clip (with a margin either side).

    The segment is where the original speaks: left at full level after a short clip, it would talk over the dub.
    """
    spans = [(max(0.0, p.start - DUCK_MARGIN), max(p.end, p.start + p.seconds) + DUCK_MARGIN) for p in placed]
    return "+".join(f"between(t,{a:.3f},{b:.3f})" for a, b in spans) or "0"


def mix(source: Path, voice: Path, placed: list[Placed], out: Path, timeout: float, channels: int = 2) -> Path:
    """The original audio, lowered while the dub speaks, with the voice stem over it → AAC in ``out``.

    A mono original stays mono; anything else becomes stereo, the voice in both channels at full level
    (ffmpeg's own mono-to-stereo conversion would lower it by 3 dB).
    """
    if channels == 1:
        layout, voice_to = "mono", "anull"
    else:
        layout, voice_to = "stereo", "pan=stereo|c0=c0|c1=c0"
    script = out.with_suffix(".filter")
    script.write_text(
        f"[0:a:0]volume=volume={DUCK_VOLUME}:enable='{duck_expression(placed)}',"
        f"aresample=48000,aformat=channel_layouts={layout}[bg];"
        f"[1:a]aresample=48000,{voice_to},aformat=channel_layouts={layout}[voice];"
        "[bg][voice]amix=inputs=2:duration=first:dropout_transition=0:normalize=0[out]"
    )
    try:
        with AtomicFile(out, suffix=".part.m4a") as target:
            args = ["-i", str(source), "-i", str(voice), "-filter_complex_script", str(script), "-map", "[out]"]
            _ffmpeg([*args, "-vn", "-c:a", "aac", "-b:a", "128k", str(target.temp)], timeout, "mixing the dub")
    finally:
        script.unlink(missing_ok=True)
    return out


def track_args(index: int, language3: str, title: str, *, webm: bool) -> list[str]:
    """ffmpeg options that map input 2 as audio track ``index``, tagged, not the default track."""
    codec = [f"-c:a:{index}", "libopus"] if webm else []  # WebM holds Opus or Vorbis, not AAC
    return [
        "-map",
        "2:a:0",
        *codec,
        f"-metadata:s:a:{index}",
        f"language={language3}",
        f"-metadata:s:a:{index}",
        f"title={title}",
        f"-metadata:s:a:{index}",
        f"handler_name={title}",  # MP4 keeps a track's name here (it drops "title")
        f"-disposition:a:{index}",
        "0",
    ]
