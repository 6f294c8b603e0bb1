"""Prometheus metrics: what the service counts, and the ``/metrics`` scrape.

Under gunicorn every worker (and an RQ retrain worker on the same host) writes its samples
to files in ``PROMETHEUS_MULTIPROC_DIR`` (prometheus_client's multiprocess mode, switched
on by that variable before prometheus_client is first imported: gunicorn.conf.py sets and
empties it). A scrape, answered by any one worker, adds up every process's files. Without
the variable (``flask run``, the test client) the process's own registry is scraped.

Series computed from the database rather than counted in a process (drift over the
recent predictions, each version's error rate from its feedback, quarantined feedback by
reason) are produced at scrape time by ``DatabaseCollector``, so every worker reports the
same values.
"""

import hmac
import ipaddress
import os
import time

from flask import current_app, g, request
from prometheus_client import REGISTRY, CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.multiprocess import MultiProcessCollector

from app.errors import Forbidden, Unauthorized

MULTIPROCESS = "PROMETHEUS_MULTIPROC_DIR" in os.environ

# Resolve 1-100 ms (a predict is a few ms, a batch tens), and the slow tail above.
LATENCY_BUCKETS = (0.001, 0.002, 0.003, 0.005, 0.0075, 0.01, 0.015, 0.02, 0.03, 0.05, 0.075, 0.1,
                   0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
CONFIDENCE_BUCKETS = (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.85, 0.9, 0.95, 0.98, 0.99, 1.0)
RETRAIN_BUCKETS = (5, 10, 20, 30, 60, 120, 300, 600, 1800, 3600)

HTTP_REQUESTS = Counter("http_requests_total", "HTTP requests answered, by endpoint, method and status",
                        ["endpoint", "method", "status"])
HTTP_LATENCY = Histogram("http_request_duration_seconds", "Time from the request reaching Flask to its response",
                         ["endpoint", "method"], buckets=LATENCY_BUCKETS)
RATE_LIMITED = Counter("http_rate_limited_total", "Requests refused by a rate limit (429), by endpoint", ["endpoint"])
PREDICTIONS = Counter("digit_predictions_total", "Digits predicted, by digit and model version",
                      ["digit", "model_version"])
CONFIDENCE = Histogram("digit_prediction_confidence", "Confidence served with each prediction",
                       buckets=CONFIDENCE_BUCKETS)
UPLOAD_REFUSALS = Counter("digit_upload_refusals_total", "Uploads refused, by error code", ["code"])
FEEDBACK = Counter("digit_feedback_total", "Labels received: on a prediction, or with a new upload", ["source"])
FEEDBACK_ON_PREDICTIONS = Counter(
    "digit_feedback_predictions_total",
    "Labels given on predictions, by the version that predicted and whether the label agrees with it "
    "(disagrees / all = that version's error rate on real traffic, as label events)",
    ["model_version", "outcome"])
RETRAIN_JOBS = Counter("digit_retrain_jobs_total", "Retrain jobs finished, by outcome", ["outcome"])
RETRAIN_DURATION = Histogram("digit_retrain_duration_seconds", "Retrain job wall time, by outcome", ["outcome"],
                             buckets=RETRAIN_BUCKETS)
MODEL_SERVED = Gauge("digit_model_served", "1 for the model version this process serves (0 for ones it served before)",
                     ["version"], multiprocess_mode="liveall")
MODEL_SWAPS = Counter("digit_model_swaps_total", "Times a process started serving another model version")


def _enabled():
    """METRICS_ENABLED=false turns every observation off (what bench/metrics_cost.py compares)."""
    return current_app.config["METRICS_ENABLED"]


def observe_predictions(results):
    """Count served predictions (objects with ``predicted``, ``confidence``, ``model_version``)."""
    if not _enabled():
        return
    for result in results:
        PREDICTIONS.labels(str(result.predicted), result.model_version).inc()
        CONFIDENCE.observe(result.confidence)


def observe_refusal(code):
    if not _enabled():
        return
    UPLOAD_REFUSALS.labels(code).inc()


def observe_feedback(feedback, prediction=None):
    if not _enabled():
        return
    if prediction is None:
        FEEDBACK.labels("upload").inc()
        return
    FEEDBACK.labels("prediction").inc()
    outcome = "agrees" if feedback.label == prediction.predicted else "disagrees"
    FEEDBACK_ON_PREDICTIONS.labels(prediction.model_version, outcome).inc()


def observe_retrain(job):
    if not _enabled():
        return
    RETRAIN_JOBS.labels(job.status).inc()
    if job.started_at and job.finished_at:
        RETRAIN_DURATION.labels(job.status).observe((job.finished_at - job.started_at).total_seconds())


def observe_model_swap(previous, current):
    if not _enabled():
        return
    if previous is not None:
        MODEL_SERVED.labels(previous).set(0)
        MODEL_SWAPS.inc()
    MODEL_SERVED.labels(current).set(1)


class DatabaseCollector:
    """Gauges read from the database at scrape time (the same in every worker)."""

    def collect(self):
        from app.services import feedback, monitoring, review

        drift = GaugeMetricFamily("digit_drift_psi", "Population stability index of the recent predictions against "
                                  "the live model's held-out digits (<0.1 stable, >0.25 shifted)",
                                  labels=["distribution"])
        window = monitoring.drift_window()
        for distribution in ("digit", "confidence"):
            value = window[f"{distribution}_psi"]
            if value is not None:
                drift.add_metric([distribution], value)
        yield drift
        yield GaugeMetricFamily("digit_drift_window_predictions", "Recent predictions of the live version in the "
                                "drift window", value=window["predictions"])
        error_rate = GaugeMetricFamily("digit_feedback_error_rate", "Share of labelled predictions whose label "
                                       "disagrees with the prediction, by model version", labels=["model_version"])
        for version, row in feedback.stats()["per_model_version"].items():
            if row["error_rate"] is not None:  # None: labelled uploads, no prediction to disagree with
                error_rate.add_metric([version], row["error_rate"])
        yield error_rate
        held = GaugeMetricFamily("digit_feedback_quarantined", "Feedback held back from training by the trust rules, "
                                 "waiting in the review queue, by reason", labels=["reason"])
        for reason, count in review.quarantined_by_reason().items():
            held.add_metric([reason], count)
        yield held


def check_scraper():
    """Refuse a request that may not scrape: a configured token is required from everyone
    (401 without it); without one, loopback only, and never in production (403)."""
    token = current_app.config["METRICS_TOKEN"]
    if token:
        if not hmac.compare_digest(request.headers.get("Authorization", "").encode(), f"Bearer {token}".encode()):
            raise Unauthorized("send the METRICS_TOKEN as a bearer token")
        return
    if current_app.config["APP_ENV"] == "production":
        raise Forbidden("set METRICS_TOKEN to scrape /metrics in production")
    try:
        loopback = ipaddress.ip_address(request.remote_addr or "").is_loopback
    except ValueError:
        loopback = False
    if not loopback:
        raise Forbidden("without a METRICS_TOKEN only loopback may scrape /metrics")


def scrape():
    """One scrape: every process's counts plus the database gauges."""
    database = CollectorRegistry(auto_describe=False)
    database.register(DatabaseCollector())
    if MULTIPROCESS:
        processes = CollectorRegistry()
        MultiProcessCollector(processes)
    else:
        processes = REGISTRY
    return generate_latest(processes) + generate_latest(database)


def init_app(app):
    """Count every request and its time (from ``g.request_started``, set by app.logs)
    unless ``METRICS_ENABLED`` is false."""
    if not app.config["METRICS_ENABLED"]:
        return

    @app.after_request
    def _count(response):
        started = g.get("request_started")
        endpoint = request.endpoint or "unmatched"  # route names, never raw paths: bounded label values
        HTTP_REQUESTS.labels(endpoint, request.method, str(response.status_code)).inc()
        if started is not None:
            HTTP_LATENCY.labels(endpoint, request.method).observe(time.perf_counter() - started)
        if response.status_code == 429:
            RATE_LIMITED.labels(endpoint).inc()
        return response
