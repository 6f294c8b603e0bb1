"""HTTP performance on one server, measured side by side in one run.

    python bench/http_bench.py [--seconds 20] [--users 2] [--batches 30]

1. Latency: locust (headless) drives ``POST /api/v2/predict`` and ``GET /health`` at the
   same time against one gunicorn worker; we compare their medians (target: predict median
   at most 3x the /health median: the model adds little to the cost of a request). The
   same is measured without load too: one client alternating the two requests.
2. Throughput: 64-image batches (the realistic fixtures, 28x28 PNGs, and camera-size
   uploads of ``bench/uploads.py``: up to ~600 px, JPEG and PNG, decoding dominates)
   through ``POST /api/v2/predict/batch`` against the same
   batches through the in-process ONNX model (the raw model call), interleaved so that both
   see the same machine load (target: the endpoint keeps at least 25 % of raw throughput).
   A third column does in-process what the endpoint does minus HTTP and the database:
   preprocessing on one thread per core, as the one-worker server does, plus the model call.
"""

import argparse
import csv
import io
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import requests

from _paths import ROOT  # noqa: E402  (sets up imports first)

from support import BIN, FIXTURES, LiveServer  # noqa: E402


def parse_args():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=int, default=20, help="locust run time")
    parser.add_argument("--users", type=int, default=2, help="locust users per endpoint")
    parser.add_argument("--batches", type=int, default=30, help="64-image batches for the throughput test")
    return parser.parse_args()


def latency(server, args, token, image_path, workdir):
    prefix = workdir / "locust"
    times_path = workdir / "locust-times.json"
    env = {**os.environ, "BENCH_TOKEN": token, "BENCH_IMAGE": str(image_path), "BENCH_TIMES": str(times_path)}
    subprocess.run(
        [str(BIN / "locust"), "-f", str(ROOT / "bench" / "locustfile.py"), "--headless", "--only-summary",
         "-u", str(2 * args.users), "-r", str(2 * args.users), "-t", f"{args.seconds}s",
         "--host", server.url, "--csv", str(prefix), "--loglevel", "WARNING"],
        env=env, check=True, stdout=subprocess.DEVNULL,
    )
    with open(f"{prefix}_stats.csv") as fh:
        stats = {row["Name"]: row for row in csv.DictReader(fh)}
    # Medians from the unrounded times (locust's own are whole milliseconds below 100 ms).
    times = json.loads(times_path.read_text())
    return {name: {"median_ms": statistics.median(times[name]),
                   "p95_ms": float(stats[name]["95%"]),
                   "requests": int(stats[name]["Request Count"]),
                   "failures": int(stats[name]["Failure Count"])}
            for name in ("v2 predict", "health")}


def unloaded_latency(server, token, image_path, rounds=200):
    """One client, one request at a time, predict and /health alternating: medians in ms."""
    headers = {"Authorization": f"Bearer {token}"}
    image = image_path.read_bytes()
    times = {"v2 predict": [], "health": []}
    with requests.Session() as session:
        for i in range(rounds + 10):
            started = time.perf_counter()
            session.post(server.url + "/api/v2/predict", headers=headers, timeout=30,
                         files={"file": ("digit.png", image, "image/png")}).raise_for_status()
            predict_ms = (time.perf_counter() - started) * 1000
            started = time.perf_counter()
            session.get(server.url + "/health", timeout=30).raise_for_status()
            health_ms = (time.perf_counter() - started) * 1000
            if i >= 10:  # warm-up rounds are not counted
                times["v2 predict"].append(predict_ms)
                times["health"].append(health_ms)
    return {name: statistics.median(values) for name, values in times.items()}


def mnist_sized_png(path):
    """The kind of upload the original service got: the digit already 28x28, white on black."""
    from PIL import Image

    from app.ml.preprocessing import preprocess

    buffer = io.BytesIO()
    Image.fromarray((preprocess(path.read_bytes()) * 255).astype("uint8")).save(buffer, format="PNG")
    return buffer.getvalue()


def throughput(server, args, headers, uploads):
    import numpy as np

    from app.ml.onnx_model import OnnxModel
    from app.ml.preprocessing import preprocess_many

    manifest = json.loads((server.model_dir / "manifest.json").read_text())
    model = OnnxModel.from_file(manifest["version"], server.model_dir / manifest["onnx_file"], manifest["onnx_sha256"])
    batch = preprocess_many(uploads)
    model.predict(batch)  # warm
    http_times, raw_times, pipeline_times = [], [], []
    files = [("files", (f"{i}.png", data, "image/png")) for i, data in enumerate(uploads)]
    for _ in range(args.batches):
        started = time.perf_counter()
        response = requests.post(server.url + "/api/v2/predict/batch", headers=headers, files=files, timeout=60)
        response.raise_for_status()
        http_times.append(time.perf_counter() - started)
        started = time.perf_counter()
        model.predict(np.asarray(batch))
        raw_times.append(time.perf_counter() - started)
        started = time.perf_counter()
        model.predict(preprocess_many(uploads, threads=os.cpu_count()))
        pipeline_times.append(time.perf_counter() - started)
    n = len(uploads)
    return {"http_images_per_s": n / statistics.median(http_times), "raw_images_per_s": n / statistics.median(raw_times),
            "pipeline_images_per_s": n / statistics.median(pipeline_times)}


def main():
    args = parse_args()
    workdir = Path(tempfile.mkdtemp(prefix="http-bench-"))
    server = LiveServer(workdir, env={"WEB_CONCURRENCY": "1", "GUNICORN_THREADS": "4"})
    server.cli("db", "upgrade")
    server.start()
    digits = sorted((FIXTURES / "mnist50").glob("*.png"))
    small = workdir / "mnist-sized.png"
    small.write_bytes(mnist_sized_png(digits[0]))
    results = {}
    try:
        headers = server.register("bench")
        token = headers["Authorization"].split()[1]
        for name, image in (("realistic upload", digits[0]), ("28x28 upload", small)):
            results[name] = latency(server, args, token, image, workdir)
            results[name]["unloaded"] = unloaded_latency(server, token, image)
        real = [p.read_bytes() for p in (digits * 2)[:64]]
        results["throughput realistic"] = throughput(server, args, headers, real)
        results["throughput 28x28"] = throughput(server, args, headers, [small.read_bytes()] * 64)
        from uploads import load_mnist_test, make_uploads

        results["throughput camera-size"] = throughput(server, args, headers, make_uploads(load_mnist_test()[0][:64]))
    finally:
        server.stop()

    print(f"\nHTTP on one gunicorn worker (4 threads); latency: {args.users} locust users on v2 predict and "
          f"{args.users} on /health at the same time for {args.seconds}s; throughput: 64-image batches")
    print(f"{'image':<18}{'predict p50/p95 ms':>20}{'health p50/p95 ms':>20}{'ratio p50':>11}{'target':>8}")
    ok = True
    for name in ("realistic upload", "28x28 upload"):
        lat = results[name]
        ratio = lat["v2 predict"]["median_ms"] / max(lat["health"]["median_ms"], 0.001)
        ok &= ratio <= 3
        print(f"{name:<18}{lat['v2 predict']['median_ms']:>12.1f} / {lat['v2 predict']['p95_ms']:<5.0f}"
              f"{lat['health']['median_ms']:>12.1f} / {lat['health']['p95_ms']:<5.0f}{ratio:>10.2f}x{'<= 3x':>8}"
              f"   failures {lat['v2 predict']['failures'] + lat['health']['failures']}")
    print("the same without load (one client, one request at a time):")
    for name in ("realistic upload", "28x28 upload"):
        quiet = results[name]["unloaded"]
        ratio = quiet["v2 predict"] / max(quiet["health"], 0.001)
        print(f"{name:<18}{quiet['v2 predict']:>12.1f}{quiet['health']:>20.1f}{ratio:>17.2f}x")
    print(f"\n{'batch of 64':<18}{'endpoint img/s':>16}{'raw model img/s':>17}{'share':>8}{'target':>9}"
          f"{'preprocess+model img/s':>24}{'share':>8}")
    for name in ("throughput realistic", "throughput 28x28", "throughput camera-size"):
        t = results[name]
        share = t["http_images_per_s"] / t["raw_images_per_s"]
        ok &= share >= 0.25
        print(f"{name.split()[1]:<18}{t['http_images_per_s']:>16.0f}{t['raw_images_per_s']:>17.0f}{share:>8.1%}{'>= 25%':>9}"
              f"{t['pipeline_images_per_s']:>24.0f}{t['http_images_per_s'] / t['pipeline_images_per_s']:>8.1%}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
