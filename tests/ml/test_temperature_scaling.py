"""Temperature scaling and its measures: the fit, ECE, reliability bins, refused temperatures."""

import json
import math

import numpy as np
import pytest

from app.ml.calibration import (
    MAX_TEMPERATURE,
    apply_temperature,
    calibrate,
    check_temperature,
    expected_calibration_error,
    fit_temperature,
    nll,
    reliability,
)
from app.ml.onnx_model import OnnxModel

from support import SHIPPED_MODELS


def softmax(z):
    e = np.exp(z - z.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


def labelled(n=4000, sharpness=4.0, seed=0):
    """Logits and labels drawn from softmax(logits): those probabilities are calibrated by construction."""
    rng = np.random.default_rng(seed)
    logits = rng.normal(size=(n, 10)) * sharpness
    p = softmax(logits)
    y = np.array([rng.choice(10, p=row) for row in p])
    return logits, y


@pytest.mark.parametrize("true_temperature", [2.5, 0.5])
def test_fit_recovers_the_temperature_of_an_over_smoothed_or_overconfident_model(true_temperature):
    logits, y = labelled()
    model = softmax(logits / true_temperature)  # 2.5: too smooth, like label smoothing; 0.5: too sharp
    fit = calibrate(model, y)
    assert fit["temperature"] == pytest.approx(1 / true_temperature, rel=0.1)
    assert fit["ece_before"] > 0.08 and fit["ece_after"] < 0.03
    assert fit["nll_after"] < fit["nll_before"]
    after = apply_temperature(model, fit["temperature"])
    assert (after.argmax(axis=1) == model.argmax(axis=1)).all()  # accuracy cannot change
    assert np.allclose(after.sum(axis=1), 1, atol=1e-5)


def test_the_fit_is_the_minimum_of_the_nll():
    logits, y = labelled(n=500, seed=1)
    model = softmax(logits / 3)
    t = fit_temperature(model, y)
    assert nll(model, y, t) <= min(nll(model, y, t * 0.97), nll(model, y, t * 1.03))


def test_apply_temperature_is_softmax_of_log_probabilities_over_t():
    p = np.array([[0.7, 0.2, 0.1], [0.1, 0.1, 0.8]], np.float32)
    expected = softmax(np.log(p) / 0.5)
    assert np.allclose(apply_temperature(p, 0.5), expected, atol=1e-6)
    assert apply_temperature(p, None) is not None and np.array_equal(apply_temperature(p, None), p)
    assert apply_temperature(np.zeros((0, 10), np.float32), 0.5).shape == (0, 10)
    # An exact 0 from the graph stays finite and stays the smallest.
    out = apply_temperature(np.array([[1.0, 0.0, 0.0]], np.float32), 2.0)
    assert np.isfinite(out).all() and out[0].argmax() == 0


def test_ece_and_reliability_by_hand():
    # 10 samples at confidence 0.95 (bin 15), 9 right; 5 at 0.5 (bin 8), all right.
    p = np.full((15, 2), 0.05)
    p[:, 0] = 0.95
    p[10:] = 0.5
    y = np.zeros(15, int)
    y[0] = 1
    table = reliability(p, y, bins=15)
    assert sum(table["count"]) == 15 and table["count"][14] == 10 and table["count"][7] == 5
    assert table["accuracy"][14] == pytest.approx(0.9) and table["confidence"][14] == pytest.approx(0.95)
    assert table["accuracy"][0] is None and table["confidence"][0] is None  # empty bins say so
    assert len(table["edges"]) == 16 and table["edges"][0] == 0 and table["edges"][-1] == 1
    assert expected_calibration_error(p, y) == pytest.approx(10 / 15 * 0.05 + 5 / 15 * 0.5)
    json.dumps(table)  # for plots and reports


def test_perfectly_calibrated_probabilities_have_small_ece():
    logits, y = labelled(n=20000, seed=2)
    assert expected_calibration_error(softmax(logits), y) < 0.015


@pytest.mark.parametrize("bad", [0, -1.0, float("nan"), float("inf"), MAX_TEMPERATURE * 2, 0.001, "hot", True, [1]])
def test_unusable_temperatures_are_refused(bad):
    with pytest.raises(ValueError):
        check_temperature(bad)


def test_usable_temperatures_pass():
    assert check_temperature(None) is None
    assert check_temperature(0.4442) == 0.4442 and check_temperature("1.5") == 1.5


def test_fit_refuses_mismatched_or_empty_data():
    with pytest.raises(ValueError):
        fit_temperature(np.full((3, 10), 0.1), [1, 2])
    with pytest.raises(ValueError):
        fit_temperature(np.zeros((0, 10)), [])


@pytest.fixture(scope="module")
def manifest():
    return json.loads((SHIPPED_MODELS / "manifest.json").read_text())


def test_the_shipped_manifest_carries_a_fitted_temperature(manifest):
    fit = manifest["metrics"]["calibration"]
    assert manifest["temperature"] == fit["temperature"] and check_temperature(fit["temperature"]) < 1
    assert fit["ece_after"] < fit["ece_before"] and fit["n"] == manifest["replay"]["gate_holdout_digits"]


def test_onnx_model_serves_its_temperature_and_refuses_a_bad_one(manifest, replay_digits):
    path, sha = SHIPPED_MODELS / manifest["onnx_file"], manifest["onnx_sha256"]
    model = OnnxModel.from_file("base-1", path, sha, temperature=manifest["temperature"], warm=False)
    x = replay_digits[0][:20].astype(np.float32) / 255
    raw, served = model.raw_predict(x), model.predict(x)
    assert np.allclose(served, apply_temperature(raw, manifest["temperature"]), atol=1e-6)
    assert (served.argmax(1) == raw.argmax(1)).all() and served.max(1).mean() > raw.max(1).mean()
    plain = model.with_temperature(None)
    assert np.array_equal(plain.predict(x), raw) and model.temperature == manifest["temperature"]
    for bad in (-1.0, 0.0, math.nan):
        with pytest.raises(ValueError):
            OnnxModel.from_file("base-1", path, sha, temperature=bad, warm=False)
        with pytest.raises(ValueError):
            model.with_temperature(bad)
