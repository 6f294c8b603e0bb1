"""Digit Service: the application factory.

Reading ``create_app`` tells you the whole app: configuration, extensions, blueprints,
error handlers, CLI commands and the model that serves predictions.
"""

import json
import os
import secrets

from flask import Flask
from sqlalchemy import event

from app.api.uploads import UploadRequest
from config import get_config


def create_app(config_name=None, test_config=None):
    """Build an app for ``config_name`` (default: ``APP_ENV``), with optional overrides."""
    app = Flask(__name__, instance_path=os.environ.get("INSTANCE_PATH") or None)
    app.request_class = UploadRequest  # a malformed form body is a 400, not an empty form
    config_class = get_config(config_name)
    app.config.from_object(config_class)
    if test_config:
        app.config.update(test_config)
    os.makedirs(app.instance_path, exist_ok=True)
    configure_database_uri(app)
    ensure_development_secrets(app)
    config_class.validate(app.config)

    from app import cli, errors, lifecycle, logs, metrics
    from app.serving import ModelService

    logs.configure_logging(app)
    configure_proxy(app)
    metrics.init_app(app)
    register_extensions(app)
    register_blueprints(app)
    errors.register_error_handlers(app)
    cli.init_app(app)
    ModelService().init_app(app)
    lifecycle.init_app(app)
    return app


def configure_database_uri(app):
    """Default to a SQLite file in the instance folder (the embedded set-up)."""
    if not app.config.get("SQLALCHEMY_DATABASE_URI"):
        path = os.path.join(app.instance_path, "digit_service.sqlite3")
        app.config["SQLALCHEMY_DATABASE_URI"] = f"sqlite:///{path}"
    uri = app.config["SQLALCHEMY_DATABASE_URI"]
    # postgres:// is the scheme Heroku-style URLs use; the driver is psycopg 3 either way.
    for scheme in ("postgres://", "postgresql://"):
        if uri.startswith(scheme):
            uri = "postgresql+psycopg://" + uri[len(scheme):]
    app.config["SQLALCHEMY_DATABASE_URI"] = uri
    if uri.startswith("postgresql"):
        # An unreachable server must fail fast (503), not hold a request for minutes.
        options = dict(app.config.get("SQLALCHEMY_ENGINE_OPTIONS") or {})
        options["connect_args"] = {"connect_timeout": app.config["DATABASE_CONNECT_TIMEOUT"],
                                   **options.get("connect_args", {})}
        app.config["SQLALCHEMY_ENGINE_OPTIONS"] = options


def configure_rate_limit_storage(app):
    """Redis storage gets socket timeouts: a Redis that stops answering must not hang requests."""
    if app.config["RATELIMIT_STORAGE_URI"].startswith(("redis://", "rediss://", "redis+")):
        timeout = app.config["REDIS_SOCKET_TIMEOUT"]
        app.config["RATELIMIT_STORAGE_OPTIONS"] = {"socket_connect_timeout": timeout, "socket_timeout": timeout,
                                                   **app.config.get("RATELIMIT_STORAGE_OPTIONS", {})}


def ensure_development_secrets(app):
    """Outside production, make random secrets once and keep them in the instance folder.

    Nothing secret is hard-coded, and tokens survive a restart of the development server.
    """
    if app.config["APP_ENV"] == "production":
        return
    missing = [name for name in ("SECRET_KEY", "JWT_SECRET_KEY") if not app.config.get(name)]
    if not missing:
        return
    path = os.path.join(app.instance_path, "secrets.json")
    stored = {}
    if os.path.exists(path):
        with open(path) as fh:
            stored = json.load(fh)
    if any(name not in stored for name in missing):
        stored.update({name: secrets.token_urlsafe(48) for name in missing if name not in stored})
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as fh:
            json.dump(stored, fh)
    for name in missing:
        app.config[name] = stored[name]


def configure_proxy(app):
    """Trust X-Forwarded-* only from the configured number of proxies (rate limits key on it)."""
    hops = app.config["PROXY_FIX_HOPS"]
    if hops:
        from werkzeug.middleware.proxy_fix import ProxyFix

        app.wsgi_app = ProxyFix(app.wsgi_app, x_for=hops, x_proto=hops, x_host=hops)


# How callers authenticate, as the endpoints' ``security`` requirements name it.
SECURITY_SCHEMES = {
    "bearerAuth": {"type": "http", "scheme": "bearer", "bearerFormat": "JWT"},
    "refreshToken": {"type": "http", "scheme": "bearer", "bearerFormat": "JWT",
                     "description": "the refresh token from login"},
    "metricsToken": {"type": "http", "scheme": "bearer", "description": "the METRICS_TOKEN setting"},
}


def register_extensions(app):
    from app import security
    from app.extensions import api, bcrypt, db, jwt, limiter, mail, migrate
    from app.schemas import ErrorSchema

    db.init_app(app)
    with app.app_context():
        if db.engine.dialect.name == "sqlite":
            event.listen(db.engine, "connect", _sqlite_pragmas)
    migrate.init_app(app, db, render_as_batch=True, compare_type=True)
    bcrypt.init_app(app)
    jwt.init_app(app)
    security.init_app(app)
    configure_rate_limit_storage(app)
    limiter.init_app(app)
    mail.init_app(app)
    api.ERROR_SCHEMA = ErrorSchema
    api.init_app(app)
    for name, scheme in SECURITY_SCHEMES.items():
        api.spec.components.security_scheme(name, scheme)


def _sqlite_pragmas(dbapi_connection, _record):
    """WAL and a busy timeout on every connection: threads and workers write concurrently."""
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA busy_timeout=30000")
    # With WAL, NORMAL skips the fsync per commit yet never corrupts the database (a power
    # cut may lose the last transactions); FULL made every prediction wait for the disk.
    cursor.execute("PRAGMA synchronous=NORMAL")
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.close()


def register_blueprints(app):
    from app import web
    from app.api import admin, auth, feedback, health, predict_v1, predict_v2, review
    from app.extensions import api
    from app.schemas import register_review_schemas

    register_api_docs(app)
    register_review_schemas(api.spec)
    for blueprint in (
        health.bp,
        auth.bp,
        auth.legacy_bp,
        predict_v1.bp,
        predict_v2.bp,
        feedback.bp,
        admin.bp,
        review.bp,
    ):
        api.register_blueprint(blueprint)
    web.init_app(app)  # HTML pages: not part of the OpenAPI document


def register_api_docs(app):
    """Swagger UI at API_DOCS_PATH, reading the OpenAPI document flask-smorest generates.

    Neither counts against the caller's rate limits: a docs page load fetches several
    files and the document itself, and client generators read the document too.
    """
    from flask_swagger_ui import get_swaggerui_blueprint

    from app.extensions import limiter

    docs = get_swaggerui_blueprint(
        app.config["API_DOCS_PATH"], "/" + app.config["OPENAPI_JSON_PATH"], config={"app_name": app.config["API_TITLE"]}
    )
    limiter.exempt(docs)
    limiter.exempt(app.blueprints["api-docs"])  # flask-smorest's /openapi.json, registered by api.init_app
    app.register_blueprint(docs)
