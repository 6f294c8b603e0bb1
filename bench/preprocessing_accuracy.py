"""How much accuracy survives the trip from a real upload to the network input?

Side by side, in one run and with one model:

* the raw MNIST test set (10,000 digits, the model's home ground);
* the same digits rendered as realistic uploads (bench/uploads.py: paper, tint, JPEG,
  blur, tilt, off-centre, RGBA canvas exports) and sent through `preprocess`;
* the same uploads through a naive pipeline (grayscale, resize to 28x28, invert), to
  show what the preprocessing is worth;
* the printed/handwriting-font uploads in shared/data/uploads-printed (3,000 images);

plus the preprocessing time per image. Targets: uploads within 1.0 point of the raw
test set; uploads-printed >= 90 %.

    python bench/preprocessing_accuracy.py --model models/base.keras [--limit 2000]
"""

from __future__ import annotations

import argparse
import csv
import io
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

import numpy as np  # noqa: E402
from PIL import Image  # noqa: E402

from app.ml.datasets import as_float_images  # noqa: E402
from app.ml.preprocessing import ImageRejected, preprocess  # noqa: E402
from bench.uploads import MNIST_DIR, load_mnist_test, make_uploads_with_kinds  # noqa: E402

PRINTED_DIR = MNIST_DIR.parent / "uploads-printed"


def naive(data: bytes) -> np.ndarray:
    """What a first attempt looks like: grayscale, squash to 28x28, invert."""
    im = Image.open(io.BytesIO(data)).convert("L").resize((28, 28), Image.Resampling.BILINEAR)
    return 1.0 - np.asarray(im, dtype=np.float32) / 255.0


def run_preprocess(items: list[bytes]) -> tuple[np.ndarray, np.ndarray, list[float]]:
    """Preprocess every item; returns inputs, a mask of accepted ones, per-item seconds."""
    x = np.zeros((len(items), 28, 28), dtype=np.float32)
    ok = np.ones(len(items), dtype=bool)
    seconds = []
    for i, data in enumerate(items):
        t0 = time.perf_counter()
        try:
            x[i] = preprocess(data)
        except ImageRejected:
            ok[i] = False
        seconds.append(time.perf_counter() - t0)
    return x, ok, seconds


def load_printed(folder: Path) -> tuple[list[bytes], np.ndarray]:
    """The uploads-printed folder: bytes of every listed image and its label."""
    with open(folder / "labels.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    return [(folder / r["file"]).read_bytes() for r in rows], np.array([int(r["label"]) for r in rows])


def make_predictor(model_path: str):
    """Batch predictor around the Keras model (labels out)."""
    import keras

    model = keras.saving.load_model(model_path, compile=False)

    def predict(x: np.ndarray) -> np.ndarray:
        if len(x) == 0:
            return np.zeros(0, dtype=np.int64)
        out = [np.asarray(model(x[i : i + 500], training=False)) for i in range(0, len(x), 500)]
        return np.concatenate(out).argmax(axis=1)

    return predict


def main(argv: list[str] | None = None) -> int:
    """Print the accuracy table for one model."""
    parser = argparse.ArgumentParser(description="Accuracy of the model behind each input pipeline.")
    parser.add_argument("--model", default=str(REPO / "models" / "base.keras"))
    parser.add_argument("--mnist", default=str(MNIST_DIR))
    parser.add_argument("--printed", default=str(PRINTED_DIR))
    parser.add_argument("--limit", type=int, default=None, help="first N test digits only (faster)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the rendered uploads")
    parser.add_argument("--save-failures", type=Path, default=None, help="write PNGs of misclassified inputs here")
    args = parser.parse_args(argv)

    if not Path(args.model).exists():
        parser.error(f"no model at {args.model} (train one or pass --model)")
    predict = make_predictor(args.model)

    x_test, y_test = load_mnist_test(args.mnist)
    if args.limit:
        x_test, y_test = x_test[: args.limit], y_test[: args.limit]
    n = len(y_test)

    t0 = time.perf_counter()
    rendered = make_uploads_with_kinds(x_test, args.seed)
    render_s = time.perf_counter() - t0
    kinds = np.array([k for k, _ in rendered])
    uploads = [d for _, d in rendered]

    rows = []  # (name, n, accuracy %, rejected, ms mean, ms p95)

    pred = predict(as_float_images(x_test))
    raw_acc = 100.0 * float((pred == y_test).mean())
    rows.append(("MNIST test, raw", n, raw_acc, 0, None, None))

    x_up, ok_up, sec_up = run_preprocess(uploads)
    pred_up = predict(x_up)
    correct_up = (pred_up == y_test) & ok_up
    up_acc = 100.0 * float(correct_up.mean())
    ms = 1000.0 * np.array(sec_up)
    rows.append(("MNIST test as uploads, preprocess", n, up_acc, int((~ok_up).sum()), ms.mean(), np.percentile(ms, 95)))

    x_nv = np.stack([naive(d) for d in uploads])
    nv_acc = 100.0 * float((predict(x_nv) == y_test).mean())
    rows.append(("MNIST test as uploads, naive resize", n, nv_acc, 0, None, None))

    printed_dir = Path(args.printed)
    pr_acc = None
    if (printed_dir / "labels.csv").exists():
        items, y_pr = load_printed(printed_dir)
        x_pr, ok_pr, sec_pr = run_preprocess(items)
        pred_pr = predict(x_pr)
        correct_pr = (pred_pr == y_pr) & ok_pr
        pr_acc = 100.0 * float(correct_pr.mean())
        ms_pr = 1000.0 * np.array(sec_pr)
        rows.append(("uploads-printed, preprocess", len(y_pr), pr_acc, int((~ok_pr).sum()), ms_pr.mean(), np.percentile(ms_pr, 95)))
        x_prn = np.stack([naive(d) for d in items])
        rows.append(("uploads-printed, naive resize", len(y_pr), 100.0 * float((predict(x_prn) == y_pr).mean()), 0, None, None))
    else:
        print(f"(no {printed_dir}/labels.csv: uploads-printed skipped)")

    print(f"model: {args.model}   uploads rendered with seed {args.seed} ({render_s:.0f} s)")
    print()
    print(f"{'input':<38} {'n':>6} {'accuracy':>9} {'rejected':>9} {'ms/img':>7} {'p95 ms':>7}")
    print("-" * 80)
    for name, count, acc, rej, mean_ms, p95 in rows:
        timing = f"{mean_ms:7.2f} {p95:7.2f}" if mean_ms is not None else f"{'':>7} {'':>7}"
        print(f"{name:<38} {count:>6} {acc:8.2f}% {rej:>9} {timing}")
    print("-" * 80)
    gap = raw_acc - up_acc
    print(f"gap raw - uploads: {gap:.2f} points (target <= 1.00: {'met' if gap <= 1.0 else 'NOT met'})")
    if pr_acc is not None:
        print(f"uploads-printed: {pr_acc:.2f}% (target >= 90.00: {'met' if pr_acc >= 90.0 else 'NOT met'})")
    print()
    print("uploads by kind (preprocess vs raw on the same digits):")
    for kind in sorted(set(kinds)):
        sel = kinds == kind
        raw_k = 100.0 * float((pred[sel] == y_test[sel]).mean())
        print(f"  {kind:<8} n={int(sel.sum()):>5}  preprocess {100.0 * float(correct_up[sel].mean()):6.2f}%  raw {raw_k:6.2f}%  rejected {int((~ok_up[sel]).sum())}")

    if args.save_failures:
        _save_failures(args.save_failures, x_test, y_test, x_up, pred_up, pred, ok_up, kinds)
    return 0


def _save_failures(out: Path, x_raw, y, x_up, pred_up, pred_raw, ok, kinds) -> None:
    """PNGs (raw | preprocessed) of uploads that the model got right raw but wrong after."""
    out.mkdir(parents=True, exist_ok=True)
    bad = np.flatnonzero((pred_raw == y) & ((pred_up != y) | ~ok))
    for i in bad[:200]:
        pair = np.concatenate([x_raw[i].astype(np.float32) / 255.0, np.ones((28, 2), np.float32), x_up[i]], axis=1)
        Image.fromarray((pair * 255).astype(np.uint8)).resize((58 * 4, 28 * 4), Image.Resampling.NEAREST).save(
            out / f"{i:05d}_y{y[i]}_p{pred_up[i]}_{kinds[i]}{'' if ok[i] else '_rejected'}.png"
        )
    print(f"saved {min(len(bad), 200)} of {len(bad)} regressions to {out}")


if __name__ == "__main__":
    raise SystemExit(main())
