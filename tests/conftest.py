"""Fixtures: an app per test with its own SQLite file and model folder, clients, accounts."""

import os
import shutil
from pathlib import Path

import flask_migrate
import pytest

from app import create_app

ROOT = Path(__file__).resolve().parent.parent
SHIPPED_MODELS = ROOT / "models"
SHARED_DATA = ROOT.parent / "shared" / "data"
FIXTURES = Path(__file__).resolve().parent / "fixtures"

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


@pytest.fixture
def model_dir(tmp_path):
    """A private copy of the shipped model folder, so tests never touch the developer's files."""
    target = tmp_path / "models"
    shutil.copytree(SHIPPED_MODELS, target, ignore=shutil.ignore_patterns("retrain-*", "*.tmp.keras"))
    return target


@pytest.fixture
def make_app(tmp_path, model_dir):
    """Build a migrated testing app; keyword overrides go into its config."""
    apps = []

    def factory(**overrides):
        config = {
            "SQLALCHEMY_DATABASE_URI": os.environ.get("TEST_DATABASE_URL")
            or f"sqlite:///{tmp_path / f'test{len(apps)}.sqlite3'}",
            "MODEL_DIR": str(model_dir),
            "MODEL_WATCH": False,
        }
        config.update(overrides)
        app = create_app("testing", test_config=config)
        with app.app_context():
            flask_migrate.upgrade(directory=str(ROOT / "migrations"))
        apps.append(app)
        return app

    yield factory
    for app in apps:
        app.extensions["model_service"].stop_watcher()
        with app.app_context():
            from app.extensions import db

            db.session.remove()
            if os.environ.get("TEST_DATABASE_URL"):
                flask_migrate.downgrade(directory=str(ROOT / "migrations"), revision="base")
            db.engine.dispose()


@pytest.fixture
def app(make_app):
    return make_app()


@pytest.fixture
def client(app):
    return app.test_client()


@pytest.fixture
def runner(app):
    return app.test_cli_runner()


class AuthActions:
    """Register, log in and build headers the way a client would."""

    def __init__(self, client, app):
        self._client = client
        self._app = app

    def register(self, username="alice", password="correct-horse-1", **extra):
        return self._client.post("/auth/register", json={"username": username, "password": password, **extra})

    def login(self, username="alice", password="correct-horse-1"):
        return self._client.post("/auth/login", json={"username": username, "password": password})

    def headers(self, username="alice", password="correct-horse-1", role="user"):
        """Create the account if needed (as ``role``) and return an Authorization header."""
        with self._app.app_context():
            from app.entities import User
            from app.extensions import db
            from app.services.accounts import create_user

            if db.session.execute(db.select(User).filter_by(username=username)).scalar_one_or_none() is None:
                create_user(username, password, role=role)
        token = self.login(username, password).get_json()["access_token"]
        return {"Authorization": f"Bearer {token}"}

    def admin_headers(self):
        return self.headers("root", "admin-password-1", role="admin")


@pytest.fixture
def auth(client, app):
    return AuthActions(client, app)
