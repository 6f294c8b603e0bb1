"""How the live model is doing on real traffic: drift of recent predictions, and each
version's error rate as its users' labels tell it (``GET /admin/stats`` and ``/metrics``)."""

import threading

import numpy as np
from flask import current_app
from sqlalchemy import func

from app.entities import Feedback, Prediction
from app.extensions import db
from app.ml import drift
from app.ml.datasets import as_float_images, load_replay
from app.services import feedback as feedback_service

# Reference distributions per served version: the live model's own predictions on the
# shipped held-out digits (computed once per version and process: about 1,000 images).
_references = {}
_references_lock = threading.Lock()


def _reference(model_dir):
    """(version, digit counts, confidences) of the served model on the held-out digits, or None."""
    service = current_app.extensions["model_service"]
    version = service.ensure_loaded(quiet=True)
    if version is None:
        return None
    # The temperature too: its confidences change when a version's calibration does.
    key = (model_dir, version, service.current_temperature)
    with _references_lock:
        if key not in _references:
            holdout = load_replay(model_dir)[2]
            if holdout is None:
                return None
            probabilities, served = service.predict(as_float_images(holdout[0]))
            if served != version:  # swapped meanwhile: the next call computes the new one
                return None
            _references[key] = (version, drift.digit_counts(probabilities.argmax(1)), probabilities.max(1))
        return _references[key]


def drift_window():
    """Recent predictions of the served version against its held-out reference."""
    window = current_app.config["DRIFT_WINDOW"]
    body = {"model_version": None, "window": window, "predictions": 0, "digit_psi": None, "confidence_psi": None,
            "recent_digit_share": None, "reference_digit_share": None}
    reference = _reference(current_app.config["MODEL_DIR"])
    if reference is None:
        return body
    version, reference_digits, reference_confidence = reference
    rows = db.session.execute(
        db.select(Prediction.predicted, Prediction.confidence)
        .where(Prediction.model_version == version).order_by(Prediction.id.desc()).limit(window)
    ).all()
    body.update(model_version=version, predictions=len(rows),
                reference_digit_share=_shares(reference_digits))
    if not rows:
        return body
    predicted = np.array([r[0] for r in rows])
    confidence = np.array([r[1] for r in rows])
    recent_digits = drift.digit_counts(predicted)
    edges = drift.confidence_edges(reference_confidence)
    body.update(
        recent_digit_share=_shares(recent_digits),
        digit_psi=round(drift.population_stability_index(reference_digits, recent_digits), 4),
        confidence_psi=round(drift.population_stability_index(
            drift.confidence_counts(reference_confidence, edges), drift.confidence_counts(confidence, edges)), 4),
    )
    return body


def _shares(counts):
    total = max(int(np.sum(counts)), 1)
    return [round(int(c) / total, 4) for c in counts]


def feedback_by_day(days=30):
    """Accepted labels on predictions per day and predicting version, with how many disagreed:
    the error-rate estimate over time."""
    day = func.date(Feedback.created_at)
    rows = db.session.execute(
        feedback_service.error_counts(day, Prediction.model_version).order_by(day.desc()).limit(days * 10)
    ).all()
    return [{"day": str(d), "model_version": v, "feedback": n, "wrong": int(w or 0),
             "error_rate": round(int(w or 0) / n, 4)} for d, v, n, w in reversed(rows)]


def predictions_per_version():
    return dict(db.session.execute(
        db.select(Prediction.model_version, func.count()).group_by(Prediction.model_version)).all())


def stats():
    """Everything the admin page and the scrape need, from the database."""
    feedback = feedback_service.stats()
    predictions = predictions_per_version()
    versions = [
        {"model_version": version, "predictions": predictions.get(version, 0), "feedback": row["feedback"],
         "wrong": row["wrong"], "error_rate": row["error_rate"]}
        for version, row in feedback["per_model_version"].items() if row["wrong"] is not None
    ]
    return {
        "live_model_version": feedback["live_model_version"],
        "drift": drift_window(),
        "versions": versions,
        "predictions_per_version": predictions,
        "feedback": feedback,
        "feedback_by_day": feedback_by_day(),
    }
