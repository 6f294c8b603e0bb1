"""Locust users for ``bench/http_bench.py``: v2 predict and /health, side by side in one run.

Set ``BENCH_TOKEN`` (a bearer token) and ``BENCH_IMAGE`` (a path to an upload) in the
environment; ``http_bench.py`` does both and starts locust headless against a live server.
"""

import os

from locust import HttpUser, constant, task

TOKEN = os.environ.get("BENCH_TOKEN", "")
IMAGE = open(os.environ["BENCH_IMAGE"], "rb").read() if os.environ.get("BENCH_IMAGE") else b""


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
