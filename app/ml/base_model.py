"""Build the shipped model folder: ``python -m app.ml.base_model --data DIR --out models``.

Trains the base network from scratch on MNIST-format training data (``train_base``'s
recipe), measures it on the test files when the folder has them, and writes, each
atomically: ``base.keras``, ``replay.npz`` (a stratified sample of the training digits that
retraining mixes with feedback so that the model does not forget MNIST, plus 1,000
digits the base model never trained on, on which the promotion gate checks forgetting) and
``manifest.json`` (version, files, sha256s, metrics, the calibration temperature fitted on
the hold-out digits) that the service registers on first use;
``base.onnx``, the export serving loads, is written and checked beside ``base.keras``.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path

import numpy as np

from app.ml.artifacts import save_model_atomic
from app.ml.datasets import REPLAY_FILE, load_mnist, stratified_sample
from app.ml.evaluation import report

REPLAY_SIZE = 2000
# Training digits kept out of the base model's training: the promotion gate measures
# forgetting on digits no model has seen, not on ones the base model memorised.
GATE_HOLDOUT_SIZE = 1000


def replay_sample(x, y, n=REPLAY_SIZE, seed=0):
    """``n`` training digits, the same number of each class (as far as the data allows)."""
    rng = np.random.default_rng(seed)
    idx = rng.permutation(stratified_sample(y, n // 10, rng))
    return x[idx], y[idx]


def split_gate_holdout(x, y, n=GATE_HOLDOUT_SIZE, seed=0):
    """(x_train, y_train, x_holdout, y_holdout): ``n`` digits, balanced by class, set aside."""
    held = stratified_sample(y, n // 10, np.random.default_rng(seed + 1))
    keep = np.setdiff1d(np.arange(len(y)), held)
    return x[keep], y[keep], x[held], y[held]


def calibration_split(x, y, seed=0):
    """``split_gate_holdout`` for any amount of data: the digits a new base model is calibrated
    on and never trains on (at most ``GATE_HOLDOUT_SIZE``, a tenth of the data)."""
    return split_gate_holdout(x, y, n=min(GATE_HOLDOUT_SIZE, len(y) // 10), seed=seed)


def write_json_atomic(path, data):
    path = Path(path)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.name + ".", suffix=".tmp")
    with os.fdopen(fd, "w") as fh:
        json.dump(data, fh, indent=2, sort_keys=True)
        fh.write("\n")
        fh.flush()
        os.fsync(fh.fileno())
    os.chmod(tmp, 0o644)  # mkstemp makes it private; artifacts are meant to be read
    os.replace(tmp, path)


def write_replay_atomic(path, x, y, x_holdout=None, y_holdout=None):
    path = Path(path)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.stem + ".", suffix=".tmp.npz")
    os.close(fd)
    arrays = {"x": x.astype(np.uint8), "y": y.astype(np.uint8)}
    if x_holdout is not None:
        arrays.update(x_holdout=x_holdout.astype(np.uint8), y_holdout=y_holdout.astype(np.uint8))
    np.savez_compressed(tmp, **arrays)
    os.chmod(tmp, 0o644)
    os.replace(tmp, path)


def ship(model, out_dir, *, x_train, y_train, x_holdout, y_holdout, metrics, version="base-1", seed=0, epochs=None):
    """Write model, replay sample (with the gate's hold-out digits) and manifest into ``out_dir``."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    saved = save_model_atomic(model, str(out), "base.keras")
    x_replay, y_replay = replay_sample(x_train, y_train, seed=seed)
    write_replay_atomic(out / REPLAY_FILE, x_replay, y_replay, x_holdout, y_holdout)
    manifest = {
        "version": version,
        "file": "base.keras",
        "sha256": saved.sha256,
        "size_bytes": os.path.getsize(saved.path),
        "onnx_file": os.path.basename(saved.onnx_path),
        "onnx_sha256": saved.onnx_sha256,
        "parameters": int(model.count_params()),
        "trained_on": f"{len(y_train)} MNIST training digits (train-10k.npz less the gate hold-out)",
        "epochs": epochs,
        "seed": seed,
        "metrics": metrics,
        "replay": {"file": REPLAY_FILE, "digits": int(len(y_replay)), "gate_holdout_digits": int(len(y_holdout))},
    }
    write_json_atomic(out / "manifest.json", manifest)
    # Fitted on the served export and the gate's hold-out, exactly as `python -m
    # app.ml.calibration` refits it; it adds the temperature to the manifest.
    from app.ml.calibration import calibrate_shipped

    calibrate_shipped(out)
    return json.loads((out / "manifest.json").read_text())


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", required=True, help="MNIST-format folder or .npz (training digits)")
    parser.add_argument("--eval", help="MNIST-format test data (default: --data's t10k files, if any)")
    parser.add_argument("--out", default="models")
    parser.add_argument("--epochs", type=int, default=15)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)

    from app.ml.training import train_base

    x_all, y_all = load_mnist(args.data, split="train" if Path(args.data).is_dir() else None)
    x, y, x_holdout, y_holdout = split_gate_holdout(x_all, y_all, seed=args.seed)
    started = time.perf_counter()
    model = train_base(x, y, epochs=args.epochs, seed=args.seed,
                       progress=lambda f: print(f"  epoch {round(f * args.epochs)}/{args.epochs} "
                                                f"({time.perf_counter() - started:.0f}s)", flush=True))
    seconds = time.perf_counter() - started
    metrics = {"train_seconds": round(seconds, 1)}
    eval_path = args.eval or (args.data if Path(args.data).is_dir() else None)
    if eval_path:
        x_test, y_test = load_mnist(eval_path, split="test" if Path(eval_path).is_dir() else None)
        result = report(lambda b: model(b, training=False).numpy(), x_test, y_test)
        metrics["mnist_test_accuracy"] = result["accuracy"]
        metrics["mnist_test_n"] = result["n"]
        metrics["mnist_test_per_digit"] = result["per_digit"]
    manifest = ship(model, args.out, x_train=x, y_train=y, x_holdout=x_holdout, y_holdout=y_holdout,
                    metrics=metrics, seed=args.seed, epochs=args.epochs)
    print(json.dumps(manifest, indent=2, sort_keys=True))


if __name__ == "__main__":
    main()
