"""A Gunicorn gthread worker that slow or stalled clients cannot starve of request threads.

Stock gthread hands every connection to a thread as soon as it is accepted (or readable
again), and that thread then blocks in ``recv`` until the headers and body have arrived.
Seventy clients that send half a request and stop held all 64 threads, and ``/health`` went
unanswered for as long as they stayed connected.

Here the worker's event loop reads each request first, without a thread: a thread takes it
once the headers and a body of up to :data:`BUFFER_BYTES` are complete. Headers must arrive
within ``WT_CLIENT_IDLE_SECONDS`` of the connection (or of its first byte on a kept-alive one),
and a body may pause no longer than that between bytes; past either bound the connection is
closed. Bodies too large to buffer (uploads) are streamed by a separate, smaller pool of
threads, with the same per-read bound, so stalled uploads can hold upload threads for a
while but never the threads that answer everything else. WebSockets and long polls are not
affected: the bound applies to reads of a request and to writes of a response, never to the
time an answer takes, and a WebSocket's socket is left as it is.
"""

from __future__ import annotations

import contextlib
import errno
import select
import selectors
import socket
import time
from concurrent import futures
from enum import Enum
from functools import partial
from typing import Any, NamedTuple

from gunicorn import http
from gunicorn.http.unreader import SocketUnreader
from gunicorn.workers.gthread import TConn, ThreadWorker
from werkzeug.exceptions import RequestTimeout

DEFAULT_IDLE_SECONDS = 30.0
BUFFER_BYTES = 64 * 1024  # a request with a body up to this size is read whole before a thread takes it
HEAD_LIMIT = 64 * 1024  # longer headers than this are refused (431) without a thread
READ_SIZE = 64 * 1024
LINGER_SECONDS = 2.0  # after its last response, a closing connection's unread input is drained this long
REPORT_EVERY = 60.0  # seconds between log lines counting the connections closed for idling

_TIMEOUT_408 = b"HTTP/1.1 408 Request Timeout\r\nConnection: close\r\nContent-Length: 0\r\n\r\n"
_TOO_LARGE_431 = b"HTTP/1.1 431 Request Header Fields Too Large\r\nConnection: close\r\nContent-Length: 0\r\n\r\n"


class ClientTimeout(RequestTimeout):
    """The client sent no byte of its request for longer than the idle bound (408)."""

    description = "The client paused longer than the idle limit while sending the request"


class Route(Enum):
    """What to do with a request whose first bytes have arrived."""

    WAIT = "wait"  # incomplete: keep reading in the event loop
    NOW = "now"  # complete (or malformed, for the parser to refuse): a request thread takes it
    STREAM = "stream"  # a body too large to buffer: an upload thread streams it
    TOO_LARGE = "too_large"  # headers beyond HEAD_LIMIT


def idle_seconds(settings: dict[str, Any]) -> float:
    """The idle bound (``WT_CLIENT_IDLE_SECONDS``); the default when unset or not positive."""
    value = float(settings.get("CLIENT_IDLE_SECONDS") or 0)
    return value if value > 0 else DEFAULT_IDLE_SECONDS


def upload_threads(threads: int) -> int:
    """Threads that stream large request bodies, beside the ``threads`` that answer requests."""
    return max(4, threads // 4)


CHUNKED = -1  # Plan.size of a chunked body: its last chunk is watched for instead


class Plan(NamedTuple):
    """A routing decision; once the head is in, ``size`` is the whole request's length (or CHUNKED)."""

    route: Route
    size: int | None = None


def body_route(buffer: bytes | bytearray, size: int, limit: int = BUFFER_BYTES) -> Route:
    """The route of a request whose head is in, as its body arrives (no need to parse the head again)."""
    if (len(buffer) >= size) if size != CHUNKED else buffer.endswith(b"0\r\n\r\n"):
        return Route.NOW  # (a chunked body whose data ends like the last chunk only means the thread reads on)
    return Route.STREAM if len(buffer) >= limit else Route.WAIT


def plan(buffer: bytes, limit: int = BUFFER_BYTES, max_body: int = 0) -> Plan:
    """Where a request goes, judged from the bytes received so far (``max_body``: the app's 413 limit, 0 none)."""
    end = buffer.find(b"\r\n\r\n")
    if end < 0:
        if b"\n\n" in buffer:
            return Plan(Route.NOW)  # bare line feeds: the parser answers 400
        return Plan(Route.TOO_LARGE if len(buffer) > HEAD_LIMIT else Route.WAIT)
    if end > HEAD_LIMIT:
        return Plan(Route.TOO_LARGE)
    fields: dict[bytes, bytes] = {}
    for line in buffer[:end].split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        fields.setdefault(name.strip().lower(), value.strip().lower())
    if b"transfer-encoding" in fields:
        size = CHUNKED
    else:
        try:
            size = end + 4 + int(fields.get(b"content-length", b"0"))
        except ValueError:
            return Plan(Route.NOW)  # the parser answers 400
    decision = body_route(buffer, size, limit)
    if decision is Route.WAIT and fields.get(b"expect") == b"100-continue":
        return Plan(Route.STREAM)  # the client sends its body only once the thread has answered "100 Continue"
    if decision is Route.WAIT and max_body and size - end - 4 > max_body:
        return Plan(Route.STREAM)  # the app answers 413 without reading it, and the client may wait for that
    return Plan(decision, size)


def _readable(sock: socket.socket, seconds: float) -> bool:
    poller = select.poll()
    poller.register(sock, select.POLLIN | select.POLLPRI)
    return bool(poller.poll(seconds * 1000))


class IdleUnreader(SocketUnreader):
    """Gunicorn's socket reader with a bound on each wait for the client's next bytes."""

    def __init__(self, sock: socket.socket, idle: float):
        super().__init__(sock)
        self.idle = idle
        self.timed_out = False

    def chunk(self, size_hint: int | None = None) -> bytes:
        """The next bytes from the socket, or :class:`ClientTimeout` after ``idle`` seconds of silence."""
        timeout = self.sock.gettimeout()
        # A shorter socket timeout (Gunicorn's bounded drain of an unread body) stays in charge.
        if (timeout is None or timeout >= self.idle) and not _readable(self.sock, self.idle):
            self.timed_out = True
            raise ClientTimeout()
        return super().chunk(size_hint)


class GuardedThreadWorker(ThreadWorker):
    """gthread, but a request reaches a thread only once it has arrived (or streams a large body)."""

    def __init__(self, *args: Any, **kwargs: Any):
        super().__init__(*args, **kwargs)
        self.idle = DEFAULT_IDLE_SECONDS  # from the settings in init_process, in the worker itself
        self.max_body = 0
        self.waiting: dict[TConn, float] = {}  # connection -> when it is closed unless its request is in
        self.lingering: dict[TConn, float] = {}  # connection being closed -> when it is closed at the latest
        self.upload_pool: futures.ThreadPoolExecutor | None = None
        self.closed_idle = 0
        self.reported_at = time.monotonic()

    @classmethod
    def check_config(cls, cfg: Any, log: Any) -> None:
        """Refuse TLS: the loop reads raw bytes, and the appliance leaves TLS to a reverse proxy."""
        if cfg.is_ssl:
            raise RuntimeError("GuardedThreadWorker does not terminate TLS; put a reverse proxy in front")
        super().check_config(cfg, log)

    def init_process(self) -> None:
        """Read the settings, start the upload pool, then Gunicorn's loop (which returns when the worker stops)."""
        from app.settings import load_settings  # late: the master process never needs the app's settings

        settings = load_settings()
        self.idle = idle_seconds(settings)
        self.max_body = int(settings.get("MAX_CONTENT_LENGTH") or 0)
        self.upload_pool = futures.ThreadPoolExecutor(
            max_workers=upload_threads(self.cfg.threads), thread_name_prefix="upload"
        )
        super().init_process()

    def run(self) -> None:
        """Gunicorn's loop; on the way out, let go of idle upload threads as gthread does of its own."""
        try:
            super().run()
        finally:
            if self.upload_pool is not None:
                self.upload_pool.shutdown(wait=False)

    def handle_quit(self, sig: int, frame: Any) -> None:
        """Immediate stop: drop the upload pool too."""
        if self.upload_pool is not None:
            self.upload_pool.shutdown(wait=False)
        super().handle_quit(sig, frame)

    # ------------------------------------------------------------ event loop side

    def accept(self, listener: socket.socket) -> None:
        """Accept a connection and read its request in the loop, not in a thread."""
        try:
            client, address = listener.accept()
        except OSError as exc:
            if exc.errno not in (errno.EAGAIN, errno.ECONNABORTED, errno.EWOULDBLOCK):
                raise
            return
        self.nr_conns += 1
        conn = TConn(self.cfg, client, address, listener.getsockname())
        self._await_request(conn, b"")

    def enqueue_req(self, conn: TConn) -> None:
        """A kept-alive connection is readable, or holds a pipelined request: read it in the loop first."""
        pending = conn.parser.unreader.take_buffered() if conn.parser is not None else b""
        self._await_request(conn, pending)

    def _await_request(self, conn: TConn, pending: bytes) -> None:
        conn.sock.setblocking(False)
        conn.received = bytearray(pending)
        conn.scanned = 0  # bytes searched for the end of the head: each byte is looked at once
        conn.size = None  # the whole request's length, once its head is in
        self.waiting[conn] = time.monotonic() + self.idle
        self.poller.register(conn.sock, selectors.EVENT_READ, partial(self._on_readable, conn))
        self._on_readable(conn)  # it may be readable already, or hold a whole pipelined request

    def _on_readable(self, conn: TConn, _fileobj: Any = None) -> None:
        try:
            data = conn.sock.recv(READ_SIZE)
        except (BlockingIOError, InterruptedError):
            data = None
        except OSError:
            self._close(conn)
            return
        if data == b"":
            self._close(conn)  # the client went away before finishing its request
            return
        if data:
            conn.received += data
        if conn.size is None:
            start, conn.scanned = max(0, conn.scanned - 3), len(conn.received)
            if conn.received.find(b"\r\n\r\n", start) < 0 and conn.received.find(b"\n\n", start) < 0:
                if len(conn.received) > HEAD_LIMIT:
                    self._close(conn, _TOO_LARGE_431)
                return
            decision, conn.size = plan(bytes(conn.received), BUFFER_BYTES, self.max_body)
            if decision is Route.WAIT:
                self.waiting[conn] = time.monotonic() + self.idle  # from now on the bound is between bytes
        else:
            if data:
                self.waiting[conn] = time.monotonic() + self.idle
            decision = body_route(conn.received, conn.size)
        if decision is Route.WAIT:
            return
        if decision is Route.TOO_LARGE:
            self._close(conn, _TOO_LARGE_431)
            return
        self._unwatch(conn)
        self._dispatch(conn, self.upload_pool if decision is Route.STREAM else self.tpool)

    def _dispatch(self, conn: TConn, pool: futures.ThreadPoolExecutor | None) -> None:
        if conn.parser is None:
            conn.parser = http.get_parser(self.cfg, conn.sock, conn.client)
            conn.parser.unreader = IdleUnreader(conn.sock, self.idle)
            conn.initialized = True  # TConn.init() would build a plain parser
        conn.data_ready = True  # gthread's handle() must not wait for data again
        conn.parser.unreader.unread(bytes(conn.received))
        conn.received = bytearray()
        future = (pool or self.tpool).submit(self.handle, conn)
        future.add_done_callback(lambda fut: self.method_queue.defer(self.finish_request, conn, fut))

    def _unwatch(self, conn: TConn) -> None:
        self.waiting.pop(conn, None)
        with contextlib.suppress(KeyError, ValueError, OSError):
            self.poller.unregister(conn.sock)

    def _close(self, conn: TConn, answer: bytes = b"") -> None:
        self._unwatch(conn)
        if answer:
            with contextlib.suppress(OSError):
                conn.sock.send(answer)  # best effort: the socket is non-blocking
        self.nr_conns -= 1
        conn.close()

    def finish_request(self, conn: TConn, fs: futures.Future) -> None:
        """As gthread, but a connection is closed without blocking the loop (gthread lingers up to 2 s in it)."""
        keep_alive = not fs.cancelled() and fs.exception() is None and fs.result()
        if keep_alive:
            super().finish_request(conn, fs)
        elif getattr(conn, "abandoned", False) or (conn.parser is not None and conn.parser.unreader.timed_out):
            self.nr_conns -= 1
            conn.close()  # a client that stalled gets no courtesy
        else:
            self._linger(conn)

    def _linger(self, conn: TConn) -> None:
        # RFC 9112 9.6: send FIN, then read what the client still sends until it closes, so the kernel does not
        # reset the connection under the last response; here in the loop, never blocking it.
        # The poller watches a duplicate descriptor that only the loop closes. The app may still hold conn.sock: a
        # WebSocket's reader thread (simple-websocket) closes it when the client leaves, at any moment. A poller
        # entry left under that closed number made the next connection accepted on it fail to register, which
        # killed the worker and reset every connection it held.
        sock = None
        try:
            sock = conn.sock.dup()  # OSError if the app has closed it already
            sock.shutdown(socket.SHUT_WR)
            sock.setblocking(False)
            self.poller.register(sock, selectors.EVENT_READ, partial(self._on_linger_readable, conn))
        except (OSError, ValueError, KeyError):
            if sock is not None:
                sock.close()
            self.nr_conns -= 1
            conn.close()
            return
        conn.linger_sock = sock
        conn.drained = 0
        self.lingering[conn] = time.monotonic() + LINGER_SECONDS

    def _on_linger_readable(self, conn: TConn, _fileobj: Any = None) -> None:
        try:
            data = conn.linger_sock.recv(READ_SIZE)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            data = b""
        conn.drained += len(data)
        if not data or conn.drained >= BUFFER_BYTES:
            self._end_linger(conn)

    def _end_linger(self, conn: TConn) -> None:
        self.lingering.pop(conn, None)
        with contextlib.suppress(KeyError, ValueError, OSError):
            self.poller.unregister(conn.linger_sock)  # before closing it: the poller knows it by its number
        conn.linger_sock.close()
        self.nr_conns -= 1
        conn.close()  # a no-op if the app closed it; the connection ends with the last of the two descriptors

    def murder_pending(self) -> None:
        """Also close connections whose request did not arrive in time (the loop calls this every second)."""
        super().murder_pending()
        now = time.monotonic()
        for conn, deadline in list(self.lingering.items()):
            if deadline <= now:
                self._end_linger(conn)
        for conn, deadline in list(self.waiting.items()):
            if deadline <= now or (not self.alive and not conn.received):
                self.closed_idle += 1
                self._close(conn, _TIMEOUT_408 if conn.received else b"")
        if self.closed_idle and now - self.reported_at >= REPORT_EVERY:
            self.log.info(
                "closed %d connection(s) that sent no complete request or paused over %gs", self.closed_idle, self.idle
            )
            self.closed_idle, self.reported_at = 0, now

    # -------------------------------------------------------------- thread side

    def handle_request(self, req: Any, conn: TConn) -> bool:
        """Serve one request; a client that stops reading the response is dropped after the idle bound too."""
        if not any(name == "UPGRADE" for name, _ in req.headers):
            conn.sock.settimeout(self.idle)  # not for WebSockets: their socket belongs to simple-websocket
        try:
            keep_alive = super().handle_request(req, conn)
        except TimeoutError:
            conn.abandoned = True
            self.log.info("dropped %s: the client read none of the response for %gs", req.path, self.idle)
            return False
        return keep_alive and not conn.parser.unreader.timed_out

    def handle_error(self, req: Any, client: socket.socket, addr: Any, exc: BaseException) -> None:
        """A request that timed out before the app saw it gets a plain 408."""
        if isinstance(exc, ClientTimeout):
            with contextlib.suppress(OSError):
                client.sendall(_TIMEOUT_408)
            return
        super().handle_error(req, client, addr, exc)
