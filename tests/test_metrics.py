"""GET /metrics/: Prometheus exposition, request counters by route template, and job figures from the database."""

from __future__ import annotations

import pytest
from prometheus_client.parser import text_string_to_metric_families

pytestmark = pytest.mark.database  # scripts/test runs these on PostgreSQL too


def scrape(client, path: str = "/metrics/") -> dict[tuple[str, frozenset], float]:
    """Every sample of a scrape, keyed by sample name and labels (parsing also checks the format)."""
    response = client.get(path)
    assert response.status_code == 200
    assert response.content_type.startswith("text/plain") and "version=" in response.content_type
    return {
        (sample.name, frozenset(sample.labels.items())): sample.value
        for family in text_string_to_metric_families(response.get_data(as_text=True))
        for sample in family.samples
    }


def value(samples, name: str, **labels: str) -> float:
    """One sample's value, 0 when absent."""
    return samples.get((name, frozenset(labels.items())), 0.0)


def test_metrics_are_served_in_the_prometheus_text_format(client):
    """The v1 API's counter is there with its HELP and TYPE lines, at /metrics/ and /metrics."""
    client.get("/health")
    text = client.get("/metrics/").get_data(as_text=True)
    assert "# HELP whisper_http_requests_total Total number of HTTP requests processed" in text
    assert "# TYPE whisper_http_requests_total counter" in text
    assert (
        value(
            scrape(client, "/metrics"),
            "whisper_http_requests_total",
            method="GET",
            endpoint="/health",
            status_code="200",
        )
        >= 1
    )


def test_requests_are_counted_by_route_template_not_raw_path(client, admin_headers):
    """Two unknown job ids add to one series; paths no route matches share "unmatched"."""
    before = scrape(client)
    client.get("/api/jobs/first-made-up-id", headers=admin_headers)
    client.get("/api/jobs/second-made-up-id", headers=admin_headers)
    client.get("/no/such/path/4711")
    after = scrape(client)
    labels = {"method": "GET", "endpoint": "/api/jobs/<job_id>", "status_code": "404"}
    assert (
        value(after, "whisper_http_requests_total", **labels) - value(before, "whisper_http_requests_total", **labels)
        == 2
    )
    unmatched = {"method": "GET", "endpoint": "unmatched", "status_code": "404"}
    assert value(after, "whisper_http_requests_total", **unmatched) > value(
        before, "whisper_http_requests_total", **unmatched
    )
    assert not any("made-up-id" in v or "4711" in v for _, labels in after for _, v in labels)


def test_request_durations_are_observed_in_a_histogram(client):
    """Each request adds one observation under its route."""
    before = scrape(client)
    client.get("/health")
    after = scrape(client)
    name = "whisper_http_request_duration_seconds_count"
    assert (
        value(after, name, method="GET", endpoint="/health")
        == value(before, name, method="GET", endpoint="/health") + 1
    )
    assert (
        value(after, "whisper_http_request_duration_seconds_bucket", method="GET", endpoint="/health", le="+Inf") >= 1
    )


def test_made_up_methods_share_one_label(client):
    """Clients cannot grow the series by inventing methods."""
    client.open("/health", method="BREW")
    samples = scrape(client)
    assert value(samples, "whisper_http_requests_total", method="OTHER", endpoint="unmatched", status_code="405") >= 1
    assert not any(dict(labels).get("method") == "BREW" for _, labels in samples)


def test_jobs_by_status_queue_depth_audio_seconds_and_realtime_factor(
    client, admin_headers, stub_engine, drain, uploaded_job
):
    """Read from the database at scrape time, so they describe this app's jobs."""
    for _ in range(2):
        uploaded_job(client, admin_headers)
    samples = scrape(client)
    assert value(samples, "whisper_jobs", status="queued") == 2 and value(samples, "whisper_queue_depth") == 2
    assert value(samples, "whisper_audio_seconds_transcribed_total") == 0
    drain()
    samples = scrape(client)
    assert value(samples, "whisper_jobs", status="completed") == 2 and value(samples, "whisper_queue_depth") == 0
    assert 21 < value(samples, "whisper_audio_seconds_transcribed_total") < 23  # jfk.flac is 11 s
    assert value(samples, "whisper_realtime_factor_count") == 2 and value(samples, "whisper_realtime_factor_sum") > 0
    buckets = sorted(
        (float(dict(labels)["le"]), v)
        for (name, labels), v in samples.items()
        if name == "whisper_realtime_factor_bucket"
    )
    assert buckets[-1] == (float("inf"), 2) and [v for _, v in buckets] == sorted(v for _, v in buckets)


def test_completed_work_counters_do_not_drop_when_jobs_are_deleted(
    client, admin_headers, stub_engine, drain, uploaded_job
):
    """Retention cleanup deletes jobs; Prometheus must not see the totals go down."""
    ids = [uploaded_job(client, admin_headers)["job_id"] for _ in range(2)]
    drain()
    before = scrape(client)
    for job_id in ids:
        assert client.delete(f"/api/jobs/{job_id}", headers=admin_headers).status_code == 200
    after = scrape(client)
    for name in (
        "whisper_jobs_completed_total",
        "whisper_audio_seconds_transcribed_total",
        "whisper_realtime_factor_count",
        "whisper_realtime_factor_sum",
    ):
        assert value(after, name) == value(before, name) > 0, name
    assert value(after, "whisper_jobs_completed_total") == 2


def test_totals_start_from_the_jobs_on_record_and_count_each_completion_once(
    app, client, admin_headers, stub_engine, drain, uploaded_job
):
    """A database from before the totals existed: the first read counts its completed jobs."""
    from app.models import Setting
    from app.services import totals

    uploaded_job(client, admin_headers)
    drain()
    with app.app_context():
        Setting.delete().where(Setting.key == totals.KEY).execute()  # as if written by an older version
        assert totals.read()["jobs"] == 1
        Setting.delete().where(Setting.key == totals.KEY).execute()
    uploaded_job(client, admin_headers)
    drain()  # this completion starts the totals from the one job on record, then adds itself
    samples = scrape(client)
    assert value(samples, "whisper_jobs_completed_total") == 2
    assert 21 < value(samples, "whisper_audio_seconds_transcribed_total") < 23


def test_worker_up_follows_the_heartbeat(client):
    """0 without a recent heartbeat, 1 with one."""
    from workers import queue

    assert value(scrape(client), "whisper_worker_up") == 0
    queue.beat()
    assert value(scrape(client), "whisper_worker_up") == 1


def test_openmetrics_is_served_when_asked_for(client):
    """Prometheus may negotiate OpenMetrics."""
    response = client.get("/metrics/", headers={"Accept": "application/openmetrics-text; version=1.0.0"})
    assert response.content_type.startswith("application/openmetrics-text")
    assert response.get_data(as_text=True).rstrip().endswith("# EOF")
