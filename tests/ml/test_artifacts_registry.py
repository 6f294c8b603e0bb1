"""Atomic model files and the live-model registry under concurrent use."""

import threading

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

    readers = [threading.Thread(target=reader) for _ in range(8)]
    for t in readers:
        t.start()
    for i in range(20):
        registry.load(*(("eight", path8) if i % 2 == 0 else ("three", path3)))
    stop.set()
    for t in readers:
        t.join()
    assert not errors, errors[:3]
    assert seen == {"three", "eight"}
