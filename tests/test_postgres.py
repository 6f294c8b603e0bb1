"""The service on PostgreSQL, through the Flask test client.

Every test gets a new database on the server of ``TEST_POSTGRES_URL`` (created with a random
name, migrated with the real Alembic migrations, dropped afterwards); without that variable
the whole module skips. SQLite hides some mistakes that PostgreSQL refuses (types, constraint
names, concurrent writers, dialect-specific inserts): these tests are the ones that see them.
"""

import io
import os
import subprocess
import sys
import threading
from concurrent.futures import ThreadPoolExecutor

import pytest
import sqlalchemy as sa
from PIL import Image, ImageDraw

from app.api.uploads import Upload
from app.entities import Feedback, ModelVersion, Prediction, RetrainJob, RevokedToken, StoredImage, User
from app.extensions import db
from app.services import retraining
from app.services.predictions import store_images
from support import POSTGRES_SKIP_REASON, ROOT, SHIPPED_MODELS

pytestmark = pytest.mark.skipif(not os.environ.get("TEST_POSTGRES_URL"), reason=POSTGRES_SKIP_REASON)


@pytest.fixture
def app(postgres_app):
    """Every test here runs on PostgreSQL: ``client``, ``auth`` and ``runner`` follow this app."""
    return postgres_app


def digit_png():
    """A hand-drawn-looking "1": dark ink on white paper, the way people upload them."""
    image = Image.new("L", (120, 120), 255)
    ImageDraw.Draw(image).line([(45, 25), (75, 15), (75, 105)], fill=0, width=12)
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def stored_prediction(app, username, data=b"not really an image"):
    """A prediction row for ``username`` as the predict endpoint stores it (no model needed)."""
    with app.app_context():
        user_id = db.session.execute(db.select(User.id).filter_by(username=username)).scalar_one()
        [digest] = store_images([Upload(data, content_type="image/png")])
        row = Prediction(user_id=user_id, image_sha256=digest, predicted=7, confidence=0.9,
                         probabilities=[0.01] * 9 + [0.91], model_version="base-1", api_version="v2")
        db.session.add(row)
        db.session.commit()
        return row.id


def flask_cli(*args, env):
    return subprocess.run([sys.executable, "-m", "flask", "--app", "wsgi", *args], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=120)


def test_migrations_create_and_drop_every_table(postgres_database, tmp_path):
    """`flask db upgrade` / `downgrade base` with a plain postgresql:// DATABASE_URL, as deployed."""
    url = postgres_database()
    env = {**os.environ, "DATABASE_URL": url, "INSTANCE_PATH": str(tmp_path), "APP_ENV": "development"}
    tables = set(db.metadata.tables)
    engine = sa.create_engine(url.replace("postgresql://", "postgresql+psycopg://", 1))
    try:
        up = flask_cli("db", "upgrade", env=env)
        assert up.returncode == 0, up.stderr
        inspector = sa.inspect(engine)
        assert set(inspector.get_table_names()) == tables | {"alembic_version"}
        # The "one retrain job at a time" rule is this unique constraint: it must exist here too.
        assert {"name": "uq_retrain_jobs_active_slot", "column_names": ["active_slot"]} in [
            {k: c[k] for k in ("name", "column_names")} for c in inspector.get_unique_constraints("retrain_jobs")
        ]

        down = flask_cli("db", "downgrade", "base", env=env)
        assert down.returncode == 0, down.stderr
        assert set(sa.inspect(engine).get_table_names()) == {"alembic_version"}
    finally:
        engine.dispose()


def test_models_match_migrations_on_postgres(app):
    """Autogenerate finds nothing to do against PostgreSQL's own view of the types."""
    from alembic.autogenerate import compare_metadata
    from alembic.migration import MigrationContext

    with app.app_context(), db.engine.connect() as connection:
        assert db.engine.dialect.name == "postgresql"
        context = MigrationContext.configure(connection, opts={"compare_type": True})
        assert compare_metadata(context, db.metadata) == []


def test_register_login_logout_and_revocation(app, client, auth):
    created = auth.register(email="alice@example.com")
    assert created.status_code == 201 and created.get_json()["role"] == "user"
    taken = auth.register()
    assert taken.status_code == 409 and taken.get_json()["error"]["code"] == "username_taken"
    assert auth.login(password="wrong-password-1").status_code == 401

    tokens = auth.login().get_json()
    access = {"Authorization": f"Bearer {tokens['access_token']}"}
    refresh = {"Authorization": f"Bearer {tokens['refresh_token']}"}
    assert client.get("/auth/me", headers=access).get_json()["username"] == "alice"
    refreshed = client.post("/auth/refresh", headers=refresh)
    assert refreshed.status_code == 200

    out = client.post("/auth/logout", headers=access, json={"refresh_token": tokens["refresh_token"]})
    assert out.status_code == 200
    for refused in (client.get("/auth/me", headers=access), client.post("/auth/refresh", headers=refresh)):
        assert refused.status_code == 401 and refused.get_json()["error"]["code"] == "token_revoked"
    # Logging out twice is harmless (the blocklist insert is idempotent).
    again = {"Authorization": f"Bearer {refreshed.get_json()['access_token']}"}
    assert client.post("/auth/logout", headers=again).status_code == 200
    with app.app_context():
        assert sorted(db.session.scalars(db.select(RevokedToken.token_type))) == ["access", "access", "refresh"]


def test_images_are_stored_once_with_the_postgres_upsert(app):
    with app.app_context():
        same = Upload(b"same bytes", content_type="image/png")
        first, again = store_images([same, same])  # twice in one batch
        [second] = store_images([same])  # and once more later
        db.session.commit()
        assert first == again == second
        assert db.session.scalar(db.select(db.func.count()).select_from(StoredImage)) == 1
        assert db.session.get(StoredImage, first).data == b"same bytes"


@pytest.mark.skipif(not (SHIPPED_MODELS / "manifest.json").exists(), reason="no shipped model (models/manifest.json) yet")
def test_prediction_is_stored(app, client, auth):
    data = digit_png()
    headers = auth.headers()
    responses = [client.post("/api/v2/predict", headers=headers, data={"file": (io.BytesIO(data), "one.png")})
                 for _ in range(2)]
    assert [r.status_code for r in responses] == [200, 200], responses[0].get_json()
    body = responses[0].get_json()
    with app.app_context():
        row = db.session.get(Prediction, body["prediction_id"])
        assert row.predicted == body["prediction"] and row.model_version == body["model_version"]
        assert row.probabilities == body["probabilities"] and row.api_version == "v2"
        assert db.session.get(StoredImage, row.image_sha256).data == data
        assert db.session.scalar(db.select(db.func.count()).select_from(Prediction)) == 2
        assert db.session.scalar(db.select(db.func.count()).select_from(StoredImage)) == 1


def test_feedback_again_replaces_the_label(app, client, auth):
    headers = auth.headers("alice")
    prediction_id = stored_prediction(app, "alice")

    first = client.post("/api/v2/feedback", headers=headers, json={"prediction_id": prediction_id, "label": 3})
    assert first.status_code == 201, first.get_json()
    second = client.post("/api/v2/feedback", headers=headers, json={"prediction_id": prediction_id, "label": 5})
    assert second.status_code == 201
    assert second.get_json()["id"] == first.get_json()["id"] and second.get_json()["label"] == 5

    listed = client.get("/api/v2/feedback", headers=headers).get_json()
    assert listed["total"] == 1 and listed["items"][0]["label"] == 5
    with app.app_context():
        [row] = db.session.scalars(db.select(Feedback)).all()
        assert row.label == 5 and row.prediction_id == prediction_id and row.updated_at >= row.created_at

    stranger = auth.headers("mallory", "mallory-password-1")
    refused = client.post("/api/v2/feedback", headers=stranger, json={"prediction_id": prediction_id, "label": 1})
    assert refused.status_code == 403


def test_only_one_retrain_job_at_a_time_even_when_requests_race(app, auth, monkeypatch):
    """Two admins' requests pass every check together; the unique ``active_slot`` lets one in."""
    admin = auth.admin_headers()
    app.config["RETRAIN_MIN_FEEDBACK"] = 1
    client = app.test_client()
    refused = client.post("/admin/retrain", headers=admin, json={})
    assert refused.status_code == 422 and refused.get_json()["error"]["code"] == "not_enough_feedback"

    auth.headers("alice")
    with app.app_context():
        prediction = db.session.get(Prediction, stored_prediction(app, "alice"))
        db.session.add(Feedback(prediction_id=prediction.id, user_id=prediction.user_id,
                                image_sha256=prediction.image_sha256, label=1))
        db.session.commit()

    dispatched = []  # jobs stay queued: this test is about admission, not training
    monkeypatch.setattr(retraining, "dispatch", lambda job_id, run_inline=False: dispatched.append(job_id))
    both_checked = threading.Barrier(2, timeout=30)
    check_for_dead_jobs = retraining.fail_interrupted_jobs

    def check_then_wait_for_the_other():
        result = check_for_dead_jobs()
        both_checked.wait()  # from here on, both requests insert their job at the same moment
        return result

    monkeypatch.setattr(retraining, "fail_interrupted_jobs", check_then_wait_for_the_other)
    with ThreadPoolExecutor(2) as pool:
        racing = list(pool.map(lambda _: app.test_client().post("/admin/retrain", headers=admin, json={}), range(2)))
    monkeypatch.setattr(retraining, "fail_interrupted_jobs", check_for_dead_jobs)

    assert sorted(r.status_code for r in racing) == [202, 409]
    accepted = next(r for r in racing if r.status_code == 202).get_json()
    conflict = next(r for r in racing if r.status_code == 409).get_json()["error"]
    assert conflict["code"] == "retrain_in_progress" and conflict["details"]["job_id"] == accepted["job_id"]
    assert dispatched == [accepted["job_id"]]

    # Still queued: a later request is refused too.
    later = client.post("/admin/retrain", headers=admin, json={"force": True})
    assert later.status_code == 409
    with app.app_context():
        [job] = db.session.scalars(db.select(RetrainJob)).all()
        assert job.id == accepted["job_id"] and job.status == "queued" and job.active_slot == 1
        job.status, job.active_slot = "failed", None  # what finishing a job does to the slot
        db.session.commit()

    after = client.post("/admin/retrain", headers=admin, json={})
    assert after.status_code == 202 and after.get_json()["job_id"] != accepted["job_id"]
    assert client.get(f"/admin/retrain/{after.get_json()['job_id']}", headers=admin).get_json()["status"] == "queued"


def test_racing_activations_leave_exactly_one_active_version(app, monkeypatch):
    """Rollbacks and promotions at the same moment: PostgreSQL's READ COMMITTED must not let
    each retire only the version it saw and leave two active, nor let them deadlock. Several
    rounds, because each one moves the updated rows within the table (the lock order that
    used to deadlock)."""
    from app.ml import onnx_model
    from app.services import model_versions

    names = [f"race-{i}" for i in range(6)]
    with app.app_context():
        base = model_versions.ensure_active_version()
        base_version = base.version
        for name in names:
            db.session.add(ModelVersion(version=name, file_path=base.file_path, sha256=base.sha256,
                                        onnx_sha256=base.onnx_sha256, parent_version=base.version, metrics={}))
        db.session.commit()

    all_checked = threading.Barrier(len(names), timeout=30)
    hash_file = onnx_model.sha256_file

    def hash_then_wait_for_the_others(path):
        digest = hash_file(path)
        all_checked.wait()  # every activation updates the table at the same moment
        return digest

    monkeypatch.setattr(onnx_model, "sha256_file", hash_then_wait_for_the_others)

    def activate(name):
        with app.app_context():
            model_versions.activate_version(name)

    for _ in range(5):
        with ThreadPoolExecutor(len(names)) as pool:
            list(pool.map(activate, names))
        with app.app_context():
            active = db.session.scalars(db.select(ModelVersion.version).filter_by(status="active")).all()
            assert len(active) == 1 and active[0] in names
            # The base version serves again, so that every racer has work in the next round.
            db.session.execute(db.update(ModelVersion).values(status="retired"))
            db.session.execute(db.update(ModelVersion).filter_by(version=base_version).values(status="active"))
            db.session.commit()
