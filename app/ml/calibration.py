"""Post-hoc calibration of a model's probabilities: temperature scaling, and how to measure it.

The network is trained with label smoothing, which keeps its softmax away from 0 and 1:
a digit it gets right almost always is reported well below 1. Temperature scaling
(Guo et al., 2017, "On Calibration of Modern Neural Networks") divides the logits by one
number ``T`` fitted on held-out digits by minimising their negative log-likelihood.
Serving has the softmax's output, not its logits, and ``log(p)`` are the logits up to a
per-row constant, which softmax ignores: so served probabilities are
``softmax(log(p) / T)``. One positive scalar keeps every row's order, hence the argmax:
accuracy cannot change.

No Flask here; numpy only. Run as a module to fit the shipped model's temperature into
its manifest (``python -m app.ml.calibration --models models``).
"""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path

import numpy as np

# Temperatures outside this range mean a broken fit or a broken value: refused when a model
# is loaded and never the result of a fit (the search is bounded by it).
MIN_TEMPERATURE = 0.05
MAX_TEMPERATURE = 20.0
ECE_BINS = 15
# Probabilities are clipped before the log so that an exact 0 from the graph stays finite.
_EPS = 1e-12


def check_temperature(temperature) -> float | None:
    """``temperature`` as a float, or None (uncalibrated); ValueError if it is not usable."""
    if temperature is None:
        return None
    if isinstance(temperature, bool):
        raise ValueError(f"temperature must be a number, got {temperature!r}")
    try:
        value = float(temperature)
    except (TypeError, ValueError):
        raise ValueError(f"temperature must be a number, got {temperature!r}") from None
    if not math.isfinite(value) or not MIN_TEMPERATURE <= value <= MAX_TEMPERATURE:
        raise ValueError(f"temperature {temperature!r} is outside [{MIN_TEMPERATURE}, {MAX_TEMPERATURE}]")
    return value


def apply_temperature(probs, temperature) -> np.ndarray:
    """``softmax(log(probs) / temperature)`` row by row, float32; None or 1 returns ``probs``."""
    probs = np.asarray(probs, dtype=np.float32)
    if temperature is None or temperature == 1.0 or probs.size == 0:
        return probs
    return _softmax(np.log(np.maximum(probs, _EPS)) / np.float32(temperature)).astype(np.float32)


def _softmax(z):
    z = z - z.max(axis=1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=1, keepdims=True)


def _nll(logits, y, temperature) -> float:
    z = logits / temperature
    z = z - z.max(axis=1, keepdims=True)
    log_p = z - np.log(np.exp(z).sum(axis=1, keepdims=True))
    return float(-log_p[np.arange(len(y)), y].mean())


def nll(probs, y, temperature=1.0) -> float:
    """Mean negative log-likelihood of the labels ``y`` under ``softmax(log(probs) / temperature)``."""
    logits = np.log(np.maximum(np.asarray(probs, dtype=np.float64), _EPS))
    return _nll(logits, np.asarray(y, dtype=np.int64), temperature)


def fit_temperature(probs, y, *, tolerance=1e-4) -> float:
    """The temperature that minimises the NLL of ``y`` on these held-out probabilities.

    The NLL is convex in 1/T (a log-sum-exp minus a linear term), hence unimodal in log T:
    a golden-section search over [MIN_TEMPERATURE, MAX_TEMPERATURE] finds its minimum.
    """
    probs = np.asarray(probs, dtype=np.float64)
    y = np.asarray(y, dtype=np.int64)
    if probs.ndim != 2 or len(probs) != len(y) or len(y) == 0:
        raise ValueError(f"need probabilities (n, k) and n labels, got {probs.shape} and {y.shape}")
    logits = np.log(np.maximum(probs, _EPS))

    def loss(log_t):
        return _nll(logits, y, math.exp(log_t))

    lo, hi = math.log(MIN_TEMPERATURE), math.log(MAX_TEMPERATURE)
    ratio = (math.sqrt(5) - 1) / 2
    a, b = hi - ratio * (hi - lo), lo + ratio * (hi - lo)
    fa, fb = loss(a), loss(b)
    while hi - lo > tolerance:
        if fa <= fb:
            hi, b, fb = b, a, fa
            a = hi - ratio * (hi - lo)
            fa = loss(a)
        else:
            lo, a, fa = a, b, fb
            b = lo + ratio * (hi - lo)
            fb = loss(b)
    return round(math.exp((lo + hi) / 2), 4)


def reliability(probs, y, bins=ECE_BINS) -> dict:
    """Per equal-width confidence bin: edges, count, mean confidence and accuracy (None when empty).

    Confidence is the top probability, as the API reports it; bins are (lo, hi], the first [0, hi].
    """
    probs = np.asarray(probs, dtype=np.float64)
    y = np.asarray(y)
    confidence = probs.max(axis=1)
    correct = probs.argmax(axis=1) == y
    edges = np.linspace(0.0, 1.0, bins + 1)
    which = np.clip(np.searchsorted(edges, confidence, side="left") - 1, 0, bins - 1)
    count = np.bincount(which, minlength=bins)
    conf_sum = np.bincount(which, weights=confidence, minlength=bins)
    acc_sum = np.bincount(which, weights=correct.astype(np.float64), minlength=bins)
    with np.errstate(invalid="ignore", divide="ignore"):
        mean_conf, mean_acc = conf_sum / count, acc_sum / count
    return {
        "edges": edges.tolist(),
        "count": count.tolist(),
        "confidence": [None if n == 0 else float(c) for n, c in zip(count, mean_conf)],
        "accuracy": [None if n == 0 else float(a) for n, a in zip(count, mean_acc)],
    }


def expected_calibration_error(probs, y, bins=ECE_BINS) -> float:
    """ECE: the bins' |accuracy - mean confidence|, weighted by their share of the samples (0..1)."""
    table = reliability(probs, y, bins)
    n = sum(table["count"])
    if n == 0:
        raise ValueError("no samples")
    return float(sum(c / n * abs(a - p) for c, a, p in zip(table["count"], table["accuracy"], table["confidence"]) if c))


def calibrate(probs, y, bins=ECE_BINS) -> dict:
    """Fit a temperature on held-out ``(probs, y)``; the fit and what it did there, for metrics."""
    temperature = fit_temperature(probs, y)
    after = apply_temperature(probs, temperature)
    return {
        "method": "temperature",
        "temperature": temperature,
        "n": int(len(y)),
        "ece_before": round(expected_calibration_error(probs, y, bins), 5),
        "ece_after": round(expected_calibration_error(after, y, bins), 5),
        "nll_before": round(nll(probs, y), 5),
        "nll_after": round(nll(probs, y, temperature), 5),
    }


def calibrate_on_holdout(model, model_dir) -> dict:
    """Fit ``model``'s (an ``OnnxModel``) temperature on the model folder's gate hold-out,
    from the graph's own probabilities whatever temperature it is served with now."""
    from app.ml.datasets import as_float_images, load_replay

    holdout = load_replay(model_dir)[2]
    if holdout is None:
        raise ValueError(f"{model_dir}/replay.npz has no hold-out digits (x_holdout, y_holdout) to calibrate on")
    x, y = as_float_images(holdout[0]), np.asarray(holdout[1], dtype=np.int64)
    return {**calibrate(model.raw_predict(x), y), "fitted_on": "replay.npz gate hold-out"}


def calibrate_shipped(model_dir) -> dict:
    """Fit the shipped model's temperature on its gate hold-out; write it into ``manifest.json``.

    The hold-out's 1,000 MNIST digits (100 per class) are the only held-out labelled digits
    that come with the model: the base model never trained on them, and a temperature never
    changes a prediction, so the gate's accuracy check on them is unaffected. Printed and
    photographed uploads are not in the folder; bench/calibration.py measures how well this
    fit carries over to them.
    """
    from app.ml.base_model import write_json_atomic
    from app.ml.onnx_model import OnnxModel

    model_dir = Path(model_dir)
    manifest = json.loads((model_dir / "manifest.json").read_text())
    model = OnnxModel.from_file(manifest["version"], model_dir / manifest["onnx_file"], manifest["onnx_sha256"])
    fit = calibrate_on_holdout(model, model_dir)
    manifest["temperature"] = fit["temperature"]
    manifest.setdefault("metrics", {})["calibration"] = fit
    write_json_atomic(model_dir / "manifest.json", manifest)
    return fit


def main(argv=None):
    parser = argparse.ArgumentParser(description="Fit the shipped model's temperature into its manifest.json.")
    parser.add_argument("--models", default="models", help="the shipped model folder (manifest.json, replay.npz)")
    args = parser.parse_args(argv)
    print(json.dumps(calibrate_shipped(args.models), indent=2, sort_keys=True))


if __name__ == "__main__":
    main()
