"""The WebSocket extension, created unbound here and bound to the app in ``create_app``.

The request limiter lives with its rules in app/ratelimit.py; the engine breaker in app/services/breaker.py.
"""

from __future__ import annotations

import threading

from flask_sock import Sock

sock = Sock()


class SocketReaderThread(threading.Thread):
    """simple_websocket's per-socket reader. A daemon: after the server closes a socket it waits for the
    client's reply for up to a ping interval, and a stopping web worker must not wait for a silent client."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, daemon=True, **kwargs)
