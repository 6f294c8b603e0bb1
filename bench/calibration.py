"""Calibration of v2's ``confidence``, measured over real HTTP, before and after calibration.

    python bench/calibration.py [--feedback 500] [--workers 2] [--n 10000] [--plot models/reliability-base.png]

1. deploys the service (gunicorn, N workers, fresh SQLite, a copy of ``models/``) on loopback;
2. sends three sets through ``POST /api/v2/predict/batch`` (64 images a request; each answer
   is v2's body, the same as ``/api/v2/predict``'s, which is checked on a sample): the MNIST
   test digits as PNG files, the same digits rendered as realistic uploads
   (``bench/uploads.py``), and ``uploads-printed``;
3. measures the shipped model as served (calibrated: its manifest's temperature) and, after
   ``flask model calibrate --clear``, uncalibrated (what v2 served before calibration);
4. feeds the first ``--feedback`` printed uploads back through the API (predict, then
   feedback), retrains, and measures the new version the same two ways (its own temperature,
   fitted by the job, then cleared).

ECE: 15 equal-width bins of the top probability (``app.ml.calibration``). The printed rows
use the uploads that were not fed back (files 00500-02999), for both models; the shipped
model is also reported on all 3,000. The MNIST digits go as 28x28 PNG files, so the
service's preprocessing re-centres them (accuracy a little below the raw arrays'). Targets: ECE <= 2 % on MNIST test and the realistic
uploads, <= 3 % on uploads-printed, for the shipped model and after a retrain; the answers
(hence accuracy) identical with and without calibration. ``--plot`` draws the shipped
model's reliability diagram (before/after) into a PNG; ``--replot JSON --plot PNG`` redraws
it from an earlier run's ``--json`` without measuring again.
"""

import argparse
import csv
import io
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import requests
from PIL import Image

from _paths import ROOT  # noqa: E402  (sets up imports first)

from support import FINISHED, LiveServer, wait_status  # noqa: E402

BATCH = 64
TARGETS = {"mnist": 0.02, "uploads": 0.02, "printed": 0.03, "printed_all": 0.03}
NAMES = {"mnist": "MNIST test (PNG)", "uploads": "realistic uploads", "printed": "uploads-printed held-out",
         "printed_all": "uploads-printed (all)"}


def parse_args():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", default=str(ROOT.parent / "shared" / "data"))
    parser.add_argument("--feedback", type=int, default=500, help="printed uploads fed back before the retrain")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--n", type=int, default=10000, help="MNIST test digits (and realistic uploads of them)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the rendered uploads")
    parser.add_argument("--plot", help="write the shipped model's reliability diagram (PNG) here")
    parser.add_argument("--json", help="also write the results here")
    parser.add_argument("--replot", metavar="JSON", help="only redraw --plot from a --json of an earlier run")
    return parser.parse_args()


def png(digit):
    """An MNIST digit exactly as it is (28x28, white ink on black) in a PNG file."""
    buffer = io.BytesIO()
    Image.fromarray(np.asarray(digit, dtype=np.uint8)).save(buffer, format="PNG")
    return buffer.getvalue()


def load_sets(args):
    from bench.uploads import load_mnist_test, make_uploads_with_kinds

    data = Path(args.data)
    x, y = load_mnist_test(data / "mnist")
    x, y = x[: args.n], y[: args.n].astype(np.int64)
    started = time.perf_counter()
    uploads = [d for _, d in make_uploads_with_kinds(x, args.seed)]
    print(f"rendered {len(uploads)} realistic uploads in {time.perf_counter() - started:.0f} s", flush=True)
    with open(data / "uploads-printed" / "labels.csv") as fh:
        rows = list(csv.DictReader(fh))
    printed = [(data / "uploads-printed" / r["file"]).read_bytes() for r in rows]
    return {
        "mnist": ([png(d) for d in x], y),
        "uploads": (uploads, y),
        "printed_all": (printed, np.array([int(r["label"]) for r in rows])),
    }


def predict_all(server, headers, files):
    """v2 bodies' probabilities (n, 10) and the model version, 64 files a request."""
    probs, versions = [], set()
    for i in range(0, len(files), BATCH):
        chunk = files[i:i + BATCH]
        r = requests.post(server.url + "/api/v2/predict/batch", headers=headers, timeout=300,
                          files=[("files", (f"{i + j}.img", data)) for j, data in enumerate(chunk)])
        r.raise_for_status()
        body = r.json()
        versions.add(body["model_version"])
        for p in body["predictions"]:
            assert p["confidence"] == max(p["probabilities"]) and p["prediction"] == int(np.argmax(p["probabilities"]))
            probs.append(p["probabilities"])
    assert len(versions) == 1, f"answers from several versions: {versions}"
    return np.array(probs, dtype=np.float64), versions.pop()


def single_matches_batch(server, headers, files, probs, n=16):
    """The first ``n`` files one at a time through ``/api/v2/predict``: the same answers."""
    for data, expected in zip(files[:n], probs[:n]):
        r = requests.post(server.url + "/api/v2/predict", headers=headers, timeout=60, files={"file": ("s.img", data)})
        r.raise_for_status()
        if not np.allclose(r.json()["probabilities"], expected, atol=1e-6):
            return False
    return True


def wait_every_worker(server, headers, probe, done, workers, timeout=60):
    """Ask until each worker's latest answer to ``probe`` satisfies ``done(body)``."""
    latest, deadline = {}, time.monotonic() + timeout
    while time.monotonic() < deadline:
        r = requests.post(server.url + "/api/v2/predict", headers={**headers, "Connection": "close"}, timeout=60,
                          files={"file": ("probe.png", probe)})
        r.raise_for_status()
        latest[r.headers["X-Served-By"]] = done(r.json())
        if len(latest) >= workers and all(latest.values()):
            return
        time.sleep(0.05)
    raise RuntimeError(f"workers did not all switch within {timeout} s: {latest}")


def measure(server, headers, sets, version):
    """For each set: probabilities, ECE, accuracy, and the reliability table."""
    from app.ml.calibration import expected_calibration_error, reliability

    out = {}
    for name, (files, y) in sets.items():
        probs, served = predict_all(server, headers, files)
        assert served == version, f"{served} answered, {version} expected"
        out[name] = {"probs": probs, "ece": expected_calibration_error(probs, y),
                     "accuracy": float(np.mean(probs.argmax(1) == y)), "n": int(len(y)),
                     "reliability": reliability(probs, y), "single_ok": single_matches_batch(server, headers, files, probs)}
    return out


def set_temperature(server, headers, probe, workers, version, clear):
    """``flask model calibrate [--clear]`` on ``version``; returns once every worker serves the change."""
    before = requests.post(server.url + "/api/v2/predict", headers=headers, timeout=60,
                           files={"file": ("probe.png", probe)}).json()["confidence"]
    result = server.cli("model", "calibrate", "--version", version, *(["--clear"] if clear else []))
    body = json.loads(result.stdout.strip().splitlines()[-1])
    wait_every_worker(server, headers, probe, lambda b: b["confidence"] != before, workers)
    return body["temperature"]


def phase(server, headers, admin, sets, probe, workers, version):
    """The served version as it is (calibrated), then with its temperature cleared."""
    temperature = requests.get(server.url + "/admin/models", headers=admin, timeout=60).json()
    temperature = next(m["temperature"] for m in temperature["models"] if m["version"] == version)
    calibrated = measure(server, headers, sets, version)
    set_temperature(server, headers, probe, workers, version, clear=True)
    uncalibrated = measure(server, headers, sets, version)
    return {"version": version, "temperature": temperature, "before": uncalibrated, "after": calibrated}


def retrain(server, headers, admin, feed, workers, probe):
    for name, data, label in feed:
        pred = requests.post(server.url + "/api/v2/predict", headers=headers, timeout=60, files={"file": (name, data)})
        pred.raise_for_status()
        requests.post(server.url + "/api/v2/feedback", headers=headers, timeout=60,
                      json={"prediction_id": pred.json()["prediction_id"], "label": label}).raise_for_status()
    accepted = requests.post(server.url + "/admin/retrain", headers=admin, json={}, timeout=60)
    accepted.raise_for_status()
    job_id = accepted.json()["job_id"]
    job = wait_status(server, admin, job_id, FINISHED, timeout=900)
    if job["status"] != "succeeded":
        raise RuntimeError(f"retrain job ended {job['status']}: {job.get('error')} {job.get('metrics', {}).get('gate')}")
    wait_every_worker(server, headers, probe, lambda b: b["model_version"] == job["model_version"], workers)
    return job


def main():
    args = parse_args()
    if args.replot:
        plot(json.loads(Path(args.replot).read_text())["shipped"], args.plot)
        return 0
    sets = load_sets(args)
    printed_files, printed_y = sets["printed_all"]
    rows = list(csv.DictReader(open(Path(args.data) / "uploads-printed" / "labels.csv")))
    feed = [(rows[i]["file"], printed_files[i], int(printed_y[i])) for i in range(args.feedback)]
    held = {**{k: v for k, v in sets.items() if k != "printed_all"},
            "printed": (printed_files[args.feedback:], printed_y[args.feedback:])}
    probe = sets["mnist"][0][0]

    workdir = Path(tempfile.mkdtemp(prefix="calibration-"))
    server = LiveServer(workdir, env={"WEB_CONCURRENCY": str(args.workers), "SERVED_BY_HEADER": "true",
                                      "MODEL_SYNC_SECONDS": "0.5", "RETRAIN_MIN_FEEDBACK": "20"})
    server.cli("db", "upgrade")
    server.start()
    try:
        admin = server.create_admin()
        user = server.register("measurer")
        base_version = requests.get(server.url + "/admin/models", headers=admin, timeout=60).json()["active_version"]
        shipped = phase(server, user, admin, {**held, "printed_all": sets["printed_all"]}, probe, args.workers, base_version)
        set_temperature(server, user, probe, args.workers, base_version, clear=False)  # as shipped again
        started = time.perf_counter()
        job = retrain(server, user, admin, feed, args.workers, probe)
        print(f"retrain: {args.feedback} printed uploads fed back, job {job['job_id']} {job['status']} -> "
              f"{job['model_version']} ({time.perf_counter() - started:.0f} s with feeding)", flush=True)
        retrained = phase(server, user, admin, held, probe, args.workers, job["model_version"])
    finally:
        server.stop()

    results = {"shipped": shipped, "retrained": retrained, "workers": args.workers, "feedback": args.feedback,
               "job_calibration": (job.get("metrics") or {}).get("calibration")}
    ok = print_table(results)
    if args.plot:
        plot(shipped, args.plot)
        print(f"reliability diagram: {args.plot}")
    if args.json:
        Path(args.json).write_text(json.dumps(strip(results), indent=2))
    return 0 if ok else 1


def strip(results):
    """JSON-able results: without the probability arrays."""
    out = {}
    for key, value in results.items():
        if isinstance(value, dict) and "before" in value:
            value = {**value, **{side: {name: {k: v for k, v in m.items() if k != "probs"} for name, m in value[side].items()}
                                 for side in ("before", "after")}}
        out[key] = value
    return out


def print_table(r):
    lines = [("model", "set", "n", "accuracy", "ECE uncalibrated", "ECE calibrated", "target", "answers same", "met")]
    ok = True
    for key in ("shipped", "retrained"):
        p = r[key]
        for name in p["after"]:
            before, after = p["before"][name], p["after"][name]
            same = bool(np.array_equal(before["probs"].argmax(1), after["probs"].argmax(1)))
            met = after["ece"] <= TARGETS[name] and same and before["single_ok"] and after["single_ok"]
            ok &= met
            lines.append((f"{p['version']} (T={p['temperature']})", NAMES[name], after["n"],
                          f"{after['accuracy']:.2%}", f"{before['ece']:.2%}", f"{after['ece']:.2%}",
                          f"<= {TARGETS[name]:.0%}", "yes" if same else "NO", "yes" if met else "NO"))
    width = [max(len(str(row[i])) for row in lines) for i in range(len(lines[0]))]
    print(f"\nECE of v2 `confidence` over HTTP (15 equal-width bins), {r['workers']} gunicorn workers; "
          f"retrained on {r['feedback']} uploads-printed fed back through the API")
    for i, row in enumerate(lines):
        print("  ".join(str(c).ljust(w) for c, w in zip(row, width)))
        if i == 0:
            print("  ".join("-" * w for w in width))
    fit = r["job_calibration"] or {}
    print(f"retrain job's fit: T={fit.get('temperature')} on {fit.get('n')} replay hold-out digits, "
          f"ECE there {fit.get('ece_before', float('nan')):.2%} -> {fit.get('ece_after', float('nan')):.2%}")
    print("all targets met" if ok else "NOT all targets met")
    return ok


def plot(shipped, path):
    """Reliability diagrams of the shipped model, uncalibrated vs calibrated, one column per set;
    below each, how many answers fall in each confidence bin (most sit in the top one)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = ["mnist", "uploads", "printed_all"]
    sides = (("before", "tab:red", "uncalibrated"), ("after", "tab:blue", "calibrated"))
    fig, axes = plt.subplots(2, len(names), figsize=(4.4 * len(names), 6.6), sharex=True,
                             gridspec_kw={"height_ratios": [3, 1]})
    for col, name in enumerate(names):
        top, bottom = axes[0, col], axes[1, col]
        top.plot([0, 1], [0, 1], color="0.6", linestyle="--", linewidth=1, label="perfect calibration")
        edges = np.array(shipped["after"][name]["reliability"]["edges"])
        width = edges[1] - edges[0]
        for offset, (side, colour, label) in zip((-0.22, 0.22), sides):
            m = shipped[side][name]
            table = m["reliability"]
            pts = [(c, a) for c, a, n in zip(table["confidence"], table["accuracy"], table["count"]) if n]
            top.plot(*zip(*pts), marker="o", markersize=4, color=colour, linewidth=1.5,
                     label=f"{label} (ECE {m['ece']:.2%})")
            bottom.bar(edges[:-1] + width * (0.5 + offset), table["count"], width=width * 0.42, color=colour)
        top.set_title(f"{NAMES[name]} (n={shipped['after'][name]['n']:,})", fontsize=10)
        top.set_xlim(0, 1.02)
        top.set_ylim(0, 1.02)
        top.grid(alpha=0.3)
        top.legend(loc="upper left", fontsize=8)
        bottom.set_yscale("log")
        bottom.set_xlabel("confidence (top probability), 15 bins")
        bottom.grid(alpha=0.3)
    axes[0, 0].set_ylabel("accuracy in the bin")
    axes[1, 0].set_ylabel("answers")
    fig.suptitle(f"{shipped['version']}: reliability of v2 `confidence` over HTTP, uncalibrated vs "
                 f"temperature {shipped['temperature']} (bench/calibration.py)", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


if __name__ == "__main__":
    sys.exit(main())
