"""RETRAIN_BACKEND=rq: the web server only enqueues; a separate `rq worker` process trains."""

import os
import subprocess
import time
import uuid

import pytest
import requests

from support import BIN, FINISHED, LOOP_ENV, REDIS_SKIP_REASON, ROOT, feed, wait_status

pytestmark = pytest.mark.e2e


def test_retrain_runs_on_an_rq_worker_and_every_worker_swaps(live_server, tiny_model_source, replay_digits, tmp_path):
    redis_url = os.environ.get("TEST_REDIS_URL")
    if not redis_url:
        pytest.skip(REDIS_SKIP_REASON)
    queue = f"retrain-test-{uuid.uuid4().hex[:8]}"
    # The rq worker shares the web workers' metrics folder, so one scrape counts its job too.
    metrics_dir = tmp_path / "metrics"
    metrics_dir.mkdir()
    env = {**LOOP_ENV, "RETRAIN_BACKEND": "rq", "REDIS_URL": redis_url, "RETRAIN_QUEUE": queue,
           "PROMETHEUS_MULTIPROC_DIR": str(metrics_dir), "METRICS_TOKEN": "rq-test-metrics-token"}
    server = live_server(env=env, model_source=tiny_model_source)
    admin = server.create_admin()
    user = server.register("feeder")
    feed(server, user, replay_digits)

    job_id = requests.post(server.url + "/admin/retrain", headers=admin, json={}, timeout=30).json()["job_id"]
    # Nobody consumes the queue yet: the job waits, and a second request is still refused.
    assert requests.get(f"{server.url}/admin/retrain/{job_id}", headers=admin, timeout=30).json()["status"] == "queued"
    assert requests.post(server.url + "/admin/retrain", headers=admin, json={}, timeout=30).status_code == 409

    worker = subprocess.run([str(BIN / "rq"), "worker", queue, "--url", redis_url, "--burst"],
                            cwd=ROOT, env={**server.env}, capture_output=True, text=True, timeout=600)
    assert worker.returncode == 0, worker.stderr[-3000:]
    job = wait_status(server, admin, job_id, FINISHED, timeout=60)
    assert job["status"] == "succeeded", job
    served = None
    for _ in range(50):
        served = requests.get(server.url + "/ready", timeout=30).json()["model_version"]
        if served == job["model_version"]:
            break
        time.sleep(0.2)
    assert served == job["model_version"]
    scrape = requests.get(server.url + "/metrics", headers={"Authorization": "Bearer rq-test-metrics-token"}, timeout=30)
    assert 'digit_retrain_jobs_total{outcome="succeeded"} 1.0' in scrape.text
