"""Gunicorn settings for ``whisper-transcriber serve``.

One process keeps rate-limit counters and circuit-breaker state in one place; gthread
with many threads lets WebSockets (one thread each) and HTTP share it.
"""

import os

bind = f"{os.environ.get('WT_HOST', '127.0.0.1')}:{os.environ.get('WT_PORT', '8000')}"
# gthread, except that a request reaches a thread only once it has arrived: slow or stalled clients
# (WT_CLIENT_IDLE_SECONDS bounds them) cannot hold the threads that answer everyone else.
worker_class = "app.slowclients.GuardedThreadWorker"
workers = 1
threads = int(os.environ.get("WT_WEB_THREADS", "64"))
timeout = 120
graceful_timeout = 30
keepalive = 5
# Per-instance files live in the data dir, so several appliances (or tests) never share them.
_data_dir = os.environ.get("WT_DATA_DIR", "./data")
pidfile = os.path.join(_data_dir, "gunicorn.pid")
control_socket = os.path.join(_data_dir, "gunicorn.ctl")
# Big uploads are streamed straight to disk by the app, so no request-size cap here.
limit_request_line = 8190
accesslog = os.environ.get("WT_ACCESS_LOG") or None
errorlog = "-"
loglevel = os.environ.get("WT_LOG_LEVEL", "info")
# The app opens its database connections after fork; never preload it.
preload_app = False


def post_worker_init(worker):
    """Tell long-lived requests about a graceful stop (SIGTERM) the moment it starts."""
    import signal

    from app.extensions import stopping

    graceful_exit = signal.getsignal(signal.SIGTERM)  # Gunicorn's own handler, installed just before

    def handle_term(signum, frame):
        stopping.set()
        graceful_exit(signum, frame)

    signal.signal(signal.SIGTERM, handle_term)
