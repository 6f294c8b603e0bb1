"""Fixtures: an app per test with its own database and model folder, clients, accounts.

Each app gets a SQLite file of its own by default. ``make_app(database="postgres")``, the
``postgres_app`` fixture, or ``@pytest.mark.parametrize("app", ["sqlite", "postgres"],
indirect=True)`` give it instead a fresh database on the server of ``TEST_POSTGRES_URL``
(created with a random name, migrated with the real Alembic migrations, dropped after the
test); without that variable those tests skip.
"""

import logging
import os
import shutil

import flask_migrate
import pytest

from app import create_app

from support import (
    ROOT,
    SHIPPED_MODELS,
    AuthActions,
    drop_postgres_database,
    fresh_postgres_database,
    postgres_server_url,
)

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


@pytest.fixture
def model_dir(tmp_path):
    """A private copy of the shipped model folder, so tests never touch the developer's files."""
    target = tmp_path / "models"
    shutil.copytree(SHIPPED_MODELS, target, ignore=shutil.ignore_patterns("retrain-*", "*.tmp.keras", "*.tmp.onnx"))
    return target


@pytest.fixture
def postgres_database():
    """Factory: a new, empty database on ``TEST_POSTGRES_URL``'s server (skips without it); dropped after."""
    created = []

    def create():
        server = postgres_server_url()
        created.append((server, fresh_postgres_database(server)))
        return created[-1][1]

    yield create
    for server, url in created:
        drop_postgres_database(server, url)


@pytest.fixture
def make_app(tmp_path, model_dir, postgres_database):
    """Build a migrated testing app on ``database`` ("sqlite" or "postgres"); keyword overrides go into its config."""
    apps = []

    def factory(database="sqlite", **overrides):
        if database == "sqlite":
            uri = f"sqlite:///{tmp_path / f'test{len(apps)}.sqlite3'}"
        elif database == "postgres":
            uri = postgres_database()
        else:
            raise ValueError(f"unknown test database {database!r}; use 'sqlite' or 'postgres'")
        config = {
            "SQLALCHEMY_DATABASE_URI": uri,
            "MODEL_DIR": str(model_dir),
            "MODEL_WATCH": False,
            "MODEL_PRELOAD": False,
        }
        config.update(overrides)
        app = create_app("testing", test_config=config)
        migrate_keeping_log_handlers(app)
        apps.append(app)
        return app

    yield factory
    for app in apps:
        app.extensions["model_service"].stop_watcher()
        with app.app_context():
            from app.extensions import db

            db.session.remove()
            db.engine.dispose()  # before postgres_database drops the database


def migrate_keeping_log_handlers(app):
    """Upgrade the app's database with the real migrations, leaving logging as it was.

    Alembic's ``env.py`` runs ``logging.config.fileConfig``, which replaces the root
    logger's handlers and level: pytest's ``caplog`` handler would vanish with them.
    """
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    try:
        with app.app_context():
            flask_migrate.upgrade(directory=str(ROOT / "migrations"))
    finally:
        for handler in root.handlers[:]:
            root.removeHandler(handler)
        for handler in handlers:
            root.addHandler(handler)
        root.setLevel(level)


@pytest.fixture
def app(request, make_app):
    """The test's app; ``parametrize("app", ["sqlite", "postgres"], indirect=True)`` picks the database."""
    return make_app(database=getattr(request, "param", "sqlite"))


@pytest.fixture
def postgres_app(make_app):
    """A migrated app on a fresh PostgreSQL database (skips unless ``TEST_POSTGRES_URL`` is set)."""
    return make_app(database="postgres")


@pytest.fixture
def client(app):
    return app.test_client()


@pytest.fixture
def runner(app):
    return app.test_cli_runner()


@pytest.fixture
def auth(client, app):
    return AuthActions(client, app)


@pytest.fixture(scope="session")
def replay_digits():
    """The replay sample shipped beside the model (MNIST training digits)."""
    import numpy as np

    with np.load(SHIPPED_MODELS / "replay.npz") as data:
        return data["x"], data["y"]


@pytest.fixture(scope="session")
def tiny_model_source(tmp_path_factory, replay_digits):
    """A model folder with a tiny network that always answers 0, a manifest and a small replay set.

    Always answering 0 makes gate outcomes deterministic in tests: on feedback without any 0
    the live model scores exactly 0 %, so a candidate can never be worse there.
    """
    import json

    import numpy as np

    from app.ml.artifacts import save_model_atomic
    from app.ml.network import build_model

    folder = tmp_path_factory.mktemp("tiny-models")
    model = build_model(width=4)
    probs = model.get_layer("probs")
    kernel, bias = probs.get_weights()
    bias = np.zeros_like(bias)
    bias[0] = 5.0
    probs.set_weights([np.zeros_like(kernel), bias])
    saved = save_model_atomic(model, str(folder), "tiny.keras")
    x, y = replay_digits
    np.savez_compressed(folder / "replay.npz", x=x[:600], y=y[:600])
    (folder / "manifest.json").write_text(json.dumps({"version": "tiny-1", "file": "tiny.keras", "sha256": saved.sha256,
                                                      "onnx_file": "tiny.onnx", "onnx_sha256": saved.onnx_sha256,
                                                      "metrics": {"note": "always answers 0"}}))
    return folder


@pytest.fixture
def tiny_model_dir(tmp_path, tiny_model_source):
    target = tmp_path / "tiny-models"
    shutil.copytree(tiny_model_source, target)
    return target


@pytest.fixture
def tiny_app(make_app, tiny_model_dir):
    """An app serving the tiny model, tuned so a retrain takes seconds."""
    return make_app(MODEL_DIR=str(tiny_model_dir), RETRAIN_EPOCHS=1, RETRAIN_MIN_FEEDBACK=20,
                    RETRAIN_MAX_REGRESSION=100.0, RETRAIN_MAX_CLASS_REGRESSION=100.0)
