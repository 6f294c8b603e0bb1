"""The service under load beside two peers, measured side by side in one run.

    make bench-install && .venv/bin/python bench/load.py    # or: make bench-load [LOAD_ARGS="..."]
    .venv/bin/python bench/load.py --seconds 3 --only v2,bento      # a quick check
    .venv/bin/python bench/load.py --repo /work/main                # the service from another checkout

Starts on 127.0.0.1, each with its own free port:
- the service (gunicorn with the checkout's own gunicorn.conf.py, 2 workers, SQLite, a copy
  of the checkout's ``models/``), from ``--repo`` (default: this checkout) and its ``.venv``;
- the naive peer, ``bench/naive_peer.py``: what the usual tutorials build, served by gunicorn
  with the same settings (2 gthread workers, 4 threads each);
- the framework peer, ``bench/bento_service.py``: BentoML (2 workers) serving the same model
  exported to ONNX (the checkout's ``models/base.onnx``, or one exported here by
  ``bench/export_onnx.py`` while the checkout ships none).

Then locust (headless, one process, users sending back to back) drives one row at a time for
``--seconds`` per cell, at each concurrency of ``--concurrency``, the rows interleaved so that
every row sees the same machine: ``/health``, v1 predict, v2 predict, the batch endpoint
(``--batch-size`` realistic uploads per request), the naive peer's predict and BentoML's.
Uploads are the realistic ones of ``tests/fixtures/mnist50`` (made by ``bench/uploads.py``).
Percentiles come from every response time as measured, not locust's rounded ones; the first
tenth of each cell (at most 1 s) is not counted. Also measured: v2 and ``/health`` driven at
the same time (the under-load ratio of ``bench/http_bench.py``), each server's worker
process trees (worker and its children, RSS from /proc) after the traffic, cold start from
launch until the readiness endpoint answers 200, and v2 p50/p99 while a retrain runs against
idle, on the thread backend and on the RQ backend (Redis from ``redis-server`` on a free
loopback port and an ``rq worker`` with the service's settings; the retrain learns from
``--feedback`` labelled ``uploads-printed`` images sent through the API first and runs
``--retrain-epochs`` epochs).

Prints one table and writes it as markdown to ``bench/results/`` (git-ignored). Everything
started is stopped at exit, on Ctrl-C and on errors too.
"""

import argparse
import csv
import datetime as dt
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

import numpy as np
import requests

from _paths import ROOT  # noqa: E402  (sets up imports first)

from support import FIXTURES, SHARED_DATA, LiveServer, free_port  # noqa: E402

BENCH = ROOT / "bench"
BENCH_BIN = Path(sys.executable).parent  # this bench's virtualenv: locust, BentoML, the naive peer
UPLOADS = FIXTURES / "mnist50"
# Row name -> (label in the table, locust user class, which server it drives).
ROWS = {
    "health": ("service /health", "Health", "service"),
    "v1": ("service v1 predict", "V1Predict", "service"),
    "v2": ("service v2 predict", "V2Predict", "service"),
    "batch": ("service batch", "V2Batch", "service"),
    "naive": ("naive peer predict", "NaivePredict", "naive"),
    "bento": ("BentoML predict", "BentoPredict", "bento"),
}
PARTS = (*ROWS, "retrain")
PASSWORD = "load-bench-password-1"


def parse_args():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=int, default=20, help="locust run time per cell (default 20)")
    parser.add_argument("--concurrency", default="1,8,32", help="simulated users per cell, comma-separated")
    parser.add_argument("--only", default=",".join(PARTS), help=f"parts to run, comma-separated: {','.join(PARTS)}")
    parser.add_argument("--repo", type=Path, default=ROOT, help="checkout to start the service from (its .venv)")
    parser.add_argument("--batch-size", type=int, default=16, help="uploads per batch request")
    parser.add_argument("--feedback", type=int, default=60, help="labelled uploads fed back before retraining")
    parser.add_argument("--retrain-epochs", type=int, default=1, help="RETRAIN_EPOCHS of the service")
    parser.add_argument("--retrain-users", type=int, default=8, help="v2 users while a retrain runs")
    parser.add_argument("--retrain-timeout", type=float, default=300, help="longest a retrain may take")
    parser.add_argument("--out", type=Path, default=BENCH / "results", help="folder for the markdown table")
    parser.add_argument("--keep", action="store_true", help="keep the work folder (logs, database)")
    args = parser.parse_args()
    args.only = [part.strip() for part in args.only.split(",") if part.strip()]
    unknown = sorted(set(args.only) - set(PARTS))
    if unknown:
        parser.error(f"unknown parts {unknown}; choose from {','.join(PARTS)}")
    args.concurrency = [int(c) for c in args.concurrency.split(",")]
    args.repo = args.repo.resolve()
    if not (args.repo / ".venv" / "bin" / "gunicorn").exists():
        parser.error(f"{args.repo}/.venv has no gunicorn: run `make install` there first")
    return args


# Processes ---------------------------------------------------------------------------


def children(pid):
    try:
        return [int(c) for task in Path(f"/proc/{pid}/task").iterdir()
                for c in (task / "children").read_text().split()]
    except (FileNotFoundError, ProcessLookupError):
        return []


def tree(pid):
    found = [pid]
    for child in children(pid):
        found += tree(child)
    return found


def rss_mb(pids):
    total_kb = 0
    for pid in pids:
        try:
            for line in Path(f"/proc/{pid}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    total_kb += int(line.split()[1])
        except (FileNotFoundError, ProcessLookupError):
            pass
    return total_kb / 1024


def wait_ready(url, process, started, log_path, timeout=180):
    """Seconds from ``started`` until ``url`` answers 200 (the process must stay alive)."""
    deadline = started + timeout
    while time.perf_counter() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"{url}: the server exited with {process.returncode}:\n{tail(log_path)}")
        try:
            if requests.get(url, timeout=2).status_code == 200:
                return time.perf_counter() - started
        except (requests.ConnectionError, requests.Timeout):
            pass
        time.sleep(0.05)
    raise RuntimeError(f"{url} did not answer 200 within {timeout}s:\n{tail(log_path)}")


def tail(path, chars=3000):
    return Path(path).read_text(errors="replace")[-chars:] if Path(path).exists() else ""


def stop_group(process, timeout=30):
    if process is None or process.poll() is not None:
        return
    try:
        os.killpg(process.pid, signal.SIGTERM)
        process.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait()
    except ProcessLookupError:
        pass


class Peer:
    """A peer server: one command in its own process group, ready when ``ready_path`` says 200."""

    def __init__(self, name, argv, cwd, env, ready_path, workdir, worker_match=None):
        self.name, self.argv, self.cwd, self.env, self.ready_path = name, argv, cwd, env, ready_path
        self.worker_match = worker_match  # a command-line fragment naming worker processes
        self.log_path = workdir / f"{name}.log"
        self.port = free_port()
        self.process = None
        self.cold_start = None

    @property
    def url(self):
        return f"http://127.0.0.1:{self.port}"

    def start(self):
        argv = [str(a).replace("{port}", str(self.port)) for a in self.argv]
        with open(self.log_path, "ab") as log:
            started = time.perf_counter()
            self.process = subprocess.Popen(argv, cwd=self.cwd, env=self.env, stdout=log, stderr=subprocess.STDOUT,
                                            start_new_session=True)
        self.cold_start = wait_ready(self.url + self.ready_path, self.process, started, self.log_path)
        return self

    def stop(self):
        stop_group(self.process)

    def workers(self):
        if self.worker_match is None:  # gunicorn: the arbiter's children
            return children(self.process.pid)
        return [pid for pid in tree(self.process.pid)
                if self.worker_match in Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace")]


class Service(LiveServer):
    """The deployment helper the tests use, started from ``repo`` with that checkout's virtualenv."""

    def __init__(self, workdir, repo, env):
        super().__init__(workdir, env=env, model_source=repo / "models", repo=repo)
        self.cold_start = None
        self.worker_match = None

    def start(self, wait_for="/ready", timeout=180):
        self.port = free_port()
        env = {**self.env, "GUNICORN_BIND": f"127.0.0.1:{self.port}"}
        self._log = open(self.log_path, "ab")
        started = time.perf_counter()
        self.process = subprocess.Popen([str(self.bin / "gunicorn"), "-c", "gunicorn.conf.py", "wsgi:app"],
                                        cwd=self.repo, env=env, stdout=self._log, stderr=subprocess.STDOUT,
                                        start_new_session=True)
        self.cold_start = wait_ready(self.url + wait_for, self.process, started, self.log_path, timeout)
        return self

    def workers(self):
        return children(self.process.pid)


class Redis:
    def __init__(self, workdir):
        self.port = free_port()
        self.url = f"redis://127.0.0.1:{self.port}/0"
        with open(workdir / "redis.log", "ab") as log:
            self.process = subprocess.Popen(
                ["redis-server", "--bind", "127.0.0.1", "--port", str(self.port), "--save", "", "--appendonly", "no",
                 "--dir", str(workdir)], stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=1) as sock:
                    sock.sendall(b"PING\r\n")
                    if sock.recv(16).startswith(b"+PONG"):
                        return
            except OSError:
                time.sleep(0.1)
        raise RuntimeError(f"redis-server did not answer within 30s:\n{tail(workdir / 'redis.log')}")

    def stop(self):
        stop_group(self.process)


# Traffic -----------------------------------------------------------------------------


class Driver:
    """Runs locust headless for one cell and turns its records into numbers."""

    def __init__(self, workdir, batch_size):
        self.workdir = workdir
        self.batch_size = batch_size
        self.cells = 0

    def _command(self, url, classes, users, seconds, token):
        self.cells += 1
        times = self.workdir / f"cell-{self.cells}.json"
        env = {**os.environ, "LOAD_UPLOADS": str(UPLOADS), "LOAD_TOKEN": token or "",
               "LOAD_BATCH": str(self.batch_size), "LOAD_TIMES": str(times)}
        argv = [str(BENCH_BIN / "locust"), "-f", str(BENCH / "load_users.py"), "--headless", "--only-summary",
                "-u", str(users), "-r", str(users), "-t", f"{int(seconds)}s", "--host", url,
                "--loglevel", "WARNING", *classes]
        return argv, env, times

    def run(self, url, classes, users, seconds, token=None):
        """Drive ``url`` with ``users`` users of ``classes`` for ``seconds``; numbers per request name."""
        argv, env, times = self._command(url, classes, users, seconds, token)
        with open(self.workdir / "locust.log", "ab") as log:
            # locust exits with 1 when a request failed: failures are counted from the records.
            subprocess.run(argv, env=env, stdout=log, stderr=subprocess.STDOUT, timeout=seconds + 120)
        records = self._read(times)
        first = min(start for _, start, _, _ in records)
        return summarize(records, first + min(1.0, seconds / 10), float("inf"))

    def start(self, url, classes, users, seconds, token=None):
        """The same, in the background: stopped by ``finish`` (SIGTERM: locust writes its records)."""
        argv, env, times = self._command(url, classes, users, seconds, token)
        log = open(self.workdir / "locust.log", "ab")
        process = subprocess.Popen(argv, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        process.times, process.log = times, log
        return process

    def finish(self, process, since, until):
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=60)
        finally:
            stop_group(process, timeout=5)
            process.log.close()
        return summarize(self._read(process.times), since, until)

    @staticmethod
    def _read(path):
        if not path.exists():
            raise RuntimeError(f"locust wrote no records (see {path.parent / 'locust.log'})")
        records = json.loads(path.read_text())
        if not records:
            raise RuntimeError(f"locust made no requests (see {path.parent / 'locust.log'})")
        return records


def summarize(records, since, until):
    """Requests/s, p50 and p99 (ms) of the requests that started in [since, until), per name."""
    out = {}
    for name in sorted({r[0] for r in records}):
        mine = [r for r in records if r[0] == name and since <= r[1] < until]
        ok = np.array([ms for _, _, ms, good in mine if good])
        if not mine or not len(ok):
            out[name] = {"rps": 0.0, "p50": float("nan"), "p99": float("nan"), "n": 0, "failures": len(mine)}
            continue
        end = max(start + ms / 1000 for _, start, ms, _ in mine)
        window = (end if until == float("inf") else until) - since
        out[name] = {"rps": len(ok) / max(window, 1e-9),
                     "p50": float(np.percentile(ok, 50)), "p99": float(np.percentile(ok, 99)),
                     "n": int(len(ok)), "failures": len(mine) - int(len(ok))}
    return out


def warm_up(url, name, token, rounds=20):
    """A few requests one at a time so that no cell pays a server's first-request costs."""
    (_, data, mime) = next(iter(_uploads()))
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    path = {"health": "/health", "v1": "/api/v1/predict", "v2": "/api/v2/predict",
            "batch": "/api/v2/predict/batch", "naive": "/predict", "bento": "/predict"}[name]
    with requests.Session() as session:
        for _ in range(rounds):
            if name == "health":
                response = session.get(url + path, timeout=60)
            else:
                field = "files" if name == "batch" else "file"
                response = session.post(url + path, headers=headers, timeout=60, files={field: ("d.png", data, mime)})
            if response.status_code != 200:
                raise RuntimeError(f"{name}: warm-up request answered {response.status_code}: {response.text[:300]}")


def _uploads():
    import mimetypes

    for path in sorted(UPLOADS.iterdir()):
        if path.suffix.lower() in (".png", ".jpg", ".jpeg"):
            yield path.name, path.read_bytes(), mimetypes.guess_type(path.name)[0]


# The run -----------------------------------------------------------------------------


def onnx_file(model_dir, keras_file, workdir):
    """The checkout's exported ONNX file, or one exported here from its Keras file."""
    shipped = model_dir / "base.onnx"
    if shipped.exists():
        return shipped, "shipped models/base.onnx"
    target = workdir / "base.onnx"
    subprocess.run([sys.executable, str(BENCH / "export_onnx.py"), str(keras_file), str(target)], check=True,
                   capture_output=True, timeout=300)
    return target, "exported here by bench/export_onnx.py (the checkout ships no models/base.onnx)"


def service_env(args):
    return {"WEB_CONCURRENCY": "2", "GUNICORN_THREADS": "4", "RETRAIN_EPOCHS": str(args.retrain_epochs),
            "RETRAIN_MIN_FEEDBACK": str(min(20, args.feedback)), "JWT_ACCESS_MINUTES": "120"}


def feed(service, headers, n):
    """``n`` labelled uploads-printed images through POST /api/v2/feedback (multipart file + label)."""
    folder = SHARED_DATA / "uploads-printed"
    with open(folder / "labels.csv") as fh:
        rows = list(csv.DictReader(fh))[:n]
    with requests.Session() as session:
        for row in rows:
            data = (folder / row["file"]).read_bytes()
            response = session.post(service.url + "/api/v2/feedback", headers=headers, timeout=60,
                                    files={"file": (row["file"], data)}, data={"label": row["label"]})
            if response.status_code != 201:
                raise RuntimeError(f"feedback answered {response.status_code}: {response.text[:300]}")
    return len(rows)


def retrain_under_load(service, driver, admin, args):
    """v2 idle for --seconds, then v2 while one retrain runs (from its request to its end)."""
    token = service.token("bench", PASSWORD)["Authorization"].split()[1]
    idle = driver.run(service.url, ["V2Predict"], args.retrain_users, args.seconds, token)["v2"]
    cap = args.retrain_timeout + 30
    process = driver.start(service.url, ["V2Predict"], args.retrain_users, cap, token)
    since = until = None
    try:
        time.sleep(2)  # the users are up and sending
        since = time.time()
        accepted = requests.post(service.url + "/admin/retrain", headers=admin, json={}, timeout=60)
        if accepted.status_code != 202:
            raise RuntimeError(f"retrain answered {accepted.status_code}: {accepted.text[:300]}")
        job_url = f"{service.url}/admin/retrain/{accepted.json()['job_id']}"
        deadline = time.monotonic() + args.retrain_timeout
        while True:
            job = requests.get(job_url, headers=admin, timeout=60).json()
            if job["status"] in ("succeeded", "rejected", "failed"):
                break
            if time.monotonic() > deadline:
                raise RuntimeError(f"the retrain did not end within {args.retrain_timeout}s: {job}")
            time.sleep(0.25)
        until = time.time()
    finally:
        during = driver.finish(process, since or 0, until or time.time()).get("v2")
    return {"idle": idle, "during": during,
            "job": {"status": job["status"], "seconds": round(until - since, 1), "error": job.get("error")}}


def start_servers(args, service, wanted, workdir, stoppers, results):
    """The servers ``wanted`` (service, naive, bento), each with its cold start to ready."""
    manifest = json.loads((service.model_dir / "manifest.json").read_text())
    keras_file = service.model_dir / manifest["file"]
    servers = {}
    if "service" in wanted:
        stoppers.append(service.stop)
        servers["service"] = service.start()
        service.register("bench", PASSWORD)
    if "naive" in wanted:
        env = {**os.environ, "NAIVE_MODEL": str(keras_file), "TF_CPP_MIN_LOG_LEVEL": "2"}
        # gunicorn.conf.py's settings, given on the command line (its hook loads the service's model).
        peer = Peer("naive", [BENCH_BIN / "gunicorn", "--workers", "2", "--worker-class", "gthread",
                              "--threads", "4", "--timeout", "120", "--graceful-timeout", "30",
                              "--bind", "127.0.0.1:{port}", "naive_peer:app"], BENCH, env, "/ready", workdir)
        stoppers.append(peer.stop)
        servers["naive"] = peer.start()
    if "bento" in wanted:
        onnx_path, results["onnx"] = onnx_file(service.model_dir, keras_file, workdir)
        env = {**os.environ, "BENTO_ONNX_MODEL": str(onnx_path), "BENTOML_HOME": str(workdir / "bentoml"),
               "BENTOML_DO_NOT_TRACK": "true"}
        peer = Peer("bento", [BENCH_BIN / "bentoml", "serve", "bento_service:DigitClassifier",
                              "--host", "127.0.0.1", "--port", "{port}"], BENCH, env, "/readyz", workdir,
                    worker_match="_bentoml_impl.worker")
        stoppers.append(peer.stop)
        servers["bento"] = peer.start()
    for name, server in servers.items():
        results["servers"][name] = {"cold_start": server.cold_start}
    return servers


def run_cells(args, rows, servers, service, driver, results):
    """Every row at every concurrency, interleaved; then each server's memory after the traffic."""
    def token():  # a fresh one per cell: a full run outlasts an access token
        return service.token("bench", PASSWORD)["Authorization"].split()[1]

    for row in rows:
        warm_up(servers[ROWS[row][2]].url, row, token() if ROWS[row][2] == "service" else None)
    # v2 and /health at the same time (http_bench's "under load"), at the concurrency nearest 8.
    mixed_users = min((c for c in args.concurrency if c > 1), key=lambda c: abs(c - 8), default=None)
    for users in args.concurrency:
        for row in rows:
            label, user_class, server = ROWS[row]
            print(f"  {label:<22} {users:>3} users, {args.seconds}s ...", end="", flush=True)
            cell = driver.run(servers[server].url, [user_class], users, args.seconds,
                              token() if server == "service" else None)[row]
            results["cells"][(row, users)] = cell
            print(f" {cell['rps']:8.1f} req/s  p50 {cell['p50']:7.2f} ms  p99 {cell['p99']:7.2f} ms"
                  f"  failures {cell['failures']}")
        if users == 1 and {"v2", "health"} <= set(rows):
            print(f"  v2, /health in turns     1 user,  {args.seconds}s ...", end="", flush=True)
            results["alternating"] = driver.run(service.url, ["V2ThenHealth"], 1, args.seconds, token())
            print(f" p50 {results['alternating']['v2']['p50']:.2f} / {results['alternating']['health']['p50']:.2f} ms")
        if users == mixed_users and {"v2", "health"} <= set(rows):
            print(f"  v2 + /health at once   {users:>3} users, {args.seconds}s ...", end="", flush=True)
            results["mixed"] = driver.run(service.url, ["V2Predict", "Health"], users, args.seconds, token())
            results["mixed"]["users"] = users
            print(f" p50 {results['mixed']['v2']['p50']:.2f} / {results['mixed']['health']['p50']:.2f} ms")
    for name, server in servers.items():
        results["servers"][name]["workers_mb"] = [rss_mb(tree(pid)) for pid in server.workers()]
        results["servers"][name]["total_mb"] = rss_mb(tree(server.process.pid))


def run_retrains(args, service, driver, workdir, stoppers, results):
    """v2 during a retrain against idle: on the thread backend, then (with Redis) on the RQ backend."""
    admin_password = "admin-password-load-1"
    admin = service.create_admin(password=admin_password)
    feed(service, service.token("bench", PASSWORD), args.feedback)
    print(f"  retrain on the thread backend, {args.retrain_users} v2 users ...", flush=True)
    results["retrain"]["thread"] = retrain_under_load(service, driver, admin, args)
    if not shutil.which("redis-server"):
        results["retrain"]["rq"] = None
        print("  no redis-server on this machine: the RQ backend is not measured (`apt-get install -y redis-server`)")
        return
    service.stop()  # the same deployment (database, models, feedback), restarted with RETRAIN_BACKEND=rq
    redis = Redis(workdir)
    stoppers.append(redis.stop)
    queue = f"retrain-load-{uuid.uuid4().hex[:8]}"
    service.env.update({"RETRAIN_BACKEND": "rq", "REDIS_URL": redis.url, "RETRAIN_QUEUE": queue})
    service.start()
    with open(workdir / "rq-worker.log", "ab") as log:
        worker = subprocess.Popen([str(service.bin / "rq"), "worker", queue, "--url", redis.url],
                                  cwd=service.repo, env=service.env, stdout=log, stderr=subprocess.STDOUT,
                                  start_new_session=True)
    stoppers.append(lambda: stop_group(worker))
    print(f"  retrain on the RQ backend, {args.retrain_users} v2 users ...", flush=True)
    results["retrain"]["rq"] = retrain_under_load(service, driver, service.token("admin", admin_password), args)


def main():
    args = parse_args()
    workdir = Path(tempfile.mkdtemp(prefix="load-bench-"))
    rows = [r for r in ROWS if r in args.only]
    wanted = {ROWS[r][2] for r in rows} | ({"service"} if "retrain" in args.only else set())
    started_at = dt.datetime.now(dt.timezone.utc)
    results = {"cells": {}, "servers": {}, "retrain": {}, "mixed": None, "alternating": None, "load_before": os.getloadavg()[0]}
    stoppers = []  # called in reverse order at exit, whatever happens

    def on_term(*_):
        raise SystemExit(143)

    signal.signal(signal.SIGTERM, on_term)
    try:
        service = Service(workdir / "service", args.repo, service_env(args))
        service.cli("db", "upgrade")
        servers = start_servers(args, service, wanted, workdir, stoppers, results)
        driver = Driver(workdir, args.batch_size)
        run_cells(args, rows, servers, service, driver, results)
        if "retrain" in args.only:
            run_retrains(args, service, driver, workdir, stoppers, results)
    except BaseException:
        print(f"\nfailed; logs are kept in {workdir}", file=sys.stderr)
        args.keep = True
        raise
    finally:
        for stop in reversed(stoppers):
            try:
                stop()
            except Exception as exc:  # keep stopping the others
                print(f"stopping: {exc!r}", file=sys.stderr)
        if not args.keep:
            shutil.rmtree(workdir, ignore_errors=True)

    text = report(args, results, started_at)
    print("\n" + text)
    args.out.mkdir(parents=True, exist_ok=True)
    path = args.out / f"load-{started_at:%Y%m%d-%H%M%S}.md"
    path.write_text(text)
    print(f"written to {path}")
    return 0


# The table ---------------------------------------------------------------------------


def fmt(value, digits=1):
    return "—" if value is None or value != value else f"{value:,.{digits}f}"


def xfmt(value):
    return "—" if value is None else f"{value:.2f}x"


def ratio(a, b):
    return None if not a or not b or a != a or b != b else a / b


def report(args, results, started_at):
    cells, conc = results["cells"], args.concurrency
    commit = subprocess.run(["git", "-C", str(args.repo), "rev-parse", "--short", "HEAD"], capture_output=True,
                            text=True).stdout.strip()
    lines = [
        f"# Load benchmark, {started_at:%Y-%m-%d %H:%M} UTC",
        "",
        f"`bench/load.py --seconds {args.seconds}`; service from `{args.repo}` ({commit or 'no git'}), "
        f"2 gunicorn gthread workers x 4 threads, SQLite; the naive peer with the same gunicorn settings; "
        f"BentoML 2 workers. {os.cpu_count()} cores; load average {results['load_before']:.1f} before the run "
        f"(other work on the machine), {os.getloadavg()[0]:.1f} at its end. "
        f"Locust users send back to back; realistic uploads (tests/fixtures/mnist50); batch = "
        f"{args.batch_size} uploads per request. p50/p99 in ms, from unrounded response times.",
        "",
    ]
    head = "| row | " + " | ".join(f"c={c} req/s | p50 | p99" for c in conc) + " | failures |"
    lines += [head, "|" + " --- |" * (2 + 3 * len(conc))]
    for row in (r for r in ROWS if any((r, c) in cells for c in conc)):
        parts, failures, total = [], 0, 0
        for c in conc:
            cell = cells.get((row, c))
            if cell is None:
                parts.append("— | — | —")
                continue
            failures += cell["failures"]
            total += cell["n"] + cell["failures"]
            rps = fmt(cell["rps"])
            if row == "batch":
                rps += f" ({fmt(cell['rps'] * args.batch_size, 0)} img/s)"
            parts.append(f"{rps} | {fmt(cell['p50'], 2)} | {fmt(cell['p99'], 2)}")
        lines.append(f"| {ROWS[row][0]} | " + " | ".join(parts) + f" | {failures} of {total:,} |")

    def rps(row, c):
        return cells.get((row, c), {}).get("rps")

    def p50(row, c):
        return cells.get((row, c), {}).get("p50")

    lines += ["", "| ratio | " + " | ".join(f"c={c}" for c in conc) + " | target |", "|" + " --- |" * (2 + len(conc))]
    for label, num, den, target in (("v2 / naive peer, throughput", "v2", "naive", "≥ 10x"),
                                    ("v2 / BentoML, throughput", "v2", "bento", "≥ 0.9x at c=8")):
        lines.append(f"| {label} | " + " | ".join(xfmt(ratio(rps(num, c), rps(den, c))) for c in conc)
                     + f" | {target} |")
    lines.append("| v2 p50 / /health p50, separate cells | "
                 + " | ".join(xfmt(ratio(p50("v2", c), p50("health", c))) for c in conc)
                 + " | ≤ 3.5x at c=1 (one request at a time) |")
    alternating = results["alternating"]
    if alternating:
        lines.append(f"| v2 p50 / /health p50, one client sending them in turns | "
                     f"{xfmt(ratio(alternating['v2']['p50'], alternating['health']['p50']))} "
                     f"({fmt(alternating['v2']['p50'], 2)} / {fmt(alternating['health']['p50'], 2)} ms) |"
                     + " |" * (len(conc) - 1) + " ≤ 3.5x (one request at a time) |")
    mixed = results["mixed"]
    if mixed:
        lines += ["", f"Under load (v2 and /health driven at the same time, {mixed['users']} users in all, as `bench/http_bench.py` "
                  f"does): v2 p50 {fmt(mixed['v2']['p50'], 2)} ms, /health p50 {fmt(mixed['health']['p50'], 2)} ms, "
                  f"ratio **{xfmt(ratio(mixed['v2']['p50'], mixed['health']['p50']))}** (target ≤ 3x); "
                  f"{mixed['v2']['rps'] + mixed['health']['rps']:,.0f} req/s in all."]

    names = {"service": "service", "naive": "naive peer", "bento": "BentoML"}
    lines += ["", "| server | cold start to ready | worker process trees after the traffic (RSS) | whole server (RSS) |",
              "| --- | --- | --- | --- |"]
    for name, s in results["servers"].items():
        workers = ", ".join(f"{mb:,.0f}" for mb in s.get("workers_mb", [])) or "—"
        ready = "/ready" if name != "bento" else "/readyz"
        lines.append(f"| {names[name]} | {s['cold_start']:.2f} s ({ready}) | {workers} MB | "
                     f"{fmt(s.get('total_mb'), 0)} MB |")
    if results.get("onnx"):
        lines += ["", f"BentoML's ONNX file: {results['onnx']}."]

    if results["retrain"]:
        lines += ["", f"v2 predict while a retrain runs ({args.retrain_users} users; RETRAIN_EPOCHS="
                  f"{args.retrain_epochs}, {args.feedback} labelled uploads fed back first; 'during' counts the "
                  "requests sent from the retrain request until the job ended):", "",
                  "| backend | idle p50 / p99 | during p50 / p99 | p99 during / idle | target | job | requests during |",
                  "| --- | --- | --- | --- | --- | --- | --- |"]
        for backend, r in results["retrain"].items():
            if r is None:
                lines.append(f"| {backend} | not measured (no redis-server) | | | | | |")
                continue
            idle, during, job = r["idle"], r["during"] or {}, r["job"]
            target = "≤ 2x" if backend == "rq" else "(shown beside RQ)"
            lines.append(f"| {backend} | {fmt(idle['p50'], 2)} / {fmt(idle['p99'], 2)} | "
                         f"{fmt(during.get('p50'), 2)} / {fmt(during.get('p99'), 2)} | "
                         f"{xfmt(ratio(during.get('p99'), idle['p99']))} | {target} | {job['status']}, "
                         f"{job['seconds']} s | {during.get('n', 0):,} ({during.get('failures', 0)} failed) |")
            if job.get("error"):
                lines.append(f"| | {backend} job error: {job['error']} | | | | | |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    try:
        sys.exit(main())
    except KeyboardInterrupt:
        print("interrupted: every server this run started is stopped", file=sys.stderr)
        sys.exit(130)
