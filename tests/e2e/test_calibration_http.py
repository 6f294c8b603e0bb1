"""Calibration over real HTTP on two gunicorn workers: every worker serves the active version's
temperature, and follows when it changes (cleared, refitted)."""

import json
import time

import numpy as np
import pytest
import requests

from support import FRESH, ask_every_worker, mnist_png


@pytest.mark.parametrize("database", ["sqlite", "postgres"])
def test_every_worker_follows_the_versions_temperature(live_server, replay_digits, database):
    server = live_server(workers=2, env={"SERVED_BY_HEADER": "true", "MODEL_SYNC_SECONDS": "0.5"}, database=database)
    manifest = json.loads((server.model_dir / "manifest.json").read_text())
    user = server.register("caller")
    image = mnist_png(replay_digits[0][7])

    def ask():
        return requests.post(server.url + "/api/v2/predict", headers={**user, **FRESH}, timeout=30,
                             files={"file": ("d.png", image)})

    def answers_until(done, timeout=30):
        """Every worker's latest answer, asked again until each one satisfies ``done``."""
        deadline = time.monotonic() + timeout
        while True:
            latest = {}
            for r in ask_every_worker(ask):
                assert r.status_code == 200, r.text
                latest[r.headers["X-Served-By"]] = r.json()
            if all(done(body) for body in latest.values()):
                return list(latest.values())
            assert time.monotonic() < deadline, latest
            time.sleep(0.2)

    calibrated = answers_until(lambda b: True)
    assert len({b["confidence"] for b in calibrated}) == 1  # both workers answer alike
    shipped = calibrated[0]

    server.cli("model", "calibrate", "--clear")
    plain = answers_until(lambda b: b["confidence"] != shipped["confidence"])[0]
    assert plain["prediction"] == shipped["prediction"] and plain["model_version"] == "base-1"
    # The graph's own softmax p and the shipped answer softmax(log p / T) agree (to rounding).
    p = np.array(plain["probabilities"])
    expected = np.exp(np.log(np.maximum(p, 1e-12)) / manifest["temperature"])
    assert np.allclose(shipped["probabilities"], expected / expected.sum(), atol=1e-3)
    assert shipped["confidence"] > plain["confidence"]

    refit = json.loads(server.cli("model", "calibrate").stdout.strip().splitlines()[-1])
    assert refit["temperature"] == manifest["temperature"]
    again = answers_until(lambda b: b["confidence"] == shipped["confidence"])
    assert all(b["probabilities"] == shipped["probabilities"] for b in again)
