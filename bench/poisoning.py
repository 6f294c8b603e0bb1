"""Poisoned feedback against the real service: does one account (or three) teach it a wrong digit?

    python bench/poisoning.py [--attacked 7 --as 1 --poison 300] [--workers 2] [--scenarios control,one,three,mixed]

For each scenario a fresh deployment (gunicorn, N workers, fresh SQLite, a copy of the
shipped ``models/``) on loopback gets, through the real API:

* honest feedback: the first ``--honest`` images of ``uploads-printed`` shared by
  ``--honest-users`` accounts, each predicted, then labelled with its true digit;
* the attack, as labelled uploads (``POST /api/v2/feedback`` with a file and a label):
  ``one``: one account sends ``--poison`` printed images of the attacked digit labelled as
  the other digit; ``three``: the same spread over three accounts; ``mixed``: one account
  whose labels are half poison, half correct labels of other digits; ``control``: none.
  Attack images are the attacked digit's printed images from a pool the evaluation never
  sees (``uploads-printed`` rows after the honest ones, up to ``--eval-from``), each sent
  several times re-rendered (rotated, rescaled, re-encoded), as an attacker short of
  distinct images would.

Then an admin retrains and the bench evaluates the live model before and after on the
held-out printed digits (rows from ``--eval-from`` on) and on the MNIST test set, in
process, through the serving ONNX file and the API's preprocessing. One table: the
attacked digit's accuracy before/after on both sets, overall accuracy before/after, the
job's outcome and time, and which accounts were quarantined or capped; with the targets
of issue 9 checked. Absolute times move on a shared machine; accuracies do not.
"""

import argparse
import csv
import io
import json
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import requests
from PIL import Image

from _paths import ROOT  # noqa: E402  (sets up imports first)

from support import FINISHED, LiveServer, wait_status  # noqa: E402

SCENARIOS = ("control", "one", "three", "mixed")


def parse_args():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", default=str(ROOT.parent / "shared" / "data"))
    parser.add_argument("--scenarios", default=",".join(SCENARIOS))
    parser.add_argument("--attacked", type=int, default=7, help="the digit the attacker mislabels")
    parser.add_argument("--as", dest="target", type=int, default=1, help="the label the attacker gives it")
    parser.add_argument("--poison", type=int, default=300, help="poisoned labels in each attack")
    parser.add_argument("--honest", type=int, default=500, help="honest labels (first rows of uploads-printed)")
    parser.add_argument("--honest-users", type=int, default=5)
    parser.add_argument("--eval-from", type=int, default=1000, help="uploads-printed rows from here on are held out")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--clients", type=int, default=4, help="concurrent clients sending feedback")
    parser.add_argument("--server-env", action="append", default=[], metavar="KEY=VALUE",
                        help="extra server setting, e.g. TRUST_MIN_RATE=2 to switch quarantine off (ablation)")
    parser.add_argument("--json", help="also write the results here")
    return parser.parse_args()


# --------------------------------------------------------------------------- data


def read_printed(data):
    folder = Path(data) / "uploads-printed"
    with open(folder / "labels.csv") as fh:
        return [(folder / r["file"], int(r["label"])) for r in csv.DictReader(fh)]


def rerender(raw, rng):
    """The same printed digit as a new file: a small rotation and rescale, PNG or JPEG."""
    image = Image.open(io.BytesIO(raw)).convert("RGB")
    paper = image.getpixel((0, 0))
    image = image.rotate(float(rng.uniform(-6, 6)), resample=Image.BILINEAR, fillcolor=paper)
    scale = float(rng.uniform(0.85, 1.2))
    image = image.resize((max(8, int(image.width * scale)), max(8, int(image.height * scale))), Image.BILINEAR)
    out = io.BytesIO()
    if rng.random() < 0.5:
        image.save(out, format="JPEG", quality=int(rng.integers(75, 96)))
    else:
        image.save(out, format="PNG")
    return out.getvalue()


def attack_plan(scenario, args, pool_rows, rng):
    """[(account index, image bytes, label)] the attackers send."""
    if scenario == "control":
        return []
    sources = [p.read_bytes() for p, label in pool_rows if label == args.attacked]
    poison = [(rerender(sources[i % len(sources)], rng), args.target) for i in range(args.poison)]
    if scenario == "one":
        return [(0, raw, label) for raw, label in poison]
    if scenario == "three":
        return [(i % 3, raw, label) for i, (raw, label) in enumerate(poison)]
    if scenario == "mixed":  # half poison, half correct labels of other digits
        half = poison[: args.poison // 2]
        others = [(p, label) for p, label in pool_rows if label not in (args.attacked, args.target)]
        correct = [(rerender(others[i % len(others)][0].read_bytes(), rng), others[i % len(others)][1])
                   for i in range(args.poison - len(half))]
        mixed = half + correct
        order = rng.permutation(len(mixed))
        return [(0, mixed[i][0], mixed[i][1]) for i in order]
    raise ValueError(scenario)


# --------------------------------------------------------------------------- evaluation


def evaluate(model_file, sets, attacked):
    from app.ml.evaluation import predictions
    from app.ml.onnx_model import OnnxModel, onnx_path_for

    model = OnnxModel.from_file("eval", onnx_path_for(model_file), None)  # the export serving loads
    out = {}
    for name, (x, y) in sets.items():
        guess = predictions(model.predict, x)
        out[name] = {"overall": float(np.mean(guess == y)), "attacked": float(np.mean(guess[y == attacked] == attacked))}
    return out


# --------------------------------------------------------------------------- one scenario


def post(server, path, headers, **kwargs):
    for attempt in range(3):
        try:
            response = requests.post(server.url + path, headers=headers, timeout=60, **kwargs)
            response.raise_for_status()
            return response
        except requests.ConnectionError:
            if attempt == 2:
                raise
            time.sleep(1)


def run_scenario(scenario, args, honest_rows, pool_rows, sets):
    rng = np.random.default_rng(SCENARIOS.index(scenario))
    workdir = Path(tempfile.mkdtemp(prefix=f"poisoning-{scenario}-"))
    extra = dict(item.split("=", 1) for item in args.server_env)
    server = LiveServer(workdir, env={"WEB_CONCURRENCY": str(args.workers), "MODEL_SYNC_SECONDS": "1",
                                      "RETRAIN_MIN_FEEDBACK": "20", "GUNICORN_THREADS": "4", **extra})
    server.cli("db", "upgrade")
    server.start()
    try:
        manifest = json.loads((server.model_dir / "manifest.json").read_text())
        before = evaluate(server.model_dir / manifest["file"], sets, args.attacked)
        honest = [server.register(f"honest{i}") for i in range(args.honest_users)]
        attackers = [server.register(f"mallory{i}") for i in range(3 if scenario == "three" else 1)]
        admin = server.create_admin()

        def honest_label(item):
            i, (path, label) = item
            # Consecutive blocks: rows cycle through the digits, so every account labels all ten.
            user = honest[i * len(honest) // len(honest_rows)]
            pred = post(server, "/api/v2/predict", user, files={"file": (path.name, path.read_bytes())})
            post(server, "/api/v2/feedback", user, json={"prediction_id": pred.json()["prediction_id"], "label": label})

        def attack_label(item):
            account, raw, label = item
            post(server, "/api/v2/feedback", attackers[account],
                 files={"file": ("upload.png", raw)}, data={"label": str(label)})

        plan = attack_plan(scenario, args, pool_rows, rng)
        started = time.perf_counter()
        with ThreadPoolExecutor(args.clients) as pool:
            list(pool.map(honest_label, enumerate(honest_rows)))
            list(pool.map(attack_label, plan))
        feed_seconds = time.perf_counter() - started

        job_id = post(server, "/admin/retrain", admin, json={}).json()["job_id"]
        job = wait_status(server, admin, job_id, FINISHED, timeout=900)
        live = manifest["file"]
        if job["status"] == "succeeded":
            live = f"{job['model_version']}.keras"
        after = evaluate(server.model_dir / live, sets, args.attacked)
        metrics = job.get("metrics") or {}
        accounts = metrics.get("accounts") or []
        return {
            "scenario": scenario, "feed_seconds": round(feed_seconds, 1), "attack_labels": len(plan),
            "job": {k: job.get(k) for k in ("job_id", "status", "model_version", "duration_seconds", "error")},
            "gate": metrics.get("gate"),
            "quarantined": sorted(a["username"] for a in accounts if a.get("quarantined")),
            "capped": {a["username"]: a["capped"] for a in accounts if a.get("capped")},
            "accounts": accounts,
            "before": before, "after": after,
        }
    finally:
        server.stop()


# --------------------------------------------------------------------------- report


def points(after, before):
    return 100.0 * (after - before)


def check(results):
    """Each scenario's targets from issue 9: {scenario: [(target, ok)]}."""
    control = next((r for r in results if r["scenario"] == "control"), None)
    control_gain = points(control["after"]["printed"]["overall"], control["before"]["printed"]["overall"]) if control else None
    verdicts = {}
    for r in results:
        b, a = r["before"], r["after"]
        if r["scenario"] == "control":
            honest_quarantined = [u for u in r["quarantined"] if u.startswith("honest")]
            verdicts["control"] = [
                ("no honest account quarantined", not honest_quarantined),
                ("printed held-out >= 99 %", a["printed"]["overall"] >= 0.99),
                ("MNIST drop <= 0.3 pt", points(b["mnist"]["overall"], a["mnist"]["overall"]) <= 0.3 + 1e-9),
                ("job <= 120 s", (r["job"]["duration_seconds"] or 1e9) <= 120),
            ]
            continue
        gain = points(a["printed"]["overall"], b["printed"]["overall"])
        kept = None if not control_gain else gain / control_gain
        verdicts[r["scenario"]] = [
            ("attacked digit printed drop <= 2 pt", points(b["printed"]["attacked"], a["printed"]["attacked"]) <= 2 + 1e-9),
            ("attacked digit MNIST drop <= 2 pt", points(b["mnist"]["attacked"], a["mnist"]["attacked"]) <= 2 + 1e-9),
            ("honest gain kept >= 80 % of control's", kept is not None and kept >= 0.8),
        ]
        r["gain_kept_of_control"] = None if kept is None else round(kept, 3)
    return verdicts


def print_table(results, verdicts, args):
    header = ("scenario", "attacked printed", "attacked MNIST", "printed overall", "MNIST overall",
              "gain kept", "job", "quarantined", "capped")
    rows = [header]
    for r in results:
        b, a = r["before"], r["after"]
        pair = lambda s, k: f"{b[s][k]:.2%} -> {a[s][k]:.2%}"  # noqa: E731
        kept = r.get("gain_kept_of_control")
        rows.append((
            r["scenario"], pair("printed", "attacked"), pair("mnist", "attacked"), pair("printed", "overall"),
            pair("mnist", "overall"), "-" if kept is None else f"{kept:.0%}",
            f"{r['job']['status']} {r['job']['duration_seconds']} s",
            ", ".join(r["quarantined"]) or "-",
            ", ".join(f"{u} ({n})" for u, n in r["capped"].items()) or "-",
        ))
    width = [max(len(str(row[i])) for row in rows) for i in range(len(header))]
    print(f"\npoisoning: digit {args.attacked} labelled {args.target}, {args.poison} poisoned labels per attack; "
          f"{args.honest} honest labels from {args.honest_users} accounts; {args.workers} gunicorn workers"
          + (f"; server settings {' '.join(args.server_env)}" if args.server_env else ""))
    for i, row in enumerate(rows):
        print(" | ".join(str(c).ljust(w) for c, w in zip(row, width)))
        if i == 0:
            print("-|-".join("-" * w for w in width))
    for r in results:
        gate = r["gate"] or {}
        failed = [d for d in gate.get("per_digit") or [] if not d["passed"]]
        print(f"{r['scenario']}: gate passed={gate.get('passed')}; "
              + ("digits refused: " + ", ".join(f"{d['digit']} ({d['drop_points']:+.2f} pt)" for d in failed) + "; "
                 if failed else "")
              + "; ".join(gate.get("reasons") or []))
    print("\ntargets:")
    for scenario, items in verdicts.items():
        print(f"  {scenario}: " + "; ".join(f"{name}: {'ok' if ok else 'MISSED'}" for name, ok in items))


def main():
    args = parse_args()
    from app.ml.datasets import as_float_images, load_mnist
    from app.ml.preprocessing import preprocess_many

    rows = read_printed(args.data)
    honest_rows = rows[: args.honest]
    pool_rows = rows[args.honest: args.eval_from]
    held = rows[args.eval_from:]
    x_printed = preprocess_many([p.read_bytes() for p, _ in held])
    y_printed = np.array([label for _, label in held])
    x_mnist, y_mnist = load_mnist(Path(args.data) / "mnist", split="test")
    sets = {"printed": (x_printed, y_printed), "mnist": (as_float_images(x_mnist), np.asarray(y_mnist))}

    results = []
    for scenario in args.scenarios.split(","):
        print(f"scenario {scenario} ...", flush=True)
        results.append(run_scenario(scenario, args, honest_rows, pool_rows, sets))
    verdicts = check(results)
    print_table(results, verdicts, args)
    if args.json:
        Path(args.json).write_text(json.dumps({"results": results, "targets": verdicts}, indent=2, default=str))
    return 0 if all(ok for items in verdicts.values() for _, ok in items) else 1


if __name__ == "__main__":
    sys.exit(main())
