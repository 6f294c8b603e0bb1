"""Locust users for ``bench/load.py``: one class per row of its table.

Each simulated user sends its requests back to back (no wait), cycling through a folder of
realistic uploads from a random starting point. ``load.py`` runs locust headless with the
class names of one cell on the command line and reads back every request it made.

Environment: ``LOAD_UPLOADS`` (a folder of .png/.jpg uploads), ``LOAD_TOKEN`` (a bearer
token for the service), ``LOAD_BATCH`` (uploads per batch request), ``LOAD_TIMES`` (where
to write, as JSON, each request's name, start time, unrounded response time in ms and
whether it succeeded: locust's own statistics round times under 100 ms to whole ms).
"""

import json
import mimetypes
import os
import random
from pathlib import Path

from locust import HttpUser, constant, events, task

TOKEN = os.environ.get("LOAD_TOKEN", "")
BATCH = int(os.environ.get("LOAD_BATCH", "16"))
UPLOADS = [
    (path.name, path.read_bytes(), mimetypes.guess_type(path.name)[0])
    for path in sorted(Path(os.environ.get("LOAD_UPLOADS", ".")).iterdir())
    if path.suffix.lower() in (".png", ".jpg", ".jpeg")
]
_records = []


@events.request.add_listener
def _record(name, start_time, response_time, exception, **_kw):
    _records.append((name, start_time, response_time, exception is None))


@events.quitting.add_listener
def _write_records(**_kw):
    if os.environ.get("LOAD_TIMES"):
        with open(os.environ["LOAD_TIMES"], "w") as fh:
            json.dump(_records, fh)


class _Client(HttpUser):
    abstract = True
    wait_time = constant(0)

    def on_start(self):
        self._next = random.randrange(len(UPLOADS))

    def uploads(self, n):
        picked = [UPLOADS[(self._next + i) % len(UPLOADS)] for i in range(n)]
        self._next += n
        return picked

    def post_upload(self, path, name, auth=False):
        headers = {"Authorization": f"Bearer {TOKEN}"} if auth else {}
        self.client.post(path, headers=headers, files={"file": self.uploads(1)[0]}, name=name)


class Health(_Client):
    @task
    def health(self):
        self.client.get("/health", name="health")


class V1Predict(_Client):
    @task
    def predict(self):
        self.post_upload("/api/v1/predict", "v1", auth=True)


class V2Predict(_Client):
    @task
    def predict(self):
        self.post_upload("/api/v2/predict", "v2", auth=True)


class V2ThenHealth(_Client):
    """v2 predict, then /health, in turns: one request at a time, the two side by side."""

    @task
    def predict_then_health(self):
        self.post_upload("/api/v2/predict", "v2", auth=True)
        self.client.get("/health", name="health")


class V2Batch(_Client):
    @task
    def predict_batch(self):
        files = [("files", upload) for upload in self.uploads(BATCH)]
        self.client.post("/api/v2/predict/batch", headers={"Authorization": f"Bearer {TOKEN}"}, files=files,
                         name="batch")


class NaivePredict(_Client):
    @task
    def predict(self):
        self.post_upload("/predict", "naive")


class BentoPredict(_Client):
    @task
    def predict(self):
        self.post_upload("/predict", "bento")
