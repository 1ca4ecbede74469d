"""Whisper Transcriber: the web application factory.

``create_app`` boots the process for the "web" role (``app/boot.py``: settings, data dir, logging,
database, queue, breaker), then adds the Flask parts. Importing this package loads no web stack
(flask_limiter, flask_sock, jwt, argon2): workers reach ``app.models`` and the services through it.
"""

from __future__ import annotations

import logging
import re
import uuid
from typing import Any

import peewee
from flask import Flask, Request, current_app, g, request
from werkzeug.middleware.proxy_fix import ProxyFix

from app import logging_setup, models
from app.boot import boot
from app.errors import register_error_handlers
from app.services.storage import Layout

log = logging.getLogger(__name__)
_REQUEST_ID = re.compile(r"^[A-Za-z0-9._-]{1,64}$")


class StreamingRequest(Request):
    """Multipart files are written straight into ``$DATA_DIR/tmp`` so a job can take them by rename."""

    def _get_file_stream(self, total_content_length, content_type, filename=None, content_length=None):
        path = Layout(current_app.config["DATA_DIR"]).temp_file(".upload")
        g.setdefault("upload_temps", []).append(path)
        stream = open(path, "wb+")  # noqa: SIM115  (werkzeug owns and closes the stream)
        g.setdefault("upload_streams", []).append(stream)  # but not one it dropped when the body broke off
        return stream


def create_app(config: dict[str, Any] | None = None) -> Flask:
    """Build the app: defaults, then config file and environment, then ``config`` (tests)."""
    # late: the web stack loads only here, never in a worker that imports the package (see the docstring)
    from app import login_limits
    from app.extensions import SocketReaderThread, sock
    from app.ratelimit import limiter, setup_rate_limits
    from app.services.users import bootstrap_admin

    settings = boot(config, "web")
    app = Flask(__name__, template_folder="web/templates", static_folder="web/static")
    app.config.update(settings)
    app.request_class = StreamingRequest
    if settings["TRUSTED_PROXIES"] > 0:  # only then is X-Forwarded-For the client address
        app.wsgi_app = ProxyFix(app.wsgi_app, x_for=settings["TRUSTED_PROXIES"], x_proto=settings["TRUSTED_PROXIES"])
    app.json.sort_keys = False
    app.config.setdefault(
        "SOCK_SERVER_OPTIONS",
        {"ping_interval": settings["WS_PING_INTERVAL"] or None, "thread_class": SocketReaderThread},
    )
    logging_setup.log_requests(app)  # access.log; boot set up the other logs
    limiter.init_app(app)
    login_limits.init_app(app)
    sock.init_app(app)
    register_error_handlers(app)
    _register_hooks(app)
    _register_blueprints(app)
    setup_rate_limits(app)
    bootstrap_admin(app.config)
    return app


def _register_hooks(app: Flask) -> None:
    @app.before_request
    def start_request() -> None:
        incoming = request.headers.get("X-Request-ID", "")
        g.request_id = incoming if _REQUEST_ID.match(incoming) else uuid.uuid4().hex
        try:
            models.db.connect(reuse_if_open=True)
        except peewee.OperationalError:
            if request.endpoint != "health.health":
                raise  # the health probe reports the database error itself and still answers 200

    @app.after_request
    def tag_response(response):
        response.headers["X-Request-ID"] = g.get("request_id", "")
        response.headers.setdefault("X-Content-Type-Options", "nosniff")
        return response

    @app.teardown_request
    def end_request(exc: BaseException | None) -> None:
        for stream in g.get("upload_streams", []):
            stream.close()  # a no-op unless the upload failed midway (a full disk): then nothing else closes it
        for path in g.get("upload_temps", []):
            path.unlink(missing_ok=True)  # an upload no job took: never leave it behind
        if not models.db.is_closed():
            models.db.close()


def _register_blueprints(app: Flask) -> None:
    from app.api import (  # late: route modules use the limiter and socket that create_app sets up first
        admin_routes,
        apikey_routes,
        auth_routes,
        export_routes,
        health_routes,
        job_routes,
        log_routes,
        metric_routes,
        openapi_routes,
        search_routes,
        upload_routes,
        user_routes,
    )
    from app.compat import asr_api, dubarr_api, legacy_api, openai_api, v1_api, voxis_api
    from app.web import pages

    for module in (
        auth_routes,
        job_routes,
        export_routes,
        health_routes,
        apikey_routes,
        user_routes,
        openai_api,
        log_routes,
        admin_routes,
        upload_routes,
        search_routes,
        metric_routes,
        openapi_routes,
        dubarr_api,
        voxis_api,
        legacy_api,
        v1_api,
        asr_api,
        pages,
    ):
        app.register_blueprint(module.bp)
    metric_routes.install(app)
