"""A bounded soak: a two-worker gunicorn server takes predictions and feedback from several
clients for about a minute while two retrains (on an RQ worker) and a rollback swap the
model under it. Nothing may be lost, no request may fail, and the workers' memory may not
grow by more than 10 % across the swaps. The figures are printed (README, "Reliability").

``SOAK_SECONDS`` changes the length (default 60).
"""

import os
import random
import subprocess
import threading
import time
import uuid
from collections import Counter

import pytest
import requests

from support import (BIN, FINISHED, FRESH, LOOP_ENV, ROOT, OwnRedis, ask_every_worker, feed, mnist_png, wait_status,
                     wait_until)

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

SOAK_SECONDS = float(os.environ.get("SOAK_SECONDS", "60"))
CLIENTS = 4
MAX_MEMORY_GROWTH = 0.10


def rss_bytes(pid):
    with open(f"/proc/{pid}/status") as fh:
        for line in fh:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    raise AssertionError(f"no VmRSS for {pid}")


def rss_mib(pids, measured=None):
    return [round(((measured or {}).get(pid) or rss_bytes(pid)) / 2**20, 1) for pid in pids]


class Clients:
    """Client threads: each predicts a digit, then tells the true label of most predictions
    (JSON), now and then sends a labelled upload instead; every answer is kept."""

    def __init__(self, server, users, digits):
        self.server, self.users, self.digits = server, users, digits
        self.results = []  # (kind, status or exception, served version, worker)
        self.stored = {}  # feedback id -> label, for every 201
        self.lock = threading.Lock()
        self.stop = threading.Event()
        self.threads = [threading.Thread(target=self._run, args=(i,), name=f"client-{i}") for i in range(len(users))]

    def _record(self, kind, response, label=None):
        version = worker = None
        if isinstance(response, requests.Response):
            worker = response.headers.get("X-Served-By")
            if kind == "predict" and response.status_code == 200:
                version = response.json()["model_version"]
            if kind.startswith("feedback") and response.status_code == 201:
                with self.lock:
                    self.stored[response.json()["id"]] = label
            status = response.status_code
        else:
            status = repr(response)
        with self.lock:
            self.results.append((kind, status, version, worker))

    def _send(self, kind, method, path, label=None, **kwargs):
        try:
            response = requests.request(method, self.server.url + path, timeout=60, **kwargs)
        except requests.RequestException as exc:
            self._record(kind, exc)
            return None
        self._record(kind, response, label)
        return response

    def _run(self, i):
        rng = random.Random(i)
        headers = {**self.users[i], **FRESH}  # a new connection each time: requests spread over the workers
        while not self.stop.is_set():
            image, label = rng.choice(self.digits)
            answer = self._send("predict", "POST", "/api/v2/predict", headers=headers,
                                files={"file": ("d.png", image, "image/png")})
            if answer is None or answer.status_code != 200:
                continue
            roll = rng.random()
            if roll < 0.25:
                self._send("feedback", "POST", "/api/v2/feedback", label, headers=headers,
                           json={"prediction_id": answer.json()["prediction_id"], "label": label})
            elif roll < 0.3:
                self._send("feedback-upload", "POST", "/api/v2/feedback", label, headers=headers,
                           files={"file": ("d.png", image, "image/png")}, data={"label": str(label)})

    def served_by_each_worker(self):
        """The latest version each worker answered with."""
        with self.lock:
            latest = {}
            for kind, _status, version, worker in self.results:
                if kind == "predict" and version:
                    latest[worker] = version
            return latest

    def __enter__(self):
        for thread in self.threads:
            thread.start()
        return self

    def __exit__(self, *exc):
        self.stop.set()
        for thread in self.threads:
            thread.join(timeout=120)


def stored_labels(database_url, ids):
    """Feedback rows as the database has them (not as the API says)."""
    from sqlalchemy import create_engine, text
    from sqlalchemy.engine import make_url

    url = make_url(database_url)
    if url.drivername == "postgresql":
        url = url.set(drivername="postgresql+psycopg")
    engine = create_engine(url)
    try:
        with engine.connect() as conn:
            return dict(conn.execute(text("SELECT id, label FROM feedback")).all())
    finally:
        engine.dispose()


def test_soak_predictions_and_feedback_during_two_retrains_and_a_rollback(
        live_server, tmp_path, tiny_model_source, replay_digits, capsys):
    redis = OwnRedis(tmp_path)
    redis.start()
    database = "postgres" if os.environ.get("TEST_POSTGRES_URL") else "sqlite"
    queue = f"retrain-soak-{uuid.uuid4().hex[:8]}"
    env = {**LOOP_ENV, "RETRAIN_BACKEND": "rq", "REDIS_URL": redis.url, "RETRAIN_QUEUE": queue}
    rq_worker = rq_log = None
    try:
        server = live_server(env=env, workers=2, model_source=tiny_model_source, database=database)
        admin = server.create_admin()
        feed(server, server.register("seed"), replay_digits)  # enough feedback for the first retrain
        rq_log = open(tmp_path / "rq.log", "wb")
        rq_worker = subprocess.Popen([str(BIN / "rq"), "worker", queue, "--url", redis.url], cwd=ROOT,
                                     env=server.env, stdout=rq_log, stderr=subprocess.STDOUT)
        x, y = replay_digits
        digits = [(mnist_png(x[i]), int(y[i])) for i in range(100, 140)]
        users = [server.register(f"client{i}") for i in range(CLIENTS)]

        started = time.monotonic()
        with Clients(server, users, digits) as clients:
            # Warm-up: every worker has answered for a few seconds, then the baseline.
            wait_until(lambda: len(clients.served_by_each_worker()) == 2, 60, "answered by both workers")
            time.sleep(5)
            workers = sorted(int(w.rsplit(":", 1)[1]) for w in clients.served_by_each_worker())
            baseline = {pid: rss_bytes(pid) for pid in workers}
            baseline_at = time.monotonic() - started

            timeline = []
            for _ in range(2):
                response = requests.post(server.url + "/admin/retrain", headers=admin, json={"force": True},
                                         timeout=60)
                assert response.status_code == 202, response.text
                job = wait_status(server, admin, response.json()["job_id"], FINISHED,
                                  timeout=600)
                assert job["status"] == "succeeded", job
                version = job["model_version"]
                wait_until(lambda: set(clients.served_by_each_worker().values()) == {version}, 60,
                         f"{version} served by every worker")
                timeline.append((round(time.monotonic() - started, 1), version, rss_mib(workers)))
            rollback = requests.post(server.url + "/admin/models/tiny-1/activate", headers=admin, timeout=60)
            assert rollback.status_code == 200, rollback.text
            wait_until(lambda: set(clients.served_by_each_worker().values()) == {"tiny-1"}, 60,
                     "tiny-1 served by every worker")
            timeline.append((round(time.monotonic() - started, 1), "tiny-1 (rollback)", rss_mib(workers)))
            remaining = SOAK_SECONDS - (time.monotonic() - started)
            if remaining > 0:
                time.sleep(remaining)
        elapsed = time.monotonic() - started
        final = {pid: rss_bytes(pid) for pid in workers}
        still_serving = {int(r.headers["X-Served-By"].rsplit(":", 1)[1])
                         for r in ask_every_worker(lambda: requests.get(server.url + "/health", headers=FRESH,
                                                                        timeout=30))}
        in_database = stored_labels(server.database_url, clients.stored)
    finally:
        if rq_worker is not None:
            rq_worker.terminate()
            rq_worker.wait(timeout=60)
        if rq_log is not None:
            rq_log.close()
        redis.stop()

    results = clients.results
    statuses = Counter(status for _kind, status, _v, _w in results)
    kinds = Counter(kind for kind, *_ in results)
    lost = {fid: label for fid, label in clients.stored.items() if in_database.get(fid) != label}
    growth = {pid: final[pid] / baseline[pid] - 1 for pid in workers}
    with capsys.disabled():
        print(f"\n[soak] {elapsed:.0f} s on {database}, 2 workers, {CLIENTS} clients: {len(results)} requests "
              f"({kinds['predict']} predictions, {kinds['feedback']} feedback on predictions, "
              f"{kinds['feedback-upload']} labelled uploads); statuses {dict(statuses)}")
        print(f"[soak] baseline RSS (MiB) at {baseline_at:.1f} s: {rss_mib(workers, baseline)}")
        print(f"[soak] model swaps (s since start, version, workers' RSS in MiB): {timeline}")
        print(f"[soak] feedback answered 201: {len(clients.stored)}; found in the database with its label: "
              f"{len(clients.stored) - len(lost)}")
        for pid in workers:
            print(f"[soak] worker {pid} RSS {baseline[pid] / 2**20:.1f} MiB -> {final[pid] / 2**20:.1f} MiB "
                  f"({growth[pid]:+.1%})")

    failures = [r for r in results if not isinstance(r[1], int) or r[1] >= 500]
    assert not failures, failures[:5]
    assert set(statuses) <= {200, 201}, statuses
    assert clients.stored and not lost, f"{len(lost)} feedback answered 201 but not stored: {list(lost.items())[:5]}"
    assert still_serving == set(workers), f"workers changed (a crash?): {workers} -> {still_serving}"
    assert all(g <= MAX_MEMORY_GROWTH for g in growth.values()), growth
    assert {v for _k, _s, v, _w in results if v} == {"tiny-1", "retrain-1", "retrain-2"}
