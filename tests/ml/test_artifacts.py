"""Saving a model version: the .keras file and its ONNX export, atomic and checked."""

import errno

import numpy as np
import pytest

import app.ml.artifacts as artifacts
from app.ml.artifacts import ExportMismatch, SavedModel, export_onnx_atomic, save_model_atomic
from app.ml.onnx_model import AGREEMENT_TOLERANCE, OnnxModel, probe_batch, sha256_file
from support import constant_model


def names(folder):
    return sorted(p.name for p in folder.iterdir())


def contents(folder):
    return {p.name: p.read_bytes() for p in folder.iterdir()}


def test_atomic_save_writes_both_files_verified(tmp_path, replay_digits):
    import keras

    model = constant_model(5)
    folder = tmp_path / "new-folder"
    saved = save_model_atomic(model, str(folder), "m.keras")
    assert saved == SavedModel(str(folder / "m.keras"), saved.sha256, str(folder / "m.onnx"), saved.onnx_sha256)
    assert saved.sha256 == sha256_file(saved.path) and saved.onnx_sha256 == sha256_file(saved.onnx_path)
    assert names(folder) == ["m.keras", "m.onnx"]  # no temporary file left
    x = replay_digits[0][:9].astype(np.float32) / 255.0
    expected = np.asarray(model(x, training=False))
    loaded = keras.models.load_model(saved.path, compile=False)
    assert np.allclose(np.asarray(loaded(x, training=False)), expected, atol=1e-6)
    served = OnnxModel.from_file("m", saved.onnx_path, saved.onnx_sha256)
    assert np.max(np.abs(served.predict(x) - expected)) <= AGREEMENT_TOLERANCE
    assert (served.predict(x).argmax(axis=1) == 5).all()

    # Saving again over the same name replaces both files with the new model.
    again = save_model_atomic(constant_model(6), str(folder), "m.keras")
    assert again.path == saved.path and again.sha256 != saved.sha256 and again.onnx_sha256 != saved.onnx_sha256
    assert sha256_file(saved.onnx_path) == again.onnx_sha256 and names(folder) == ["m.keras", "m.onnx"]
    assert (OnnxModel.from_file("m", again.onnx_path, again.onnx_sha256).predict(x).argmax(axis=1) == 6).all()


def test_trained_model_export_agrees_with_keras(tiny_trained_model, ml_digits):
    import keras

    x = ml_digits[0][:40].astype(np.float32) / 255.0
    reference = keras.models.load_model(tiny_trained_model.path, compile=False)
    served = OnnxModel.from_file("tiny", tiny_trained_model.onnx_path, tiny_trained_model.onnx_sha256)
    probs = served.predict(x)
    assert np.max(np.abs(probs - reference.predict(x, verbose=0))) <= AGREEMENT_TOLERANCE
    assert len(set(probs.argmax(axis=1).tolist())) > 1  # a trained model: answers depend on the input


def test_compiled_model_is_saved_without_optimizer_state(tmp_path):
    import keras

    model = constant_model(2)
    model.compile(optimizer="adam", loss="sparse_categorical_crossentropy")
    saved = save_model_atomic(model, str(tmp_path), "c.keras")
    reloaded = keras.models.load_model(saved.path)
    assert getattr(reloaded, "optimizer", None) is None
    assert getattr(model, "optimizer", None) is not None  # the caller's model is left as it was
    assert all(np.array_equal(a, b) for a, b in zip(reloaded.get_weights(), model.get_weights()))


def test_failed_verification_leaves_the_old_files_and_no_temp(tmp_path, monkeypatch):
    save_model_atomic(constant_model(1), str(tmp_path), "m.keras")
    before = contents(tmp_path)
    verified = []

    def broken(candidate_path):
        verified.append(str(candidate_path))
        raise ValueError("corrupt")

    monkeypatch.setattr(artifacts, "verify_model_file", broken)
    with pytest.raises(ValueError, match="corrupt"):
        save_model_atomic(constant_model(2), str(tmp_path), "m.keras")
    # Verification ran on a temporary file beside the final one, never on the final name.
    assert len(verified) == 1 and verified[0].endswith(".tmp.keras")
    assert contents(tmp_path) == before


def test_an_oserror_while_writing_the_onnx_file_leaves_no_trace(tmp_path, monkeypatch):
    """The disk fills up half-way through the export: the old version's files stay as they were."""
    save_model_atomic(constant_model(1), str(tmp_path), "m.keras")
    before = contents(tmp_path)
    written = []

    def disk_full(path, data):
        with open(path, "xb") as fh:
            fh.write(data[: len(data) // 2])
        written.append(str(path))
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(artifacts, "_write_bytes", disk_full)
    with pytest.raises(OSError, match="No space left"):
        save_model_atomic(constant_model(2), str(tmp_path), "m.keras")
    assert len(written) == 1 and written[0].endswith(".tmp.onnx")
    assert contents(tmp_path) == before  # no temporary file of either kind, nothing replaced
    # A brand-new version fails the same way: neither file appears.
    with pytest.raises(OSError):
        save_model_atomic(constant_model(2), str(tmp_path), "fresh.keras")
    assert contents(tmp_path) == before


def test_an_export_that_disagrees_with_keras_is_refused(tmp_path, monkeypatch):
    """Whatever the converter gets wrong, the probe batch catches it before anything is written."""
    save_model_atomic(constant_model(1), str(tmp_path), "m.keras")
    before = contents(tmp_path)
    convert = artifacts._onnx_graph
    monkeypatch.setattr(artifacts, "_onnx_graph", lambda model: convert(constant_model(7)))  # a wrong graph
    with pytest.raises(ExportMismatch, match="differs from Keras"):
        save_model_atomic(constant_model(2), str(tmp_path), "m.keras")
    assert contents(tmp_path) == before
    with pytest.raises(ExportMismatch):
        export_onnx_atomic(tmp_path / "m.keras")
    assert contents(tmp_path) == before


def test_the_agreement_check_uses_both_sessions(tmp_path):
    """A probe of 16 runs whole (the batched session) and in pieces under BATCHED_FROM (the single one)."""
    saved = save_model_atomic(constant_model(4), str(tmp_path), "m.keras")
    served = OnnxModel.from_file("m", saved.onnx_path, saved.onnx_sha256, threads=2)
    probe = probe_batch()
    expected = served.predict(probe)
    assert served.disagreement(probe, expected) == 0.0
    shifted = expected.copy()
    shifted[-1, 0] += 0.5  # only the last piece differs
    assert served.disagreement(probe, shifted) == pytest.approx(0.5)


def test_an_existing_keras_file_is_exported_beside_itself(tmp_path):
    """Versions saved before exports existed: the .keras file stays, the .onnx appears."""
    saved = save_model_atomic(constant_model(3), str(tmp_path), "old.keras")
    (tmp_path / "old.onnx").unlink()
    keras_bytes = (tmp_path / "old.keras").read_bytes()
    path, digest = export_onnx_atomic(tmp_path / "old.keras")
    assert path == saved.onnx_path and digest == sha256_file(path)
    assert (tmp_path / "old.keras").read_bytes() == keras_bytes and names(tmp_path) == ["old.keras", "old.onnx"]
    assert (OnnxModel.from_file("old", path, digest).predict(np.zeros((2, 28, 28))).argmax(axis=1) == 3).all()


@pytest.mark.parametrize("filename", ["../escape.keras", "sub/m.keras", "m.h5", "m", ""])
def test_bad_filename_is_refused(tmp_path, filename):
    with pytest.raises(ValueError):
        save_model_atomic(constant_model(1), str(tmp_path / "out"), filename)
    assert not (tmp_path / "escape.keras").exists()
    assert not (tmp_path / "out").exists() or list((tmp_path / "out").iterdir()) == []


def test_tf2onnx_is_imported_by_the_saving_module_only():
    """tf2onnx is imported by the saving module only, and only when it saves."""
    import ast
    from pathlib import Path

    app_dir = Path(artifacts.__file__).resolve().parents[1]
    importers = set()
    for source in app_dir.rglob("*.py"):
        for node in ast.walk(ast.parse(source.read_text())):
            modules = ([a.name for a in node.names] if isinstance(node, ast.Import)
                       else [node.module or ""] if isinstance(node, ast.ImportFrom) else [])
            if any(m.split(".")[0] == "tf2onnx" for m in modules):
                importers.add(source.relative_to(app_dir).as_posix())
    assert importers == {"ml/artifacts.py"}
