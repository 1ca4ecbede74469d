"""Which stages a job runs, in order: read by the worker runtime to run them and by services to show them."""

from __future__ import annotations

from app.models import Job

PLANS: dict[str, tuple[str, ...]] = {
    "transcribe": ("decode", "transcribe", "finalize"),
    "video": ("decode", "transcribe", "finalize", "mux"),
    "sidecar": ("decode", "transcribe", "finalize", "export"),
}
CLEANUP = ("ingest", "denoise", "resample")


def plan_for(job: Job) -> tuple[str, ...]:
    """The stage names a job runs, in order."""
    if job.kind == "cleanup":
        return CLEANUP + PLANS["transcribe"] if job.options.get("transcribe") else CLEANUP
    return PLANS[job.kind]
