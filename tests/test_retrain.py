"""Retraining through the admin API with a tiny model: outcomes, the gate, rules, rollback."""

import io
from datetime import datetime, timedelta
import os
import socket
import threading
import time

import pytest

from app.entities import ModelVersion, RetrainJob, utcnow
from app.extensions import db
from support import AuthActions, mnist_png

FINISHED = {"succeeded", "rejected", "failed"}


@pytest.fixture
def app(tiny_app):
    """Everything here runs against the tiny model (the conftest's client and auth follow)."""
    return tiny_app


@pytest.fixture
def admin(auth):
    return auth.admin_headers()


def give_feedback(client, headers, replay_digits, n=24, start=0):
    """Labelled uploads of MNIST digits 1-9 (no zeros: the tiny live model scores 0 % on them)."""
    x, y = replay_digits
    picked = [i for i in range(start, len(y)) if y[i] != 0][:n]
    for i in picked:
        response = client.post("/api/v2/feedback", headers=headers,
                               data={"file": (io.BytesIO(mnist_png(x[i])), f"{i}.png"), "label": str(int(y[i]))})
        assert response.status_code == 201, response.get_json()
    return picked


def wait_for_job(client, headers, job_id, timeout=180):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        body = client.get(f"/admin/retrain/{job_id}", headers=headers).get_json()
        if body["status"] in FINISHED:
            return body
        time.sleep(0.2)
    raise AssertionError(f"job {job_id} still {body['status']} after {timeout}s")


def served_version(client, headers, replay_digits):
    x, _ = replay_digits
    return client.post("/api/v2/predict", headers=headers,
                       data={"file": (io.BytesIO(mnist_png(x[7])), "p.png")}).get_json()["model_version"]


def wait_served(client, headers, replay_digits, version, timeout=15):
    """The job's own process swaps right after the job ends (others at their next check)."""
    deadline = time.monotonic() + timeout
    while (served := served_version(client, headers, replay_digits)) != version and time.monotonic() < deadline:
        time.sleep(0.1)
    return served


def test_too_little_feedback_is_422_and_creates_no_job(tiny_app, client, admin, auth, replay_digits):
    give_feedback(client, auth.headers(), replay_digits, n=5)
    response = client.post("/admin/retrain", headers=admin, json={})
    assert response.status_code == 422
    error = response.get_json()["error"]
    assert error["code"] == "not_enough_feedback" and error["details"] == {"available": 5, "required": 20}
    with tiny_app.app_context():
        assert db.session.scalar(db.select(db.func.count(RetrainJob.id))) == 0


def test_retrain_succeeds_and_new_predictions_report_the_new_version(tiny_app, client, admin, auth, replay_digits):
    user = auth.headers()
    assert served_version(client, user, replay_digits) == "tiny-1"
    give_feedback(client, user, replay_digits)

    accepted = client.post("/admin/retrain", headers=admin, json={})
    assert accepted.status_code == 202
    body = accepted.get_json()
    assert body["status"] in ("queued", "running") and body["status_url"] == f"/admin/retrain/{body['job_id']}"
    assert accepted.headers["Location"].endswith(body["status_url"])

    job = wait_for_job(client, admin, body["job_id"])
    assert job["status"] == "succeeded", job["error"]
    assert job["job_id"] == body["job_id"]
    assert job["progress"] == 1.0 and job["model_version"] == "retrain-1" and job["base_version"] == "tiny-1"
    assert job["duration_seconds"] > 0
    metrics = job["metrics"]
    assert metrics["live"]["feedback_holdout_accuracy"] == 0.0
    assert metrics["gate"]["passed"] is True and metrics["forced"] is False
    assert metrics["samples"]["feedback_holdout"] >= 1

    models = client.get("/admin/models", headers=admin).get_json()
    assert models["active_version"] == "retrain-1"
    new = next(m for m in models["models"] if m["version"] == "retrain-1")
    assert new["parent_version"] == "tiny-1" and new["active"]
    assert os.path.exists(os.path.join(tiny_app.config["MODEL_DIR"], new["file_path"]))
    with tiny_app.app_context():  # the export serving loads was written beside it, its hash recorded
        from app.ml.onnx_model import sha256_file

        row = db.session.execute(db.select(ModelVersion).filter_by(version="retrain-1")).scalar_one()
        assert row.onnx_sha256 == sha256_file(os.path.join(tiny_app.config["MODEL_DIR"], "retrain-1.onnx"))
    assert not [f for f in os.listdir(tiny_app.config["MODEL_DIR"]) if ".tmp" in f]
    assert wait_served(client, user, replay_digits, "retrain-1") == "retrain-1"

    stats = client.get("/admin/feedback/stats", headers=admin).get_json()
    assert stats["since_last_retrain"] == 0


def test_candidate_failing_the_gate_is_rejected_and_live_model_stays(make_app, tiny_model_dir, replay_digits):
    # A negative allowance means the candidate would have to beat the live model by 100
    # points on replay digits: impossible, so the gate must refuse.
    app = make_app(MODEL_DIR=str(tiny_model_dir), RETRAIN_EPOCHS=1, RETRAIN_MAX_REGRESSION=-100.0)
    client = app.test_client()
    auth = AuthActions(client, app)
    admin = auth.admin_headers()
    give_feedback(client, auth.headers(), replay_digits)
    job_id = client.post("/admin/retrain", headers=admin, json={}).get_json()["job_id"]
    job = wait_for_job(client, admin, job_id)
    assert job["status"] == "rejected"
    assert job["metrics"]["gate"]["passed"] is False and job["metrics"]["gate"]["reasons"]
    assert set(job["metrics"]["live"]) == set(job["metrics"]["candidate"])
    models = client.get("/admin/models", headers=admin).get_json()
    assert models["active_version"] == "tiny-1"
    assert next(m for m in models["models"] if m["version"] == job["model_version"])["status"] == "rejected"
    assert served_version(client, auth.headers(), replay_digits) == "tiny-1"

    # force skips the gate and says so.
    forced_id = client.post("/admin/retrain", headers=admin, json={"force": True}).get_json()["job_id"]
    forced = wait_for_job(client, admin, forced_id)
    assert forced["status"] == "succeeded" and forced["force"] is True
    assert forced["metrics"]["forced"] is True and forced["metrics"]["gate"]["passed"] is False
    assert client.get("/admin/models", headers=admin).get_json()["active_version"] == forced["model_version"]


def insert_running_job(app, pid):
    """A job row as a runner with process ``pid`` on this host leaves it while training."""
    with app.app_context():
        job = RetrainJob(status="running", active_slot=1, runner=f"{socket.gethostname()}:{pid}",
                         started_at=utcnow(), heartbeat_at=utcnow())
        db.session.add(job)
        db.session.commit()
        return job.id


def test_second_retrain_while_one_runs_is_409(tiny_app, client, admin, auth, replay_digits):
    give_feedback(client, auth.headers(), replay_digits)
    running_id = insert_running_job(tiny_app, os.getpid())
    response = client.post("/admin/retrain", headers=admin, json={})
    assert response.status_code == 409
    assert response.get_json()["error"]["details"] == {"job_id": running_id}


def test_concurrent_retrain_requests_admit_exactly_one(tiny_app, client, admin, auth, replay_digits):
    give_feedback(client, auth.headers(), replay_digits)
    statuses = []
    barrier = threading.Barrier(4)

    def post():
        c = tiny_app.test_client()
        barrier.wait()
        statuses.append(c.post("/admin/retrain", headers=admin, json={}).status_code)

    threads = [threading.Thread(target=post) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(statuses) == [202, 409, 409, 409]
    with tiny_app.app_context():
        job_id = db.session.execute(db.select(RetrainJob.id)).scalar_one()
    wait_for_job(client, admin, job_id)


def test_exception_inside_training_fails_the_job_and_keeps_the_model(tiny_app, client, admin, auth, replay_digits, monkeypatch):
    import app.ml.jobs

    def broken_fine_tune(*args, progress=None, **kwargs):
        progress(0.5)
        raise FloatingPointError("loss became NaN")

    monkeypatch.setattr(app.ml.jobs, "fine_tune", broken_fine_tune)
    give_feedback(client, auth.headers(), replay_digits)
    job_id = client.post("/admin/retrain", headers=admin, json={}).get_json()["job_id"]
    job = wait_for_job(client, admin, job_id)
    assert job["status"] == "failed" and "loss became NaN" in job["error"]
    assert job["model_version"] is None
    assert client.get("/admin/models", headers=admin).get_json()["active_version"] == "tiny-1"
    with tiny_app.app_context():
        assert db.session.scalar(db.select(db.func.count(ModelVersion.id))) == 1
    assert sorted(os.listdir(tiny_app.config["MODEL_DIR"])) == ["manifest.json", "replay.npz", "tiny.keras", "tiny.onnx"]
    # The slot is free again: the next retrain is admitted.
    monkeypatch.undo()
    again = client.post("/admin/retrain", headers=admin, json={})
    assert again.status_code == 202
    assert wait_for_job(client, admin, again.get_json()["job_id"])["status"] == "succeeded"


def test_job_of_a_dead_process_is_failed_not_left_running(tiny_app, client, admin, auth, replay_digits):
    from app.services.retraining import fail_interrupted_jobs

    give_feedback(client, auth.headers(), replay_digits)
    dead_id = insert_running_job(tiny_app, 999999999)
    with tiny_app.app_context():
        assert fail_interrupted_jobs() == 1
        dead = db.session.get(RetrainJob, dead_id)
        assert dead.status == "failed" and "interrupted" in dead.error and dead.active_slot is None
    again = client.post("/admin/retrain", headers=admin, json={})
    assert again.status_code == 202
    wait_for_job(client, admin, again.get_json()["job_id"])


def test_rollback_and_roll_forward(tiny_app, client, admin, auth, replay_digits):
    user = auth.headers()
    give_feedback(client, user, replay_digits)
    job = wait_for_job(client, admin, client.post("/admin/retrain", headers=admin, json={}).get_json()["job_id"])
    assert wait_served(client, user, replay_digits, job["model_version"]) == job["model_version"]

    back = client.post("/admin/models/tiny-1/activate", headers=admin)
    assert back.status_code == 200 and back.get_json()["active"] is True
    assert served_version(client, user, replay_digits) == "tiny-1"
    forward = client.post(f"/admin/models/{job['model_version']}/activate", headers=admin)
    assert forward.status_code == 200
    assert served_version(client, user, replay_digits) == job["model_version"]
    assert client.post("/admin/models/no-such/activate", headers=admin).status_code == 404
    assert client.post("/admin/models/tiny-1/activate", headers=user).status_code == 403
    for body in client.get("/admin/models", headers=admin).get_json()["models"]:
        for key in ("created_at", "activated_at"):  # RFC 3339: with the UTC offset
            assert body[key] is None or datetime.fromisoformat(body[key]).utcoffset() == timedelta(0)
    assert datetime.fromisoformat(job["finished_at"]).utcoffset() == timedelta(0)


@pytest.mark.parametrize("job_id", ["99999999999999999999", "2147483648", "0"])
def test_job_ids_no_row_can_have_are_json_404(client, admin, job_id):
    response = client.get(f"/admin/retrain/{job_id}", headers=admin)
    assert response.status_code == 404 and response.get_json()["error"]["code"] == "not_found"


def test_activation_refuses_a_tampered_file(tiny_app, client, admin, auth, replay_digits):
    user = auth.headers()
    give_feedback(client, user, replay_digits)
    job = wait_for_job(client, admin, client.post("/admin/retrain", headers=admin, json={}).get_json()["job_id"])
    client.post("/admin/models/tiny-1/activate", headers=admin)
    path = os.path.join(tiny_app.config["MODEL_DIR"], f"{job['model_version']}.keras")
    with open(path, "ab") as fh:
        fh.write(b"tampered")
    response = client.post(f"/admin/models/{job['model_version']}/activate", headers=admin)
    assert response.status_code == 409 and response.get_json()["error"]["code"] == "model_file_corrupt"
    assert served_version(client, user, replay_digits) == "tiny-1"


def test_cli_retrain_wait_and_list(tiny_app, client, auth, replay_digits):
    give_feedback(client, auth.headers(), replay_digits)
    runner = tiny_app.test_cli_runner()
    result = runner.invoke(args=["model", "retrain", "--wait"])
    assert result.exit_code == 0, result.output
    assert '"status": "succeeded"' in result.output
    listing = runner.invoke(args=["model", "list"])
    assert "* retrain-1" in listing.output and "tiny-1" in listing.output


def test_stale_temporary_model_files_are_swept(tiny_app):
    import time as clock

    from app.services.model_versions import sweep_stale_temp_files

    folder = tiny_app.config["MODEL_DIR"]
    old = os.path.join(folder, "retrain-9.0123abcd.tmp.keras")
    old_export = os.path.join(folder, "retrain-9.89abcdef.tmp.onnx")
    fresh = os.path.join(folder, "retrain-10.4567cdef.tmp.keras")
    for path in (old, old_export, fresh):
        with open(path, "wb") as fh:
            fh.write(b"half a model")
    for path in (old, old_export):
        os.utime(path, (clock.time() - 7200, clock.time() - 7200))
    assert sweep_stale_temp_files(folder) == 2
    assert not os.path.exists(old) and not os.path.exists(old_export) and os.path.exists(fresh)
    assert os.path.exists(os.path.join(folder, "tiny.keras")) and os.path.exists(os.path.join(folder, "tiny.onnx"))


def test_an_exited_but_unreaped_runner_counts_as_dead():
    import subprocess

    from app.services.retraining import _pid_alive

    child = subprocess.Popen(["sleep", "0.1"])
    assert _pid_alive(child.pid)
    clock_deadline = time.monotonic() + 10
    while _pid_alive(child.pid) and time.monotonic() < clock_deadline:  # a zombie until waited for
        time.sleep(0.05)
    assert not _pid_alive(child.pid)
    child.wait()
    assert not _pid_alive(child.pid)
    assert _pid_alive(os.getpid())
