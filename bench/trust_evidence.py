"""The evidence behind the trust rules' defaults, measured on the shipped model.

    python bench/trust_evidence.py [--rows 1500] [--model models/base.keras]

On the first ``--rows`` images of ``uploads-printed`` (the kind of images honest users
label), prints side by side:

* the live model's top probability when it is right and when it is wrong (where
  ``TRUST_MODEL_CONFIDENCE`` separates "the model is sure" from "it may be wrong");
* in the penultimate-layer embedding, the cosine similarity of each image's nearest
  neighbour of the same digit and of another digit (where ``TRUST_NEIGHBOUR_SIMILARITY``
  separates a neighbour worth a vote from an unrelated image);
* what one trust assessment of those labels costs (the model pass, then the scoring).
"""

import argparse
import csv
import sys
import time
from pathlib import Path

import numpy as np

from _paths import ROOT  # noqa: E402  (sets up imports first)


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", default=str(ROOT.parent / "shared" / "data"))
    parser.add_argument("--rows", type=int, default=1500)
    parser.add_argument("--model", default=str(ROOT / "models" / "base.keras"))
    args = parser.parse_args()

    import keras

    from app.ml.network import probabilities_and_embeddings
    from app.ml.preprocessing import preprocess_many
    from app.ml.trust import assess

    folder = Path(args.data) / "uploads-printed"
    with open(folder / "labels.csv") as fh:
        rows = [(folder / r["file"], int(r["label"])) for r in csv.DictReader(fh)][: args.rows]
    x = preprocess_many([p.read_bytes() for p, _ in rows])
    y = np.array([label for _, label in rows])
    model = keras.models.load_model(args.model, compile=False)
    started = time.perf_counter()
    probs, emb = probabilities_and_embeddings(model, x)
    embedded = time.perf_counter()
    accounts = np.arange(len(y)) * 10 // len(y)  # ten accounts, consecutive blocks
    assess(y, accounts, probs, emb, np.zeros(len(y), bool))
    assessed = time.perf_counter()
    right = probs.argmax(1) == y
    conf = probs.max(1)

    e = emb / np.linalg.norm(emb, axis=1, keepdims=True)
    sims = e @ e.T
    np.fill_diagonal(sims, -2.0)
    same = np.where(y[:, None] == y[None, :], sims, -2.0).max(1)
    other = np.where(y[:, None] != y[None, :], sims, -2.0).max(1)

    quantiles = (0.01, 0.05, 0.10, 0.50, 0.90, 0.95, 0.99)
    print(f"{len(y)} uploads-printed images, model {args.model}: {right.mean():.2%} right, {np.sum(~right)} wrong")
    print("quantile                          " + "  ".join(f"{q:>5.0%}" for q in quantiles) + "    max")
    for name, values in (("top probability, right", conf[right]), ("top probability, wrong", conf[~right]),
                         ("nearest same-digit cosine", same), ("nearest other-digit cosine", other)):
        cells = "  ".join(f"{v:5.3f}" for v in np.quantile(values, quantiles)) if len(values) else "(none)"
        print(f"{name:<33} {cells}  {values.max() if len(values) else float('nan'):5.3f}")
    for threshold in (0.70, 0.75, 0.80):
        print(f"top probability >= {threshold:.2f}: {np.mean(conf[right] >= threshold):.1%} of right answers, "
              f"{np.sum(conf[~right] >= threshold)} of {np.sum(~right)} wrong ones")
    for threshold in (0.93, 0.95, 0.97):
        print(f"cosine >= {threshold:.2f}: nearest same-digit neighbour {np.mean(same >= threshold):.1%}, "
              f"nearest other-digit neighbour {np.mean(other >= threshold):.1%}")
    print(f"cost of one assessment of {len(y)} labels from 10 accounts: model pass {embedded - started:.2f} s, "
          f"scoring {assessed - embedded:.2f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
