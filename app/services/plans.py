"""Which stages a job runs, in order: read by the worker runtime to run them and by services to show them."""

from __future__ import annotations

from app.models import Job

PLANS: dict[str, tuple[str, ...]] = {
    "transcribe": ("decode", "transcribe", "finalize"),
    "video": ("decode", "transcribe", "finalize", "mux"),
    "sidecar": ("decode", "transcribe", "finalize", "export"),
}
CLEANUP = ("ingest", "denoise", "resample")
DUB = ("translate", "synthesize", "fit", "mix")  # after the transcript, before the dub is muxed or written out


def plan_for(job: Job) -> tuple[str, ...]:
    """The stage names a job runs, in order."""
    if job.kind == "cleanup":
        return CLEANUP + PLANS["transcribe"] if job.options.get("transcribe") else CLEANUP
    options = job.options or {}
    if options.get("dub") and job.kind == "video":
        return PLANS["video"][:-1] + DUB + ("mux",)
    if options.get("dub") and job.kind == "sidecar":  # library media: a dub sidecar, or a muxed copy when asked
        return PLANS["sidecar"] + DUB + ("mux" if options.get("dub_mux") else "dub_export",)
    return PLANS[job.kind]
