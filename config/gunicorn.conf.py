"""Gunicorn settings for ``whisper-transcriber serve``.

One process by default (WT_WEB_PROCESSES); gthread
with many threads lets WebSockets (one thread each) and HTTP share it.
"""

import os
import tempfile

from app.settings import load_settings

_settings = load_settings()  # the same layers as the app's: defaults, WT_CONFIG, environment

bind = f"{_settings['HOST']}:{_settings['PORT']}"
# gthread, except that a request reaches a thread only once it has arrived: slow or stalled clients
# (WT_CLIENT_IDLE_SECONDS bounds them) cannot hold the threads that answer everyone else.
worker_class = "app.slowclients.GuardedThreadWorker"
# More than one process only with shared rate-limit storage (Redis; app/settings.py checks it): the breaker,
# long polls, log sockets and metrics totals live in the database, Redis or files already.
workers = int(_settings["WEB_PROCESSES"])
if workers > 1:  # prometheus_client's multiprocess mode: each process counts requests in files summed at scrape
    os.environ.setdefault("PROMETHEUS_MULTIPROC_DIR", tempfile.mkdtemp(prefix="wt-metrics-"))
threads = int(_settings["WEB_THREADS"])
timeout = 120
graceful_timeout = 30
keepalive = 5
# Per-instance files live in the data dir, so several appliances (or tests) never share them.
pidfile = os.path.join(_settings["DATA_DIR"], "gunicorn.pid")
control_socket = os.path.join(_settings["DATA_DIR"], "gunicorn.ctl")
# Big uploads are streamed straight to disk by the app, so no request-size cap here.
limit_request_line = 8190
accesslog = _settings["GUNICORN_ACCESS_LOG"] or None  # the app writes its own (JSON) access.log
errorlog = "-"
loglevel = _settings["LOG_LEVEL"].lower()
# The app opens its database connections after fork; never preload it.
preload_app = False


def post_worker_init(worker):
    """Tell long-lived requests about a graceful stop (SIGTERM) the moment it starts."""
    import signal

    from app.shutdown import stopping

    graceful_exit = signal.getsignal(signal.SIGTERM)  # Gunicorn's own handler, installed just before

    def handle_term(signum, frame):
        stopping.set()
        graceful_exit(signum, frame)

    signal.signal(signal.SIGTERM, handle_term)


def child_exit(server, worker):
    """A web process ended: prometheus_client drops its live series (its counts stay in the sums)."""
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        from prometheus_client import multiprocess

        multiprocess.mark_process_dead(worker.pid)
