"""The model this process serves: loaded from the ONNX export, hash-checked, swapped under
traffic, exported at start-up for versions saved before exports existed, and served
without TensorFlow."""

import io
import json
import logging
import os
import subprocess
import sys
import threading
import time

import numpy as np
import pytest

from app.entities import ModelVersion
from app.errors import ServiceUnavailable
from app.extensions import db
from app.ml.onnx_model import ModelIntegrityError, sha256_file
from support import ROOT, AuthActions, constant_model, mnist_png


@pytest.fixture
def two_versions(app):
    """The app with versions "three" and "eight" saved (not active); base-1 is active."""
    from app.services import model_versions

    with app.app_context():
        model_versions.ensure_active_version()
        for name, digit in (("three", 3), ("eight", 8)):
            model_versions.save_version(constant_model(digit), name, parent_version=None, metrics={})
    return app


def activate_and_sync(app, version):
    from app.services import model_versions

    with app.app_context():
        model_versions.activate_version(version)
        return app.extensions["model_service"].sync()


def test_serves_the_active_versions_onnx_file(two_versions):
    app, service = two_versions, two_versions.extensions["model_service"]
    with app.app_context():
        assert service.ensure_loaded() == "base-1"
    assert activate_and_sync(app, "eight") == "eight"
    probs, version = service.predict(np.zeros((5, 28, 28), np.float32))
    assert version == "eight" and (probs.argmax(axis=1) == 8).all()
    assert service._live.path.endswith("eight.onnx")


def test_a_file_that_does_not_match_its_row_is_refused_and_the_live_model_stays(two_versions, caplog):
    app, service = two_versions, two_versions.extensions["model_service"]
    assert activate_and_sync(app, "three") == "three"
    live = service._live
    with app.app_context():
        path = os.path.join(app.config["MODEL_DIR"], "eight.onnx")
        with open(path, "ab") as fh:
            fh.write(b"\0")  # changed on disk after it was recorded
        row = db.session.execute(db.select(ModelVersion).filter_by(version="eight")).scalar_one()
        row.onnx_sha256, stored = sha256_file(path), row.onnx_sha256
        db.session.commit()  # activation itself would refuse it: record the new hash, then put the old one back
        from app.services import model_versions

        model_versions.activate_version("eight")
        row.onnx_sha256 = stored
        db.session.commit()
        with pytest.raises(ModelIntegrityError):
            service.sync()
    assert service._live is live and service.current_version == "three"
    probs, version = service.predict(np.zeros((2, 28, 28), np.float32))
    assert version == "three" and (probs.argmax(axis=1) == 3).all()


def test_predict_without_a_model_is_503(make_app, tmp_path, replay_digits):
    empty = tmp_path / "no-models"
    empty.mkdir()
    app = make_app(MODEL_DIR=str(empty))
    with app.app_context(), pytest.raises(ServiceUnavailable):
        app.extensions["model_service"].predict(np.zeros((1, 28, 28), np.float32))
    client = app.test_client()
    response = client.post("/api/v2/predict", headers=AuthActions(client, app).headers(),
                           data={"file": (io.BytesIO(mnist_png(replay_digits[0][0])), "d.png")})
    assert response.status_code == 503 and response.get_json()["error"]["code"] == "model_unavailable"


def test_predictions_from_8_threads_during_20_swaps_never_mix_versions(two_versions):
    """Readers never fail and never get one version's name with the other's answers."""
    app, service = two_versions, two_versions.extensions["model_service"]
    assert activate_and_sync(app, "three") == "three"
    answers = {"three": 3, "eight": 8}
    batches = [np.random.default_rng(i).random((1 + i % 4 if i % 2 else 8 + i, 28, 28), dtype=np.float32)
               for i in range(8)]  # both sessions
    errors, calls, seen = [], [0] * 8, [[] for _ in range(8)]
    stop = threading.Event()

    def reader(i):
        while not stop.is_set():
            try:
                probs, version = service.predict(batches[i])
                if probs.shape != (len(batches[i]), 10) or not (probs.argmax(axis=1) == answers[version]).all():
                    errors.append(f"{version} answered {probs.argmax(axis=1)}")
                if not seen[i] or seen[i][-1] != version:
                    seen[i].append(version)
            except Exception as exc:  # noqa: BLE001 - any failure is the finding
                errors.append(repr(exc))
            calls[i] += 1

    readers = [threading.Thread(target=reader, args=(i,)) for i in range(8)]
    for t in readers:
        t.start()
    try:
        for swap in range(20):
            activate_and_sync(app, "eight" if swap % 2 == 0 else "three")
            target = [c + 2 for c in calls]  # every reader gets a few calls in before the next swap
            deadline = time.monotonic() + 10
            while any(c < t for c, t in zip(calls, target)) and time.monotonic() < deadline:
                time.sleep(0.001)
    finally:
        stop.set()
        for t in readers:
            t.join(timeout=30)
    assert not errors, errors[:3]
    assert service.current_version == "three"  # 20 swaps: back where it started
    switches = sum(len(s) - 1 for s in seen)
    assert switches >= 8 * 10, f"readers saw only {switches} version changes"  # they really overlapped the swaps


def forget_the_export(model_dir):
    """The shipped folder as it was before ONNX exports: no base.onnx, no hash in the manifest."""
    os.remove(model_dir / "base.onnx")
    manifest = json.loads((model_dir / "manifest.json").read_text())
    del manifest["onnx_sha256"], manifest["onnx_file"]
    (model_dir / "manifest.json").write_text(json.dumps(manifest))


def test_worker_start_exports_a_version_that_has_no_onnx_file(make_app, model_dir, caplog):
    from app.lifecycle import on_worker_start

    forget_the_export(model_dir)
    app = make_app(MODEL_PRELOAD=True)
    with app.app_context():
        from app.services import model_versions

        assert model_versions.ensure_active_version().onnx_sha256 is None
    with caplog.at_level(logging.WARNING, logger="app.services.model_versions"):
        on_worker_start(app)
    assert "exporting model version base-1 to ONNX" in caplog.text
    with app.app_context():
        row = model_versions.ensure_active_version()
        assert row.onnx_sha256 == sha256_file(model_dir / "base.onnx")
        assert model_versions.versions_without_onnx() == []
    service = app.extensions["model_service"]
    assert service.current_version == "base-1"
    assert service.predict(np.zeros((1, 28, 28), np.float32))[1] == "base-1"
    assert sorted(p.name for p in model_dir.iterdir() if ".tmp." in p.name) == []


def test_cli_export_reports_what_it_cannot_export(make_app, model_dir):
    forget_the_export(model_dir)
    app = make_app()
    with app.app_context():
        from app.services import model_versions

        base_id = model_versions.ensure_active_version().id
        db.session.add(ModelVersion(version="lost", file_path="lost.keras", sha256="0" * 64, parent_version=None,
                                    metrics={}, status="retired"))
        db.session.commit()
    result = app.test_cli_runner().invoke(args=["model", "export-onnx"])
    assert result.exit_code == 1
    assert json.loads(result.output.strip().splitlines()[-1]) == {"exported": ["base-1"], "still_missing": ["lost"]}
    with app.app_context():
        assert db.session.get(ModelVersion, base_id).onnx_sha256 == sha256_file(model_dir / "base.onnx")


SERVE_ONCE = """
import json, sys
from app import create_app
from app.lifecycle import on_worker_start
import flask_migrate
app = create_app("testing", test_config={"SQLALCHEMY_DATABASE_URI": sys.argv[1], "MODEL_DIR": sys.argv[2],
                                         "MODEL_WATCH": False, "MODEL_PRELOAD": True})
with app.app_context():
    flask_migrate.upgrade(directory=sys.argv[3])
on_worker_start(app)
client = app.test_client()
client.post("/auth/register", json={"username": "alice", "password": "alice-password-1"})
token = client.post("/auth/login", json={"username": "alice", "password": "alice-password-1"}).get_json()["access_token"]
with open(sys.argv[4], "rb") as fh:
    response = client.post("/api/v2/predict", headers={"Authorization": "Bearer " + token},
                           data={"file": (fh, "digit.png")})
print(json.dumps({"status": response.status_code, "body": response.get_json(),
                  "imported": sorted(m for m in ("tensorflow", "keras", "tf2onnx") if m in sys.modules)}))
"""


def test_a_serving_process_never_imports_tensorflow(model_dir, tmp_path, replay_digits):
    """A fresh process: migrate, start as a worker does, serve a prediction, then look at sys.modules."""
    x, y = replay_digits
    png = tmp_path / "digit.png"
    png.write_bytes(mnist_png(x[3]))
    env = {**os.environ, "INSTANCE_PATH": str(tmp_path / "instance"), "TF_CPP_MIN_LOG_LEVEL": "2"}
    result = subprocess.run(
        [sys.executable, "-c", SERVE_ONCE, f"sqlite:///{tmp_path / 'serve.sqlite3'}", str(model_dir),
         str(ROOT / "migrations"), str(png)],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=300,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads(result.stdout.strip().splitlines()[-1])
    assert report["status"] == 200 and report["body"]["prediction"] == int(y[3])
    assert report["body"]["model_version"] == "base-1"
    assert report["imported"] == [], result.stderr[-3000:]
