"""Writing model files so that a reader never sees a half-written or broken model.

A model is saved to a temporary name in the target directory, flushed to disk, loaded
back and run once; only then is it renamed onto the final name (`os.replace` is atomic
on one filesystem) and the directory entry flushed too.
"""

from __future__ import annotations

import hashlib
import os
import secrets
from pathlib import Path

import numpy as np

_CHUNK = 1 << 20


def sha256_file(path) -> str:
    """Hex SHA-256 of a file, so a registry can refuse a model that changed on disk."""
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(_CHUNK), b""):
            h.update(chunk)
    return h.hexdigest()


def _fsync_file(path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _fsync_dir(directory) -> None:
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:  # e.g. platforms without directory handles
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def verify_model_file(path) -> None:
    """Load a saved model and run one prediction: raises if the file is not servable."""
    import keras

    model = keras.models.load_model(path, compile=False)
    probs = np.asarray(model(np.zeros((1, 28, 28), np.float32), training=False))
    if probs.shape != (1, 10) or not np.all(np.isfinite(probs)):
        raise ValueError(f"{path}: model output {probs.shape} is not 10 finite probabilities")


def _without_training_state(model):
    """A copy that carries the weights but no optimizer: Keras 3 saves a compiled model's
    optimizer variables (twice the weights again) and has no switch to leave them out;
    ``clone_model`` keeps the optimizer too, rebuilding from the config does not."""
    if getattr(model, "optimizer", None) is None:
        return model
    copy = model.__class__.from_config(model.get_config())
    copy.set_weights(model.get_weights())
    return copy


def save_model_atomic(model, directory, filename: str) -> tuple[str, str]:
    """Save `model` as `directory/filename` (.keras) atomically; returns (path, sha256).

    The optimizer state is left out (smaller file; fine-tuning compiles afresh). On any
    failure the temporary file is removed, the exception propagates and whatever was at
    the final name before is untouched."""
    if not filename.endswith(".keras") or os.path.basename(filename) != filename:
        raise ValueError(f"filename must be a bare name ending in .keras, not {filename!r}")
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    final = directory / filename
    stem = filename[: -len(".keras")]
    tmp = directory / f"{stem}.{secrets.token_hex(8)}.tmp.keras"
    try:
        _without_training_state(model).save(tmp)
        _fsync_file(tmp)
        verify_model_file(tmp)
        digest = sha256_file(tmp)
        os.replace(tmp, final)
    except BaseException:
        try:
            tmp.unlink()
        except FileNotFoundError:
            pass
        raise
    _fsync_dir(directory)
    return str(final), digest
