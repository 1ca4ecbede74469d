"""Transcript analysis: the local extractive analysis, and the remote chat-completions path with its breaker.

The remote path talks to a small HTTP server on 127.0.0.1 that speaks the chat-completions format.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from app.services import analysis
from tests.helpers import assert_error

API_KEY = "sk-test-5b1d0c9e-never-log-me"
TALK = [
    "Whisper models turn speech into text on this appliance.",
    "The weather was pleasant yesterday.",
    "Each whisper model has a size, and larger whisper models transcribe speech more accurately.",
    "Lunch is at noon.",
    "Speech recognition with whisper runs on the processor without a network.",
]


# ------------------------------------------------------------------ fixtures


@pytest.fixture(autouse=True)
def fresh_breaker():
    """Every test starts, and leaves, with a closed breaker and its usual settings."""
    fail_max, reset_timeout = analysis.analysis_breaker.fail_max, analysis.analysis_breaker.reset_timeout
    analysis.reset_breaker()
    yield analysis.analysis_breaker
    analysis.analysis_breaker.fail_max, analysis.analysis_breaker.reset_timeout = fail_max, reset_timeout
    analysis.reset_breaker()


@dataclass
class ChatServer:
    """What the fake endpoint received, and how it answers next."""

    url: str = ""
    requests: list[dict[str, Any]] = field(default_factory=list)
    status: int = 200
    content: str = json.dumps({"summary": "A talk about Whisper.", "analysis": "Technical, calm tone."})
    raw: bytes | None = None  # answer these bytes instead of a chat completion
    delay: float = 0.0


@pytest.fixture
def chat_server():
    """A chat-completions endpoint on 127.0.0.1 (``POST /v1/chat/completions``), in a thread."""
    state = ChatServer()

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            raw = self.rfile.read(int(self.headers.get("Content-Length") or 0))
            state.requests.append({"path": self.path, "headers": dict(self.headers), "body": json.loads(raw)})
            if state.delay:
                time.sleep(state.delay)
            if self.path != "/v1/chat/completions":
                status, payload = 404, b'{"error": {"message": "not found"}}'
            elif state.status != 200:
                status, payload = state.status, b'{"error": {"message": "upstream trouble"}}'
            else:
                status = 200
                payload = (
                    state.raw
                    if state.raw is not None
                    else json.dumps(
                        {
                            "id": "chatcmpl-1",
                            "object": "chat.completion",
                            "created": 0,
                            "model": "served-model",
                            "choices": [
                                {
                                    "index": 0,
                                    "finish_reason": "stop",
                                    "message": {"role": "assistant", "content": state.content},
                                }
                            ],
                            "usage": {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2},
                        }
                    ).encode()
                )
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(payload)))
            self.end_headers()
            self.wfile.write(payload)

        def log_message(self, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    state.url = f"http://127.0.0.1:{server.server_port}/v1"
    yield state
    server.shutdown()
    server.server_close()


@pytest.fixture
def remote(app, chat_server):
    """Point the app at the fake endpoint with a key."""
    app.config.update(OPENAI_API_KEY=API_KEY, OPENAI_BASE_URL=chat_server.url, OPENAI_MODEL="test-model")
    return chat_server


@pytest.fixture
def talk_job(app, client, admin_headers, stub_engine, drain, uploaded_job) -> str:
    """A completed job whose transcript is :data:`TALK`, one segment per sentence."""
    from app.models import Job
    from app.services import transitions

    job_id = uploaded_job(client, admin_headers, path="/jobs", name="talk.flac")["id"]
    drain()
    segments = [{"start": 2.0 * i, "end": 2.0 * i + 2, "text": text, "confidence": 0.9} for i, text in enumerate(TALK)]
    with app.app_context():
        transitions.store_transcript(app.config, Job.get_by_id(job_id), segments, language="en")
    return job_id


def analyze(client, headers, job_id: str):
    """POST /jobs/{id}/analyze."""
    return client.post(f"/jobs/{job_id}/analyze", headers=headers)


# ------------------------------------------------------------ local figures


def test_keywords_skip_stop_words_and_rank_by_frequency():
    """The most frequent content words first, ties in order of first use; stop words and numbers never."""
    found = analysis.keywords("The cat and the dog. The cat sat on 3 mats with the dog and a bird.", limit=3)
    assert found == [{"keyword": "cat", "count": 2}, {"keyword": "dog", "count": 2}, {"keyword": "sat", "count": 1}]
    assert analysis.keywords("the and of it is we") == []


def test_summary_prefers_sentences_about_the_main_topic_in_original_order():
    """Sentences made of frequent words win; the chosen ones keep their order."""
    assert analysis.summary_sentences(TALK, limit=2) == [TALK[0], TALK[2]]
    assert analysis.summary_sentences(TALK, limit=3) == [TALK[0], TALK[2], TALK[4]]  # the asides are left out
    assert analysis.summary_sentences(["Only one."], limit=3) == ["Only one."]


def test_unpunctuated_text_is_split_at_the_engine_segments():
    """whisper output without punctuation still gives several sentences."""
    assert analysis.sentences("one two three four", ["one two", "three four"]) == ["one two", "three four"]
    assert analysis.sentences("First. Second! Third?", ["First. Second! Third?"]) == ["First.", "Second!", "Third?"]


def test_reply_parsing_accepts_json_fenced_json_and_plain_text():
    """JSON gives summary and analysis; anything else becomes the summary."""
    assert analysis.parse_reply('{"summary": "S", "analysis": {"tone": "calm"}}') == ("S", {"tone": "calm"})
    assert analysis.parse_reply('```json\n{"summary": "S", "analysis": "A"}\n```') == ("S", "A")
    assert analysis.parse_reply("Just a summary.") == ("Just a summary.", None)
    assert analysis.parse_reply("[1, 2]") == ("[1, 2]", None)


def test_local_analysis_over_http(app, client, admin_headers, talk_job):
    """Without a key: summary sentences from the transcript, keywords and statistics, provider local."""
    app.config["OPENAI_API_KEY"] = None
    response = analyze(client, admin_headers, talk_job)
    assert response.status_code == 200
    body = response.get_json()
    assert body["provider"] == "local" and body["model"] is None and body["job_id"] == talk_job
    assert 1 <= len(body["summary_sentences"]) <= 3 and set(body["summary_sentences"]) <= set(TALK)
    assert body["summary"] == " ".join(body["summary_sentences"])
    assert body["keywords"][0] == {"keyword": "whisper", "count": 4}
    assert "speech" in [k["keyword"] for k in body["keywords"][:3]]
    stats = body["statistics"]
    assert stats["sentence_count"] == len(TALK)
    assert stats["word_count"] == sum(len(s.split()) for s in TALK)
    assert stats["words_per_minute"] == pytest.approx(stats["word_count"] * 60 / stats["duration"], abs=0.1)
    assert "whisper" in body["analysis"]


def test_metadata_keywords_come_from_the_transcript(client, admin_headers, talk_job):
    """/metadata counts the stored segments and words and lists the top keywords."""
    body = client.get(f"/metadata/{talk_job}", headers=admin_headers).get_json()
    assert body["segment_count"] == len(TALK) and body["word_count"] == sum(len(s.split()) for s in TALK)
    assert body["keywords"][0]["keyword"] == "whisper"


# ------------------------------------------------------------------- remote


def test_remote_analysis_sends_the_transcript_and_parses_the_reply(app, client, admin_headers, talk_job, remote):
    """The request carries model, messages with the transcript, and the bearer key; the reply is parsed."""
    app.config["OPENAI_BASE_URL"] = remote.url + "/"  # a trailing slash is harmless
    response = analyze(client, admin_headers, talk_job)
    assert response.status_code == 200, response.get_json()
    body = response.get_json()
    assert body["provider"] == "openai" and body["model"] == "test-model"
    assert body["summary"] == "A talk about Whisper." and body["analysis"] == "Technical, calm tone."
    assert body["keywords"][0]["keyword"] == "whisper" and body["statistics"]["sentence_count"] == len(TALK)
    (sent,) = remote.requests
    assert sent["path"] == "/v1/chat/completions"
    assert sent["headers"]["Authorization"] == f"Bearer {API_KEY}"
    assert sent["body"]["model"] == "test-model"
    roles = [m["role"] for m in sent["body"]["messages"]]
    assert roles == ["system", "user"]
    assert " ".join(TALK) in sent["body"]["messages"][1]["content"]


def test_remote_plain_text_reply_becomes_the_summary(client, admin_headers, talk_job, remote):
    """A model that ignores the JSON instruction still gives a usable answer."""
    remote.content = "It is about speech recognition."
    body = analyze(client, admin_headers, talk_job).get_json()
    assert body["summary"] == "It is about speech recognition." and body["analysis"] is None


def test_repeated_failures_open_the_breaker_with_503_and_retry_after(
    client, admin_headers, talk_job, remote, fresh_breaker
):
    """5xx answers are 502 until the breaker trips; then 503 with Retry-After, and the endpoint is spared."""
    remote.status = 500
    for _ in range(fresh_breaker.fail_max - 1):
        assert_error(analyze(client, admin_headers, talk_job), 502, "ANALYSIS_FAILED")
    tripped = assert_error(analyze(client, admin_headers, talk_job), 503, "ANALYSIS_UNAVAILABLE")
    assert "try again" in tripped["detail"]
    sent = len(remote.requests)
    assert sent == fresh_breaker.fail_max
    response = analyze(client, admin_headers, talk_job)
    assert_error(response, 503, "ANALYSIS_UNAVAILABLE")
    assert 1 <= int(response.headers["Retry-After"]) <= fresh_breaker.reset_timeout
    assert len(remote.requests) == sent  # an open breaker does not call the endpoint
    # Once the pause is over a trial call goes through; success closes the breaker.
    remote.status = 200
    fresh_breaker.reset_timeout = 0.01
    time.sleep(0.05)
    assert analyze(client, admin_headers, talk_job).status_code == 200
    assert fresh_breaker.current_state == "closed"


@pytest.mark.parametrize(
    "trouble",
    [{"status": 429}, {"status": 503}, {"raw": b"<html>oops</html>"}, {"raw": b'{"choices": []}'}, {"content": "   "}],
)
def test_outages_and_garbage_count_towards_the_breaker(client, admin_headers, talk_job, remote, fresh_breaker, trouble):
    """Overload, server errors and answers that are not chat completions are failures."""
    for name, value in trouble.items():
        setattr(remote, name, value)
    fresh_breaker.fail_max = 2
    assert_error(analyze(client, admin_headers, talk_job), 502, "ANALYSIS_FAILED")
    assert_error(analyze(client, admin_headers, talk_job), 503, "ANALYSIS_UNAVAILABLE")


def test_a_refused_request_is_502_and_never_opens_the_breaker(client, admin_headers, talk_job, remote, fresh_breaker):
    """A 4xx such as a wrong key is a setup problem: 502 every time, the breaker stays closed."""
    remote.status = 401
    for _ in range(fresh_breaker.fail_max + 1):
        body = assert_error(analyze(client, admin_headers, talk_job), 502, "ANALYSIS_REJECTED")
    assert "OPENAI_API_KEY" in body["detail"]
    assert fresh_breaker.current_state == "closed"


def test_a_slow_endpoint_times_out(app, client, admin_headers, talk_job, remote):
    """The request gives up after ANALYSIS_TIMEOUT_SECONDS."""
    app.config["ANALYSIS_TIMEOUT_SECONDS"] = 0.3
    remote.delay = 3
    body = assert_error(analyze(client, admin_headers, talk_job), 502, "ANALYSIS_FAILED")
    assert "Timeout" in body["detail"]


def test_an_unreachable_endpoint_is_502(app, client, admin_headers, talk_job, remote):
    """Nothing listening: a connection error, reported without the key."""
    from tests.conftest import free_port

    app.config["OPENAI_BASE_URL"] = f"http://127.0.0.1:{free_port()}/v1"
    body = assert_error(analyze(client, admin_headers, talk_job), 502, "ANALYSIS_FAILED")
    assert API_KEY not in json.dumps(body)


def test_the_key_is_never_logged(app, client, admin_headers, talk_job, remote, caplog):
    """Neither the log records nor the log files mention the key, on success or failure."""
    caplog.set_level(logging.DEBUG)
    analyze(client, admin_headers, talk_job)
    remote.status = 500
    analyze(client, admin_headers, talk_job)
    remote.status = 401
    analyze(client, admin_headers, talk_job)
    assert API_KEY not in caplog.text
    for path in (Path(app.config["DATA_DIR"]) / "logs").rglob("*"):
        if path.is_file():
            assert API_KEY not in path.read_text(errors="replace"), path


def test_analyze_needs_credentials(app, talk_job):
    """Anonymous callers get 401 and the endpoint is not asked."""
    assert_error(app.test_client(use_cookies=False).post(f"/jobs/{talk_job}/analyze"), 401, "UNAUTHORIZED")


def test_settings_come_from_the_documented_environment_names(monkeypatch):
    """OPENAI_API_KEY, OPENAI_BASE_URL and OPENAI_MODEL, with defaults when unset."""
    from app.settings import load_settings

    for name in ("OPENAI_API_KEY", "OPENAI_BASE_URL", "OPENAI_MODEL"):
        monkeypatch.delenv(name, raising=False)
    defaults = load_settings()
    assert defaults["OPENAI_API_KEY"] is None and defaults["OPENAI_BASE_URL"] == "https://api.openai.com/v1"
    assert defaults["OPENAI_MODEL"]
    monkeypatch.setenv("OPENAI_API_KEY", API_KEY)
    monkeypatch.setenv("OPENAI_BASE_URL", "http://127.0.0.1:9/v1")
    monkeypatch.setenv("OPENAI_MODEL", "llama3")
    settings = load_settings()
    assert (settings["OPENAI_API_KEY"], settings["OPENAI_BASE_URL"], settings["OPENAI_MODEL"]) == (
        API_KEY,
        "http://127.0.0.1:9/v1",
        "llama3",
    )
