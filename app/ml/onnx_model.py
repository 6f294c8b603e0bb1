"""A servable model file: the ``.onnx`` export of a version, verified, loaded into ONNX Runtime.

This is all a serving process needs of a model, and it never imports TensorFlow, Keras or
tf2onnx: the file was exported and checked against Keras once, when the version was saved
(``app.ml.artifacts``). Here it is only hashed, loaded and run.

Calling a Keras model from Python pays TensorFlow's eager dispatch on every call, several
times the arithmetic of one image; ONNX Runtime runs the same graph on the calling thread
without it, and faster on batches too (``bench/inference_speed.py``; README, "Measured").
Pool threads are told not to spin while idle: spinning saved a little on one image but
took the cores from other requests and cost the batch endpoint far more.

``OnnxModel.predict`` is safe to call from many threads at once. It returns the graph's
softmax rescaled by the version's calibration temperature (``app.ml.calibration``); the
export check compares the graph itself (no temperature) with Keras.
"""

from __future__ import annotations

import copy
import hashlib
from pathlib import Path

import numpy as np

from app.ml.calibration import apply_temperature, check_temperature

# Batches of at least this many images are split over several threads.
BATCHED_FROM = 8
# Largest difference in any probability allowed between the exported graph and Keras.
AGREEMENT_TOLERANCE = 1e-4
_CHUNK = 1 << 20


def sha256_file(path) -> str:
    """Hex SHA-256 of a file, so a process can refuse a model that changed on disk."""
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(_CHUNK), b""):
            h.update(chunk)
    return h.hexdigest()


def onnx_path_for(keras_path) -> str:
    """Where a version's ONNX export lives: beside its ``.keras`` file, same stem."""
    keras_path = str(keras_path)
    if not keras_path.endswith(".keras"):
        raise ValueError(f"not a .keras path: {keras_path!r}")
    return keras_path[: -len(".keras")] + ".onnx"


class ModelIntegrityError(ValueError):
    """The model file's SHA-256 differs from the recorded one: refuse to serve it."""


def probe_batch(n: int = 16) -> np.ndarray:
    """Fixed images for the export's agreement check: blank, full, sparse strokes and noise."""
    rng = np.random.default_rng(0)
    x = rng.random((n, 28, 28), dtype=np.float32)
    x[0] = 0.0
    x[1] = 1.0
    x[2:n // 2] = (x[2:n // 2] > 0.8).astype(np.float32)  # sparse, ink-like
    return x


def as_batch(batch) -> np.ndarray:
    """float32 (n, 28, 28) from one image, a batch, or a batch with a channel axis."""
    x = np.asarray(batch, dtype=np.float32)
    if x.ndim == 4 and x.shape[-1] == 1:
        x = x[..., 0]
    if x.ndim == 2:
        x = x[None]
    if x.ndim != 3 or x.shape[1:] != (28, 28):
        raise ValueError(f"expected images of shape (n, 28, 28), got {x.shape}")
    return x


def _session(graph: bytes, intra_threads: int):
    import onnxruntime

    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads = intra_threads
    options.inter_op_num_threads = 1  # the graph is a single chain: nothing to run in parallel
    # Idle pool threads must sleep, not spin: they would take the cores from other requests.
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    return onnxruntime.InferenceSession(graph, options, providers=["CPUExecutionProvider"])


class OnnxModel:
    """One model version loaded from its ONNX file, with a fast, thread-safe ``predict``."""

    def __init__(self, version: str, path, sha256: str, graph: bytes, *, threads: int = 0, warm: bool = True,
                 temperature: float | None = None):
        self.version = str(version)
        self.path = str(path)
        self.sha256 = sha256
        # None: serve the graph's softmax as it is (an uncalibrated version). A value that
        # is not a usable temperature raises here, so it is never served.
        self.temperature = check_temperature(temperature)
        # A few images are quickest on the calling thread alone (no hand-off to a pool);
        # batches are split over `threads` threads (0: ONNX Runtime's choice, one per core).
        self._single = _session(graph, 1)
        self._batched = _session(graph, max(0, int(threads))) if int(threads) != 1 else self._single
        self._input = self._single.get_inputs()[0].name
        if warm:
            self.predict(np.zeros((1, 28, 28), np.float32))

    @classmethod
    def from_file(cls, version: str, path, sha256: str | None, *, threads: int = 0, warm: bool = True,
                  temperature: float | None = None) -> "OnnxModel":
        """Read the file once, check its hash against ``sha256`` (refused if it differs), load it.

        ``sha256=None`` skips the check (only for a file this process has just written)."""
        check_temperature(temperature)  # refuse before the work of loading
        graph = Path(path).read_bytes()
        actual = hashlib.sha256(graph).hexdigest()  # the bytes loaded are the bytes hashed
        if sha256 is not None and actual != str(sha256).lower():
            raise ModelIntegrityError(f"{path}: sha256 {actual} does not match the recorded {sha256}")
        return cls(version, path, actual, graph, threads=threads, warm=warm, temperature=temperature)

    def with_temperature(self, temperature: float | None) -> "OnnxModel":
        """The same loaded graph (sessions shared) served with another temperature."""
        temperature = check_temperature(temperature)
        clone = copy.copy(self)
        clone.temperature = temperature
        return clone

    def predict(self, batch) -> np.ndarray:
        """Probabilities (n, 10) for float images (n, 28, 28) in [0, 1], calibrated when the
        version has a temperature."""
        return apply_temperature(self.raw_predict(batch), self.temperature)

    def raw_predict(self, batch) -> np.ndarray:
        """The graph's own softmax (n, 10), as exported from Keras: no temperature."""
        x = as_batch(batch)
        if len(x) == 0:
            return np.zeros((0, 10), np.float32)
        session = self._single if len(x) < BATCHED_FROM else self._batched
        return session.run(None, {self._input: x})[0]

    def disagreement(self, x: np.ndarray, expected: np.ndarray) -> float:
        """Largest difference from ``expected`` over ``x`` run whole and in pieces (both sessions)."""
        small = BATCHED_FROM - 1
        pieces = np.concatenate([self.raw_predict(x[i:i + small]) for i in range(0, len(x), small)])
        return float(max(np.max(np.abs(self.raw_predict(x) - expected)), np.max(np.abs(pieces - expected))))

    def __repr__(self) -> str:
        return f"OnnxModel(version={self.version!r}, path={self.path!r}, temperature={self.temperature!r})"
