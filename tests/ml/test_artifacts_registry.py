"""Atomic model files and the live-model registry under concurrent use."""

import threading
import time

import numpy as np
import pytest

import app.ml.artifacts as artifacts
from app.ml.artifacts import save_model_atomic, sha256_file
from app.ml.registry import LoadedModel, ModelIntegrityError, ModelNotLoaded, ModelRegistry


def constant_model(digit):
    """A tiny network that always answers ``digit`` (zero kernel, bias on one class)."""
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
    """[(path, sha256)] of an always-3 and an always-8 model."""
    folder = tmp_path_factory.mktemp("two")
    return [save_model_atomic(constant_model(d), str(folder), f"always{d}.keras") for d in (3, 8)]


def leftovers(folder):
    return sorted(p.name for p in folder.iterdir() if p.name.endswith(".tmp.keras"))


# --------------------------------------------------------------------------- artifacts


def test_atomic_save_writes_a_loadable_verified_file(tmp_path, replay_digits):
    import keras

    model = constant_model(5)
    path, digest = save_model_atomic(model, str(tmp_path / "new-folder"), "m.keras")
    assert path == str(tmp_path / "new-folder" / "m.keras")
    assert digest == sha256_file(path) and len(digest) == 64
    assert leftovers(tmp_path / "new-folder") == []
    loaded = keras.models.load_model(path, compile=False)
    x = replay_digits[0][:4].astype(np.float32) / 255.0
    assert np.allclose(np.asarray(loaded(x, training=False)), np.asarray(model(x, training=False)), atol=1e-6)
    assert (np.asarray(loaded(x, training=False)).argmax(axis=1) == 5).all()

    # Saving again over the same name replaces the file with the new model.
    path2, digest2 = save_model_atomic(constant_model(6), str(tmp_path / "new-folder"), "m.keras")
    assert path2 == path and digest2 != digest and sha256_file(path) == digest2
    assert leftovers(tmp_path / "new-folder") == []


def test_compiled_model_is_saved_without_optimizer_state(tmp_path):
    import keras

    model = constant_model(2)
    model.compile(optimizer="adam", loss="sparse_categorical_crossentropy")
    path, _ = save_model_atomic(model, str(tmp_path), "c.keras")
    reloaded = keras.models.load_model(path)
    assert getattr(reloaded, "optimizer", None) is None
    assert getattr(model, "optimizer", None) is not None  # the caller's model is left as it was
    assert all(np.array_equal(a, b) for a, b in zip(reloaded.get_weights(), model.get_weights()))


def test_failed_verification_leaves_the_old_file_and_no_temp(tmp_path, monkeypatch):
    path, digest = save_model_atomic(constant_model(1), str(tmp_path), "m.keras")
    old = open(path, "rb").read()
    verified = []

    def broken(candidate_path):
        verified.append(str(candidate_path))
        raise ValueError("corrupt")

    monkeypatch.setattr(artifacts, "verify_model_file", broken)
    with pytest.raises(ValueError, match="corrupt"):
        save_model_atomic(constant_model(2), str(tmp_path), "m.keras")
    # Verification ran on a temporary file beside the final one, never on the final name.
    assert len(verified) == 1 and verified[0].endswith(".tmp.keras") and verified[0] != path
    assert open(path, "rb").read() == old and sha256_file(path) == digest
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.keras"]


@pytest.mark.parametrize("filename", ["../escape.keras", "sub/m.keras", "m.h5", "m", ""])
def test_bad_filename_is_refused(tmp_path, filename):
    with pytest.raises(ValueError):
        save_model_atomic(constant_model(1), str(tmp_path / "out"), filename)
    assert not (tmp_path / "escape.keras").exists()
    assert not (tmp_path / "out").exists() or list((tmp_path / "out").iterdir()) == []


# --------------------------------------------------------------------------- registry


def test_registry_loads_and_predicts(two_models):
    (path3, sha3), _ = two_models
    registry = ModelRegistry()
    loaded = registry.load("three", path3, sha256=sha3)
    assert isinstance(loaded, LoadedModel) and loaded.sha256 == sha3 and registry.current is loaded
    assert registry.is_loaded and registry.version == "three"
    probs, version = registry.predict(np.random.default_rng(0).random((5, 28, 28), dtype=np.float32))
    assert version == "three" and probs.shape == (5, 10) and probs.dtype == np.float32
    assert np.allclose(probs.sum(axis=1), 1.0, atol=1e-5) and (probs >= 0).all()
    assert (probs.argmax(axis=1) == 3).all()
    one, _ = registry.predict(np.zeros((28, 28), np.float32))  # a single image is a batch of one
    assert one.shape == (1, 10)


def test_empty_batch(two_models):
    (path3, sha3), _ = two_models
    registry = ModelRegistry()
    registry.load("three", path3, sha256=sha3)
    probs, version = registry.predict(np.zeros((0, 28, 28), np.float32))
    assert probs.shape == (0, 10) and version == "three"


def test_hash_mismatch_is_refused_and_the_live_model_stays(two_models):
    (path3, sha3), (path8, sha8) = two_models
    registry = ModelRegistry()
    registry.load("three", path3, sha256=sha3)
    live = registry.current
    with pytest.raises(ModelIntegrityError):
        registry.load("eight", path8, sha256="0" * 64)
    with pytest.raises(ModelIntegrityError):
        registry.load("eight", path8, sha256=sha3)  # another model's hash
    assert registry.current is live and registry.version == "three"
    probs, version = registry.predict(np.zeros((2, 28, 28), np.float32))
    assert version == "three" and (probs.argmax(axis=1) == 3).all()
    registry.load("eight", path8, sha256=sha8.upper())  # the right hash, any case, is accepted
    assert registry.version == "eight"


def test_broken_or_missing_file_keeps_the_live_model(two_models, tmp_path):
    (path3, sha3), _ = two_models
    registry = ModelRegistry()
    with pytest.raises(ModelNotLoaded):
        registry.predict(np.zeros((1, 28, 28), np.float32))
    assert not registry.is_loaded and registry.current is None and registry.version is None
    registry.load("three", path3, sha256=sha3)
    broken = tmp_path / "broken.keras"
    broken.write_bytes(b"PK\x03\x04 not really a zip")
    with pytest.raises(Exception):
        registry.load("broken", broken)
    with pytest.raises(FileNotFoundError):
        registry.load("missing", tmp_path / "missing.keras")
    assert registry.is_loaded and registry.version == "three"
    with pytest.raises(ValueError):
        registry.predict(np.zeros((2, 32, 32), np.float32))


def test_predictions_from_8_threads_during_20_swaps_never_mix_versions(two_models):
    """Readers never fail and never get one version's label with the other's answers."""
    (path3, sha3), (path8, sha8) = two_models
    registry = ModelRegistry()
    files = {"three": (path3, sha3), "eight": (path8, sha8)}
    registry.load("three", path3, sha256=sha3)
    cached = {"three": registry.current}

    # Each reader sends its own batch size; each version's own answer for it is the reference.
    batches = [np.random.default_rng(i).random((1 + i % 4, 28, 28), dtype=np.float32) for i in range(8)]
    errors, calls = [], [0] * 8
    seen = [[] for _ in range(8)]
    references = {}  # version -> [answer per reader's batch], filled below
    stop = threading.Event()

    def reader(i):
        x = batches[i]
        while not stop.is_set():
            try:
                probs, version = registry.predict(x)
                expected = references[version][i]
                if probs.shape != expected.shape or not np.allclose(probs, expected, atol=1e-6):
                    errors.append(f"{version} answered {probs.argmax(axis=1)}")
                if not seen[i] or seen[i][-1] != version:
                    seen[i].append(version)
            except Exception as exc:  # noqa: BLE001 - any failure is the finding
                errors.append(repr(exc))
            calls[i] += 1

    def swapper():
        try:
            for swap in range(20):
                version = "eight" if swap % 2 == 0 else "three"
                if version in cached:
                    registry.install(cached[version])
                else:  # the first visit goes through the file, hash check included
                    registry.load(version, *files[version])
                    cached[version] = registry.current
                # Let every reader get a few calls in before the next swap.
                target = [c + 2 for c in calls]
                deadline = time.monotonic() + 5
                while any(c < t for c, t in zip(calls, target)) and time.monotonic() < deadline:
                    time.sleep(0.001)
        except Exception as exc:  # noqa: BLE001
            errors.append(f"swapper: {exc!r}")

    # Each version's own answers, from private copies (not through the registry).
    references["three"] = [cached["three"].predict(b) for b in batches]
    references["eight"] = [LoadedModel.from_file("eight", path8, sha8).predict(b) for b in batches]
    assert not np.allclose(references["three"][0], references["eight"][0])

    readers = [threading.Thread(target=reader, args=(i,)) for i in range(8)]
    for t in readers:
        t.start()
    swapping = threading.Thread(target=swapper)
    swapping.start()
    swapping.join(timeout=120)
    stop.set()
    for t in readers:
        t.join(timeout=30)
    assert not swapping.is_alive() and not any(t.is_alive() for t in readers)
    assert not errors, errors[:3]
    assert registry.version == "three"  # 20 swaps: back where it started
    assert all(c >= 20 for c in calls), calls
    switches = sum(len(s) - 1 for s in seen)
    assert switches >= 8 * 10, f"readers saw only {switches} version changes"  # they really overlapped the swaps


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
    assert len(set(probs.argmax(axis=1).tolist())) > 1  # a trained model: answers depend on the input


def test_configure_tensorflow_is_idempotent():
    from app.ml.registry import configure_tensorflow

    first = configure_tensorflow(intra=2, inter=1)
    assert configure_tensorflow(intra=7, inter=7) == first
