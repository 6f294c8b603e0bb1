"""Configuration: environments, secrets policy, defaults."""

import pytest

from app import create_app
from config import Development, Production, Testing, env_bool, get_config


def test_app_env_picks_the_class(monkeypatch):
    monkeypatch.setenv("APP_ENV", "testing")
    assert get_config() is Testing
    monkeypatch.delenv("APP_ENV")
    assert get_config() is Development
    with pytest.raises(RuntimeError, match="unknown APP_ENV"):
        get_config("staging")


@pytest.mark.parametrize("raw, expected", [("true", True), ("1", True), ("yes", True), ("false", False), ("0", False), ("", True)])
def test_env_bool(monkeypatch, raw, expected):
    monkeypatch.setenv("SOME_FLAG", raw)
    assert env_bool("SOME_FLAG", True) is expected


def test_production_refuses_missing_secrets(tmp_path, monkeypatch):
    monkeypatch.setenv("INSTANCE_PATH", str(tmp_path))
    monkeypatch.setattr(Production, "SECRET_KEY", None)
    monkeypatch.setattr(Production, "JWT_SECRET_KEY", None)
    with pytest.raises(RuntimeError, match="SECRET_KEY is not set"):
        create_app("production")
    assert not (tmp_path / "secrets.json").exists()  # production never invents a secret


@pytest.mark.parametrize("weak", ["dev", "changeme", "short-secret"])
def test_production_refuses_weak_secrets(tmp_path, monkeypatch, weak):
    monkeypatch.setenv("INSTANCE_PATH", str(tmp_path))
    monkeypatch.setattr(Production, "SECRET_KEY", weak)
    monkeypatch.setattr(Production, "JWT_SECRET_KEY", "x" * 64)
    with pytest.raises(RuntimeError, match="SECRET_KEY is too weak"):
        create_app("production")


def test_production_starts_with_strong_secrets(tmp_path, monkeypatch):
    monkeypatch.setenv("INSTANCE_PATH", str(tmp_path))
    monkeypatch.setattr(Production, "SECRET_KEY", "s" * 48)
    monkeypatch.setattr(Production, "JWT_SECRET_KEY", "j" * 48)
    app = create_app("production", test_config={"SQLALCHEMY_DATABASE_URI": f"sqlite:///{tmp_path}/p.db"})
    assert app.config["APP_ENV"] == "production"
    assert not app.testing


def test_development_generates_and_keeps_secrets(tmp_path, monkeypatch):
    monkeypatch.setenv("INSTANCE_PATH", str(tmp_path))
    monkeypatch.setattr(Development, "SECRET_KEY", None)
    monkeypatch.setattr(Development, "JWT_SECRET_KEY", None)
    first = create_app("development")
    second = create_app("development")
    assert len(first.config["JWT_SECRET_KEY"]) >= 32
    assert first.config["SECRET_KEY"] == second.config["SECRET_KEY"]
    assert first.config["JWT_SECRET_KEY"] == second.config["JWT_SECRET_KEY"]
    assert oct((tmp_path / "secrets.json").stat().st_mode & 0o777) == "0o600"


def test_defaults_match_the_contract(app):
    assert app.config["RATELIMIT_DEFAULT"] == "200 per day;50 per hour"
    assert app.config["RATELIMIT_V1_PREDICT"] == "100 per day"
    assert app.config["RATELIMIT_V2_PREDICT"] == "150 per day"
    assert app.config["MAX_CONTENT_LENGTH"] == 5 * 1024 * 1024
    assert app.config["RETRAIN_MIN_FEEDBACK"] == 20
    assert app.config["RETRAIN_MAX_REGRESSION"] == 0.5


def test_postgres_urls_use_psycopg3(tmp_path, monkeypatch):
    monkeypatch.setenv("INSTANCE_PATH", str(tmp_path))
    app = create_app("testing", test_config={"SQLALCHEMY_DATABASE_URI": "postgres://u:p@localhost/db"})
    assert app.config["SQLALCHEMY_DATABASE_URI"] == "postgresql+psycopg://u:p@localhost/db"


def test_an_unknown_log_format_refuses_to_start(tmp_path, monkeypatch):
    monkeypatch.setenv("INSTANCE_PATH", str(tmp_path))
    with pytest.raises(RuntimeError, match="LOG_FORMAT must be 'text' or 'json'"):
        create_app("testing", {"LOG_FORMAT": "yaml"})
