"""The Alembic migrations create and drop the whole schema."""

import subprocess
import sys
from datetime import datetime, timezone

import pytest
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


def test_0002_adds_the_onnx_hash_and_the_cli_exports_versions_saved_before_it(tmp_path, model_dir):
    """An install upgraded from 0001: its versions have no ONNX file until one is exported."""
    import json
    import os

    from app.ml.onnx_model import sha256_file

    os.remove(model_dir / "base.onnx")  # saved before exports existed
    manifest = json.loads((model_dir / "manifest.json").read_text())
    db_path = tmp_path / "old.sqlite3"
    env = {**os.environ, "DATABASE_URL": f"sqlite:///{db_path}", "INSTANCE_PATH": str(tmp_path),
           "APP_ENV": "development", "MODEL_DIR": str(model_dir), "TF_CPP_MIN_LOG_LEVEL": "2"}
    assert flask_cli("db", "upgrade", "0001_initial", env=env).returncode == 0
    engine = sa.create_engine(f"sqlite:///{db_path}")
    with engine.begin() as connection:
        connection.execute(sa.text(
            "INSERT INTO model_versions (version, file_path, sha256, metrics, status, created_at, activated_at) "
            "VALUES ('base-1', 'base.keras', :sha, '{}', 'active', '2026-11-01 00:00:00', '2026-11-01 00:00:00')"
        ), {"sha": manifest["sha256"]})

    up = flask_cli("db", "upgrade", env=env)
    assert up.returncode == 0, up.stderr
    columns = {c["name"]: c for c in sa.inspect(engine).get_columns("model_versions")}
    assert columns["onnx_sha256"]["nullable"]
    with engine.connect() as connection:
        assert connection.execute(sa.text("SELECT version, onnx_sha256 FROM model_versions")).all() == [("base-1", None)]

    export = flask_cli("model", "export-onnx", env=env)
    assert export.returncode == 0, export.stderr
    assert json.loads(export.stdout.strip().splitlines()[-1]) == {"exported": ["base-1"], "still_missing": []}
    assert "exporting model version base-1 to ONNX" in export.stderr
    with engine.connect() as connection:
        recorded = connection.execute(sa.text("SELECT onnx_sha256 FROM model_versions")).scalar_one()
    assert recorded == sha256_file(model_dir / "base.onnx")

    down = flask_cli("db", "downgrade", "0001_initial", env=env)
    assert down.returncode == 0, down.stderr
    assert "onnx_sha256" not in {c["name"] for c in sa.inspect(engine).get_columns("model_versions")}
    with engine.connect() as connection:  # the rows survive the batch-mode table rebuild
        assert connection.execute(sa.text("SELECT version FROM model_versions")).scalars().all() == ["base-1"]
    engine.dispose()


@pytest.mark.parametrize("database", ["sqlite", "postgres"])
def test_0004_adds_the_token_cut_off_and_its_downgrade_keeps_the_accounts(database, tmp_path, postgres_database):
    """Accounts from before 0004 get no cut-off; down to 0003 and up again, on both databases."""
    import os

    if database == "postgres":
        url = postgres_database()
        engine_url = url.replace("postgresql://", "postgresql+psycopg://", 1)
    else:
        url = engine_url = f"sqlite:///{tmp_path / 'old.sqlite3'}"
    env = {**os.environ, "DATABASE_URL": url, "INSTANCE_PATH": str(tmp_path), "APP_ENV": "development"}
    assert flask_cli("db", "upgrade", "0003_feedback_trust", env=env).returncode == 0
    engine = sa.create_engine(engine_url)
    try:
        with engine.begin() as connection:
            connection.execute(sa.text(
                "INSERT INTO users (username, password_hash, role, active, created_at) "
                "VALUES ('old', 'x', 'user', :active, '2026-11-01 00:00:00')"), {"active": True})

        def columns():
            return {c["name"]: c for c in sa.inspect(engine).get_columns("users")}

        up = flask_cli("db", "upgrade", env=env)
        assert up.returncode == 0, up.stderr
        assert columns()["tokens_valid_after"]["nullable"]
        with engine.begin() as connection:
            assert connection.execute(sa.text("SELECT tokens_valid_after FROM users")).scalar_one() is None
            connection.execute(sa.text("UPDATE users SET tokens_valid_after = :at"),
                               {"at": datetime(2026, 11, 30, 12, 0, 0, 123456, tzinfo=timezone.utc)})

        down = flask_cli("db", "downgrade", "0003_feedback_trust", env=env)
        assert down.returncode == 0, down.stderr
        assert "tokens_valid_after" not in columns()
        with engine.connect() as connection:  # the account survives SQLite's batch-mode table rebuild
            assert connection.execute(sa.text("SELECT username, active FROM users")).all() == [("old", True)]

        again = flask_cli("db", "upgrade", env=env)
        assert again.returncode == 0, again.stderr
        with engine.connect() as connection:
            assert connection.execute(sa.text("SELECT username, tokens_valid_after FROM users")).all() == [("old", None)]
    finally:
        engine.dispose()
