"""The retraining recipe, measured in-process: before and after, side by side.

    python bench/finetune_recipe.py [--data ../shared/data] [--model models/base.keras]
                                    [--feedback 500] [--variants service,direct,naive]

Feedback = the first ``--feedback`` images of ``uploads-printed`` (in ``labels.csv`` order),
run through ``app.ml.preprocessing.preprocess`` exactly as the API does. Evaluated on the
other uploads-printed images (held out, never fed back) and the official MNIST test set.

Variants (each starts from the same live model file, which is never modified):
- ``service``: ``app.ml.jobs.run_retrain`` as a retrain job runs it (80 % of the feedback
  trains, 20 % is the gate's feedback hold-out, replay hold-out from ``replay.npz``,
  ``RETRAIN_EPOCHS`` = 6, gate limit 0.5 points); time = the whole job (fine-tune + both
  models evaluated on the hold-outs + gate).
- ``direct``: ``training.fine_tune`` on all the feedback with the default recipe.
- ``naive``: the same feedback alone, no replay, BatchNorm trainable, base-model LR 3e-3:
  what the recipe protects against.

Targets (learning-loop issue): printed held-out >= 98.0 %, MNIST test drop <= 0.3 points,
retrain <= 120 s wall on 2 cores. Absolute times move on a shared machine.
"""

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

TARGET_PRINTED = 0.98
TARGET_MAX_DROP_POINTS = 0.3
TARGET_SECONDS = 120.0


def load_printed(folder, cache):
    """Preprocessed uploads-printed (x float32 (n,28,28), y), cached as .npz by file mtime."""
    from app.ml.datasets import read_image_folder
    from app.ml.preprocessing import preprocess

    names, blobs, labels = read_image_folder(folder)
    if cache and Path(cache).exists() and os.path.getmtime(cache) > os.path.getmtime(
            ROOT / "app" / "ml" / "preprocessing.py"):
        with np.load(cache) as data:
            if len(data["y"]) == len(labels):
                return data["x"], data["y"]
    started = time.perf_counter()
    x = np.stack([preprocess(b) for b in blobs])
    print(f"preprocessed {len(x)} uploads in {time.perf_counter() - started:.1f} s", flush=True)
    if cache:
        np.savez_compressed(cache, x=x, y=labels)
    return x, labels


def accuracy_of(model, x, y):
    from app.ml.evaluation import accuracy

    return accuracy(lambda b: np.asarray(model(b, training=False)), x, y)


def naive_fine_tune(model_path, x, y, epochs, seed):
    """Feedback only, BatchNorm trainable, the base model's peak LR: the forgetting case."""
    import keras

    from app.ml import training

    keras.utils.set_random_seed(seed)
    model = keras.models.load_model(model_path, compile=False)
    x, y = training._check_xy(x, y)
    return training._fit(model, x, y, epochs=epochs, batch_size=64, seed=seed,
                         aug=training.BASE_AUGMENT.scaled(training.FT_AUGMENT_SCALE),
                         peak_lr=3e-3, warmup_frac=0.1,
                         label_smoothing=0.1, weight_decay=1e-4, progress=None, verbose=0)


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", default=str(ROOT.parent / "shared" / "data"))
    parser.add_argument("--model", default=str(ROOT / "models" / "base.keras"))
    parser.add_argument("--replay", default=str(ROOT / "models" / "replay.npz"))
    parser.add_argument("--feedback", type=int, default=500)
    parser.add_argument("--epochs", type=int, default=6)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--variants", default="service,direct")
    parser.add_argument("--cache", default=os.path.join(tempfile.gettempdir(), "uploads-printed-pre.npz"))
    args = parser.parse_args()

    import keras

    from app.ml.datasets import as_float_images, load_mnist
    from app.ml.jobs import run_retrain
    from app.ml.training import configure_tensorflow, fine_tune

    configure_tensorflow()
    data = Path(args.data)
    x_printed, y_printed = load_printed(data / "uploads-printed", args.cache)
    n = args.feedback
    x_fb, y_fb = x_printed[:n], y_printed[:n]
    x_ho, y_ho = x_printed[n:], y_printed[n:]
    x_test, y_test = load_mnist(data / "mnist", split="test")
    x_test = as_float_images(x_test)
    with np.load(args.replay) as replay:
        x_rp, y_rp = replay["x"], replay["y"]
        holdout = (replay["x_holdout"], replay["y_holdout"]) if "x_holdout" in replay.files else None

    live = keras.models.load_model(args.model, compile=False)
    before = (accuracy_of(live, x_ho, y_ho), accuracy_of(live, x_test, y_test))
    rows = [("live model (before)", before, None, "")]

    for variant in [v.strip() for v in args.variants.split(",") if v.strip()]:
        started = time.perf_counter()
        note = ""
        if variant == "service":
            result = run_retrain(args.model, x_fb, y_fb, x_rp, y_rp, epochs=args.epochs,
                                 max_regression_points=0.5, seed=args.seed, replay_holdout=holdout)
            model = result.candidate
            note = f"gate {'passed' if result.decision.passed else 'REJECTED'}; " \
                   f"train {result.metrics['train_seconds']:.0f} s"
        elif variant == "direct":
            model = fine_tune(args.model, x_fb, y_fb, x_rp, y_rp, epochs=args.epochs, seed=args.seed)
        elif variant == "naive":
            model = naive_fine_tune(args.model, x_fb, y_fb, args.epochs, args.seed)
        else:
            raise SystemExit(f"unknown variant {variant!r}")
        seconds = time.perf_counter() - started
        rows.append((variant, (accuracy_of(model, x_ho, y_ho), accuracy_of(model, x_test, y_test)),
                     seconds, note))
        print(f"  {variant}: done in {seconds:.1f} s", flush=True)

    print(f"\nfeedback: first {n} of uploads-printed; held out: {len(y_ho)} printed, "
          f"{len(y_test)} MNIST test; epochs {args.epochs}, seed {args.seed}, "
          f"{os.cpu_count()} cores")
    print(f"{'model':<22}{'printed %':>10}{'MNIST %':>9}{'MNIST Δ pt':>11}{'wall s':>8}  targets / notes")
    failed = False
    for name, (printed, mnist), seconds, note in rows:
        drop = 100 * (before[1] - mnist)
        delta = round(100 * mnist - 100 * before[1], 2) + 0.0  # no "-0.00"
        wall = f"{seconds:8.1f}" if seconds is not None else f"{'':>8}"
        verdict = ""
        if seconds is not None and name != "naive":
            ok = printed >= TARGET_PRINTED and drop <= TARGET_MAX_DROP_POINTS and seconds <= TARGET_SECONDS
            failed |= not ok
            verdict = "meets targets" if ok else "MISSES targets"
        print(f"{name:<22}{100 * printed:>10.2f}{100 * mnist:>9.2f}{delta:>+11.2f}{wall}  "
              f"{'; '.join(s for s in (verdict, note) if s)}")
    print(f"targets: printed >= {100 * TARGET_PRINTED:.1f} %, MNIST drop <= {TARGET_MAX_DROP_POINTS} pt, "
          f"<= {TARGET_SECONDS:.0f} s")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
