"""The queue's wake-up pipe: an enqueue wakes an idle worker at once; without a listener nothing breaks."""

from __future__ import annotations

import threading
import time

from workers.queue import WakingSqliteStorage


def storage(tmp_path, poll: float) -> WakingSqliteStorage:
    """A queue file of its own, as ``bind`` makes one."""
    return WakingSqliteStorage("test", filename=str(tmp_path / "queue.db"), poll=poll)


def test_enqueue_wakes_a_worker_waiting_on_an_empty_queue(tmp_path):
    worker, web = storage(tmp_path, poll=30), storage(tmp_path, poll=30)  # two processes' views of one queue
    worker._open()  # what the worker's first empty dequeue does: make the pipe and listen
    threading.Timer(0.2, web.enqueue, args=(b"job",)).start()
    started = time.monotonic()
    assert worker.dequeue() == b"job"
    assert time.monotonic() - started < 10  # woken, not timed out after the 30 s poll


def test_an_empty_dequeue_returns_none_after_the_poll_interval(tmp_path):
    assert storage(tmp_path, poll=0.05).dequeue() is None


def test_waking_with_no_worker_listening_is_harmless(tmp_path):
    web = storage(tmp_path, poll=1)
    web.enqueue(b"one")  # no FIFO yet
    worker = storage(tmp_path, poll=0.05)
    worker._open()
    worker_fds = worker._fds
    web.enqueue(b"two")  # a reader is listening: the byte waits in the pipe
    assert [worker.dequeue(), worker.dequeue()] == [b"one", b"two"]
    assert worker_fds is not None


def test_a_stray_file_where_the_pipe_belongs_falls_back_to_polling(tmp_path):
    (tmp_path / "queue.wake").write_text("not a fifo")
    worker = storage(tmp_path, poll=0.05)
    assert worker.dequeue() is None and worker._fds is None
    storage(tmp_path, poll=1).enqueue(b"job")
    assert worker.dequeue() == b"job" and (tmp_path / "queue.wake").read_text() == "not a fifo"


def test_interrupt_ends_the_wait_even_after_the_pipe_was_removed(tmp_path):
    """What a stopping worker does, so that a long poll interval never delays its exit."""
    worker = storage(tmp_path, poll=30)
    worker._open()
    (tmp_path / "queue.wake").unlink()
    threading.Timer(0.2, worker.interrupt).start()
    started = time.monotonic()
    assert worker.dequeue() is None
    assert time.monotonic() - started < 10
    storage(tmp_path, poll=1).enqueue(b"late")
    assert worker.dequeue() is None  # a stopping worker takes no new task; the next worker will
