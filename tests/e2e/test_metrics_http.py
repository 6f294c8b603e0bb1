"""Metrics and logs on a real 2-worker gunicorn server: one scrape sees every worker."""

import json
import time
import uuid

import pytest
import requests
from prometheus_client.parser import text_string_to_metric_families

from support import FINISHED, FRESH, LOOP_ENV, ask_every_worker, feed, mnist_png, wait_status

pytestmark = pytest.mark.e2e

TOKEN = "metrics-" + uuid.uuid4().hex


def scrape(server):
    response = requests.get(server.url + "/metrics", headers={"Authorization": f"Bearer {TOKEN}"}, timeout=30)
    assert response.status_code == 200, response.text
    assert response.headers["Content-Type"].startswith("text/plain")
    return [sample for family in text_string_to_metric_families(response.text) for sample in family.samples]


def total(samples, name, **labels):
    return sum(s.value for s in samples if s.name == name and all(s.labels.get(k) == v for k, v in labels.items()))


def served(samples):
    """{pid: version} of the model each live worker reports serving."""
    return {s.labels["pid"]: s.labels["version"] for s in samples if s.name == "digit_model_served" and s.value == 1}


def test_one_scrape_counts_every_worker_and_follows_a_hot_swap(live_server, tiny_model_source, replay_digits):
    env = {**LOOP_ENV, "METRICS_TOKEN": TOKEN, "LOG_FORMAT": "json"}
    server = live_server(env=env, workers=2, model_source=tiny_model_source)
    user = server.register("counted")
    admin = server.create_admin()
    x, _ = replay_digits

    assert requests.get(server.url + "/metrics", timeout=30).status_code == 401
    assert requests.get(server.url + "/metrics", headers={"Authorization": "Bearer wrong"}, timeout=30).status_code == 401

    request_id = uuid.uuid4().hex
    answers = ask_every_worker(lambda: requests.post(
        server.url + "/api/v2/predict", headers={**user, **FRESH, "X-Request-ID": request_id}, timeout=30,
        files={"file": ("d.png", mnist_png(x[7]))}))
    assert all(a.status_code == 200 for a in answers)
    refused = requests.post(server.url + "/api/v2/predict", headers=user, timeout=30,
                            files={"file": ("empty.png", b"")})
    assert refused.status_code == 400

    samples = scrape(server)
    predicted = len(answers)
    assert total(samples, "digit_predictions_total", model_version="tiny-1") == predicted
    assert total(samples, "digit_prediction_confidence_count") == predicted
    assert total(samples, "http_requests_total", endpoint="predict_v2.predict", method="POST", status="200") == predicted
    assert total(samples, "http_request_duration_seconds_count", endpoint="predict_v2.predict") == predicted + 1
    assert total(samples, "digit_upload_refusals_total", code="empty_upload") == 1
    assert sorted(served(samples).values()) == ["tiny-1", "tiny-1"]

    # Labels on predictions: one agrees with what was predicted, one does not.
    first = answers[0].json()
    wrong_label = (first["prediction"] + 1) % 10
    for prediction, label in ((first, first["prediction"]), (answers[1].json(), wrong_label)):
        response = requests.post(server.url + "/api/v2/feedback", headers=user, timeout=30,
                                 json={"prediction_id": prediction["prediction_id"], "label": label})
        assert response.status_code == 201
    feed(server, user, replay_digits)
    samples = scrape(server)
    assert total(samples, "digit_feedback_predictions_total", model_version="tiny-1", outcome="agrees") == 1
    assert total(samples, "digit_feedback_predictions_total", model_version="tiny-1", outcome="disagrees") == 1
    assert total(samples, "digit_feedback_total", source="upload") == 24
    assert total(samples, "digit_feedback_error_rate", model_version="tiny-1") == 0.5

    job_id = requests.post(server.url + "/admin/retrain", headers=admin, json={}, timeout=30).json()["job_id"]
    job = wait_status(server, admin, job_id, FINISHED)
    assert job["status"] == "succeeded", job
    deadline = time.monotonic() + 60
    while sorted(served(samples := scrape(server)).values()) != [job["model_version"]] * 2:
        assert time.monotonic() < deadline, served(samples)
        time.sleep(0.3)
    assert total(samples, "digit_model_swaps_total") == 2  # each worker, once
    assert total(samples, "digit_retrain_jobs_total", outcome="succeeded") == 1
    assert total(samples, "digit_retrain_duration_seconds_count", outcome="succeeded") == 1

    # JSON logs: every line the app wrote parses, and the request line carries our request id.
    app_lines = [json.loads(line) for line in server.log_path.read_text().splitlines() if line.startswith("{")]
    assert app_lines, server.log()
    mine = [line for line in app_lines if line.get("request_id") == request_id and line["logger"] == "app.requests"]
    assert len(mine) == predicted
    assert {line["status"] for line in mine} == {200}
    assert all(line["endpoint"] == "predict_v2.predict" and line["duration_ms"] > 0 and line["user_id"] for line in mine)
    phases = [line["phase"] for line in app_lines if line.get("job_id") == job_id]
    assert phases == ["started", "data", "gated", "finished"]
