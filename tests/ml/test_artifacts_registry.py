"""Atomic model files and the live-model registry under concurrent use."""

import threading
import time

import numpy as np
import pytest

import app.ml.artifacts as artifacts
from app.ml.artifacts import save_model_atomic, sha256_file
from app.ml.registry import ModelIntegrityError, ModelRegistry


def constant_model(digit):
    """A tiny network that always answers ``digit``."""
    from app.ml.network import build_model

    model = build_model(width=4)
    dense = model.get_layer("probs")
    kernel, bias = dense.get_weights()
    bias[:] = 0
    bias[digit] = 6
    dense.set_weights([np.zeros_like(kernel), bias])
    return model


@pytest.fixture(scope="module")
def two_models(tmp_path_factory):
    folder = tmp_path_factory.mktemp("two")
    return [save_model_atomic(constant_model(d), str(folder), f"always{d}.keras") for d in (3, 8)]


def test_atomic_save_and_failure_leaves_the_old_file(tmp_path, monkeypatch):
    model = constant_model(1)
    path, digest = save_model_atomic(model, str(tmp_path), "m.keras")
    assert digest == sha256_file(path)
    old = open(path, "rb").read()

    def broken(_path):
        raise ValueError("corrupt")

    monkeypatch.setattr(artifacts, "verify_model_file", broken)
    with pytest.raises(ValueError):
        save_model_atomic(constant_model(2), str(tmp_path), "m.keras")
    assert open(path, "rb").read() == old
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.keras"]
    with pytest.raises(ValueError):
        save_model_atomic(model, str(tmp_path), "../escape.keras")


def test_registry_predicts_and_refuses_a_wrong_hash(two_models):
    (path3, sha3), (path8, _sha8) = two_models
    registry = ModelRegistry()
    registry.load("three", path3, sha256=sha3)
    probs, version = registry.predict(np.zeros((5, 28, 28), np.float32))
    assert version == "three" and probs.shape == (5, 10)
    assert np.allclose(probs.sum(axis=1), 1, atol=1e-5) and (probs.argmax(axis=1) == 3).all()
    with pytest.raises(ModelIntegrityError):
        registry.load("eight", path8, sha256="0" * 64)
    assert registry.current.version == "three"
    assert registry.predict(np.zeros((0, 28, 28), np.float32))[0].shape == (0, 10)


def test_swaps_under_concurrent_predictions_never_mix_versions(two_models):
    (path3, _), (path8, _) = two_models
    registry = ModelRegistry()
    registry.load("three", path3)
    expected = {"three": 3, "eight": 8}
    errors, seen = [], set()
    stop = threading.Event()

    def reader():
        x = np.zeros((4, 28, 28), np.float32)
        while not stop.is_set():
            try:
                probs, version = registry.predict(x)
                seen.add(version)
                if not (probs.argmax(axis=1) == expected[version]).all():
                    errors.append(f"{version} answered {probs.argmax(axis=1)}")
            except Exception as exc:  # noqa: BLE001 - any failure is the finding
                errors.append(repr(exc))
            time.sleep(0.002)  # hundreds of calls overlap every swap, without starving the loader

    # Few readers and swaps to stay fast on 2 cores: each load competes with them.
    readers = [threading.Thread(target=reader) for _ in range(2)]
    for t in readers:
        t.start()
    for i in range(4):
        registry.load(*(("eight", path8) if i % 2 == 0 else ("three", path3)))
    stop.set()
    for t in readers:
        t.join()
    assert not errors, errors[:3]
    assert seen == {"three", "eight"}


def test_broken_or_missing_file_keeps_the_live_model(two_models, tmp_path):
    from app.ml.registry import ModelNotLoaded

    (path3, sha3), _ = two_models
    registry = ModelRegistry()
    with pytest.raises(ModelNotLoaded):
        registry.predict(np.zeros((1, 28, 28), np.float32))
    assert not registry.is_loaded and registry.current is None
    registry.load("three", path3, sha256=sha3)
    broken = tmp_path / "broken.keras"
    broken.write_bytes(b"PK\x03\x04 not really a zip")
    with pytest.raises(Exception):
        registry.load("broken", broken)
    with pytest.raises(Exception):
        registry.load("missing", tmp_path / "missing.keras")
    assert registry.is_loaded and registry.version == "three"
    assert registry.predict(np.zeros((28, 28), np.float32))[0].shape == (1, 10)
    with pytest.raises(ValueError):
        registry.predict(np.zeros((2, 32, 32), np.float32))


def test_trained_tiny_model_serves_through_the_fast_path(tiny_trained_model, ml_digits):
    path, sha256 = tiny_trained_model
    x, _ = ml_digits
    registry = ModelRegistry()
    loaded = registry.load("tiny", path, sha256=sha256)
    assert loaded.sha256 == sha256 and loaded.path == str(path)
    batch = x[:9].astype(np.float32) / 255.0
    probs, version = registry.predict(batch)
    assert version == "tiny" and probs.shape == (9, 10)
    assert np.allclose(probs.sum(axis=1), 1.0, atol=1e-5)
    assert np.allclose(probs, loaded.model.predict(batch, verbose=0), atol=1e-5)


def test_configure_tensorflow_is_idempotent():
    from app.ml.registry import configure_tensorflow

    first = configure_tensorflow(intra=2, inter=1)
    assert configure_tensorflow(intra=7, inter=7) == first
