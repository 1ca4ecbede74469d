"""Full-text search over transcript segments, ranked and grouped by job: FTS5 on SQLite, tsvector on PostgreSQL.

The index (created in :func:`app.db.open_database`) follows the segment table: through triggers into
``segment_fts`` (FTS5, ranked by bm25) on SQLite; as the stored ``segment.tsv`` column with a GIN index
(ranked by ts_rank, English stemming like FTS5's porter tokenizer) on PostgreSQL. User input never reaches
either as syntax: it is cut into words and sent as quoted terms and phrases, all of which must match.
"""

from __future__ import annotations

import re
import time
from datetime import datetime
from typing import Any

from peewee import OperationalError, ProgrammingError

from app.db import on_postgresql, portable_sql
from app.errors import bad_request
from app.models import Job, User, db, isoformat

MAX_TERMS = 32
MATCHES_PER_JOB = 5  # the best segments shown per job; match_count says how many matched
SNIPPET_TOKENS = 24
_PART = re.compile(r'"([^"]*)"|([^\s"]+)')  # a "quoted phrase" or a bare word
_WORD = re.compile(r"\w+")


def _query_parts(text: str) -> list[tuple[list[str], bool]]:
    """User input as words and phrases, each with whether it ends in ``*`` (a prefix)."""
    parts = []
    for phrase, word in _PART.findall(text):
        words = _WORD.findall(phrase or word)
        if words:
            parts.append((words, word.endswith("*")))
    if not parts:
        raise bad_request("query must contain at least one word", "INVALID_QUERY")
    if len(parts) > MAX_TERMS:
        raise bad_request(f"query has more than {MAX_TERMS} words or phrases", "INVALID_QUERY")
    return parts


def fts_query(text: str) -> str:
    """User input as a safe FTS5 expression: quoted words and phrases; ``word*`` matches a prefix."""
    # \w+ never holds a quote, so nothing escapes
    return " AND ".join('"' + " ".join(words) + '"' + (" *" if prefix else "") for words, prefix in _query_parts(text))


def ts_query(text: str) -> str:
    """User input as a safe PostgreSQL ``to_tsquery`` expression: quoted lexemes, ``<->`` phrases, ``:*`` prefixes."""
    parts = []
    for words, prefix in _query_parts(text):
        phrase = " <-> ".join(f"'{word}'" for word in words)  # \w+ never holds a quote or an operator
        parts.append(f"({phrase}{':*' if prefix else ''})")
    return " & ".join(parts)


def _match(text: str) -> str:
    return ts_query(text) if on_postgresql() else fts_query(text)


def _ranked_sql() -> str:
    """The CTE ``ranked``: (segment_id, rank) of every matching segment, lower rank is better."""
    if on_postgresql():  # ts_rank grows with relevance; negated, it orders like bm25
        return (
            "ranked AS MATERIALIZED (SELECT s.id AS segment_id, -ts_rank(s.tsv, q.q) AS rank "
            "FROM segment AS s, to_tsquery('english', ?) AS q(q) WHERE s.tsv @@ q.q)"
        )
    # bm25() only works in a query on the FTS table alone, so rank there first and join afterwards.
    return (
        "ranked AS MATERIALIZED (SELECT rowid AS segment_id, bm25(segment_fts) AS rank "
        "FROM segment_fts WHERE segment_fts MATCH ?)"
    )


def _snippets_sql(count: int) -> str:
    """(segment id, snippet around the matched words) of ``count`` segments; parameters: match, the ids."""
    ids = ", ".join("?" * count)
    if on_postgresql():
        return (
            "SELECT id, ts_headline('english', text, to_tsquery('english', ?), "
            f'\'StartSel="", StopSel="", MaxWords={SNIPPET_TOKENS}, MinWords={SNIPPET_TOKENS // 2}\') '
            f"FROM segment WHERE id IN ({ids})"
        )
    return (
        f"SELECT rowid, snippet(segment_fts, 0, '', '', '...', {SNIPPET_TOKENS}) FROM segment_fts "
        f"WHERE segment_fts MATCH ? AND rowid IN ({ids})"
    )


def _db_time(value: datetime) -> str:
    return value.isoformat(" ")  # how the sqlite3 adapter stores the DateTimeField values compared here


def _hits_sql(
    user: User, match: str, start: datetime | None, end: datetime | None, models: list[str], languages: list[str]
) -> tuple[str, list[Any]]:
    """A WITH clause naming ``hits``: one row per matching segment of a visible, completed job, with its rank."""
    where = ["j.status = 'completed'"]
    params: list[Any] = [match]
    if user.role != "admin":  # the same rule as Job.visible_to
        where.append("j.user_id = ?")
        params.append(user.id)
    if start is not None:
        where.append("j.created_at >= ?")
        params.append(_db_time(start))
    if end is not None:
        where.append("j.created_at < ?")
        params.append(_db_time(end))
    if models:
        where.append(f"j.model IN ({', '.join('?' * len(models))})")
        params.extend(models)
    if languages:
        where.append(f"LOWER(COALESCE(j.detected_language, j.language)) IN ({', '.join('?' * len(languages))})")
        params.extend(language.lower() for language in languages)
    sql = (
        f"WITH {_ranked_sql()}, "
        "hits AS (SELECT s.id AS segment_id, s.job_id AS job_id, s.idx AS idx, s.start AS start, "
        's."end" AS finish, s.confidence AS confidence, ranked.rank AS rank '
        "FROM ranked JOIN segment AS s ON s.id = ranked.segment_id JOIN job AS j ON j.id = s.job_id "
        f"WHERE {' AND '.join(where)})"
    )
    return sql, params


def search(
    user: User,
    query: str,
    *,
    start: datetime | None = None,
    end: datetime | None = None,
    models: list[str] | None = None,
    languages: list[str] | None = None,
    limit: int = 20,
    offset: int = 0,
) -> dict[str, Any]:
    """Jobs whose transcripts match, best first, each with its best matching segments."""
    started = time.perf_counter()
    match = _match(query)
    hits, params = _hits_sql(user, match, start, end, models or [], languages or [])
    try:
        total, best_overall = db.execute_sql(
            portable_sql(f"{hits} SELECT COUNT(DISTINCT job_id), MIN(rank) FROM hits"), params
        ).fetchone()
        page = db.execute_sql(
            portable_sql(
                f"{hits} SELECT job_id, MIN(rank) AS best, COUNT(*) AS n FROM hits "
                "GROUP BY job_id ORDER BY best, n DESC, job_id LIMIT ? OFFSET ?"
            ),
            [*params, limit, offset],
        ).fetchall()
        matches = _best_matches(hits, params, match, [row[0] for row in page])
    except (OperationalError, ProgrammingError) as exc:  # the query is sanitised; this is only the last line of defence
        raise bad_request(f"query cannot be searched: {exc}", "INVALID_QUERY") from exc
    jobs = {job.id: job for job in Job.select().where(Job.id.in_([row[0] for row in page]))}
    results = []
    for job_id, best, count in page:
        job = jobs.get(job_id)
        if job is None:  # deleted between the two queries
            continue
        results.append(
            {
                "job_id": job.id,
                "filename": job.original_filename,
                "relevance_score": _relevance(best, best_overall),
                "match_count": count,
                "matches": matches.get(job_id, []),
                "created_at": isoformat(job.created_at),
                "model": job.model,
                "language": job.detected_language or job.language,
            }
        )
    return {
        "results": results,
        "total": total or 0,
        "limit": limit,
        "offset": offset,
        "query_time": f"{time.perf_counter() - started:.3f}s",
    }


def _best_matches(hits: str, params: list[Any], match: str, job_ids: list[str]) -> dict[str, list[dict[str, Any]]]:
    """The best few segments of each job, with a snippet around the matched words."""
    if not job_ids:
        return {}
    rows = db.execute_sql(
        portable_sql(
            f"{hits}, numbered AS (SELECT *, ROW_NUMBER() OVER (PARTITION BY job_id ORDER BY rank, start) AS n "
            f"FROM hits WHERE job_id IN ({', '.join('?' * len(job_ids))})) "
            "SELECT segment_id, job_id, idx, start, finish, confidence FROM numbered WHERE n <= ? ORDER BY job_id, n"
        ),
        [*params, *job_ids, MATCHES_PER_JOB],
    ).fetchall()
    if not rows:
        return {}
    snippets = dict(
        db.execute_sql(portable_sql(_snippets_sql(len(rows))), [match, *(row[0] for row in rows)]).fetchall()
    )
    found: dict[str, list[dict[str, Any]]] = {}
    for segment_id, job_id, idx, start, finish, confidence in rows:
        found.setdefault(job_id, []).append(
            {
                "text": snippets.get(segment_id, ""),
                "timestamp": round(start, 3),
                "end": round(finish, 3),
                "segment_index": idx,
                "confidence": None if confidence is None else round(confidence, 4),
            }
        )
    return found


def _relevance(best: float, best_overall: float | None) -> float:
    """bm25 or the negated ts_rank (negative, lower is better) scaled so the best job of the whole search scores 1.0."""
    if not best_overall or best_overall >= 0 or best >= 0:
        return 1.0
    return max(0.0001, round(best / best_overall, 4))
