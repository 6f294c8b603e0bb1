"""/metrics access, the series that move with each event, and drift in /admin/stats (test client).

The test process keeps one Prometheus registry for every app it builds, so the checks
compare values before and after an event.
"""

import csv
import io

import numpy as np
import pytest
from prometheus_client.parser import text_string_to_metric_families

from app.ml import drift
from support import FIXTURES, AuthActions, mnist_png


def samples(client, **kwargs):
    response = client.get("/metrics", **kwargs)
    assert response.status_code == 200, response.get_json()
    return [s for family in text_string_to_metric_families(response.get_data(as_text=True)) for s in family.samples]


def value(found, name, **labels):
    return sum(s.value for s in found if s.name == name and all(s.labels.get(k) == v for k, v in labels.items()))


def test_loopback_may_scrape_without_a_token_others_may_not(client):
    assert client.get("/metrics").status_code == 200
    refused = client.get("/metrics", environ_base={"REMOTE_ADDR": "203.0.113.9"})
    assert refused.status_code == 403 and refused.get_json()["error"]["code"] == "forbidden"


def test_a_configured_token_is_required_even_from_loopback(make_app):
    client = make_app(METRICS_TOKEN="s3cret-scrape-token").test_client()
    missing = client.get("/metrics")
    assert missing.status_code == 401 and missing.get_json()["error"]["code"] == "unauthorized"
    assert client.get("/metrics", headers={"Authorization": "Bearer nope"}).status_code == 401
    assert client.get("/metrics", headers={"Authorization": "Bearer s3cret-scrape-token"}).status_code == 200


def test_production_without_a_token_refuses_every_scrape(make_app):
    client = make_app(APP_ENV="production").test_client()
    assert client.get("/metrics").status_code == 403


def test_metrics_can_be_turned_off(make_app):
    client = make_app(METRICS_ENABLED=False).test_client()
    before = value(samples(make_app().test_client()), "digit_upload_refusals_total", code="empty_upload")
    assert client.get("/metrics").status_code == 404
    auth = AuthActions(client, client.application)
    assert client.post("/api/v2/predict", headers=auth.headers(),
                       data={"file": (io.BytesIO(b""), "d.png")}).status_code == 400
    after = value(samples(make_app().test_client()), "digit_upload_refusals_total", code="empty_upload")
    assert after == before  # nothing observed while turned off


def test_series_move_with_their_events(app, client, auth, replay_digits):
    x, _ = replay_digits
    headers = auth.headers()
    before = samples(client)
    prediction = client.post("/api/v2/predict", headers=headers,
                             data={"file": (io.BytesIO(mnist_png(x[1])), "d.png")}).get_json()
    version = prediction["model_version"]
    assert client.post("/api/v2/predict", headers=headers, data={"file": (io.BytesIO(b"not an image"), "d.png")}
                       ).status_code == 415
    wrong = (prediction["prediction"] + 1) % 10
    assert client.post("/api/v2/feedback", headers=headers,
                       json={"prediction_id": prediction["prediction_id"], "label": wrong}).status_code == 201
    after = samples(client)

    def moved(name, **labels):
        return value(after, name, **labels) - value(before, name, **labels)

    assert moved("digit_predictions_total", digit=str(prediction["prediction"]), model_version=version) == 1
    assert moved("digit_prediction_confidence_count") == 1
    assert moved("digit_upload_refusals_total", code="not_an_image") == 1
    assert moved("http_requests_total", endpoint="predict_v2.predict", method="POST", status="415") == 1
    assert moved("digit_feedback_total", source="prediction") == 1
    assert moved("digit_feedback_predictions_total", model_version=version, outcome="disagrees") == 1
    assert value(after, "digit_feedback_error_rate", model_version=version) == 1.0
    assert value(after, "digit_model_served", version=version) == 1


def test_rate_limit_refusals_are_counted(make_app):
    client = make_app(RATELIMIT_ENABLED=True, RATELIMIT_LOGIN="1 per minute").test_client()
    before = value(samples(client), "http_rate_limited_total", endpoint="auth.login")
    for _ in range(2):
        client.post("/auth/login", json={"username": "nobody", "password": "wrong-password"})
    assert value(samples(client), "http_rate_limited_total", endpoint="auth.login") - before == 1


def _predict_files(client, headers, files):
    for data in files:
        assert client.post("/api/v2/predict", headers=headers, data={"file": (io.BytesIO(data), "d.png")}).status_code == 200


def test_drift_reacts_to_a_skewed_stream_of_digits(make_app):
    with open(FIXTURES / "mnist50" / "labels.csv") as fh:
        rows = list(csv.DictReader(fh))
    varied = [(FIXTURES / "mnist50" / row["file"]).read_bytes() for row in rows]
    one_digit = next((FIXTURES / "mnist50" / r["file"]).read_bytes() for r in rows if r["label"] == "1")

    def stats_after(files):
        app = make_app()
        client = app.test_client()
        auth = AuthActions(client, app)
        _predict_files(client, auth.headers(), files)
        response = client.get("/admin/stats", headers=auth.admin_headers())
        assert response.status_code == 200
        return response.get_json()

    balanced = stats_after(varied)["drift"]
    skewed = stats_after([one_digit] * 50)
    assert balanced["predictions"] == skewed["drift"]["predictions"] == 50
    assert skewed["drift"]["recent_digit_share"][1] == 1.0
    assert balanced["digit_psi"] < 0.25 < 2.0 < skewed["drift"]["digit_psi"]
    assert skewed["drift"]["model_version"] == skewed["live_model_version"]
    assert sum(balanced["reference_digit_share"]) == pytest.approx(1.0, abs=1e-3)


def test_admin_stats_is_for_admins_only(client, auth):
    assert client.get("/admin/stats").status_code == 401
    assert client.get("/admin/stats", headers=auth.headers()).status_code == 403


def test_population_stability_index():
    uniform = np.full(10, 100)
    assert drift.population_stability_index(uniform, uniform) == 0.0
    shifted = np.array([100] * 9 + [400])
    assert 0.1 < drift.population_stability_index(uniform, shifted) < drift.population_stability_index(
        uniform, np.array([0] * 9 + [100]))
    confidence = np.linspace(0.5, 1.0, 1000)
    edges = drift.confidence_edges(confidence)
    assert drift.confidence_counts(confidence, edges).tolist() == [100] * 10
