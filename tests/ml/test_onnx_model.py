"""The servable model file: the shipped ONNX export, its hash check, its two sessions, many threads."""

import json
import threading

import numpy as np
import pytest

from app.ml.onnx_model import (
    AGREEMENT_TOLERANCE,
    BATCHED_FROM,
    ModelIntegrityError,
    OnnxModel,
    onnx_path_for,
    probe_batch,
    sha256_file,
)

from support import SHIPPED_MODELS


@pytest.fixture(scope="module")
def manifest():
    return json.loads((SHIPPED_MODELS / "manifest.json").read_text())


@pytest.fixture(scope="module")
def shipped(manifest):
    return OnnxModel.from_file(manifest["version"], SHIPPED_MODELS / manifest["onnx_file"], manifest["onnx_sha256"],
                               threads=2)


def digits_like(n=64, seed=1):
    rng = np.random.default_rng(seed)
    x = np.zeros((n, 28, 28), np.float32)
    for i in range(n):  # a thick random stroke per image, like an MNIST digit's ink
        r, c = rng.integers(6, 22, 2)
        x[i, r - 4:r + 4, c - 2:c + 2] = rng.random()
    return x


def test_the_shipped_export_sits_beside_the_keras_file_and_matches_the_manifest(manifest):
    assert onnx_path_for(SHIPPED_MODELS / manifest["file"]) == str(SHIPPED_MODELS / manifest["onnx_file"])
    assert sha256_file(SHIPPED_MODELS / manifest["onnx_file"]) == manifest["onnx_sha256"]


def test_the_shipped_export_reproduces_keras(shipped, manifest):
    """Checked at export; checked again here against Keras itself (this test process may import it)."""
    import keras

    reference = keras.models.load_model(SHIPPED_MODELS / manifest["file"], compile=False)
    for x in (digits_like(), probe_batch(), digits_like(1)):
        expected = np.asarray(reference(x, training=False))
        got = shipped.predict(x)
        assert got.shape == expected.shape and got.dtype == np.float32
        assert np.max(np.abs(got - expected)) <= AGREEMENT_TOLERANCE
        assert (got.argmax(1) == expected.argmax(1)).all()
    assert shipped.disagreement(probe_batch(), np.asarray(reference(probe_batch(), training=False))) <= AGREEMENT_TOLERANCE


def test_small_and_large_batches_agree_across_their_sessions(shipped, manifest):
    """Fewer than BATCHED_FROM images run on the calling thread, more on a thread pool."""
    assert shipped._single is not shipped._batched
    x = digits_like(3 * BATCHED_FROM, seed=5)
    whole = shipped.predict(x)
    pieces = np.concatenate([shipped.predict(x[i:i + 1]) for i in range(len(x))])
    np.testing.assert_allclose(pieces, whole, atol=1e-6)
    one_thread = OnnxModel.from_file("v", SHIPPED_MODELS / manifest["onnx_file"], manifest["onnx_sha256"], threads=1)
    assert one_thread._batched is one_thread._single  # no second session when it would be the same
    np.testing.assert_allclose(one_thread.predict(x), whole, atol=1e-6)


def test_shapes_a_single_image_and_an_empty_batch(shipped):
    assert shipped.predict(np.zeros((28, 28), np.float32)).shape == (1, 10)
    assert shipped.predict(np.zeros((3, 28, 28, 1), np.float32)).shape == (3, 10)
    assert shipped.predict(np.zeros((0, 28, 28), np.float32)).shape == (0, 10)
    with pytest.raises(ValueError, match="expected images of shape"):
        shipped.predict(np.zeros((2, 32, 32), np.float32))


def test_a_file_that_does_not_match_its_hash_is_refused(manifest, tmp_path):
    path = SHIPPED_MODELS / manifest["onnx_file"]
    with pytest.raises(ModelIntegrityError):
        OnnxModel.from_file("v", path, "0" * 64)
    assert OnnxModel.from_file("v", path, manifest["onnx_sha256"].upper()).sha256 == manifest["onnx_sha256"]
    tampered = tmp_path / "tampered.onnx"
    tampered.write_bytes(path.read_bytes() + b"\0")
    with pytest.raises(ModelIntegrityError, match="does not match"):
        OnnxModel.from_file("v", tampered, manifest["onnx_sha256"])


def test_broken_or_missing_files_raise(tmp_path):
    broken = tmp_path / "broken.onnx"
    broken.write_bytes(b"not a protobuf at all")
    with pytest.raises(Exception):
        OnnxModel.from_file("v", broken, sha256_file(broken))
    with pytest.raises(FileNotFoundError):
        OnnxModel.from_file("v", tmp_path / "missing.onnx", "0" * 64)


def test_many_threads_share_one_model(shipped):
    x = digits_like(32, seed=3)
    expected = shipped.predict(x)
    errors, results = [], []

    def worker(i):
        try:
            for _ in range(20):
                size = 1 + i if i % 2 else BATCHED_FROM + i  # both sessions at once
                results.append(np.allclose(shipped.predict(x[i:i + size]), expected[i:i + size], atol=1e-5))
        except Exception as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors and len(results) == 160 and all(results)
