"""The process-wide "stopping" flag, Flask-free so services can read it.

Set when Gunicorn asks this worker to stop (config/gunicorn.conf.py): log sockets and long polls
end at once instead of holding the shutdown for graceful_timeout (30 s).
"""

from __future__ import annotations

import threading

stopping = threading.Event()
