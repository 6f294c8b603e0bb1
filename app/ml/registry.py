"""The live model: loading, verifying, warming up and swapping it under traffic.

Readers (request threads) never lock: they read one reference (`_current`) once and use
that `LoadedModel` for the whole call, so a concurrent swap can never mix versions.
Loads are serialized by a lock. Only the live model is referenced, so a replaced one is
garbage-collected once the last request using it finishes.

Inference never uses `model.predict` (tens of ms of per-call overhead, and it must never
run on a model that is being compiled elsewhere): each loaded version gets a runner from
`app.ml.inference`, ONNX Runtime by default, built and checked once at load.
"""

from __future__ import annotations

import logging
import threading
from pathlib import Path

import numpy as np

from app.ml.artifacts import sha256_file
from app.ml.inference import build_runner

log = logging.getLogger(__name__)

_tf_config_lock = threading.Lock()
_tf_threads: tuple[int, int] | None = None


def configure_tensorflow(intra: int | None = None, inter: int | None = None) -> tuple[int, int]:
    """Size TensorFlow's thread pools once, before its runtime starts (later calls are
    no-ops), so several workers on a small machine do not oversubscribe the cores.
    Returns the (intra, inter) values in force (0 = TensorFlow's own choice)."""
    global _tf_threads
    with _tf_config_lock:
        if _tf_threads is not None:
            return _tf_threads
        import tensorflow as tf

        try:
            if intra is not None:
                tf.config.threading.set_intra_op_parallelism_threads(int(intra))
            if inter is not None:
                tf.config.threading.set_inter_op_parallelism_threads(int(inter))
        except RuntimeError as exc:  # runtime already initialized: keep what it has
            log.warning("TensorFlow thread pools already fixed: %s", exc)
        _tf_threads = (
            tf.config.threading.get_intra_op_parallelism_threads(),
            tf.config.threading.get_inter_op_parallelism_threads(),
        )
        return _tf_threads


class ModelIntegrityError(ValueError):
    """The model file's SHA-256 differs from the recorded one: refuse to serve it."""


class ModelNotLoaded(RuntimeError):
    """No model is live yet (the web layer answers 503)."""


def _as_batch(batch) -> np.ndarray:
    x = np.asarray(batch, dtype=np.float32)
    if x.ndim == 4 and x.shape[-1] == 1:
        x = x[..., 0]
    if x.ndim == 2:
        x = x[None]
    if x.ndim != 3 or x.shape[1:] != (28, 28):
        raise ValueError(f"expected images of shape (n, 28, 28), got {x.shape}")
    return x


class LoadedModel:
    """One servable model version with its fast, thread-safe `predict`."""

    def __init__(self, version: str, path, sha256: str | None, model, *, warm: bool = True,
                 backend: str = "onnxruntime", threads: int = 0):
        self.version = str(version)
        self.path = str(path) if path is not None else None
        self.sha256 = sha256
        self.model = model
        self._run = build_runner(model, backend, threads)
        if warm:
            self.predict(np.zeros((1, 28, 28), np.float32))

    @property
    def backend(self) -> str:
        """What runs this model: "onnxruntime", or "tensorflow" (chosen, or the fallback)."""
        return self._run.backend

    @classmethod
    def from_file(cls, version: str, path, sha256: str | None = None, **runner_options) -> "LoadedModel":
        """Verify the file's hash (if given), load it and warm the fast path up."""
        import keras

        path = Path(path)
        if sha256 is not None:
            actual = sha256_file(path)
            if actual.lower() != str(sha256).lower():
                raise ModelIntegrityError(
                    f"{path}: sha256 {actual} does not match the recorded {sha256}"
                )
        else:
            actual = sha256_file(path)
        model = keras.models.load_model(path, compile=False)
        return cls(version, path, actual, model, **runner_options)

    def predict(self, batch) -> np.ndarray:
        """Probabilities (n,10) for float32 images (n,28,28) in [0,1]."""
        x = _as_batch(batch)
        if len(x) == 0:
            return np.zeros((0, 10), np.float32)
        return self._run(x)

    def __repr__(self) -> str:
        return f"LoadedModel(version={self.version!r}, path={self.path!r})"


class ModelRegistry:
    """Holds the live model and swaps it atomically; safe under many threads."""

    def __init__(self, backend: str = "onnxruntime", threads: int = 0):
        self._load_lock = threading.Lock()
        self._current: LoadedModel | None = None
        # How every version this registry loads is run (see app.ml.inference).
        self._runner_options = {"backend": backend, "threads": threads}

    @property
    def current(self) -> LoadedModel | None:
        """The live model, or None before the first successful load."""
        return self._current

    @property
    def is_loaded(self) -> bool:
        """True once a model serves (the readiness probe)."""
        return self._current is not None

    @property
    def version(self) -> str | None:
        """Version string of the live model, or None."""
        current = self._current
        return current.version if current is not None else None

    def load(self, version: str, path, sha256: str | None = None) -> LoadedModel:
        """Load, verify and warm a model, then make it live. On any error (missing file,
        hash mismatch, broken model) the previous model stays live and the error raises."""
        with self._load_lock:
            loaded = LoadedModel.from_file(version, path, sha256, **self._runner_options)
            self._current = loaded  # one reference assignment: atomic for readers
            log.info("model %s is live (%s)", version, path)
            return loaded

    def install(self, loaded: LoadedModel) -> None:
        """Make an already loaded and warmed model live (e.g. built in memory)."""
        with self._load_lock:
            self._current = loaded

    def unload(self) -> None:
        """Drop the live model (tests, shutdown)."""
        with self._load_lock:
            self._current = None

    def predict(self, batch) -> tuple[np.ndarray, str]:
        """(probabilities (n,10), version) from one consistent model, even mid-swap."""
        current = self._current  # read once
        if current is None:
            raise ModelNotLoaded("no model is loaded")
        return current.predict(batch), current.version
