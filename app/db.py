"""Opening the database: the WAL SQLite file, its tables, in-place upgrades and the search index.

The models and their named queries are in app/models.py; this module binds them to a file.
"""

from __future__ import annotations

from pathlib import Path

from peewee import SqliteDatabase
from playhouse.migrate import SqliteMigrator, migrate

from app.models import ALL_MODELS, db

PRAGMAS = {
    "journal_mode": "wal",
    "busy_timeout": 15000,
    "foreign_keys": 1,
    "synchronous": "normal",
}


def open_database(path: Path | str) -> SqliteDatabase:
    """Bind the proxy to a WAL SQLite file and create the tables. Call after fork."""
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    database = SqliteDatabase(str(path), pragmas=PRAGMAS, timeout=15)
    db.initialize(database)
    with database.connection_context():
        database.create_tables(ALL_MODELS, safe=True)
        _add_missing_columns(database)
        _create_search_index(database)
    return database


# Full-text index over segment text: an external-content FTS5 table (no second copy of the text),
# kept in step by triggers, so the job pipeline writes segments as before and search sees them.
_SEARCH_INDEX_SQL = (
    "CREATE VIRTUAL TABLE segment_fts USING fts5(text, content='segment', content_rowid='id', "
    "tokenize='porter unicode61 remove_diacritics 2')",
    "CREATE TRIGGER IF NOT EXISTS segment_fts_ai AFTER INSERT ON segment BEGIN "
    "INSERT INTO segment_fts(rowid, text) VALUES (new.id, new.text); END",
    "CREATE TRIGGER IF NOT EXISTS segment_fts_ad AFTER DELETE ON segment BEGIN "
    "INSERT INTO segment_fts(segment_fts, rowid, text) VALUES ('delete', old.id, old.text); END",
    "CREATE TRIGGER IF NOT EXISTS segment_fts_au AFTER UPDATE OF text ON segment BEGIN "
    "INSERT INTO segment_fts(segment_fts, rowid, text) VALUES ('delete', old.id, old.text); "
    "INSERT INTO segment_fts(rowid, text) VALUES (new.id, new.text); END",
)


def _create_search_index(database: SqliteDatabase) -> None:
    """Create the segment search index once; index the segments written before it existed."""
    # IMMEDIATE: the web app and the worker open the database at the same time on start.
    with database.atomic("IMMEDIATE"):
        exists = database.execute_sql(
            "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'segment_fts'"
        ).fetchone()
        if exists:
            return
        for statement in _SEARCH_INDEX_SQL:
            database.execute_sql(statement)
        database.execute_sql("INSERT INTO segment_fts(segment_fts) VALUES ('rebuild')")


def _add_missing_columns(database: SqliteDatabase) -> None:
    """Upgrade an older database in place: add columns that newer models define (all have defaults or NULL)."""
    migrator = SqliteMigrator(database)
    for model in ALL_MODELS:
        table = model._meta.table_name
        existing = {column.name for column in database.get_columns(table)}
        missing = [f for f in model._meta.sorted_fields if f.column_name not in existing]
        if missing:
            with database.atomic("IMMEDIATE"):
                migrate(*(migrator.add_column(table, f.column_name, f) for f in missing))
