"""Saving a model version: its ``.keras`` file and its ``.onnx`` export, so that a reader
never sees a half-written, broken or disagreeing model.

This is the only module that imports tf2onnx (and, through it and Keras, TensorFlow):
only processes that save a model get here. Both files are written to temporary names in
the target directory and flushed to disk; the Keras file is loaded back and run, the ONNX
export is loaded into ONNX Runtime the way serving loads it and must reproduce Keras'
probabilities on a fixed probe batch. Only then are they renamed onto their final names
(``os.replace`` is atomic on one filesystem) and the directory entry flushed too.
"""

from __future__ import annotations

import logging
import os
import secrets
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from app.ml.onnx_model import AGREEMENT_TOLERANCE, OnnxModel, onnx_path_for, probe_batch, sha256_file

log = logging.getLogger(__name__)

# Temporary files end like this; a process killed mid-save leaves them for the sweep.
TEMP_SUFFIXES = (".tmp.keras", ".tmp.onnx")
ONNX_OPSET = 17


@dataclass(frozen=True)
class SavedModel:
    """Where a saved version's two files are and what they hash to."""

    path: str
    sha256: str
    onnx_path: str
    onnx_sha256: str


class ExportMismatch(ValueError):
    """The ONNX export does not reproduce Keras' outputs: nothing is written."""


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


def _remove(*paths) -> None:
    for path in paths:
        try:
            os.unlink(path)
        except FileNotFoundError:
            pass


def verify_model_file(path):
    """Load a saved Keras file and run one prediction; returns the loaded model, raises if
    the file is not servable."""
    import keras

    model = keras.models.load_model(path, compile=False)
    probs = np.asarray(model(np.zeros((1, 28, 28), np.float32), training=False))
    if probs.shape != (1, 10) or not np.all(np.isfinite(probs)):
        raise ValueError(f"{path}: model output {probs.shape} is not 10 finite probabilities")
    return model


def _write_bytes(path, data: bytes) -> None:
    with open(path, "xb") as fh:
        fh.write(data)
        fh.flush()
        os.fsync(fh.fileno())


def _onnx_graph(model) -> bytes:
    import tensorflow as tf
    import tf2onnx

    if logging.getLogger("tf2onnx").level == logging.NOTSET:
        logging.getLogger("tf2onnx").setLevel(logging.WARNING)  # it logs every conversion at INFO
    spec = (tf.TensorSpec((None, 28, 28), tf.float32, name="image"),)
    proto, _ = tf2onnx.convert.from_keras(model, input_signature=spec, opset=ONNX_OPSET)
    return proto.SerializeToString()


def _export_onnx(model, tmp) -> None:
    """Write ``model``'s ONNX graph to ``tmp`` and check it against Keras on the probe batch."""
    _write_bytes(tmp, _onnx_graph(model))
    probe = probe_batch()
    expected = np.asarray(model(probe, training=False))
    # Both sessions serving builds must agree: the probe whole (batched) and in small pieces.
    difference = OnnxModel.from_file("export-check", tmp, None, threads=2, warm=False).disagreement(probe, expected)
    if not difference <= AGREEMENT_TOLERANCE:  # also refuses NaN
        raise ExportMismatch(f"the ONNX export differs from Keras by {difference:.3g} (> {AGREEMENT_TOLERANCE})")


def _temp_name(directory: Path, stem: str, suffix: str) -> Path:
    return directory / f"{stem}.{secrets.token_hex(8)}.tmp{suffix}"


def _without_training_state(model):
    """A copy that carries the weights but no optimizer: Keras 3 saves a compiled model's
    optimizer variables (twice the weights again) and has no switch to leave them out;
    ``clone_model`` keeps the optimizer too, rebuilding from the config does not."""
    if getattr(model, "optimizer", None) is None:
        return model
    copy = model.__class__.from_config(model.get_config())
    copy.set_weights(model.get_weights())
    return copy


def save_model_atomic(model, directory, filename: str) -> SavedModel:
    """Save ``model`` as ``directory/filename`` (.keras) and its export beside it (.onnx).

    The optimizer state is left out (smaller file; fine-tuning compiles afresh). The ONNX
    file is exported from the Keras file as saved. On any failure both temporary files are
    removed, the exception propagates and whatever was at the final names is untouched."""
    if not filename.endswith(".keras") or os.path.basename(filename) != filename:
        raise ValueError(f"filename must be a bare name ending in .keras, not {filename!r}")
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    final = directory / filename
    final_onnx = Path(onnx_path_for(final))
    stem = filename[: -len(".keras")]
    tmp, tmp_onnx = _temp_name(directory, stem, ".keras"), _temp_name(directory, stem, ".onnx")
    try:
        _without_training_state(model).save(tmp)
        _fsync_file(tmp)
        saved = verify_model_file(tmp)
        _export_onnx(saved, tmp_onnx)
        digest, onnx_digest = sha256_file(tmp), sha256_file(tmp_onnx)
        os.replace(tmp_onnx, final_onnx)
        os.replace(tmp, final)
    except BaseException:
        _remove(tmp, tmp_onnx)
        raise
    _fsync_dir(directory)
    return SavedModel(str(final), digest, str(final_onnx), onnx_digest)


def export_onnx_atomic(keras_path) -> tuple[str, str]:
    """Export an existing ``.keras`` file to ONNX beside it (versions saved before exports
    existed); returns (onnx path, sha256). Atomic and checked like ``save_model_atomic``."""
    keras_path = Path(keras_path)
    final_onnx = Path(onnx_path_for(keras_path))
    tmp_onnx = _temp_name(keras_path.parent, keras_path.name[: -len(".keras")], ".onnx")
    try:
        _export_onnx(verify_model_file(keras_path), tmp_onnx)
        digest = sha256_file(tmp_onnx)
        os.replace(tmp_onnx, final_onnx)
    except BaseException:
        _remove(tmp_onnx)
        raise
    _fsync_dir(keras_path.parent)
    return str(final_onnx), digest
