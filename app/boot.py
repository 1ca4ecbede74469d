"""One start for every appliance process: the web app and each worker begin with :func:`boot`.

``boot(settings, role)`` loads and checks the settings, then prepares what both roles share:

- the data dir's folders;
- logging: JSON lines in ``$DATA_DIR/logs`` at ``LOG_LEVEL``, tagged with the role;
- the database (``DATABASE_URL`` or ``whisper.db``: opened, tables and migrations applied), the queue
  (``QUEUE_URL`` or ``queue.db``, with the job task handed to ``app/services/queueing.py``)
  and the engine breaker (``BREAKER_FAIL_MAX``, ``BREAKER_RESET_SECONDS``).

What each role gets besides:

- ``"web"``: the secret key (refused when weak in production, else generated once into the data dir)
  and ``access.log``. ``create_app`` then adds only the Flask parts (limiter, sockets, error
  handlers, hooks, routes).
- ``"worker"``: its lower CPU priority (``WORKER_NICE``) first, so every thread it starts inherits it,
  libgomp's wait policy for the engines (``workers.engine.openmp_defaults``), and a console that shows
  every line at ``LOG_LEVEL``. The ``worker`` command then adds only the consumer. Nothing here loads
  the web stack (flask_limiter, flask_sock, jwt, argon2).
- ``"wyoming"``: the console like a worker, but the normal CPU priority: its voice commands are interactive
  and must get the cores before a worker's file job. The ``wyoming`` command then loads its own engine.
  No web stack either.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from app import db, logging_setup
from app.services import queueing
from app.services.breaker import configure_breaker
from app.services.storage import Layout
from app.settings import MIN_SECRET_LENGTH, ensure_secret_key, load_settings
from workers import engine, lifecycle, queue, tasks

ROLES = ("web", "worker", "wyoming")


def boot(settings: Mapping[str, Any] | None, role: str) -> dict[str, Any]:
    """Load the settings (``settings`` override the file and environment) and prepare this process for ``role``."""
    if role not in ROLES:
        raise ValueError(f"role must be one of {', '.join(ROLES)}, not {role!r}")
    loaded = load_settings(dict(settings or {}))
    if role == "web":
        loaded["SECRET_KEY"] = _secret_key(loaded)
    else:
        if role == "worker":
            lifecycle.lower_priority(int(loaded["WORKER_NICE"]))
            engine.openmp_defaults()  # libgomp reads it once, when the first engine loads it
        logging_setup.console_logging(loaded["LOG_LEVEL"])
    # late: app.supervisor imports workers.lifecycle, which may be what is importing this package now
    from app.supervisor import name_this_box

    name_this_box(loaded["WORKER_NAME"])
    Layout(loaded["DATA_DIR"]).ensure()
    logging_setup.configure_logging(loaded, role)
    db.open_database(db.database_url(loaded), loaded["DATA_DIR"])
    queue.bind(loaded["DATA_DIR"], float(loaded["QUEUE_POLL_SECONDS"]), loaded["QUEUE_URL"])
    queueing.bind(tasks.process_job)  # services queue jobs through this; they never import the tasks
    configure_breaker(loaded)
    return loaded


def _secret_key(settings: dict[str, Any]) -> str:
    """The key that signs tokens and sessions: a weak one stops a production start."""
    if settings["ENV"] == "production" and len(settings.get("SECRET_KEY") or "") < MIN_SECRET_LENGTH:
        raise RuntimeError(f"SECRET_KEY must be set to at least {MIN_SECRET_LENGTH} characters in production")
    return ensure_secret_key(settings)
