"""Logging configured once, with the request id (and the caller) on every line.

``LOG_FORMAT=json`` writes one JSON object per line (python-json-logger), plus one line per
request with its endpoint, status and duration; text stays the default for terminals.
"""

import logging
import os
import socket
import time
import uuid

from flask import g, has_request_context, request
from pythonjsonlogger.json import JsonFormatter

REQUEST_ID_HEADER = "X-Request-ID"
TEXT_FORMAT = "%(asctime)s %(levelname)s [%(request_id)s] %(name)s: %(message)s"
JSON_FIELDS = ["levelname", "name", "message", "request_id", "user_id"]
requests_log = logging.getLogger("app.requests")


class RequestContextFilter(logging.Filter):
    """Adds ``request_id`` and ``user_id`` to every record (None outside a request)."""

    def filter(self, record):
        in_request = has_request_context()
        record.request_id = g.get("request_id", "-") if in_request else "-"
        record.user_id = g.get("user_id") if in_request else None
        return True


def _formatter(log_format):
    if log_format == "json":
        return JsonFormatter(JSON_FIELDS, timestamp="time", rename_fields={"levelname": "level", "name": "logger"})
    return logging.Formatter(TEXT_FORMAT)


def configure_logging(app):
    """Attach one handler to the root logger, once per process, and a request id per request."""
    root = logging.getLogger()
    handler = next((h for h in root.handlers if getattr(h, "_digit_service", False)), None)
    if handler is None:
        handler = logging.StreamHandler()
        handler._digit_service = True
        handler.addFilter(RequestContextFilter())
        root.addHandler(handler)
    handler.setFormatter(_formatter(app.config["LOG_FORMAT"]))
    root.setLevel(app.config["LOG_LEVEL"])
    logging.getLogger("alembic.runtime.plugins").setLevel(logging.WARNING)  # a line per plugin per command

    @app.before_request
    def _assign_request_id():
        incoming = request.headers.get(REQUEST_ID_HEADER, "")
        # Accept a caller's id only if it looks sane, so logs cannot be forged with newlines.
        g.request_id = incoming if incoming.isascii() and incoming.replace("-", "").isalnum() and len(incoming) <= 64 else uuid.uuid4().hex
        g.request_started = time.perf_counter()

    show_worker = app.config["SERVED_BY_HEADER"]
    # A request line of our own only in JSON: in text, gunicorn's access log already has one.
    json_lines = app.config["LOG_FORMAT"] == "json"
    hostname = socket.gethostname()

    @app.after_request
    def _echo_request_id(response):
        response.headers[REQUEST_ID_HEADER] = g.get("request_id", "-")
        if show_worker:  # which worker answered: lets load tests see every worker swap models
            response.headers["X-Served-By"] = f"{hostname}:{os.getpid()}"
        if json_lines:
            requests_log.info("%s %s %s", request.method, request.path, response.status_code, extra={
                "endpoint": request.endpoint, "method": request.method, "path": request.path,
                "status": response.status_code,
                "duration_ms": round((time.perf_counter() - g.get("request_started", time.perf_counter())) * 1000, 3),
            })
        return response
