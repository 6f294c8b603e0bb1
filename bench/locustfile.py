"""Locust users for ``bench/http_bench.py``: v2 predict and /health, side by side in one run.

Set ``BENCH_TOKEN`` (a bearer token) and ``BENCH_IMAGE`` (a path to an upload) in the
environment; ``http_bench.py`` does both and starts locust headless against a live server.
With ``BENCH_TIMES`` set, every response time is also written there (JSON, ms per request
name), unrounded: locust's own statistics round times under 100 ms to whole milliseconds,
which at 3-10 ms moves a ratio of medians by up to a third.
"""

import json
import os
from collections import defaultdict

from locust import HttpUser, constant, events, task

TOKEN = os.environ.get("BENCH_TOKEN", "")
IMAGE = open(os.environ["BENCH_IMAGE"], "rb").read() if os.environ.get("BENCH_IMAGE") else b""
TIMES_PATH = os.environ.get("BENCH_TIMES")
_times = defaultdict(list)


@events.request.add_listener
def _record(name, response_time, exception, **_kw):
    if exception is None:
        _times[name].append(response_time)


@events.quitting.add_listener
def _write_times(**_kw):
    if TIMES_PATH:
        with open(TIMES_PATH, "w") as fh:
            json.dump(_times, fh)


class PredictUser(HttpUser):
    wait_time = constant(0)

    @task
    def predict(self):
        self.client.post("/api/v2/predict", headers={"Authorization": f"Bearer {TOKEN}"},
                         files={"file": ("digit.png", IMAGE, "image/png")}, name="v2 predict")


class HealthUser(HttpUser):
    wait_time = constant(0)

    @task
    def health(self):
        self.client.get("/health", name="health")
