"""Transcript search through HTTP: FTS5 or tsvector matching, ranking, snippets, filters, visibility and bad input."""

from __future__ import annotations

import re
from datetime import datetime

import pytest

from tests.helpers import assert_error, post_clip

pytestmark = pytest.mark.database
URL = "/api/search/"


def completed_job(app, client, headers, texts: list[str], **fields) -> str:
    """A job uploaded over HTTP, then completed with these segment texts the way the worker stores them."""
    from app.models import Job, Segment

    job_id = post_clip(client, headers).get_json()["job_id"]
    with app.app_context():
        Segment.insert_many(
            [
                {"job": job_id, "idx": i, "start": 2.0 * i, "end": 2.0 * i + 2, "text": text, "confidence": 0.9}
                for i, text in enumerate(texts)
            ]
        ).execute()
        done = {"status": "completed", "stage": "completed", "detected_language": "en", "text": " ".join(texts)}
        Job.update(**{**done, **fields}).where(Job.id == job_id).execute()
    return job_id


def search(client, headers, query, **body):
    """POST /api/search/ and return the response."""
    return client.post(URL, headers=headers, json={"query": query, **body})


def found(client, headers, query, **body) -> list[str]:
    """The job ids a search returns, in order."""
    response = search(client, headers, query, **body)
    assert response.status_code == 200, response.get_json()
    return [r["job_id"] for r in response.get_json()["results"]]


def test_search_returns_jobs_with_matching_segments_snippets_and_timestamps(app, client, admin_headers):
    """The full API's result shape: relevance, matches with text, timestamp and confidence, total and query_time."""
    lecture = completed_job(
        app,
        client,
        admin_headers,
        ["Welcome to the lecture.", "Today we discuss machine learning algorithms.", "Machine learning is fun."],
    )
    completed_job(app, client, admin_headers, ["Cooking pasta at home."])
    body = search(client, admin_headers, "machine learning").get_json()
    assert body["total"] == 1 and re.fullmatch(r"\d+\.\d{3}s", body["query_time"])
    result = body["results"][0]
    assert result["job_id"] == lecture and result["filename"] == "jfk.flac" and result["relevance_score"] == 1.0
    assert result["created_at"].endswith("Z") and result["match_count"] == 2
    assert {m["timestamp"] for m in result["matches"]} == {2.0, 4.0}
    assert all("machine learning" in m["text"].lower() and m["confidence"] == 0.9 for m in result["matches"])


def test_better_matches_rank_first_with_scores_in_0_to_1(app, client, admin_headers):
    """bm25 decides the order; the best job scores 1.0 and every score is above 0."""
    weak = completed_job(
        app,
        client,
        admin_headers,
        [
            "A long sentence that mentions a transcriber only once "
            "among many other words about unrelated things entirely."
        ],
    )
    strong = completed_job(app, client, admin_headers, ["Transcriber, transcriber, transcriber."])
    results = search(client, admin_headers, "transcriber").get_json()["results"]
    assert [r["job_id"] for r in results] == [strong, weak]
    assert results[0]["relevance_score"] == 1.0 and 0 < results[1]["relevance_score"] < 1


def test_words_are_stemmed_and_phrases_and_prefixes_work(app, client, admin_headers):
    """ "learn" finds "learning"; a quoted phrase needs its words together; "algo*" is a prefix."""
    together = completed_job(app, client, admin_headers, ["We like machine learning."])
    apart = completed_job(app, client, admin_headers, ["The machine is learning slowly, with algorithms."])
    assert set(found(client, admin_headers, "learn")) == {together, apart}
    assert found(client, admin_headers, '"machine learning"') == [together]
    assert found(client, admin_headers, "algo*") == [apart]
    assert found(client, admin_headers, "machine nonexistentword") == []


def test_users_search_only_their_own_jobs_and_admins_search_all(app, client, admin_headers, user_headers):
    """Visibility follows the jobs API."""
    bob = user_headers("bob")
    mine = completed_job(app, client, bob, ["secret plans for the weekend"])
    theirs = completed_job(app, client, admin_headers, ["the secret recipe"])
    assert found(client, bob, "secret") == [mine]
    assert set(found(client, admin_headers, "secret")) == {mine, theirs}


def test_filters_by_date_range_models_and_languages(app, client, admin_headers):
    """Each filter narrows the results; a bare end date includes that day."""
    old = completed_job(app, client, admin_headers, ["budget meeting"], created_at=datetime(2025, 10, 1, 9))
    late = completed_job(app, client, admin_headers, ["budget meeting"], created_at=datetime(2025, 10, 23, 23, 59))
    german = completed_job(
        app,
        client,
        admin_headers,
        ["budget meeting"],
        model="base",
        detected_language="de",
        created_at=datetime(2025, 11, 5),
    )
    in_october = {"date_range": {"start": "2025-10-01", "end": "2025-10-23"}}
    assert set(found(client, admin_headers, "budget", filters=in_october)) == {old, late}
    after = {"date_range": {"start": "2025-10-02T00:00:00Z"}}
    assert set(found(client, admin_headers, "budget", filters=after)) == {late, german}
    assert found(client, admin_headers, "budget", filters={"models": ["base", "large-v3"]}) == [german]
    assert set(found(client, admin_headers, "budget", filters={"languages": ["en"]})) == {old, late}
    assert found(client, admin_headers, "budget", filters={"languages": ["DE"], "models": ["tiny.en"]}) == []


def test_limit_and_offset_page_over_jobs(app, client, admin_headers):
    """total counts every matching job, whatever the page."""
    for _ in range(3):
        completed_job(app, client, admin_headers, ["quarterly report"])
    first = search(client, admin_headers, "report", limit=2).get_json()
    rest = search(client, admin_headers, "report", limit=2, offset=2).get_json()
    assert (first["total"], len(first["results"]), rest["total"], len(rest["results"])) == (3, 2, 3, 1)
    assert not {r["job_id"] for r in first["results"]} & {r["job_id"] for r in rest["results"]}


def test_deleted_jobs_leave_the_index(app, client, admin_headers):
    """The delete trigger keeps the index in step with the segments."""
    job_id = completed_job(app, client, admin_headers, ["ephemeral words"])
    assert found(client, admin_headers, "ephemeral") == [job_id]
    assert client.delete(f"/api/jobs/{job_id}", headers=admin_headers).status_code == 200
    assert found(client, admin_headers, "ephemeral") == []


def test_segments_written_before_the_index_existed_are_indexed(app, client, admin_headers):
    """Opening an older database builds the index from the segments already there."""
    from pathlib import Path

    from app import models
    from app.db import on_postgresql, open_database

    with app.app_context():
        if on_postgresql():
            models.db.execute_sql("ALTER TABLE segment DROP COLUMN tsv")  # drops its GIN index with it
        else:
            for name in ("segment_fts_ai", "segment_fts_ad", "segment_fts_au"):
                models.db.execute_sql(f"DROP TRIGGER {name}")
            models.db.execute_sql("DROP TABLE segment_fts")
    job_id = completed_job(app, client, admin_headers, ["words from before the upgrade"])
    open_database(app.config["DATABASE_URL"] or Path(app.config["DATA_DIR"]) / "whisper.db", app.config["DATA_DIR"])
    assert found(client, admin_headers, "upgrade") == [job_id]


@pytest.mark.parametrize(
    "query",
    [
        "NEAR(machine learning)",
        '"unbalanced quote',
        "machine OR",
        "AND machine",
        "text:machine",
        "^machine",
        "machine -learning",
        "(((machine",
        "machine*learn",
        "{machine learning}",
        "machine + learning",
        "l'apprentissage",
    ],
)
def test_search_syntax_in_the_query_is_taken_as_words(app, client, admin_headers, query):
    """FTS5 operators from users are never interpreted, so they can never cause a 500."""
    completed_job(app, client, admin_headers, ["machine learning"])
    assert search(client, admin_headers, query).status_code == 200


@pytest.mark.parametrize("query", ["***", '""', "()", "- + ^"])
def test_query_without_words_is_400(client, admin_headers, query):
    """Nothing to search for."""
    assert_error(search(client, admin_headers, query), 400, "INVALID_QUERY")


@pytest.mark.parametrize(
    ("body", "code"),
    [
        ({}, "MISSING_FIELD"),
        ({"query": 5}, "INVALID_FIELD"),
        ({"query": "x" * 501}, "INVALID_FIELD"),
        ({"query": "a", "limit": 0}, "INVALID_FIELD"),
        ({"query": "a", "limit": 101}, "INVALID_FIELD"),
        ({"query": "a", "limit": "10"}, "INVALID_FIELD"),
        ({"query": "a", "offset": -1}, "INVALID_FIELD"),
        ({"query": "a", "filters": []}, "INVALID_FIELD"),
        ({"query": "a", "filters": {"models": "base"}}, "INVALID_FIELD"),
        ({"query": "a", "filters": {"languages": [1]}}, "INVALID_FIELD"),
        ({"query": "a", "filters": {"date_range": "2025"}}, "INVALID_FIELD"),
        ({"query": "a", "filters": {"date_range": {"start": "yesterday"}}}, "INVALID_FIELD"),
        ({"query": "a", "filters": {"date_range": {"start": "2025-10-02", "end": "2025-10-01"}}}, "INVALID_FIELD"),
    ],
)
def test_invalid_fields_are_422(client, admin_headers, body, code):
    """Each field is checked, with the standard error body."""
    assert_error(client.post(URL, headers=admin_headers, json=body), 422, code)


def test_malformed_json_is_400_and_anonymous_is_401(app, client, admin_headers):
    """The usual guards."""
    response = client.post(URL, headers=admin_headers, data="{nope", content_type="application/json")
    assert_error(response, 400, "INVALID_JSON")
    assert_error(app.test_client().post(URL, json={"query": "a"}), 401)
