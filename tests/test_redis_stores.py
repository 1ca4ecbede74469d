"""With WT_QUEUE_URL=redis://: the queue, the rate-limit counters and the breaker state live in a real Redis
(started by the tests), shared by every process that names it."""

from __future__ import annotations

import threading
import time

import pybreaker
import pytest

from app.services import breaker
from workers import queue
from workers.queue import StoppableRedisStorage


@pytest.fixture
def redis_url(redis_server):
    """An empty logical database of the session's Redis."""
    import redis

    url = redis_server.url(3)
    with redis.Redis.from_url(url) as client:
        client.flushdb()
    return url


def view(url: str, poll: float = 1) -> StoppableRedisStorage:
    """One process's view of the queue; its connections are closed after the test."""
    storage = StoppableRedisStorage("test", url, poll=poll)
    _views.append(storage)
    return storage


_views: list[StoppableRedisStorage] = []


@pytest.fixture(autouse=True)
def _close_views():
    yield
    while _views:
        _views.pop().pool.disconnect()


def test_a_task_queued_by_one_process_is_taken_by_another_within_a_blocking_pop(redis_url):
    """Two views of one Redis queue, as the web box and a worker box have: the idle worker gets it at once."""
    worker, web = view(redis_url, poll=30), view(redis_url)
    pusher = threading.Timer(0.2, web.enqueue, args=(b"job",))
    pusher.start()
    started = time.monotonic()
    assert worker.dequeue() == b"job"
    assert time.monotonic() - started < 10  # a blocking pop, not the 30 s poll
    pusher.join()  # the pusher may still read Redis's answer: its connection is closed after the test


def test_a_drained_or_stopping_worker_takes_nothing_until_resumed(redis_url):
    """interrupt(): the queue keeps the task for another worker; resume() takes it again."""
    worker = view(redis_url)
    worker.enqueue(b"job")
    worker.interrupt()
    assert worker.dequeue() is None and worker.queue_size() == 1
    worker.resume()
    assert worker.dequeue() == b"job"


def test_bind_uses_redis_for_a_redis_url_and_the_file_otherwise(tmp_path, redis_url):
    """The same Huey instance, bound by boot: Redis when QUEUE_URL says so, queue.db when it is empty."""
    try:
        queue.bind(tmp_path, 1.0, redis_url)
        assert isinstance(queue.huey.storage, StoppableRedisStorage) and queue.huey.storage.url == redis_url
        queue.beat()
        assert queue.consumer_alive()  # the heartbeat every web box reads
    finally:
        queue.bind(tmp_path, 1.0)
    assert isinstance(queue.huey.storage, queue.WakingSqliteStorage)


def test_the_breaker_state_in_redis_is_seen_by_every_process(redis_url):
    """A worker's engine failures open the breaker the web process consults: pybreaker's CircuitRedisStorage."""
    try:
        breaker.configure_breaker(
            {"BREAKER_FAIL_MAX": 2, "BREAKER_RESET_SECONDS": 60, "BREAKER_STORAGE_URL": redis_url}
        )
        assert isinstance(breaker.engine_breaker._state_storage, pybreaker.CircuitRedisStorage)
        for _ in range(2):
            with pytest.raises(RuntimeError):
                breaker.engine_breaker.call(_failing_engine)
        import redis

        # Another process's view: a breaker of its own on the same Redis key space.
        with redis.Redis.from_url(redis_url) as client:
            other = pybreaker.CircuitBreaker(
                state_storage=pybreaker.CircuitRedisStorage(
                    pybreaker.STATE_CLOSED, client, namespace="whisper-transcriber:engine"
                )
            )
            assert other.current_state == pybreaker.STATE_OPEN
        assert breaker.retry_after(breaker.engine_breaker) is not None
    finally:
        breaker.configure_breaker({"BREAKER_FAIL_MAX": 3, "BREAKER_RESET_SECONDS": 60, "BREAKER_STORAGE_URL": ""})
    assert isinstance(breaker.engine_breaker._state_storage, breaker.SettingStorage)


def _failing_engine() -> None:
    raise RuntimeError("engine crashed")
