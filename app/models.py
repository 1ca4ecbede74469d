"""Database models (Peewee on SQLite in WAL mode, or PostgreSQL) and their named queries.

The job table is the source of truth; the Huey queue only carries job ids.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from peewee import (
    BooleanField,
    CharField,
    DatabaseProxy,
    DateTimeField,
    FloatField,
    ForeignKeyField,
    IntegerField,
    Model,
    TextField,
    fn,
)

from workers.timestamps import utc_iso

db = DatabaseProxy()  # bound to the SQLite file or PostgreSQL by app.db.open_database


JOB_STATUSES = ("queued", "processing", "completed", "failed", "cancelled")
FINISHED = ("completed", "failed", "cancelled")


def utcnow() -> datetime:
    """Naive UTC now; every timestamp in the database is UTC."""
    return datetime.now(UTC).replace(tzinfo=None)


def isoformat(value: datetime | None) -> str | None:
    """Render a stored UTC timestamp as ISO 8601 with a Z suffix."""
    return utc_iso(value) if value else None


class JSONField(TextField):
    """A text column holding JSON."""

    def db_value(self, value: Any) -> str | None:
        return None if value is None else json.dumps(value)

    def python_value(self, value: str | None) -> Any:
        return None if value is None else json.loads(value)


class BaseModel(Model):
    class Meta:
        database = db

    @classmethod
    def owned_by(cls, user: User | None):
        """Rows of a model with a ``user`` field that this user may see: their own, or all for an admin."""
        query = cls.select()
        if user is None or user.role != "admin":
            query = query.where(cls.user == user)
        return query


class User(BaseModel):
    username = CharField(unique=True, max_length=150)
    email = CharField(null=True, max_length=254)
    password_hash = CharField()
    role = CharField(default="user")  # "user" or "admin"
    is_active = BooleanField(default=True)
    created_at = DateTimeField(default=utcnow)

    @classmethod
    def by_username(cls, username: str) -> User | None:
        """The user with this name, or None."""
        return cls.get_or_none(cls.username == username)

    @classmethod
    def active_admins(cls):
        """Active users with the admin role."""
        return cls.select().where((cls.role == "admin") & (cls.is_active == True))  # noqa: E712

    @classmethod
    def name_taken(cls, username: str) -> bool:
        """True when a user has this name, ignoring case ("Admin" must not shadow "admin")."""
        return cls.select().where(fn.LOWER(cls.username) == username.lower()).exists()

    def to_dict(self) -> dict[str, Any]:
        """The public view of the user."""
        return {
            "id": str(self.id),
            "username": self.username,
            "email": self.email,
            "created_at": isoformat(self.created_at),
            "is_active": self.is_active,
            "role": self.role,
        }


class Token(BaseModel):
    """Every issued JWT, by its jti, so that it can be revoked (the denylist)."""

    jti = CharField(primary_key=True)
    user = ForeignKeyField(User, backref="tokens", on_delete="CASCADE")
    expires_at = DateTimeField()
    revoked_at = DateTimeField(null=True)

    @classmethod
    def is_revoked(cls, jti: str) -> bool:
        """True when the token was revoked or was never issued here."""
        token = cls.get_or_none(cls.jti == jti)
        return token is None or token.revoked_at is not None

    @classmethod
    def find_live(cls, jti: str) -> Token | None:
        """The issued, unrevoked token with this jti, or None."""
        return cls.get_or_none((cls.jti == jti) & cls.revoked_at.is_null())

    @classmethod
    def revoke(cls, jti: str) -> int:
        """Revoke one token."""
        with db.atomic("IMMEDIATE"):
            return cls.update(revoked_at=utcnow()).where((cls.jti == jti) & cls.revoked_at.is_null()).execute()

    @classmethod
    def revoke_for_user(cls, user: User, keep_jti: str | None = None) -> int:
        """Revoke the user's live tokens, except ``keep_jti``."""
        query = cls.update(revoked_at=utcnow()).where((cls.user == user) & cls.revoked_at.is_null())
        if keep_jti:
            query = query.where(cls.jti != keep_jti)
        return query.execute()

    @classmethod
    def purge_expired(cls) -> int:
        """Forget tokens that have expired anyway; the denylist shrinks with them."""
        return cls.delete().where(cls.expires_at < utcnow()).execute()


class ApiKey(BaseModel):
    key_id = CharField(primary_key=True)
    user = ForeignKeyField(User, backref="api_keys", on_delete="CASCADE")
    name = CharField(max_length=200)
    secret_hash = CharField(unique=True)
    preview = CharField()
    permissions = JSONField(default=list)
    created_at = DateTimeField(default=utcnow)
    expires_at = DateTimeField(null=True)
    last_used = DateTimeField(null=True)
    usage_count = IntegerField(default=0)
    is_active = BooleanField(default=True)
    requests_per_minute = IntegerField(null=True)
    daily_quota = IntegerField(null=True)

    @classmethod
    def by_hash(cls, secret_hash: str) -> ApiKey | None:
        """The key with this secret hash, or None."""
        return cls.get_or_none(cls.secret_hash == secret_hash)

    @classmethod
    def visible_to(cls, user: User, everyone: bool = False):
        """The user's keys, newest first; every key when ``everyone`` and the user is an admin."""
        query = cls.select().order_by(cls.created_at.desc(), cls.key_id)
        if not (everyone and user.role == "admin"):
            query = query.where(cls.user == user)
        return query


class Job(BaseModel):
    id = CharField(primary_key=True)
    user = ForeignKeyField(User, backref="jobs", null=True, on_delete="SET NULL")
    kind = CharField(default="transcribe")
    original_filename = CharField(max_length=255)
    upload_path = CharField(null=True)  # relative to the data dir
    source_path = CharField(null=True)  # absolute, for media-library files we never own
    model = CharField()  # the model that runs the job
    requested_model = CharField(null=True)  # the name the client asked for (an alias, say); NULL: none
    language = CharField(null=True)
    task = CharField(default="transcribe")  # "transcribe" or "translate"
    prompt = TextField(null=True)
    options = JSONField(default=dict)
    status = CharField(default="queued", index=True)
    stage = CharField(default="queued")
    progress = FloatField(default=0.0)
    segments_done = IntegerField(default=0)
    total_segments = IntegerField(null=True)  # while transcribing an estimate, once transcribed the count
    eta_seconds = FloatField(null=True)  # the worker's estimate of the time left, written with the progress
    engine = CharField(null=True)  # the backend and model file that transcribed it, e.g. whispercpp:ggml-tiny.en.bin
    loops_suppressed = IntegerField(default=0)  # pieces decoded again because their text repeated itself
    stages = JSONField(default=dict)
    error = TextField(null=True)
    attempts = IntegerField(default=0)
    worker_id = CharField(null=True)  # "<pid>:<process start time>" of the worker running it, on its own box
    worker_name = CharField(null=True)  # that worker's WT_WORKER_NAME (its box); NULL on rows from before names
    lease_expires_at = DateTimeField(null=True)  # the running worker renews it; past it, the job is given back
    cancel_requested = BooleanField(default=False)
    created_at = DateTimeField(default=utcnow, index=True)
    updated_at = DateTimeField(default=utcnow)
    started_at = DateTimeField(null=True)
    completed_at = DateTimeField(null=True)
    duration = FloatField(null=True)  # seconds of media
    media_info = JSONField(default=dict)
    detected_language = CharField(null=True)
    text = TextField(null=True)
    confidence = FloatField(null=True)
    processing_seconds = FloatField(null=True)
    # sha256 of the stored upload, kept by the whisper-asr-webservice dialect so identical requests join one job.
    # No index: create_tables would build one on an older table before _add_missing_columns adds the column
    # (SQLite takes the unknown quoted name for a string); a scan of the job table is cheap next to a transcription.
    upload_sha256 = CharField(null=True)

    def source_file(self, data_dir: Path | str) -> Path | None:
        """The file the job reads: its media-library file or its stored upload; None when it has neither."""
        if self.source_path:
            return Path(self.source_path)
        return Path(data_dir) / self.upload_path if self.upload_path else None

    @classmethod
    def visible_to(cls, user: User | None):
        """Jobs the user may see: their own, or all of them for an admin."""
        return cls.owned_by(user)

    @classmethod
    def claim(cls, job_id: str, worker_id: str, worker_name: str | None = None, lease_seconds: float = 60) -> bool:
        """Atomically move a queued job to processing for this worker, under a lease; False if someone else has it."""
        with db.atomic("IMMEDIATE"):
            now = utcnow()
            changed = (
                cls.update(
                    status="processing",
                    stage="decoding",
                    worker_id=worker_id,
                    worker_name=worker_name,
                    lease_expires_at=now + timedelta(seconds=lease_seconds),
                    attempts=cls.attempts + 1,
                    started_at=now,
                    updated_at=now,
                )
                .where((cls.id == job_id) & (cls.status == "queued"))
                .execute()
            )
        return changed == 1

    @classmethod
    def renew_leases(cls, worker_id: str, worker_name: str | None, lease_seconds: float) -> int:
        """Extend the leases of the jobs this worker runs (its heartbeat); how many it holds."""
        with db.atomic("IMMEDIATE"):
            return (
                cls.update(lease_expires_at=utcnow() + timedelta(seconds=lease_seconds))
                .where((cls.worker_id == worker_id) & (cls.worker_name == worker_name) & (cls.status == "processing"))
                .execute()
            )

    @classmethod
    def in_status(cls, *statuses: str):
        """Jobs in any of the given statuses, oldest first."""
        return cls.select().where(cls.status.in_(statuses)).order_by(cls.created_at)

    @classmethod
    def unfinished_visible_to(cls, user: User | None):
        """The queued and running jobs the user may see, oldest first."""
        return cls.visible_to(user).where(cls.status.in_(("queued", "processing"))).order_by(cls.created_at)

    @classmethod
    def with_upload_hash(cls, user: User | None, sha256: str):
        """The jobs the user may see whose stored upload has this sha256, newest first."""
        return cls.visible_to(user).where(cls.upload_sha256 == sha256).order_by(cls.created_at.desc())

    @classmethod
    def counts_by_status(cls, user: User | None = None) -> dict[str, int]:
        """How many jobs are in each status (all statuses present, zeros included)."""
        query = cls.select(cls.status, fn.COUNT(cls.id).alias("n")).group_by(cls.status)
        if user is not None:
            query = query.where(cls.id.in_(cls.visible_to(user).select(cls.id)))
        counts = dict.fromkeys(JOB_STATUSES, 0)
        counts.update({row.status: row.n for row in query})
        return counts

    def update_fields(self, **fields: Any) -> None:
        """Write some fields of this job in an IMMEDIATE transaction and keep the object in step."""
        fields.setdefault("updated_at", utcnow())
        with db.atomic("IMMEDIATE"):
            type(self).update(**fields).where(type(self).id == self.id).execute()
        for key, value in fields.items():
            setattr(self, key, value)


class Segment(BaseModel):
    job = ForeignKeyField(Job, backref="segments", on_delete="CASCADE")
    idx = IntegerField()
    start = FloatField()
    end = FloatField()
    text = TextField()
    confidence = FloatField(null=True)
    words = JSONField(null=True)  # word timestamps, only when a job asked for them

    class Meta:
        indexes = ((("job", "idx"), True),)

    @classmethod
    def for_job(cls, job: Job):
        """The job's segments in order."""
        return cls.select().where(cls.job == job).order_by(cls.idx)


class AuditLog(BaseModel):
    at = DateTimeField(default=utcnow, index=True)
    user_id = IntegerField(null=True)
    username = CharField(null=True)
    action = CharField()
    target = CharField(null=True)
    ip = CharField(null=True)
    detail = JSONField(default=dict)

    @classmethod
    def record(
        cls,
        action: str,
        *,
        user: User | None = None,
        username: str | None = None,
        target: str | None = None,
        ip: str | None = None,
        **detail: Any,
    ) -> None:
        """Append one entry."""
        with db.atomic("IMMEDIATE"):
            cls.create(
                action=action,
                user_id=user.id if user else None,
                username=username or (user.username if user else None),
                target=target,
                ip=ip,
                detail=detail,
            )

    @classmethod
    def search(cls, *, action: str | None = None, user_id: int | None = None, since: datetime | None = None):
        """Entries, newest first, optionally of one action, one user, or after a time."""
        query = cls.select().order_by(cls.at.desc(), cls.id.desc())
        if action:
            query = query.where(cls.action == action)
        if user_id is not None:
            query = query.where(cls.user_id == user_id)
        if since is not None:
            query = query.where(cls.at > since)
        return query


class Setting(BaseModel):
    """Small runtime settings that admins change from the API (cleanup, concurrency)."""

    key = CharField(primary_key=True)
    value = JSONField()

    @classmethod
    def read(cls, key: str, default: Any = None) -> Any:
        """The stored value, or ``default``."""
        row = cls.get_or_none(cls.key == key)
        return default if row is None else row.value

    @classmethod
    def write(cls, key: str, value: Any) -> None:
        """Store a value, replacing the old one."""
        with db.atomic("IMMEDIATE"):
            # INSERT ... ON CONFLICT: SQLite's REPLACE has no PostgreSQL form
            cls.insert(key=key, value=value).on_conflict(conflict_target=[cls.key], update={cls.value: value}).execute()


class UploadSession(BaseModel):
    """A chunked upload in progress; its chunks live in ``tmp/chunks/<id>/``."""

    id = CharField(primary_key=True)
    user = ForeignKeyField(User, backref="upload_sessions", on_delete="CASCADE")
    filename = CharField(max_length=255)
    file_size = IntegerField()
    chunk_size = IntegerField()
    total_chunks = IntegerField()
    content_type = CharField(null=True, max_length=255)
    status = CharField(default="open")  # "open", or "finalizing" while the file is assembled
    created_at = DateTimeField(default=utcnow)
    expires_at = DateTimeField(index=True)


class UploadChunk(BaseModel):
    """One received chunk: a row exists only once its file is complete on disk."""

    session = ForeignKeyField(UploadSession, backref="chunks", on_delete="CASCADE")
    number = IntegerField()
    size = IntegerField()
    checksum = CharField()  # sha256, hex

    class Meta:
        indexes = ((("session", "number"), True),)


class MediaFile(BaseModel):
    """A file uploaded through the VOXIS API (``POST /api/upload``); jobs take a hard link to it."""

    id = CharField(primary_key=True)  # the VOXIS file_id, a UUID
    user = ForeignKeyField(User, backref="media_files", null=True, on_delete="CASCADE")
    filename = CharField(max_length=255)  # the client's name, for display only
    path = CharField()  # relative to the data dir
    size = IntegerField()
    content_type = CharField(null=True, max_length=255)
    uploaded_at = DateTimeField(default=utcnow, index=True)

    @classmethod
    def visible_to(cls, user: User | None):
        """Files the user may use: their own, or all of them for an admin."""
        return cls.owned_by(user)


ALL_MODELS = [User, Token, ApiKey, Job, Segment, AuditLog, Setting, UploadSession, UploadChunk, MediaFile]


def token_expiry(seconds: int) -> datetime:
    """When a token issued now expires."""
    return utcnow() + timedelta(seconds=seconds)
