"""Calibrated probabilities in the service: each version's temperature is stored with it, served
by v1, v2 and the batch endpoint, and follows a hot swap and a rollback; NULL = uncalibrated;
unusable temperatures are refused."""

import io
import json
import os

import numpy as np
import pytest

from app.entities import ModelVersion
from app.extensions import db
from app.ml.calibration import apply_temperature
from app.ml.onnx_model import OnnxModel
from support import constant_model, mnist_png

SOFT = 3.0  # constant_model's 0.978 becomes e^2 / (e^2 + 9) = 0.451 at this temperature


@pytest.fixture
def admin(auth):
    return auth.admin_headers()


@pytest.fixture
def upload(replay_digits):
    return mnist_png(replay_digits[0][7])


def raw_probabilities(app, version, data):
    """What the version's ONNX graph itself answers for one upload (no temperature)."""
    from app.ml.preprocessing import preprocess
    from app.services import model_versions

    with app.app_context():
        row = model_versions.get_version(version)
        model = OnnxModel.from_file(version, model_versions.onnx_path(row), row.onnx_sha256, warm=False)
    return model.raw_predict(preprocess(data))[0]


def served(client, headers, data):
    """(v1 probabilidad, v2 confidence, v2 probabilities, batch probabilities, version) for one upload."""
    v1 = client.post("/api/v1/predict", headers=headers, data={"file": (io.BytesIO(data), "d.png")})
    v2 = client.post("/api/v2/predict", headers=headers, data={"file": (io.BytesIO(data), "d.png")})
    batch = client.post("/api/v2/predict/batch", headers=headers,
                        data={"files": [(io.BytesIO(data), "a.png"), (io.BytesIO(data), "b.png")]})
    assert v1.status_code == v2.status_code == batch.status_code == 200, (v1.json, v2.json, batch.json)
    v2, batch = v2.get_json(), batch.get_json()
    assert v2["model_version"] == batch["model_version"]
    for row in batch["predictions"]:
        assert row["probabilities"] == v2["probabilities"] and row["confidence"] == v2["confidence"]
    assert v1.get_json()["prediccion"] == v2["prediction"]
    return v1.get_json()["probabilidad"], v2["confidence"], np.array(v2["probabilities"]), v2["model_version"]


def expect_served(client, headers, data, raw, temperature):
    probabilidad, confidence, probabilities, version = served(client, headers, data)
    expected = apply_temperature(raw[None], temperature)[0]
    assert np.allclose(probabilities, expected, atol=2e-6)
    assert probabilidad == confidence == pytest.approx(float(expected.max()), abs=2e-6)
    assert probabilities.argmax() == raw.argmax()  # the answer never changes, only its confidence
    return version


def test_a_fresh_install_serves_the_shipped_models_temperature_everywhere(app, client, auth, admin, upload, model_dir):
    manifest = json.loads((model_dir / "manifest.json").read_text())
    headers = auth.headers()
    raw = raw_probabilities(app, "base-1", upload)
    assert expect_served(client, headers, upload, raw, manifest["temperature"]) == "base-1"
    assert served(client, headers, upload)[1] > raw.max()  # label smoothing's under-confidence undone

    listed = client.get("/admin/models", headers=admin).get_json()["models"]
    base = next(m for m in listed if m["version"] == "base-1")
    assert base["temperature"] == manifest["temperature"]
    assert base["metrics"]["calibration"]["ece_after"] < base["metrics"]["calibration"]["ece_before"]
    spec = client.get("/openapi.json").get_json()
    assert "temperature" in spec["components"]["schemas"]["ModelVersion"]["properties"]


def test_hot_swap_and_rollback_serve_each_versions_temperature(app, client, auth, admin, upload):
    from app.services import model_versions

    headers = auth.headers()
    with app.app_context():
        model_versions.ensure_active_version()
        model_versions.save_version(constant_model(3), "soft", parent_version=None, metrics={}, temperature=SOFT)
        model_versions.save_version(constant_model(3), "plain", parent_version=None, metrics={})  # NULL
    raw_three = raw_probabilities(app, "soft", upload)
    base_t = client.get("/admin/models", headers=admin).get_json()["models"][0]["temperature"]
    raw_base = raw_probabilities(app, "base-1", upload)
    assert expect_served(client, headers, upload, raw_base, base_t) == "base-1"

    for version, temperature in (("soft", SOFT), ("plain", None), ("soft", SOFT), ("base-1", base_t)):
        response = client.post(f"/admin/models/{version}/activate", headers=admin)
        assert response.status_code == 200 and response.get_json()["temperature"] == temperature
        assert expect_served(client, headers, upload, raw_three if version != "base-1" else raw_base,
                             temperature) == version
    # NULL: the graph's own softmax, exactly as it answers (rounded to 6 places by the API).
    client.post("/admin/models/plain/activate", headers=admin)
    assert served(client, headers, upload)[1] == pytest.approx(float(raw_three.max()), abs=1e-6)
    assert raw_three.max() > 0.97 and apply_temperature(raw_three[None], SOFT).max() == pytest.approx(0.451, abs=1e-3)


def test_a_temperature_set_later_is_served_without_reloading_the_file(app, upload):
    """Every worker's periodic check follows a changed temperature (the shipped model's backfill)."""
    from app.ml.preprocessing import preprocess
    from app.services import model_versions

    service = app.extensions["model_service"]
    with app.app_context():
        row = model_versions.ensure_active_version()
        row.temperature = None
        db.session.commit()
        assert service.sync() == "base-1"
        before = service._live
        x = preprocess(upload)
        assert service.predict(x)[0].max() == pytest.approx(before.raw_predict(x).max())
        row = model_versions.get_version("base-1")
        row.temperature = 0.5
        db.session.commit()
        service.sync()
    assert service._live is not before and service._live._single is before._single  # same sessions
    assert np.allclose(service.predict(x)[0], apply_temperature(before.raw_predict(x), 0.5))


def without_temperature(model_dir):
    """The shipped folder as it was before calibration: no temperature in the manifest."""
    manifest = json.loads((model_dir / "manifest.json").read_text())
    saved = dict(manifest)
    del manifest["temperature"]
    (model_dir / "manifest.json").write_text(json.dumps(manifest))
    return saved


def test_an_old_install_is_uncalibrated_until_a_worker_start_backfills_the_shipped_temperature(make_app, model_dir):
    from app.lifecycle import on_worker_start
    from app.services import model_versions

    manifest = without_temperature(model_dir)
    app = make_app(MODEL_PRELOAD=True)
    x = np.zeros((1, 28, 28), np.float32)
    x[0, 6:22, 13:16] = 1.0  # a one
    with app.app_context():
        assert model_versions.ensure_active_version().temperature is None
        service = app.extensions["model_service"]
        service.ensure_loaded()
        assert np.array_equal(service.predict(x)[0], service._live.raw_predict(x))  # NULL: uncalibrated
        # The upgrade ships the manifest with the temperature of exactly this file...
        (model_dir / "manifest.json").write_text(json.dumps(manifest))
        other = {**manifest, "sha256": "0" * 64}  # ...a manifest for another file changes nothing
        (model_dir / "manifest.json").write_text(json.dumps(other))
        assert model_versions.backfill_shipped_temperature(str(model_dir)) is False
        (model_dir / "manifest.json").write_text(json.dumps(manifest))
    app.extensions["model_service"]._live = None  # a new worker process: nothing loaded yet
    on_worker_start(app)
    with app.app_context():
        assert model_versions.get_version("base-1").temperature == manifest["temperature"]
        assert service.current_version == "base-1" and service._live.temperature == manifest["temperature"]
        assert model_versions.backfill_shipped_temperature(str(model_dir)) is False  # once


def test_unusable_temperatures_are_refused_and_nothing_changes(app, client, admin, upload):
    from app.services import model_versions

    service = app.extensions["model_service"]
    with app.app_context():
        model_versions.ensure_active_version()
        with pytest.raises(ValueError):
            model_versions.save_version(constant_model(3), "broken", parent_version=None, metrics={}, temperature=-1)
        assert not os.path.exists(os.path.join(app.config["MODEL_DIR"], "broken.keras"))
        assert db.session.execute(db.select(ModelVersion).filter_by(version="broken")).scalar_one_or_none() is None
        model_versions.save_version(constant_model(3), "three", parent_version=None, metrics={}, temperature=2.0)
        service.sync()
        row = model_versions.get_version("three")
        row.temperature = 0.0  # written by hand, or by a bug: never served
        db.session.commit()

    response = client.post("/admin/models/three/activate", headers=admin)
    assert response.status_code == 409
    assert response.get_json()["error"]["code"] == "model_calibration_invalid"
    assert client.get("/admin/models", headers=admin).get_json()["active_version"] == "base-1"

    with app.app_context():  # even if the row becomes active behind the API's back, workers refuse it
        live = service._live
        db.session.execute(db.update(ModelVersion).values(status="retired"))
        model_versions.get_version("three").status = "active"
        db.session.commit()
        with pytest.raises(ValueError, match="temperature"):
            service.sync()
    assert service._live is live and service.current_version == "base-1"


def test_train_and_retrain_store_the_fitted_temperature_with_the_version(tiny_app, replay_digits, upload):
    """A retrain job (tiny model) fits its candidate's temperature and serves it once live."""
    from app.services import model_versions, retraining

    client = tiny_app.test_client()
    from support import AuthActions

    auth = AuthActions(client, tiny_app)
    headers, admin_headers = auth.headers(), auth.admin_headers()
    x, y = replay_digits
    for i in [i for i in range(len(y)) if y[i] != 0][:24]:
        response = client.post("/api/v2/feedback", headers=headers,
                               data={"file": (io.BytesIO(mnist_png(x[i])), f"{i}.png"), "label": str(int(y[i]))})
        assert response.status_code == 201
    with tiny_app.app_context():
        job = retraining.start_retrain(requested_by=None, run_inline=True)
        assert job.status == "succeeded", job.error
        fit = job.metrics["calibration"]
        row = model_versions.get_version(job.model_version)
        assert row.temperature == fit["temperature"] and row.metrics["calibration"] == fit
        assert fit["n"] > 0 and fit["nll_after"] <= fit["nll_before"]
    raw = raw_probabilities(tiny_app, job.model_version, upload)
    assert expect_served(client, headers, upload, raw, fit["temperature"]) == job.model_version
    listed = client.get("/admin/models", headers=admin_headers).get_json()["models"]
    assert next(m for m in listed if m["version"] == job.model_version)["temperature"] == fit["temperature"]


def test_cli_clears_and_refits_a_versions_temperature(app, runner, client, auth, upload, model_dir):
    manifest = json.loads((model_dir / "manifest.json").read_text())
    headers = auth.headers()
    raw = raw_probabilities(app, "base-1", upload)
    cleared = runner.invoke(args=["model", "calibrate", "--clear"])
    assert cleared.exit_code == 0, cleared.output
    assert json.loads(cleared.output.strip().splitlines()[-1])["temperature"] is None
    with app.app_context():
        app.extensions["model_service"].sync()  # what each worker's watcher does
    assert expect_served(client, headers, upload, raw, None) == "base-1"

    refit = runner.invoke(args=["model", "calibrate", "--version", "base-1"])
    assert refit.exit_code == 0, refit.output
    body = json.loads(refit.output.strip().splitlines()[-1])
    # The same digits and the same served graph as the manifest's fit: the same temperature.
    assert body["temperature"] == body["calibration"]["temperature"] == manifest["temperature"]
    with app.app_context():
        app.extensions["model_service"].sync()
    assert expect_served(client, headers, upload, raw, manifest["temperature"]) == "base-1"

    unknown = runner.invoke(args=["model", "calibrate", "--version", "nope"])
    assert unknown.exit_code != 0
