"""Chunked uploads through HTTP: initialize, chunks, resume, finalize into a job, and bad input."""

from __future__ import annotations

import hashlib
import io
import os
import time
from datetime import timedelta
from pathlib import Path

import pytest

from tests.helpers import AUDIO, assert_error

pytestmark = pytest.mark.database  # scripts/test runs these on PostgreSQL too

BASE = "/api/chunked-uploads"
CHUNK = 20_000  # jfk.flac (~200 kB) in about ten chunks
AUDIO_BYTES = (AUDIO / "jfk.flac").read_bytes()


def initialize(client, headers, size: int = len(AUDIO_BYTES), chunk_size: int = CHUNK, **fields):
    """POST /initialize; returns the response."""
    body = {"filename": "jfk.flac", "file_size": size, "chunk_size": chunk_size, "content_type": "audio/flac", **fields}
    return client.post(f"{BASE}/initialize", headers=headers, json=body)


def send(client, headers, session_id: str, number: int, data: bytes):
    """POST one chunk as a raw body."""
    return client.post(
        f"{BASE}/{session_id}/chunks/{number}", headers=headers, data=data, content_type="application/octet-stream"
    )


def parts(data: bytes = AUDIO_BYTES, size: int = CHUNK) -> list[bytes]:
    """``data`` cut into chunks."""
    return [data[i : i + size] for i in range(0, len(data), size)]


def start_upload(client, headers, data: bytes = AUDIO_BYTES, skip: tuple[int, ...] = ()) -> tuple[str, list[str]]:
    """Initialize and send every chunk (numbered from 1) except ``skip``; the session id and every chunk's sha256."""
    session_id = initialize(client, headers, size=len(data)).get_json()["session_id"]
    for number, part in enumerate(parts(data), start=1):
        if number not in skip:
            assert send(client, headers, session_id, number, part).status_code == 200
    return session_id, [hashlib.sha256(p).hexdigest() for p in parts(data)]


def finalize(client, headers, session_id: str, checksums: list[str], **fields):
    """POST /finalize."""
    return client.post(
        f"{BASE}/{session_id}/finalize",
        headers=headers,
        json={"model": "tiny.en", "language": "en", "chunk_checksums": checksums, **fields},
    )


def chunk_dir(app, session_id: str) -> Path:
    """The session's chunk folder."""
    return Path(app.config["DATA_DIR"]) / "tmp" / "chunks" / session_id


def stray_uploads(app) -> list[Path]:
    """Assembled files left in tmp/ (there should never be any once a request is answered)."""
    return list((Path(app.config["DATA_DIR"]) / "tmp").glob("*.upload"))


# ---------------------------------------------------------------- happy paths


def test_initialize_answers_session_url_expiry_and_chunk_count(client, admin_headers):
    """201 with the full API's fields; the chunk count rounds up."""
    response = initialize(client, admin_headers)
    assert response.status_code == 201
    body = response.get_json()
    assert body["upload_url"] == f"{BASE}/{body['session_id']}/chunks"
    assert body["total_chunks"] == -(-len(AUDIO_BYTES) // CHUNK) and body["expires_at"].endswith("Z")


def test_chunked_upload_becomes_a_job_that_completes(client, admin_headers, app, stub_engine, drain):
    """The assembled file is byte for byte the original; the job runs; no chunk stays behind."""
    session_id, checksums = start_upload(client, admin_headers)
    response = finalize(client, admin_headers, session_id, checksums, prompt="JFK", task="transcribe")
    assert response.status_code == 201, response.get_json()
    body = response.get_json()
    assert body["status"] == "queued" and body["message"] and len(body["job_id"]) == 32
    stored = Path(app.config["DATA_DIR"]) / "uploads" / f"{body['job_id']}.flac"
    assert stored.read_bytes() == AUDIO_BYTES
    assert not chunk_dir(app, session_id).exists() and stray_uploads(app) == []
    assert_error(client.get(f"{BASE}/{session_id}", headers=admin_headers), 404)
    drain()
    job = client.get(f"/api/jobs/{body['job_id']}", headers=admin_headers).get_json()
    assert job["status"] == "completed" and job["filename"] == "jfk.flac" and job["prompt"] == "JFK"


def test_chunk_answer_has_size_sha256_and_progress(client, admin_headers):
    """Progress is the percentage of the file's bytes received; the last chunk is the short one."""
    session_id = initialize(client, admin_headers, size=250, chunk_size=100).get_json()["session_id"]
    body = send(client, admin_headers, session_id, 3, b"z" * 50).get_json()
    assert body == {
        "chunk_number": 3,
        "received_size": 50,
        "checksum": hashlib.sha256(b"z" * 50).hexdigest(),
        "progress": 20.0,
        "received_chunks": 1,
        "total_chunks": 3,
    }


def test_chunks_are_numbered_from_one_as_in_the_full_api_document(client, admin_headers):
    """The document's example: the first of 100 chunks is chunk 1 and answers progress 1.0 (percent)."""
    session_id = initialize(client, admin_headers, size=10_000, chunk_size=100).get_json()["session_id"]
    first = send(client, admin_headers, session_id, 1, b"a" * 100)
    assert first.status_code == 200 and first.get_json()["chunk_number"] == 1 and first.get_json()["progress"] == 1.0
    assert send(client, admin_headers, session_id, 100, b"b" * 100).status_code == 200
    assert_error(send(client, admin_headers, session_id, 0, b"c" * 100), 400, "INVALID_CHUNK_NUMBER")
    body = client.get(f"{BASE}/{session_id}", headers=admin_headers).get_json()
    assert body["received_chunks"] == [1, 100] and body["missing_chunks"] == list(range(2, 100))


def test_resending_a_chunk_is_idempotent(client, admin_headers, app):
    """The same chunk twice gives the same answer and one file; new data replaces the old."""
    session_id = initialize(client, admin_headers, size=200, chunk_size=100).get_json()["session_id"]
    first = send(client, admin_headers, session_id, 1, b"a" * 100).get_json()
    assert send(client, admin_headers, session_id, 1, b"a" * 100).get_json() == first
    assert sorted(p.name for p in chunk_dir(app, session_id).iterdir()) == ["1.part"]
    replaced = send(client, admin_headers, session_id, 1, b"b" * 100).get_json()
    assert replaced["checksum"] == hashlib.sha256(b"b" * 100).hexdigest() and replaced["received_chunks"] == 1


def test_status_lists_received_and_missing_chunks_for_resuming(client, admin_headers):
    """A client that lost its connection learns what to send again."""
    session_id, checksums = start_upload(client, admin_headers, skip=(2, 4))
    body = client.get(f"{BASE}/{session_id}", headers=admin_headers).get_json()
    total = len(checksums)
    assert body["missing_chunks"] == [2, 4]
    assert body["received_chunks"] == [n for n in range(1, total + 1) if n not in (2, 4)]
    assert body["chunks"][0] == {"chunk_number": 1, "size": CHUNK, "checksum": checksums[0]}
    received = len(AUDIO_BYTES) - 2 * CHUNK
    assert body["status"] == "open" and body["progress"] == round(100 * received / len(AUDIO_BYTES), 2)
    assert body["received_size"] == received


def test_delete_abandons_the_session_and_its_chunks(client, admin_headers, app):
    """After DELETE the session is gone from disk and from the API."""
    session_id, _ = start_upload(client, admin_headers, skip=(3,))
    assert client.delete(f"{BASE}/{session_id}", headers=admin_headers).status_code == 200
    assert not chunk_dir(app, session_id).exists()
    assert_error(client.get(f"{BASE}/{session_id}", headers=admin_headers), 404, "NOT_FOUND")


# ------------------------------------------------------------------ bad input


@pytest.mark.parametrize("number", ["0", "-1", "4", "x", "1.5"])
def test_chunk_number_out_of_range_or_not_an_integer_is_400(client, admin_headers, number):
    """Chunks are numbered 1 .. total_chunks."""
    session_id = initialize(client, admin_headers, size=300, chunk_size=100).get_json()["session_id"]
    assert_error(send(client, admin_headers, session_id, number, b"a" * 100), 400, "INVALID_CHUNK_NUMBER")


@pytest.mark.parametrize(("number", "size"), [(1, 99), (1, 101), (3, 100), (3, 0)])
def test_chunk_of_the_wrong_size_is_400_and_not_counted(client, admin_headers, app, number, size):
    """Every chunk but the last is chunk_size bytes; the last is the rest. Nothing half-written stays."""
    session_id = initialize(client, admin_headers, size=250, chunk_size=100).get_json()["session_id"]
    assert_error(send(client, admin_headers, session_id, number, b"a" * size), 400, "CHUNK_SIZE_MISMATCH")
    assert client.get(f"{BASE}/{session_id}", headers=admin_headers).get_json()["received_chunks"] == []
    assert list(chunk_dir(app, session_id).glob("*")) == []


def test_body_longer_than_the_chunk_without_content_length_is_refused(app, admin_headers):
    """A streamed body is cut off one byte past the expected size, and nothing is kept."""
    from app.errors import AppError
    from app.models import UploadSession, User
    from app.services import chunked

    with app.test_request_context():
        session = chunked.initialize(
            app.config, User.by_username("admin"), filename="a.wav", file_size=200, chunk_size=100
        )
        with pytest.raises(AppError) as caught:
            chunked.receive_chunk(app.config, session, 1, io.BytesIO(b"a" * 10_000), None)
        assert caught.value.error_code == "CHUNK_SIZE_MISMATCH"
        assert UploadSession.get_by_id(session.id).chunks.count() == 0
    assert list(chunk_dir(app, session.id).glob("*")) == []


def test_finalize_with_a_wrong_checksum_is_400_and_can_be_retried(client, admin_headers, app):
    """The session stays open after the 400, so the right checksums succeed."""
    session_id, checksums = start_upload(client, admin_headers)
    wrong = [*checksums[:-1], "0" * 64]
    body = assert_error(finalize(client, admin_headers, session_id, wrong), 400, "CHECKSUM_MISMATCH")
    assert str(len(checksums)) in body["detail"]  # the last chunk's number
    assert_error(finalize(client, admin_headers, session_id, checksums[:-1]), 400, "CHECKSUM_MISMATCH")
    assert stray_uploads(app) == []
    assert finalize(client, admin_headers, session_id, [c.upper() for c in checksums]).status_code == 201


def test_finalize_with_a_missing_chunk_is_400_naming_it(client, admin_headers, app):
    """Chunk 5 never arrived."""
    session_id, checksums = start_upload(client, admin_headers, skip=(5,))
    body = assert_error(finalize(client, admin_headers, session_id, checksums), 400, "MISSING_CHUNKS")
    assert body["detail"].endswith(": 5")
    assert client.get(f"{BASE}/{session_id}", headers=admin_headers).get_json()["status"] == "open"
    assert stray_uploads(app) == []


def test_finalize_notices_a_chunk_damaged_on_disk(client, admin_headers, app):
    """A part file that no longer matches its checksum is dropped so the client sends it again."""
    session_id, checksums = start_upload(client, admin_headers)
    (chunk_dir(app, session_id) / "2.part").write_bytes(b"x" * CHUNK)
    assert_error(finalize(client, admin_headers, session_id, checksums), 400, "MISSING_CHUNKS")
    assert client.get(f"{BASE}/{session_id}", headers=admin_headers).get_json()["missing_chunks"] == [2]
    assert stray_uploads(app) == []


def test_finalize_checks_the_model_before_assembling(client, admin_headers, app):
    """An unknown model is a 400 and the chunks are kept for another try."""
    session_id, checksums = start_upload(client, admin_headers)
    assert_error(finalize(client, admin_headers, session_id, checksums, model="no-such-model"), 400, "INVALID_MODEL")
    assert_error(finalize(client, admin_headers, session_id, checksums, task="summarise"), 400, "INVALID_TASK")
    assert len(list(chunk_dir(app, session_id).glob("*.part"))) == len(checksums)
    assert stray_uploads(app) == []


def test_finalize_of_a_file_that_is_not_media_is_415_and_leaves_no_file(client, admin_headers, app):
    """The probe refuses it; the assembled copy is removed."""
    session_id, checksums = start_upload(client, admin_headers, data=b"plain text, not audio\n" * 10_000)
    assert_error(finalize(client, admin_headers, session_id, checksums), 415)
    assert stray_uploads(app) == [] and list((Path(app.config["DATA_DIR"]) / "uploads").iterdir()) == []


@pytest.mark.parametrize(
    ("body", "status", "code"),
    [
        ({"file_size": 10, "chunk_size": 5}, 422, "MISSING_FIELD"),
        ({"filename": "a.wav", "chunk_size": 5}, 422, "MISSING_FIELD"),
        ({"filename": "a.wav", "file_size": "10", "chunk_size": 5}, 422, "INVALID_FIELD"),
        ({"filename": "a.wav", "file_size": True, "chunk_size": 5}, 422, "INVALID_FIELD"),
        ({"filename": "a.wav", "file_size": 0, "chunk_size": 5}, 422, "INVALID_FIELD"),
        ({"filename": "a.wav", "file_size": 10, "chunk_size": 0}, 422, "INVALID_CHUNK_SIZE"),
        ({"filename": "a.wav", "file_size": 10, "chunk_size": 64 * 1024**2 + 1}, 422, "INVALID_CHUNK_SIZE"),
        ({"filename": "a.wav", "file_size": 100_000, "chunk_size": 1}, 422, "TOO_MANY_CHUNKS"),
        ({"filename": "a.wav", "file_size": 3 * 1024**3, "chunk_size": 64 * 1024**2}, 413, "PAYLOAD_TOO_LARGE"),
        ({"filename": 7, "file_size": 10, "chunk_size": 5}, 422, "INVALID_FIELD"),
    ],
)
def test_initialize_rejects_bad_fields(client, admin_headers, body, status, code):
    """Sizes are checked against the chunk and upload limits."""
    assert_error(client.post(f"{BASE}/initialize", headers=admin_headers, json=body), status, code)


@pytest.mark.parametrize("route", ["initialize", "finalize"])
def test_malformed_json_is_400(client, admin_headers, route):
    """Not JSON, or not an object."""
    path = "initialize" if route == "initialize" else f"{start_upload(client, admin_headers)[0]}/finalize"
    for data in ("{not json", "[1, 2]"):
        response = client.post(f"{BASE}/{path}", headers=admin_headers, data=data, content_type="application/json")
        assert_error(response, 400, "INVALID_JSON")


@pytest.mark.parametrize(
    ("checksums", "code"), [(None, "MISSING_FIELD"), ("abc", "INVALID_FIELD"), ([1, 2], "INVALID_FIELD")]
)
def test_finalize_requires_a_list_of_checksums(client, admin_headers, checksums, code):
    """The checksums are how the server knows it has the client's file."""
    session_id, _ = start_upload(client, admin_headers)
    response = client.post(
        f"{BASE}/{session_id}/finalize", headers=admin_headers, json={"model": "tiny.en", "chunk_checksums": checksums}
    )
    assert_error(response, 422, code)


def test_unknown_session_is_404_everywhere(client, admin_headers):
    """Made-up ids, including ones that look like paths."""
    for session_id in ("0123456789abcdef0123456789abcdef", "..", "x"):
        assert_error(client.get(f"{BASE}/{session_id}", headers=admin_headers), 404, "NOT_FOUND")
        assert_error(send(client, admin_headers, session_id, 1, b"a"), 404, "NOT_FOUND")
        assert_error(finalize(client, admin_headers, session_id, []), 404, "NOT_FOUND")
        assert_error(client.delete(f"{BASE}/{session_id}", headers=admin_headers), 404, "NOT_FOUND")


def test_only_the_owner_can_touch_a_session(client, admin_headers, user_headers, app):
    """Another user, even an admin, gets 404 on every route; the owner carries on."""
    bob = user_headers("bob")
    session_id, checksums = start_upload(client, bob, skip=(1,))
    assert_error(client.get(f"{BASE}/{session_id}", headers=admin_headers), 404)
    assert_error(send(client, admin_headers, session_id, 1, parts()[0]), 404)
    assert_error(finalize(client, admin_headers, session_id, checksums), 404)
    assert_error(client.delete(f"{BASE}/{session_id}", headers=admin_headers), 404)
    assert send(client, bob, session_id, 1, parts()[0]).status_code == 200
    assert finalize(client, bob, session_id, checksums).status_code == 201


def test_routes_need_authentication_and_the_create_scope(app, admin_headers, client):
    """Anonymous callers get 401; an API key without jobs:create gets 403."""
    anonymous = app.test_client()
    assert_error(anonymous.post(f"{BASE}/initialize", json={}), 401)
    assert_error(anonymous.get(f"{BASE}/0123456789abcdef0123456789abcdef"), 401)
    key = client.post(
        "/api/api-keys/", headers=admin_headers, json={"name": "reader", "permissions": ["jobs:read"]}
    ).get_json()["api_key"]
    assert_error(initialize(client, {"X-API-Key": key}), 403)


def test_chunks_are_refused_while_finalizing(client, admin_headers, app):
    """Once assembly has started the chunks may not change: 409."""
    from app.models import UploadSession

    session_id, checksums = start_upload(client, admin_headers)
    with app.app_context():
        UploadSession.update(status="finalizing").where(UploadSession.id == session_id).execute()
    assert_error(send(client, admin_headers, session_id, 1, parts()[0]), 409, "UPLOAD_FINALIZING")
    assert_error(finalize(client, admin_headers, session_id, checksums), 409, "UPLOAD_FINALIZING")


def test_open_sessions_per_user_are_limited(app, client, admin_headers):
    """Each open session may hold disk space, so a user has only a few."""
    app.config["MAX_UPLOAD_SESSIONS_PER_USER"] = 2
    assert initialize(client, admin_headers).status_code == 201
    assert initialize(client, admin_headers).status_code == 201
    assert_error(initialize(client, admin_headers), 409, "TOO_MANY_UPLOAD_SESSIONS")


# ---------------------------------------------------------------- expiry


def test_expired_sessions_are_404_and_purged_with_their_chunks(client, admin_headers, app):
    """purge_expired_sessions removes the row and the folder; initialize runs it too."""
    from app.models import UploadSession, utcnow
    from app.services.chunked import purge_expired_sessions

    old, _ = start_upload(client, admin_headers, skip=(2, 3))
    fresh, _ = start_upload(client, admin_headers, skip=(2, 3))
    with app.app_context():
        UploadSession.update(expires_at=utcnow() - timedelta(seconds=1)).where(UploadSession.id == old).execute()
    assert_error(client.get(f"{BASE}/{old}", headers=admin_headers), 404)
    with app.app_context():
        assert purge_expired_sessions(app.config) == 1
        assert UploadSession.get_or_none(UploadSession.id == old) is None
    assert not chunk_dir(app, old).exists() and chunk_dir(app, fresh).exists()
    assert client.get(f"{BASE}/{fresh}", headers=admin_headers).status_code == 200


def test_a_chunk_renews_the_session_expiry(client, admin_headers, app):
    """The time to live counts from the last chunk, so slow uploads are not cut off."""
    app.config["CHUNK_SESSION_TTL_SECONDS"] = 60
    session_id = initialize(client, admin_headers, size=200, chunk_size=100).get_json()["session_id"]
    before = client.get(f"{BASE}/{session_id}", headers=admin_headers).get_json()["expires_at"]
    app.config["CHUNK_SESSION_TTL_SECONDS"] = 7200
    send(client, admin_headers, session_id, 1, b"a" * 100)
    assert client.get(f"{BASE}/{session_id}", headers=admin_headers).get_json()["expires_at"] > before


def test_purge_removes_old_chunk_folders_without_a_session(app):
    """Leftovers of a crash are removed once older than the session time to live."""
    from app.services.chunked import chunk_root, purge_expired_sessions

    orphan, recent = chunk_root(app.config) / "orphan", chunk_root(app.config) / "recent"
    for folder in (orphan, recent):
        folder.mkdir(parents=True)
        (folder / "0.part").write_bytes(b"a")
    past = time.time() - 2 * app.config["CHUNK_SESSION_TTL_SECONDS"]
    os.utime(orphan, (past, past))
    with app.app_context():
        assert purge_expired_sessions(app.config) == 0
    assert not orphan.exists() and recent.exists()
