"""The HTTP layer. Its blueprints share one flask-smorest ``Blueprint`` class, whose
argument parser answers a body that is not JSON with 415, the bearer-token security
requirement and rate limits read from the settings."""

import flask_smorest
from flask import current_app
from webargs.flaskparser import FlaskParser, is_json_request

from app.errors import UnsupportedMediaType
from app.extensions import limiter

# The OpenAPI security requirement of an endpoint that takes an access token.
BEARER = [{"bearerAuth": []}]


def limit_from_setting(name):
    """Flask-Limiter's limit on a view, read from the setting ``name`` at each request."""
    return limiter.limit(lambda: current_app.config[name])


class _JsonBodyParser(FlaskParser):
    """webargs reads a form or text body as a JSON body with every field missing, and the
    client would be told that its fields are missing; the body's type is what is wrong."""

    def _raw_load_json(self, req):
        has_body = bool(req.content_length) or "chunked" in req.headers.get("Transfer-Encoding", "")
        if has_body and not is_json_request(req):
            raise UnsupportedMediaType("send the body as application/json")
        return super()._raw_load_json(req)


class Blueprint(flask_smorest.Blueprint):
    ARGUMENTS_PARSER = _JsonBodyParser()
