"""Logging configured once, with the request id on every line."""

import logging
import os
import socket
import uuid

from flask import g, has_request_context, request

REQUEST_ID_HEADER = "X-Request-ID"


class RequestIdFilter(logging.Filter):
    """Adds ``request_id`` to every record ('-' outside a request)."""

    def filter(self, record):
        record.request_id = g.get("request_id", "-") if has_request_context() else "-"
        return True


def configure_logging(app):
    """Attach one handler to the root logger, once per process, and a request id per request."""
    root = logging.getLogger()
    if not any(getattr(h, "_digit_service", False) for h in root.handlers):
        handler = logging.StreamHandler()
        handler._digit_service = True
        handler.addFilter(RequestIdFilter())
        handler.setFormatter(
            logging.Formatter("%(asctime)s %(levelname)s [%(request_id)s] %(name)s: %(message)s")
        )
        root.addHandler(handler)
    root.setLevel(app.config["LOG_LEVEL"])
    logging.getLogger("alembic.runtime.plugins").setLevel(logging.WARNING)  # a line per plugin per command

    @app.before_request
    def _assign_request_id():
        incoming = request.headers.get(REQUEST_ID_HEADER, "")
        # Accept a caller's id only if it looks sane, so logs cannot be forged with newlines.
        g.request_id = incoming if incoming.isascii() and incoming.replace("-", "").isalnum() and len(incoming) <= 64 else uuid.uuid4().hex

    show_worker = app.config["SERVED_BY_HEADER"]
    hostname = socket.gethostname()

    @app.after_request
    def _echo_request_id(response):
        response.headers[REQUEST_ID_HEADER] = g.get("request_id", "-")
        if show_worker:  # which worker answered: lets load tests see every worker swap models
            response.headers["X-Served-By"] = f"{hostname}:{os.getpid()}"
        return response
