"""The learning loop, measured end to end on a real multi-worker deployment.

    python bench/feedback_loop.py [--feedback 500] [--workers 2] [--data ../shared/data]

1. deploys the service (gunicorn, N workers, fresh SQLite, a copy of ``models/``) on loopback;
2. feeds the first N images of ``uploads-printed`` through the real API: predict, then feedback;
3. starts a retrain while a client keeps predicting, and records every answer and which
   worker gave it (``X-Served-By``);
4. evaluates the model before and after on the other uploads-printed images and the MNIST
   test set (in-process, through the same preprocessing as the API).

Prints a table with the targets of the learning-loop issue. Absolute times move on a
shared machine; the accuracies and the zero-failure count do not.
"""

import argparse
import csv
import datetime as dt
import json
import os
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
import requests

from _paths import ROOT  # noqa: E402  (sets up imports first)

from support import FINISHED, LiveServer, wait_status  # noqa: E402  (the same deployment helper the e2e tests use)


def parse_args():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", default=str(ROOT.parent / "shared" / "data"))
    parser.add_argument("--feedback", type=int, default=500, help="uploads fed back before retraining")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--clients", type=int, default=2, help="concurrent predicting clients during the retrain")
    parser.add_argument("--json", help="also write the results here")
    return parser.parse_args()


def evaluate(model_path, x, y):
    from app.ml.evaluation import accuracy
    from app.ml.onnx_model import OnnxModel, onnx_path_for

    loaded = OnnxModel.from_file("eval", onnx_path_for(model_path), None)  # the export serving loads
    return accuracy(loaded.predict, x, y)


def main():
    args = parse_args()
    from app.ml.datasets import as_float_images, load_mnist
    from app.ml.preprocessing import preprocess_many

    data = Path(args.data)
    with open(data / "uploads-printed" / "labels.csv") as fh:
        rows = [(data / "uploads-printed" / r["file"], int(r["label"])) for r in csv.DictReader(fh)]
    feed_rows, held_rows = rows[: args.feedback], rows[args.feedback:]
    x_printed = preprocess_many([p.read_bytes() for p, _ in held_rows])
    y_printed = np.array([label for _, label in held_rows])
    x_mnist, y_mnist = load_mnist(data / "mnist", split="test")
    x_mnist = as_float_images(x_mnist)

    workdir = Path(tempfile.mkdtemp(prefix="feedback-loop-"))
    server = LiveServer(workdir, env={
        "WEB_CONCURRENCY": str(args.workers), "SERVED_BY_HEADER": "true", "MODEL_SYNC_SECONDS": "1",
        "RETRAIN_MIN_FEEDBACK": "20",
    })
    server.cli("db", "upgrade")
    server.start()
    try:
        return run(args, server, feed_rows, x_printed, y_printed, x_mnist, y_mnist)
    finally:
        server.stop()


def run(args, server, feed_rows, x_printed, y_printed, x_mnist, y_mnist):
    base_file = server.model_dir / json.loads((server.model_dir / "manifest.json").read_text())["file"]
    before = {"printed": evaluate(base_file, x_printed, y_printed), "mnist": evaluate(base_file, x_mnist, y_mnist)}

    user = server.register("feeder")
    admin = server.create_admin()
    started = time.perf_counter()
    wrong_before = 0
    for path, label in feed_rows:
        pred = requests.post(server.url + "/api/v2/predict", headers=user, timeout=60,
                             files={"file": (path.name, path.read_bytes())})
        pred.raise_for_status()
        wrong_before += pred.json()["prediction"] != label
        fb = requests.post(server.url + "/api/v2/feedback", headers=user, timeout=60,
                           json={"prediction_id": pred.json()["prediction_id"], "label": label})
        fb.raise_for_status()
    feed_seconds = time.perf_counter() - started

    answers = []  # (unix time, status, model version, worker)
    stop = threading.Event()
    sample = feed_rows[0][0].read_bytes()

    def client():
        while not stop.is_set():
            try:
                r = requests.post(server.url + "/api/v2/predict", headers=user, timeout=60, files={"file": ("s.png", sample)})
                version = r.json().get("model_version") if r.ok else None
                answers.append((time.time(), r.status_code, version, r.headers.get("X-Served-By")))
            except requests.RequestException as exc:
                answers.append((time.time(), repr(exc), None, None))

    threads = [threading.Thread(target=client, daemon=True) for _ in range(args.clients)]
    for t in threads:
        t.start()
    time.sleep(1)
    accepted = requests.post(server.url + "/admin/retrain", headers=admin, json={}, timeout=60)
    accepted.raise_for_status()
    job_id = accepted.json()["job_id"]
    job = wait_status(server, admin, job_id, FINISHED, timeout=900)
    time.sleep(4)
    stop.set()
    for t in threads:
        t.join()

    finished = dt.datetime.fromisoformat(job["finished_at"]).replace(tzinfo=dt.timezone.utc).timestamp()
    new_version = job["model_version"]
    swap_delays = {}
    for worker in sorted({a[3] for a in answers if a[3]}):
        first_new = min((a[0] for a in answers if a[3] == worker and a[2] == new_version), default=None)
        swap_delays[worker] = None if first_new is None else round(max(0.0, first_new - finished), 2)
    failures = [a for a in answers if a[1] != 200]

    after = {}
    if job["status"] == "succeeded":
        new_file = server.model_dir / f"{new_version}.keras"
        after = {"printed": evaluate(new_file, x_printed, y_printed), "mnist": evaluate(new_file, x_mnist, y_mnist)}

    results = {
        "feedback_samples": len(feed_rows),
        "base_model_wrong_on_feedback": wrong_before,
        "feed_seconds": round(feed_seconds, 1),
        "job": {k: job[k] for k in ("job_id", "status", "model_version", "duration_seconds", "error")},
        "gate": (job.get("metrics") or {}).get("gate"),
        "before": before, "after": after,
        "predictions_during_retrain": len(answers), "failed_predictions": len(failures),
        "swap_delay_seconds_per_worker": swap_delays,
        "workers": args.workers,
    }
    print_table(results)
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2))
    ok = (job["status"] == "succeeded" and after["printed"] >= 0.98 and before["mnist"] - after["mnist"] <= 0.003
          and job["duration_seconds"] <= 120 and not failures
          and all(d is not None and d <= 2.0 for d in swap_delays.values()))
    return 0 if ok else 1


def print_table(r):
    b, a = r["before"], r["after"] or {"printed": float("nan"), "mnist": float("nan")}
    delays = r["swap_delay_seconds_per_worker"]
    lines = [
        ("metric", "before", "after", "target"),
        ("uploads-printed held-out accuracy", f"{b['printed']:.2%}", f"{a['printed']:.2%}", ">= 98.0 %"),
        ("MNIST test accuracy", f"{b['mnist']:.2%}", f"{a['mnist']:.2%}",
         f"drop <= 0.3 pt (was {100 * (b['mnist'] - a['mnist']):+.2f} pt)"),
        ("retrain wall time (job)", "", f"{r['job']['duration_seconds']} s", "<= 120 s"),
        ("failed predictions while retraining", "", f"{r['failed_predictions']} of {r['predictions_during_retrain']}", "0"),
        ("swap delay per worker after job end", "", ", ".join(f"{v} s" for v in delays.values()), "<= 2 s each"),
    ]
    width = [max(len(str(row[i])) for row in lines) for i in range(4)]
    print(f"\nfeedback loop: {r['feedback_samples']} samples fed through the API ({r['feed_seconds']} s), "
          f"base model wrong on {r['base_model_wrong_on_feedback']}; job {r['job']['job_id']} {r['job']['status']}"
          f" -> {r['job']['model_version']}; {r['workers']} gunicorn workers")
    for i, row in enumerate(lines):
        print("  ".join(str(c).ljust(w) for c, w in zip(row, width)))
        if i == 0:
            print("  ".join("-" * w for w in width))
    if r["gate"]:
        print(f"gate: passed={r['gate']['passed']} {'; '.join(r['gate']['reasons'])}")


if __name__ == "__main__":
    sys.exit(main())
