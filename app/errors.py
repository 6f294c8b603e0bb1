"""One JSON error shape for everything: ``{"error": {"code": ..., "message": ...}}``.

Services raise ``ApiError`` (or one of the named subclasses) and never build responses;
the handlers below render every failure, including Werkzeug's, JWT's and the rate
limiter's, in that shape.
"""

import logging

from flask import jsonify
from marshmallow import ValidationError as MarshmallowValidationError
from sqlalchemy.exc import InterfaceError, OperationalError
from sqlalchemy.exc import TimeoutError as PoolTimeout
from werkzeug.exceptions import HTTPException
from werkzeug.http import HTTP_STATUS_CODES

from app.extensions import db

log = logging.getLogger(__name__)


class ApiError(Exception):
    """A failure the client can act on, with its HTTP status and a stable code."""

    status = 400
    code = "bad_request"

    def __init__(self, message, *, status=None, code=None, details=None, headers=None):
        super().__init__(message)
        self.message = message
        self.status = status or self.status
        self.code = code or self.code
        self.details = details
        self.headers = headers


class NotFound(ApiError):
    status, code = 404, "not_found"


class Conflict(ApiError):
    status, code = 409, "conflict"


class Forbidden(ApiError):
    status, code = 403, "forbidden"


class Unauthorized(ApiError):
    status, code = 401, "unauthorized"


class ValidationFailed(ApiError):
    status, code = 422, "validation_error"


class UnsupportedMediaType(ApiError):
    status, code = 415, "unsupported_media_type"


class ServiceUnavailable(ApiError):
    status, code = 503, "service_unavailable"


def error_response(status, message=None, code=None, details=None, headers=None):
    """Build the JSON error response; ``code`` defaults to the status phrase in snake_case."""
    phrase = HTTP_STATUS_CODES.get(status, "error")
    body = {
        "error": {
            "code": code or phrase.lower().replace(" ", "_").replace("'", ""),
            "message": message or phrase,
        }
    }
    if details:
        body["error"]["details"] = details
    response = jsonify(body)
    response.status_code = status
    response.headers.update(headers or {})
    return response


def _http_exception(exc):
    """Werkzeug errors (404, 405, 413, smorest's 422...) rendered as JSON."""
    if exc.code == 429:
        return _rate_limited(exc)
    # webargs/flask-smorest put field errors in exc.data["messages"].
    messages = (getattr(exc, "data", None) or {}).get("messages")
    if messages and exc.code == 422:
        return _validation_failed(_flatten_locations(messages))
    details = _flatten_locations(messages) if messages and exc.code == 400 else None
    message = "request body too large" if exc.code == 413 else exc.description
    headers = None
    if exc.code == 405 and exc.response is None:
        headers = {k: v for k, v in exc.get_headers() if k == "Allow"}
    return error_response(exc.code or 500, message, details=details, headers=headers)


def _flatten_locations(messages):
    """webargs nests errors by location ('json', 'files'); clients care about fields."""
    if isinstance(messages, dict) and set(messages) <= {"json", "form", "files", "query", "headers", "view_args"}:
        flat = {}
        for by_field in messages.values():
            flat.update(by_field if isinstance(by_field, dict) else {"_schema": by_field})
        return flat
    return messages


def _rate_limited(exc):
    response = error_response(429, f"rate limit exceeded: {exc.description}", code="rate_limited")
    # Flask-Limiter attaches Retry-After / X-RateLimit-* to the original response only.
    if exc.response is not None:
        for name, value in exc.response.headers.items():
            if name.lower().startswith("x-ratelimit") or name.lower() == "retry-after":
                response.headers[name] = value
    if "Retry-After" not in response.headers:
        response.headers["Retry-After"] = "60"
    return response


def _api_error(exc):
    return error_response(exc.status, exc.message, code=exc.code, details=exc.details, headers=exc.headers)


def _validation_failed(details):
    """A request that failed its schema, in a decorator (smorest's 422) or in a view."""
    return error_response(422, "request validation failed", code="validation_error", details=details)


# The driver could not reach the database or lost it mid-request (server down, restarted,
# connection refused or timed out, pool exhausted): the client may retry, nothing is wrong
# with its request. The pool's pre-ping reconnects once the database is back.
DATABASE_DOWN = (OperationalError, InterfaceError, PoolTimeout)


def _database_unavailable(exc):
    log.error("database unavailable: %s", getattr(exc, "orig", None) or exc)
    rollback_quietly()
    return error_response(503, "the database is unavailable; try again shortly",
                          code="database_unavailable", headers={"Retry-After": "5"})


def rollback_quietly():
    """Roll the session back; with the database gone that may fail too, which changes nothing."""
    try:
        db.session.rollback()
    except Exception:  # noqa: BLE001 - the connection is already broken
        log.debug("rollback failed", exc_info=True)


def _unexpected(exc):
    """Anything unhandled: log it, roll back, and say nothing about internals."""
    log.exception("unhandled error")
    rollback_quietly()
    return error_response(500, "internal server error", code="internal_error")


def register_error_handlers(app):
    app.register_error_handler(ApiError, _api_error)
    app.register_error_handler(HTTPException, _http_exception)
    app.register_error_handler(MarshmallowValidationError, lambda exc: _validation_failed(exc.messages))
    for exc_class in DATABASE_DOWN:
        app.register_error_handler(exc_class, _database_unavailable)
    app.register_error_handler(Exception, _unexpected)
