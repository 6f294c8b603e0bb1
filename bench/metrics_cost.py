"""What metrics cost a prediction, measured side by side in one run.

    python bench/metrics_cost.py [--rounds 6] [--seconds 5] [--clients 4]

Two identical gunicorn servers (one worker, 4 threads, the shipped model) run at the same
time, one with METRICS_ENABLED=true and one with false. Rounds alternate between them
(on, off, off, on, ...) so both see the same machine load: in each, ``--clients`` threads
post realistic uploads to ``/api/v2/predict`` back to back for ``--seconds``. Then one
client alternates single requests between the two. Printed: median latency and
throughput of each, and the cost of metrics as a ratio (target: at most 5 % on both).
While the servers run, /metrics is scraped every second, as Prometheus would.
"""

import argparse
import statistics
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import requests

from _paths import ROOT  # noqa: F401,E402  (sets up imports first)

from support import FIXTURES, LiveServer  # noqa: E402

TOKEN = "bench-metrics-token-0123456789"


def parse_args():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=6, help="loaded rounds per server")
    parser.add_argument("--seconds", type=float, default=5.0, help="length of one loaded round")
    parser.add_argument("--clients", type=int, default=4, help="concurrent clients in a loaded round")
    parser.add_argument("--single", type=int, default=300, help="one-at-a-time requests per server")
    return parser.parse_args()


def start(workdir, metrics):
    server = LiveServer(workdir, env={"WEB_CONCURRENCY": "1", "GUNICORN_THREADS": "4", "METRICS_TOKEN": TOKEN,
                                      "METRICS_ENABLED": "true" if metrics else "false"})
    server.workdir.mkdir(parents=True, exist_ok=True)
    server.cli("db", "upgrade")
    server.start()
    return server


def loaded_round(server, headers, image, clients, seconds):
    """Back-to-back predictions from ``clients`` threads: (latencies in ms, requests per second)."""
    latencies, deadline = [], time.monotonic() + seconds

    def client():
        mine = []
        with requests.Session() as session:
            while time.monotonic() < deadline:
                started = time.perf_counter()
                response = session.post(server.url + "/api/v2/predict", headers=headers, timeout=30,
                                        files={"file": ("digit.png", image, "image/png")})
                response.raise_for_status()
                mine.append((time.perf_counter() - started) * 1000)
        return mine

    began = time.monotonic()
    with ThreadPoolExecutor(clients) as pool:
        for mine in pool.map(lambda _: client(), range(clients)):
            latencies += mine
    return latencies, len(latencies) / (time.monotonic() - began)


def scrape_every_second(servers, stop):
    """What a Prometheus server does: the scrape's own cost lands on the server like in production."""
    while not stop.wait(1.0):
        for server in servers:
            requests.get(server.url + "/metrics", headers={"Authorization": f"Bearer {TOKEN}"}, timeout=30)


def main():
    args = parse_args()
    workdir = Path(tempfile.mkdtemp(prefix="metrics-cost-"))
    image = sorted((FIXTURES / "mnist50").glob("*.png"))[0].read_bytes()
    servers = {"on": start(workdir / "on", True), "off": start(workdir / "off", False)}
    stop = threading.Event()
    scraper = threading.Thread(target=scrape_every_second, args=([servers["on"]], stop), daemon=True)
    try:
        headers = {name: server.register("bench") for name, server in servers.items()}
        for name, server in servers.items():  # warm both up
            loaded_round(server, headers[name], image, args.clients, 1.0)
        scraper.start()
        loaded = {name: {"latencies": [], "throughput": []} for name in servers}
        for round_ in range(args.rounds):
            order = ("on", "off") if round_ % 2 == 0 else ("off", "on")
            for name in order:
                latencies, rate = loaded_round(servers[name], headers[name], image, args.clients, args.seconds)
                loaded[name]["latencies"] += latencies
                loaded[name]["throughput"].append(rate)
        single = {name: [] for name in servers}
        with requests.Session() as session:
            for i in range(args.single + 10):
                for name in (("on", "off") if i % 2 == 0 else ("off", "on")):
                    started = time.perf_counter()
                    session.post(servers[name].url + "/api/v2/predict", headers=headers[name], timeout=30,
                                 files={"file": ("digit.png", image, "image/png")}).raise_for_status()
                    if i >= 10:
                        single[name].append((time.perf_counter() - started) * 1000)
    finally:
        stop.set()
        for server in servers.values():
            server.stop()

    print(f"\nv2 predict, metrics on vs off: {args.rounds} alternating rounds of {args.seconds:.0f}s with "
          f"{args.clients} clients each, then {args.single} single requests each, one at a time")
    print(f"{'':<28}{'metrics on':>12}{'metrics off':>13}{'on / off':>10}{'target':>9}")
    ok = True
    rows = (
        ("p50 under load (ms)", statistics.median(loaded["on"]["latencies"]),
         statistics.median(loaded["off"]["latencies"]), "<= 1.05"),
        ("throughput (requests/s)", statistics.median(loaded["on"]["throughput"]),
         statistics.median(loaded["off"]["throughput"]), ">= 0.95"),
        ("p50 one at a time (ms)", statistics.median(single["on"]), statistics.median(single["off"]), "<= 1.05"),
    )
    for label, on, off, target in rows:
        ratio = on / off
        ok &= ratio <= 1.05 if target.startswith("<=") else ratio >= 0.95
        print(f"{label:<28}{on:>12.2f}{off:>13.2f}{ratio:>10.3f}{target:>9}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
