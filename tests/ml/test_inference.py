"""Runners for the live model: ONNX Runtime by default, TensorFlow as the checked fallback."""

import logging
import threading

import keras
import numpy as np
import pytest
import tensorflow as tf

from app.ml.inference import AGREEMENT_TOLERANCE, BATCHED_FROM, OnnxRuntimeRunner, TensorFlowRunner, build_runner, probe_batch
from app.ml.network import build_model
from app.ml.registry import LoadedModel

from support import SHIPPED_MODELS


@pytest.fixture(scope="module")
def shipped():
    import json

    manifest = json.loads((SHIPPED_MODELS / "manifest.json").read_text())
    return keras.models.load_model(SHIPPED_MODELS / manifest["file"], compile=False)


def digits_like(n=64, seed=1):
    rng = np.random.default_rng(seed)
    x = np.zeros((n, 28, 28), np.float32)
    for i in range(n):  # a thick random stroke per image, like an MNIST digit's ink
        r, c = rng.integers(6, 22, 2)
        x[i, r - 4:r + 4, c - 2:c + 2] = rng.random()
    return x


def test_onnxruntime_is_the_default_and_matches_keras(shipped):
    runner = build_runner(shipped)
    assert isinstance(runner, OnnxRuntimeRunner) and runner.backend == "onnxruntime"
    for x in (digits_like(), probe_batch(), digits_like(1)):
        expected = shipped(x, training=False).numpy()
        got = runner(x)
        assert got.shape == expected.shape and got.dtype == np.float32
        assert np.max(np.abs(got - expected)) <= AGREEMENT_TOLERANCE
        assert (got.argmax(1) == expected.argmax(1)).all()


def test_small_and_large_batches_agree_across_their_sessions(shipped):
    """Fewer than BATCHED_FROM images run on the calling thread, more on a thread pool."""
    runner = OnnxRuntimeRunner(shipped, threads=2)
    assert runner._single is not runner._batched
    x = digits_like(3 * BATCHED_FROM, seed=5)
    whole = runner(x)
    pieces = np.concatenate([runner(x[i:i + 1]) for i in range(len(x))])
    np.testing.assert_allclose(pieces, whole, atol=1e-6)
    assert OnnxRuntimeRunner(shipped, threads=1)._batched is not None


def test_tensorflow_backend_when_asked(shipped):
    runner = build_runner(shipped, "tensorflow")
    assert isinstance(runner, TensorFlowRunner)
    x = digits_like(8)
    np.testing.assert_allclose(runner(x), shipped(x, training=False).numpy(), atol=1e-6)


def test_unknown_backend_is_refused():
    with pytest.raises(ValueError, match="unknown inference backend"):
        build_runner(build_model(width=4), "tflite")


def test_a_model_onnx_cannot_express_falls_back_to_tensorflow(caplog):
    """A layer made of a Python callback (EagerPyFunc) has no ONNX form: serve it anyway."""

    class PythonSide(keras.layers.Layer):
        def call(self, x):
            y = tf.py_function(lambda t: t * 1.0, [x], tf.float32)
            y.set_shape(x.shape)
            return y

    inputs = keras.Input((28, 28))
    outputs = keras.layers.Dense(10, activation="softmax")(keras.layers.Flatten()(PythonSide()(inputs)))
    model = keras.Model(inputs, outputs)
    with caplog.at_level(logging.ERROR, logger="app.ml.inference"):
        runner = build_runner(model)
    assert runner.backend == "tensorflow"
    assert "serving with TensorFlow" in caplog.text
    x = digits_like(4)
    np.testing.assert_allclose(runner(x), model(x, training=False).numpy(), atol=1e-6)


def test_loaded_model_reports_its_backend_and_serves_many_threads(shipped):
    loaded = LoadedModel("v", None, None, shipped, threads=1)
    assert loaded.backend == "onnxruntime"
    x = digits_like(32, seed=3)
    expected = loaded.predict(x)
    errors, results = [], []

    def worker(i):
        try:
            for _ in range(20):
                results.append(np.allclose(loaded.predict(x[i:i + 4]), expected[i:i + 4], atol=1e-6))
        except Exception as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors and len(results) == 160 and all(results)
