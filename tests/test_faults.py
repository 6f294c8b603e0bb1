"""Faults in one process: the disk failing while a model is written, a corrupt or missing
model file at start-up, Redis down when a retrain is queued.

Faults that need real servers (a database or Redis stopped under a running gunicorn, the
server killed mid-retrain) are in ``tests/e2e/test_faults_http.py``.
"""

import errno
import io
import logging
import os

import numpy as np
import pytest

from app.entities import ModelVersion, RetrainJob
from app.extensions import db
from support import AuthActions, constant_model, free_port, mnist_png

from test_retrain import give_feedback, wait_for_job


def disk_full(*_args, **_kwargs):
    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))


def half_written_then_disk_full(path, data):
    """The ONNX export's write: half the bytes reach the temporary file, then the disk is full."""
    with open(path, "xb") as fh:
        fh.write(data[: len(data) // 2])
    disk_full()


@pytest.mark.parametrize("where", ["keras file", "onnx file"])
def test_the_disk_failing_while_the_model_is_written_fails_the_job_and_changes_nothing(
        tiny_app, replay_digits, monkeypatch, where):
    import app.ml.artifacts as artifacts

    client = tiny_app.test_client()
    auth = AuthActions(client, tiny_app)
    admin = auth.admin_headers()
    user = auth.headers()
    give_feedback(client, user, replay_digits)
    folder = tiny_app.config["MODEL_DIR"]
    before = sorted(os.listdir(folder))
    if where == "keras file":  # the .keras temporary file is written, then flushing it fails
        monkeypatch.setattr(artifacts, "_fsync_file", disk_full)
    else:
        monkeypatch.setattr(artifacts, "_write_bytes", half_written_then_disk_full)

    job_id = client.post("/admin/retrain", headers=admin, json={}).get_json()["job_id"]
    job = wait_for_job(client, admin, job_id)
    assert job["status"] == "failed" and job["model_version"] is None
    assert "No space left on device" in job["error"], job["error"]
    monkeypatch.undo()
    # No temporary file, no new version: the folder and the table are as they were.
    assert sorted(os.listdir(folder)) == before
    with tiny_app.app_context():
        assert db.session.scalars(db.select(ModelVersion.version)).all() == ["tiny-1"]
        assert db.session.get(RetrainJob, job_id).active_slot is None
    # The previous model is still active, loads and answers.
    assert client.get("/admin/models", headers=admin).get_json()["active_version"] == "tiny-1"
    response = client.post("/api/v2/predict", headers=user,
                           data={"file": (io.BytesIO(mnist_png(replay_digits[0][3])), "d.png")})
    assert response.status_code == 200 and response.get_json()["model_version"] == "tiny-1"
    from app.serving import ModelService

    restarted = ModelService()  # as a process starting now would load it
    restarted.app = tiny_app
    with tiny_app.app_context():
        assert restarted.ensure_loaded() == "tiny-1"


# --------------------------------------------------------------- start-up with a bad file


@pytest.fixture
def history(make_app):
    """An app whose versions were active in turn: base-1, then "three", then "eight" (active now).

    Nothing is loaded yet: the first request starts the process as a gunicorn worker would.
    """
    from app.services import model_versions

    app = make_app()
    with app.app_context():
        model_versions.ensure_active_version()
        for name, digit in (("three", 3), ("eight", 8)):
            model_versions.save_version(constant_model(digit), name, parent_version=None, metrics={})
            model_versions.activate_version(name)
    return app


def predicted(client, headers, replay_digits):
    response = client.post("/api/v2/predict", headers=headers,
                           data={"file": (io.BytesIO(mnist_png(replay_digits[0][3])), "d.png")})
    assert response.status_code == 200, response.get_json()
    body = response.get_json()
    return body["model_version"], body["prediction"]


def test_a_corrupt_active_file_at_start_up_serves_the_last_good_version_until_it_is_repaired(
        history, replay_digits, caplog):
    app, folder = history, history.config["MODEL_DIR"]
    path = os.path.join(folder, "eight.onnx")
    good = open(path, "rb").read()
    with open(path, "wb") as fh:
        fh.write(good[: len(good) // 3])  # torn by a crash or a bad copy
    client = app.test_client()
    with caplog.at_level(logging.ERROR, logger="app.serving"):
        ready = client.get("/ready")
    assert ready.status_code == 200
    body = ready.get_json()
    assert body["model_version"] == "three" and body["active_version"] == "eight"
    assert "eight" in body["model_error"] and "sha256" in body["model_error"]
    assert "cannot load the active model eight" in caplog.text and "serving three instead" in caplog.text
    assert predicted(client, AuthActions(client, app).headers(), replay_digits) == ("three", 3)

    service = app.extensions["model_service"]
    with app.app_context():
        caplog.clear()
        assert service.sync() == "three"  # the same broken file is not read (nor logged) again
        assert caplog.text == ""
        with open(path, "wb") as fh:
            fh.write(good)  # repaired: the next check serves it
        assert service.sync() == "eight"
    assert client.get("/ready").get_json() == {"status": "ready", "database": "ok", "model_version": "eight",
                                                "active_version": "eight", "model_error": None}


def test_missing_active_files_at_start_up_serve_the_last_good_version(history, replay_digits, caplog):
    app, folder = history, history.config["MODEL_DIR"]
    for name in ("eight.onnx", "eight.keras"):
        os.remove(os.path.join(folder, name))
    client = app.test_client()
    with caplog.at_level(logging.ERROR):
        body = client.get("/ready").get_json()
    assert body["model_version"] == "three" and body["active_version"] == "eight"
    assert "FileNotFoundError" in body["model_error"]
    assert "eight.keras is missing, cannot export it to ONNX" in caplog.text
    assert "serving three instead" in caplog.text
    assert predicted(client, AuthActions(client, app).headers(), replay_digits) == ("three", 3)


def test_with_no_loadable_version_at_all_ready_is_503_and_says_why(history, replay_digits):
    app, folder = history, history.config["MODEL_DIR"]
    for name in ("eight.onnx", "three.onnx", "base.onnx"):
        with open(os.path.join(folder, name), "ab") as fh:
            fh.write(b"\0")
    client = app.test_client()
    ready = client.get("/ready")
    assert ready.status_code == 503
    assert ready.get_json()["model_version"] is None and "sha256" in ready.get_json()["model_error"]
    response = client.post("/api/v2/predict", headers=AuthActions(client, app).headers(),
                           data={"file": (io.BytesIO(mnist_png(replay_digits[0][3])), "d.png")})
    assert response.status_code == 503 and response.get_json()["error"]["code"] == "model_unavailable"


def test_a_rejected_version_is_never_a_fallback(history):
    from app.services import model_versions

    app = history
    with app.app_context():
        model_versions.save_version(constant_model(5), "rejected-5", parent_version="eight", metrics={},
                                    status="rejected")
        assert [row.version for row in model_versions.fallback_candidates("eight")] == ["three", "base-1"]


# --------------------------------------------------------------- Redis down


def test_redis_down_when_a_retrain_is_queued_is_503_and_leaves_the_slot_free(tiny_app, replay_digits):
    """RETRAIN_BACKEND=rq with nothing listening where Redis should be (a stopped Redis)."""
    tiny_app.config.update(RETRAIN_BACKEND="rq", REDIS_URL=f"redis://127.0.0.1:{free_port()}/0")
    client = tiny_app.test_client()
    auth = AuthActions(client, tiny_app)
    admin = auth.admin_headers()
    give_feedback(client, auth.headers(), replay_digits)
    for _attempt in range(2):  # the first refusal must not block the second attempt with a 409
        response = client.post("/admin/retrain", headers=admin, json={})
        assert response.status_code == 503, response.get_json()
        error = response.get_json()["error"]
        assert error["code"] == "retrain_queue_unavailable" and "ConnectionError" in error["message"]
        job = client.get(f"/admin/retrain/{error['details']['job_id']}", headers=admin).get_json()
        assert job["status"] == "failed" and job["error"].startswith("not started: ConnectionError")
    with tiny_app.app_context():
        assert db.session.scalar(db.select(db.func.count()).where(RetrainJob.active_slot.is_not(None))) == 0
        assert db.session.scalar(db.select(db.func.count()).where(RetrainJob.status == "queued")) == 0


@pytest.fixture
def silent_redis():
    """A TCP port that accepts connections and never answers: a hung Redis."""
    import socket

    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(16)  # the kernel completes handshakes; nobody ever replies
        yield f"redis://127.0.0.1:{listener.getsockname()[1]}/0"


def test_a_hung_redis_times_out_instead_of_hanging_retrains_or_rate_limits(make_app, tiny_model_dir, silent_redis,
                                                                           replay_digits, caplog):
    app = make_app(MODEL_DIR=str(tiny_model_dir), RETRAIN_MIN_FEEDBACK=20, RETRAIN_BACKEND="rq",
                   REDIS_URL=silent_redis, REDIS_SOCKET_TIMEOUT=0.5, RATELIMIT_ENABLED=True,
                   RATELIMIT_STORAGE_URI=silent_redis, RATELIMIT_DEFAULT="1000 per hour")
    client = app.test_client()
    auth = AuthActions(client, app)
    admin = auth.admin_headers()  # logging in already goes through the limiter
    give_feedback(client, auth.headers(), replay_digits)
    assert "falling back to in-memory storage" in caplog.text
    response = client.post("/admin/retrain", headers=admin, json={})
    assert response.status_code == 503, response.get_json()
    assert response.get_json()["error"]["code"] == "retrain_queue_unavailable"
    assert "Timeout" in response.get_json()["error"]["message"]
