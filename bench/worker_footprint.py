"""One gunicorn worker's cold start and memory, for two checkouts side by side.

    python bench/worker_footprint.py --before /work/main [--after .] [--rounds 3] [--predicts 20]

For each checkout, in alternating rounds (so both see the same machine load): migrate a
fresh SQLite database, create a user, start ``gunicorn -c gunicorn.conf.py wsgi:app`` with
one worker, and time from the process start to the first ``/ready`` 200 and to the first
successful v2 predict (polled: ``/health`` first, then a login, then predicts until one
answers 200). Then send ``--predicts`` single predicts and as many batches of 16, and read
the worker's process-tree RSS (the worker plus all its descendants, e.g. preprocessing
helpers; from ``/proc``). Prints the median per checkout and the after/before ratios.
"""

import argparse
import os
import secrets
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import requests

from _paths import ROOT  # noqa: E402  (sets up imports first)
from support import free_port, mnist_png  # noqa: E402


def rss_kb(pid):
    try:
        with open(f"/proc/{pid}/status") as fh:
            return next(int(line.split()[1]) for line in fh if line.startswith("VmRSS:"))
    except (FileNotFoundError, StopIteration):
        return 0


def children(pid):
    found = []
    for task in Path(f"/proc/{pid}/task").glob("*"):
        try:
            found += [int(c) for c in (task / "children").read_text().split()]
        except FileNotFoundError:
            pass
    return found


def tree(pid):
    pids, todo = [], [pid]
    while todo:
        current = todo.pop()
        pids.append(current)
        todo += children(current)
    return pids


def one_round(checkout, digits, predicts):
    checkout = Path(checkout).resolve()
    bin_dir = checkout / ".venv" / "bin"
    work = Path(tempfile.mkdtemp(prefix="footprint-"))
    port = free_port()
    env = {**os.environ, "APP_ENV": "production", "SECRET_KEY": secrets.token_urlsafe(48),
           "JWT_SECRET_KEY": secrets.token_urlsafe(48), "DATABASE_URL": f"sqlite:///{work / 'db.sqlite3'}",
           "INSTANCE_PATH": str(work / "instance"), "RATELIMIT_ENABLED": "false", "TF_CPP_MIN_LOG_LEVEL": "2",
           "WEB_CONCURRENCY": "1", "GUNICORN_THREADS": "4", "GUNICORN_ACCESSLOG": "",
           "GUNICORN_BIND": f"127.0.0.1:{port}"}
    flask = [str(bin_dir / "flask"), "--app", "wsgi"]
    subprocess.run(flask + ["db", "upgrade"], cwd=checkout, env=env, check=True, capture_output=True)
    subprocess.run(flask + ["create-admin", "bench", "--password-stdin"], cwd=checkout, env=env, check=True,
                   capture_output=True, input="bench-password-1\n", text=True)
    url = f"http://127.0.0.1:{port}"
    log = open(work / "server.log", "wb")
    started = time.perf_counter()
    server = subprocess.Popen([str(bin_dir / "gunicorn"), "-c", "gunicorn.conf.py", "wsgi:app"], cwd=checkout,
                              env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    ready_at = []

    def poll_ready():
        while not ready_at and time.perf_counter() - started < 180:
            try:
                if requests.get(url + "/ready", timeout=5).status_code == 200:
                    ready_at.append(time.perf_counter() - started)
                    return
            except requests.RequestException:
                pass
            time.sleep(0.05)

    poller = threading.Thread(target=poll_ready)
    poller.start()
    try:
        while True:
            try:
                requests.get(url + "/health", timeout=5)
                break
            except requests.RequestException:
                assert server.poll() is None and time.perf_counter() - started < 180, (work / "server.log").read_text()
                time.sleep(0.05)
        token = requests.post(url + "/auth/login", json={"username": "bench", "password": "bench-password-1"},
                              timeout=30).json()["access_token"]
        headers = {"Authorization": f"Bearer {token}"}
        while True:
            response = requests.post(url + "/api/v2/predict", headers=headers, timeout=60,
                                     files={"file": ("d.png", digits[0])})
            if response.status_code == 200:
                first_predict = time.perf_counter() - started
                break
            assert time.perf_counter() - started < 180, response.text
            time.sleep(0.05)
        poller.join()
        batch = [("files", (f"{i}.png", digits[i % len(digits)], "image/png")) for i in range(16)]
        for i in range(predicts):
            assert requests.post(url + "/api/v2/predict", headers=headers, timeout=60,
                                 files={"file": ("d.png", digits[i % len(digits)])}).status_code == 200
            assert requests.post(url + "/api/v2/predict/batch", headers=headers, files=batch,
                                 timeout=60).status_code == 200
        workers = children(server.pid)
        assert len(workers) == 1, workers
        pids = tree(workers[0])
        worker_mb = rss_kb(workers[0]) / 1024
        tree_mb = sum(rss_kb(pid) for pid in pids) / 1024
        return {"ready_s": ready_at[0], "first_predict_s": first_predict, "worker_mb": worker_mb,
                "tree_mb": tree_mb, "processes": len(pids)}
    finally:
        os.killpg(server.pid, signal.SIGTERM)
        server.wait(timeout=60)
        log.close()


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--before", required=True, help="checkout to compare against (e.g. /work/main)")
    parser.add_argument("--after", default=str(ROOT))
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--predicts", type=int, default=20, help="single predicts and batches of 16 before RSS")
    args = parser.parse_args()

    import numpy as np

    with np.load(ROOT / "models" / "replay.npz") as data:
        digits = [mnist_png(d) for d in data["x"][:16]]
    results = {"before": [], "after": []}
    for round_ in range(args.rounds):
        for name in ("before", "after") if round_ % 2 == 0 else ("after", "before"):
            result = one_round(getattr(args, name), digits, args.predicts)
            results[name].append(result)
            print(f"round {round_ + 1} {name:<6} " + "  ".join(f"{k} {v:.2f}" if isinstance(v, float) else f"{k} {v}"
                                                             for k, v in result.items()), flush=True)
    print(f"\nmedians of {args.rounds} rounds; one gunicorn worker, {args.predicts} predicts + {args.predicts} batches of 16")
    print(f"{'':<18}{'before':>10}{'after':>10}{'after/before':>14}")
    for key in ("ready_s", "first_predict_s", "worker_mb", "tree_mb", "processes"):
        before = statistics.median(r[key] for r in results["before"])
        after = statistics.median(r[key] for r in results["after"])
        print(f"{key:<18}{before:>10.2f}{after:>10.2f}{after / before:>13.2f}x")


if __name__ == "__main__":
    sys.exit(main())
