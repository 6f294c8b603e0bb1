"""The Alembic migrations create and drop the whole schema."""

import subprocess
import sys

import sqlalchemy as sa

from support import ROOT

TABLES = {"users", "revoked_tokens", "stored_images", "predictions", "feedback", "model_versions", "retrain_jobs"}


def flask_cli(*args, env):
    return subprocess.run([sys.executable, "-m", "flask", "--app", "wsgi", *args], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=120)


def test_upgrade_creates_every_table_and_downgrade_drops_them(tmp_path):
    import os

    db_path = tmp_path / "fresh.sqlite3"
    env = {**os.environ, "DATABASE_URL": f"sqlite:///{db_path}", "INSTANCE_PATH": str(tmp_path), "APP_ENV": "development"}
    up = flask_cli("db", "upgrade", env=env)
    assert up.returncode == 0, up.stderr
    engine = sa.create_engine(f"sqlite:///{db_path}")
    assert TABLES <= set(sa.inspect(engine).get_table_names())
    engine.dispose()

    down = flask_cli("db", "downgrade", "base", env=env)
    assert down.returncode == 0, down.stderr
    engine = sa.create_engine(f"sqlite:///{db_path}")
    assert not TABLES & set(sa.inspect(engine).get_table_names())
    engine.dispose()


def test_models_match_migrations(app):
    """Autogenerate finds nothing to do: the ORM and the migrations agree."""
    from alembic.autogenerate import compare_metadata
    from alembic.migration import MigrationContext

    from app.extensions import db

    with app.app_context(), db.engine.connect() as connection:
        context = MigrationContext.configure(connection, opts={"compare_type": True})
        assert compare_metadata(context, db.metadata) == []
