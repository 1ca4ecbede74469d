"""Prometheus metrics at ``/metrics/``: HTTP requests by route template, and job figures read at scrape time.

The registry belongs to this module, not prometheus_client's global one, and every metric in it
is created once at import: apps created later (one per test) share the counters and never
register a metric twice. Job, queue and worker figures come from the database when scraped, so
the worker process needs no metrics server of its own.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Iterator

from flask import Blueprint, Flask, Response, g, request
from prometheus_client import CollectorRegistry, Counter, Histogram, PlatformCollector, ProcessCollector
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.exposition import choose_encoder
from prometheus_client.multiprocess import MultiProcessCollector
from prometheus_client.registry import Collector

from app.models import Job
from app.services import totals, wyoming_stats
from workers.queue import consumer_alive

log = logging.getLogger(__name__)
bp = Blueprint("metrics", __name__)

REGISTRY = CollectorRegistry()
# Methods outside this set share one label value, so made-up methods cannot grow the series.
METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})

HTTP_REQUESTS = Counter(
    "whisper_http_requests_total",
    "Total number of HTTP requests processed",
    ["method", "endpoint", "status_code"],
    registry=REGISTRY,
)
HTTP_DURATION = Histogram(
    "whisper_http_request_duration_seconds",
    "Time spent answering HTTP requests",
    ["method", "endpoint"],
    registry=REGISTRY,
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0),
)


class JobCollector(Collector):
    """Jobs by status, queue depth, worker liveness, audio transcribed and real-time factors, from the database."""

    def collect(self) -> Iterator[Metric]:
        """Read the figures now; a database error leaves the job metrics out of this scrape."""
        yield GaugeMetricFamily(
            "whisper_worker_up", "1 when a worker wrote its heartbeat recently", value=1.0 if consumer_alive() else 0.0
        )
        try:
            counts = Job.counts_by_status()
            done = totals.read()
        except Exception:
            log.exception("metrics: cannot read jobs")
            return
        jobs = GaugeMetricFamily("whisper_jobs", "Jobs on record by status", labels=["status"])
        for status, n in counts.items():
            jobs.add_metric([status], n)
        yield jobs
        yield GaugeMetricFamily("whisper_queue_depth", "Jobs waiting for a worker", value=counts.get("queued", 0))
        # Stored running totals (app/services/totals.py): deleting old jobs does not lower them.
        yield CounterMetricFamily(
            "whisper_jobs_completed", "Jobs completed since the database was created", value=done["jobs"]
        )
        yield CounterMetricFamily(
            "whisper_audio_seconds_transcribed", "Seconds of media in completed jobs", value=done["audio_seconds"]
        )
        yield CounterMetricFamily(
            "whisper_loops_suppressed",
            "Pieces of audio decoded again because their text repeated itself",
            value=done.get("loops_suppressed", 0),
        )
        buckets = [(str(le), float(n)) for le, n in zip(totals.RTF_BUCKETS, done["rtf_buckets"], strict=True)]
        buckets.append(("+Inf", float(done["rtf_count"])))
        yield HistogramMetricFamily(
            "whisper_realtime_factor",
            "Processing seconds per second of media, per completed job",
            buckets=buckets,
            sum_value=done["rtf_sum"],
        )


class WyomingCollector(Collector):
    """Voice commands of the Wyoming server (not jobs), from the totals its process stores in the database."""

    def collect(self) -> Iterator[Metric]:
        """Read the totals now; a database error leaves them out of this scrape."""
        try:
            done = wyoming_stats.read()
        except Exception:
            log.exception("metrics: cannot read the Wyoming totals")
            return
        requests = CounterMetricFamily(
            "whisper_wyoming_requests",
            "Wyoming voice commands by outcome (ok: transcript sent; error: error event; abandoned: client left)",
            labels=["outcome"],
        )
        for outcome, n in done["requests"].items():
            requests.add_metric([outcome], n)
        yield requests
        yield CounterMetricFamily(
            "whisper_wyoming_audio_seconds",
            "Seconds of audio in transcribed voice commands",
            value=done["audio_seconds"],
        )
        buckets = [
            (str(le), float(n)) for le, n in zip(wyoming_stats.LATENCY_BUCKETS, done["latency_buckets"], strict=True)
        ]
        buckets.append(("+Inf", float(done["requests"].get("ok", 0))))
        yield HistogramMetricFamily(
            "whisper_wyoming_latency_seconds",
            "Seconds from a command's audio-stop to its transcript",
            buckets=buckets,
            sum_value=done["latency_sum"],
        )


REGISTRY.register(JobCollector())
REGISTRY.register(WyomingCollector())
ProcessCollector(registry=REGISTRY)
PlatformCollector(registry=REGISTRY)


def _start_timer() -> None:
    g.metrics_started = time.perf_counter()


def _count_request(response: Response) -> Response:
    # The route template, never the raw path: /api/jobs/<job_id> is one series, not one per job.
    endpoint = request.url_rule.rule if request.url_rule is not None else "unmatched"
    method = request.method if request.method in METHODS else "OTHER"
    HTTP_REQUESTS.labels(method, endpoint, str(response.status_code)).inc()
    started = g.get("metrics_started")
    if started is not None:
        HTTP_DURATION.labels(method, endpoint).observe(time.perf_counter() - started)
    return response


def install(app: Flask) -> None:
    """Count and time every request of ``app``."""
    app.before_request(_start_timer)
    app.after_request(_count_request)


def _registry() -> CollectorRegistry:
    """This module's registry; under several web processes (WEB_PROCESSES, PROMETHEUS_MULTIPROC_DIR set by
    config/gunicorn.conf.py) one that sums every process's request counters from prometheus_client's files."""
    if not os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        return REGISTRY
    if not _shared:
        registry = CollectorRegistry()
        MultiProcessCollector(registry)
        registry.register(JobCollector())
        registry.register(WyomingCollector())
        _shared.append(registry)
    return _shared[0]


_shared: list[CollectorRegistry] = []


@bp.get("/metrics")
@bp.get("/metrics/")
def metrics():
    """Prometheus metrics in the text exposition format (or OpenMetrics when asked for)."""
    encoder, content_type = choose_encoder(request.headers.get("Accept", ""))
    return Response(encoder(_registry()), content_type=content_type)
