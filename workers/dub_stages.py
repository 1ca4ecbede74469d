"""The dubbing stages of a job: translate → synthesize → fit → mix (then ``mux`` or ``dub_export``).

Each caches its output under ``cache/<job id>/`` like the other stages, so a retry resumes after the last
one that finished; synthesize also keeps every clip it made, so a retry after a failing speech server
speaks only the segments still missing. The media work is in ``workers/dubbing.py``.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import pybreaker

from app.errors import AppError
from app.services import analysis, dubs, languages, transitions
from app.services.breaker import engine_breaker, retry_after
from workers import audio, dubbing, engine, modelstore, stages, tuning
from workers.atomicfile import PUBLIC, AtomicFile, atomic_write

TRANSLATION_CACHE = "translation.json"
CLIPS_CACHE = "clips.json"
FIT_CACHE = "fit.json"
VOICE_CACHE = "voice.wav"  # the voice-only stem
DUB_CACHE = dubbing.DUB_AUDIO  # the dub mixed over the ducked original


def _target(ctx: stages.StageContext) -> str:
    return str((ctx.job.options or {}).get("dub") or ctx.cfg["DUB_LANGUAGE"])


def _read(ctx: stages.StageContext, name: str) -> Any:
    return json.loads((ctx.cache / name).read_text())


def _timeout(ctx: stages.StageContext) -> float:
    return float(ctx.cfg.get("DUB_TIMEOUT_SECONDS") or 60)


def _save(ctx: stages.StageContext, name: str, data: Any) -> Path:
    out = ctx.cache / name
    atomic_write(out, json.dumps(data))
    return out


def _whisper_translation(ctx: stages.StageContext, language: str | None) -> list[dict[str, Any]]:
    """whisper's own translate task over the decoded audio, with a multilingual model."""
    samples = audio.load_pcm(ctx.cache / stages.AUDIO_CACHE)
    duration = max(samples.size / audio.SAMPLE_RATE, 0.001)
    try:
        model = dubs.multilingual_model(ctx.cfg, ctx.job.model)
        choice = tuning.choose(ctx.cfg, model, duration)
    except AppError as exc:
        raise audio.MediaError(exc.detail) from exc
    except modelstore.ModelError as exc:
        raise audio.MediaError(f"model {model} is no longer installed") from exc

    def on_progress(value: float) -> None:
        ctx.report(min(99.0, value), 0)

    def load_and_translate() -> engine.EngineResult:
        loaded = engine.load_engine(choice.path, int(ctx.cfg["ENGINE_THREADS"]), choice.backend)
        return loaded.transcribe(
            samples, language=language, translate=True, on_progress=on_progress, should_abort=ctx.should_abort
        )

    result = engine_breaker.call(load_and_translate)
    ctx.log("INFO", f"whisper translated {len(result.segments)} segments to English with {choice.label}")
    return [{"start": s.start, "end": s.end, "text": s.text.strip()} for s in result.segments]


def _chat_translation(ctx: stages.StageContext, segments: list[dict[str, Any]], target: str) -> list[dict[str, Any]]:
    """The chat model, segment by segment, so each keeps its time slot; its breaker is the analysis one."""
    name = languages.name_of(target)
    out = []
    for i, segment in enumerate(segments):
        text = segment["text"].strip()
        if dubbing.speakable(text):
            try:
                with analysis.analysis_breaker.calling():  # the same endpoint as the analysis: one breaker
                    text = dubbing.chat_translate(ctx.cfg, text, name, _timeout(ctx))
            except dubbing.RemoteError as exc:
                raise audio.MediaError(f"translating segment {i + 1} failed: {exc}") from exc
            except pybreaker.CircuitBreakerError as exc:
                wait = retry_after(analysis.analysis_breaker) or 60
                raise audio.MediaError(f"the translation server failed repeatedly; retry in {wait} s") from exc
        out.append({"start": segment["start"], "end": segment["end"], "text": text})
        ctx.report(100.0 * (i + 1) / len(segments), i + 1, len(segments))
        if ctx.should_abort():
            raise engine.Aborted()
    ctx.log("INFO", f"the chat model translated {len(segments)} segments into {name}")
    return out


def translate(ctx: stages.StageContext) -> Path:
    """The transcript's segments in the dub's language → translation.json."""
    transcript = _read(ctx, stages.TRANSCRIPT_CACHE)
    target, source = _target(ctx), transcript.get("language")
    segments = [{"start": s["start"], "end": s["end"], "text": s["text"].strip()} for s in transcript["segments"]]
    if source == target:
        ctx.log("INFO", f"the speech is already in {target}; the dub speaks the transcript")
        how = "none"
    elif dubs.llm_configured(ctx.cfg):
        segments, how = _chat_translation(ctx, segments, target), "chat"
    elif target == "en":
        segments, how = _whisper_translation(ctx, ctx.job.language or source), "whisper"
    else:
        raise audio.MediaError(f"a dub in {target!r} needs a chat model (OPENAI_BASE_URL); offline only English")
    return _save(ctx, TRANSLATION_CACHE, {"language": target, "translated_by": how, "segments": segments})


def synthesize(ctx: stages.StageContext) -> Path:
    """One speech clip per segment (espeak-ng, or the TTS server) → clips.json; unspeakable segments are skipped."""
    segments = _read(ctx, TRANSLATION_CACHE)["segments"]
    target, timeout = _target(ctx), _timeout(ctx)
    folder = ctx.cache / "clips"
    folder.mkdir(exist_ok=True)
    clips, skipped = [], 0
    for i, segment in enumerate(segments):
        if not dubbing.speakable(segment["text"]):
            skipped += 1
            continue
        clip = folder / f"speech-{i:05d}.wav"
        if not clip.exists():  # a retry keeps the clips a failed run already made
            if ctx.cfg.get("TTS_BASE_URL"):
                try:
                    dubbing.remote_speech(dict(ctx.cfg), segment["text"], clip, timeout)
                except dubbing.RemoteError as exc:
                    raise audio.MediaError(f"speaking segment {i + 1} failed: {exc}") from exc
            else:
                dubbing.espeak(segment["text"], target, clip, timeout)
        clips.append({"index": i, "start": segment["start"], "end": segment["end"], "clip": str(clip)})
        ctx.report(100.0 * (i + 1) / len(segments), i + 1, len(segments))
        if ctx.should_abort():
            raise engine.Aborted()
    ctx.log("INFO", f"spoke {len(clips)} segments" + (f", skipped {skipped} with nothing to say" if skipped else ""))
    return _save(ctx, CLIPS_CACHE, {"clips": clips, "skipped": skipped})


def _media_seconds(ctx: stages.StageContext) -> float:
    transcript = _read(ctx, stages.TRANSCRIPT_CACHE)
    return float(transcript.get("audio_seconds") or ctx.job.duration or 0.0)


def fit(ctx: stages.StageContext) -> Path:
    """Each clip into its segment's slot (sped up to ``DUB_MAX_TEMPO``, then into the silence after) → fit.json."""
    data = _read(ctx, CLIPS_CACHE)
    clips, end_of_media = data["clips"], _media_seconds(ctx)
    starts = sorted(c["start"] for c in clips)
    folder = ctx.cache / "fitted"
    folder.mkdir(exist_ok=True)
    placed = []
    for n, item in enumerate(clips):
        later = [s for s in starts if s > item["start"]]
        limit = min(later[0] if later else end_of_media, end_of_media or float("inf"))
        placed.append(
            dubbing.fit(
                item["index"],
                Path(item["clip"]),
                item["start"],
                item["end"],
                limit,
                folder / f"fit-{item['index']:05d}.wav",
                max_tempo=float(ctx.cfg["DUB_MAX_TEMPO"]),
                timeout=_timeout(ctx),
            )
        )
        ctx.report(100.0 * (n + 1) / len(clips), n + 1, len(clips))
    sped_up = sum(1 for p in placed if p.tempo > 1.0)
    overflowed = sum(1 for p in placed if p.overflow > 0.0)
    counts = {"segments": len(placed), "sped_up": sped_up, "overflowed": overflowed, "skipped": data["skipped"]}
    transitions.update_stage(ctx.job.id, "fit", **counts)  # shown with the stage, beside its status
    ctx.log("INFO", f"fitted {len(placed)} clips: {sped_up} sped up, {overflowed} ran into the following silence")
    return _save(ctx, FIT_CACHE, {**counts, "placed": [p.to_dict() for p in placed]})


def mix(ctx: stages.StageContext) -> Path:
    """The voice-only stem (kept in the cache) and the dub mixed over the original, lowered under speech."""
    placed = [dubbing.Placed(**p) for p in _read(ctx, FIT_CACHE)["placed"]]
    voice = dubbing.voice_stem(placed, _media_seconds(ctx), ctx.cache / VOICE_CACHE)
    ctx.report(40.0, 0)
    channels = int((ctx.job.media_info or {}).get("channels") or 2)
    timeout = float(ctx.cfg["FFMPEG_TIMEOUT_SECONDS"])
    out = dubbing.mix(ctx.source(), voice, placed, ctx.cache / DUB_CACHE, timeout, channels)
    ctx.log("INFO", f"mixed the {_target(ctx)} dub over the original audio ({len(placed)} clips)")
    return out


def dub_export(ctx: stages.StageContext) -> Path:
    """Write the dub next to library media as ``<basename>.<lang>.dub.m4a``; the media file itself is never touched."""
    source = ctx.source()
    target = source.with_name(dubbing.dub_file_name(source.name, _target(ctx)))
    if target.exists() and not ctx.cfg.get("SIDECAR_OVERWRITE"):
        ctx.log("WARNING", f"{target.name} exists; kept (set WT_SIDECAR_OVERWRITE=true to replace it)")
        return target
    with AtomicFile(target, mode=PUBLIC) as out, open(ctx.cache / DUB_CACHE, "rb") as dub, open(out.temp, "wb") as f:
        shutil.copyfileobj(dub, f)
    ctx.log("INFO", f"wrote dub sidecar {target}")
    return target


DUB_STAGES = (
    stages.Stage("translate", "translating", 40, translate),
    stages.Stage("synthesize", "synthesizing", 10, synthesize),
    stages.Stage("fit", "fitting", 3, fit),
    stages.Stage("mix", "mixing", 4, mix),
    stages.Stage("dub_export", "exporting", 2, dub_export),
)


def register_stages() -> None:
    """Add the dubbing stages to the runner's table (the pipeline does it when a worker is configured)."""
    for stage in DUB_STAGES:
        stages.register(stage)
