"""HTTP performance on one server, measured side by side in one run.

    python bench/http_bench.py [--seconds 20] [--users 2] [--batches 30]

1. Latency: locust (headless) drives ``POST /api/v2/predict`` and ``GET /health`` at the
   same time against one gunicorn worker; we compare their medians (target: predict median
   at most 3x the /health median: the model adds little to the cost of a request).
2. Throughput: 64-image batches through ``POST /api/v2/predict/batch`` against the same
   batches through the in-process registry (the raw model call), interleaved so that both
   see the same machine load (target: the endpoint keeps at least 25 % of raw throughput).
"""

import argparse
import csv
import io
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import requests

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from support import BIN, FIXTURES, LiveServer  # noqa: E402


def parse_args():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=int, default=20, help="locust run time")
    parser.add_argument("--users", type=int, default=2, help="locust users per endpoint")
    parser.add_argument("--batches", type=int, default=30, help="64-image batches for the throughput test")
    return parser.parse_args()


def latency(server, args, token, image_path, workdir):
    prefix = workdir / "locust"
    env = {**os.environ, "BENCH_TOKEN": token, "BENCH_IMAGE": str(image_path)}
    subprocess.run(
        [str(BIN / "locust"), "-f", str(ROOT / "bench" / "locustfile.py"), "--headless", "--only-summary",
         "-u", str(2 * args.users), "-r", str(2 * args.users), "-t", f"{args.seconds}s",
         "--host", server.url, "--csv", str(prefix), "--loglevel", "WARNING"],
        env=env, check=True, stdout=subprocess.DEVNULL,
    )
    with open(f"{prefix}_stats.csv") as fh:
        stats = {row["Name"]: row for row in csv.DictReader(fh)}
    return {name: {"median_ms": float(stats[name]["Median Response Time"]),
                   "p95_ms": float(stats[name]["95%"]),
                   "requests": int(stats[name]["Request Count"]),
                   "failures": int(stats[name]["Failure Count"])}
            for name in ("v2 predict", "health")}


def throughput(server, args, headers, uploads):
    import numpy as np

    from app.ml.preprocessing import preprocess_many
    from app.ml.registry import ModelRegistry

    manifest = __import__("json").loads((server.model_dir / "manifest.json").read_text())
    registry = ModelRegistry()
    registry.load(manifest["version"], str(server.model_dir / manifest["file"]))
    batch = preprocess_many(uploads)
    registry.predict(batch)  # warm
    http_times, raw_times = [], []
    files = [("files", (f"{i}.png", data, "image/png")) for i, data in enumerate(uploads)]
    for _ in range(args.batches):
        started = time.perf_counter()
        response = requests.post(server.url + "/api/v2/predict/batch", headers=headers, files=files, timeout=60)
        response.raise_for_status()
        http_times.append(time.perf_counter() - started)
        started = time.perf_counter()
        registry.predict(np.asarray(batch))
        raw_times.append(time.perf_counter() - started)
    n = len(uploads)
    return {"http_images_per_s": n / statistics.median(http_times), "raw_images_per_s": n / statistics.median(raw_times)}


def main():
    args = parse_args()
    workdir = Path(tempfile.mkdtemp(prefix="http-bench-"))
    server = LiveServer(workdir, env={"WEB_CONCURRENCY": "1", "GUNICORN_THREADS": "4"})
    server.cli("db", "upgrade")
    server.start()
    try:
        headers = server.register("bench")
        token = headers["Authorization"].split()[1]
        digits = sorted((FIXTURES / "mnist50").glob("*.png"))
        uploads = [p.read_bytes() for p in (digits * 2)[:64]]
        lat = latency(server, args, token, digits[0], workdir)
        thr = throughput(server, args, headers, uploads)
    finally:
        server.stop()

    ratio = lat["v2 predict"]["median_ms"] / max(lat["health"]["median_ms"], 0.001)
    share = thr["http_images_per_s"] / thr["raw_images_per_s"]
    print(f"\nHTTP on one gunicorn worker (4 threads), {2 * args.users} locust users for {args.seconds}s")
    print(f"{'measure':<44}{'value':>14}{'target':>14}")
    print(f"{'v2 predict median / p95 (ms)':<44}{lat['v2 predict']['median_ms']:>8.1f} / {lat['v2 predict']['p95_ms']:<4.0f}")
    print(f"{'/health median / p95 (ms)':<44}{lat['health']['median_ms']:>8.1f} / {lat['health']['p95_ms']:<4.0f}")
    print(f"{'ratio predict / health (medians)':<44}{ratio:>13.2f}x{'<= 3x':>14}")
    print(f"{'failures (predict, health)':<44}{lat['v2 predict']['failures']:>8} / {lat['health']['failures']}")
    print(f"{'batch endpoint, 64 images/request (img/s)':<44}{thr['http_images_per_s']:>14.0f}")
    print(f"{'raw in-process batched inference (img/s)':<44}{thr['raw_images_per_s']:>14.0f}")
    print(f"{'endpoint share of raw throughput':<44}{share:>14.1%}{'>= 25 %':>14}")
    return 0 if ratio <= 3 and share >= 0.25 else 1


if __name__ == "__main__":
    sys.exit(main())
