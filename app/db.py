"""Opening the database from ``DATABASE_URL``: SQLite (the default file, WAL) or PostgreSQL, with its tables,
in-place upgrades and the full-text search index of each.

The models and their named queries are in app/models.py; this module binds them to a database.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from peewee import Database, PostgresqlDatabase, SqliteDatabase
from playhouse import db_url
from playhouse.migrate import SchemaMigrator, migrate

from app.models import ALL_MODELS, db

PRAGMAS = {
    "journal_mode": "wal",
    "busy_timeout": 15000,
    "foreign_keys": 1,
    "synchronous": "normal",
}
WRITE_LOCK = 0x57540001  # the advisory lock every IMMEDIATE transaction takes on PostgreSQL
_opened: dict[str, Path] = {}


class PostgresqlAppDatabase(PostgresqlDatabase):
    """PostgreSQL with SQLite's ``atomic("IMMEDIATE")``: one writer at a time, by a transaction advisory lock.

    The models and services write in ``db.atomic("IMMEDIATE")`` and count on it for read-modify-write (claiming
    a job, merging a stage record, adding to the totals); the lock gives them the same guarantee here.
    """

    def begin(self, isolation_level: Any = None) -> None:
        """BEGIN; for "IMMEDIATE", also wait for the write lock, held until commit or rollback."""
        if isolation_level != "IMMEDIATE":
            super().begin(isolation_level)
            return
        super().begin()
        self.cursor().execute("SELECT pg_advisory_xact_lock(%s)", (WRITE_LOCK,))


def on_postgresql() -> bool:
    """True when the bound database is PostgreSQL (hand-written SQL differs there)."""
    return isinstance(db.obj, PostgresqlDatabase)


def portable_sql(sql: str) -> str:
    """Hand-written SQL with ``?`` placeholders, in the bound database's parameter style."""
    return sql.replace("?", "%s") if on_postgresql() else sql


def default_url(data_dir: Path | str) -> str:
    """The default database: ``whisper.db`` in the data dir."""
    return f"sqlite:///{Path(data_dir) / 'whisper.db'}"


def database_url(settings: dict[str, Any]) -> str:
    """``DATABASE_URL``, or the SQLite file in the data dir when it is unset."""
    return str(settings.get("DATABASE_URL") or "") or default_url(settings["DATA_DIR"])


def is_postgresql_url(url: str) -> bool:
    """True for a postgres:// or postgresql:// URL."""
    return url.split("://", 1)[0] in ("postgres", "postgresql")


def connect(target: Path | str) -> Database:
    """An unopened database for a URL (``sqlite:///path``, ``postgresql://user@host/name``) or a SQLite path."""
    text = str(target)
    if "://" not in text:
        text = f"sqlite:///{text}"
    if is_postgresql_url(text):
        return PostgresqlAppDatabase(**db_url.parse(text))
    if not text.startswith("sqlite:///"):
        raise RuntimeError(f"WT_DATABASE_URL must be sqlite:///<path> or postgresql://..., not {text.split(':')[0]}")
    path = Path(text.removeprefix("sqlite:///"))
    path.parent.mkdir(parents=True, exist_ok=True)
    return SqliteDatabase(str(path), pragmas=PRAGMAS, timeout=15)


def opened_data_dir() -> Path | None:
    """The data dir of the open database (failure reasons name paths relative to it), if known."""
    return _opened.get("data_dir")


def open_database(target: Path | str, data_dir: Path | str | None = None) -> Database:
    """Bind the proxy to a database (URL or SQLite path), create the tables and upgrade them. Call after fork.

    ``data_dir`` defaults to the SQLite file's folder; with a PostgreSQL URL pass it.
    """
    database = connect(target)
    if data_dir is None and isinstance(database, SqliteDatabase) and database.database != ":memory:":
        data_dir = Path(database.database).parent
    if data_dir is None:
        _opened.pop("data_dir", None)
    else:
        _opened["data_dir"] = Path(data_dir)
    db.initialize(database)
    with database.connection_context():
        if isinstance(database, PostgresqlDatabase):
            # DDL is transactional here: every process that starts at once waits for the first to finish.
            with database.atomic("IMMEDIATE"):
                database.create_tables(ALL_MODELS, safe=True)
                _add_missing_columns(database)
                _create_pg_search_index(database)
        else:
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

# PostgreSQL: a stored tsvector column computed from the text (English stemming, like FTS5's porter
# tokenizer) and a GIN index on it; the database keeps it in step, as the triggers do on SQLite.
_PG_SEARCH_INDEX_SQL = (
    "ALTER TABLE segment ADD COLUMN IF NOT EXISTS tsv tsvector "
    "GENERATED ALWAYS AS (to_tsvector('english', text)) STORED",
    "CREATE INDEX IF NOT EXISTS segment_tsv_gin ON segment USING GIN (tsv)",
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


def _create_pg_search_index(database: PostgresqlDatabase) -> None:
    """The tsvector column and its GIN index; existing rows are computed when the column is added."""
    for statement in _PG_SEARCH_INDEX_SQL:
        database.execute_sql(statement)


def _add_missing_columns(database: Database) -> None:
    """Upgrade an older database in place: add columns that newer models define (all have defaults or NULL)."""
    migrator = SchemaMigrator.from_database(database)
    for model in ALL_MODELS:
        table = model._meta.table_name
        existing = {column.name for column in database.get_columns(table)}
        missing = [f for f in model._meta.sorted_fields if f.column_name not in existing]
        if missing:
            with database.atomic("IMMEDIATE"):
                migrate(*(migrator.add_column(table, f.column_name, f) for f in missing))
