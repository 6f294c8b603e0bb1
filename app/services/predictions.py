"""Predictions: preprocess uploads, run one batched inference, store what was asked and answered."""

import hashlib
import os
from dataclasses import dataclass

from flask import current_app
from sqlalchemy import insert
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.orm import selectinload

from app.entities import Prediction, StoredImage
from app.extensions import db
from app.metrics import observe_predictions
from app.services.pagination import page_body, page_of

# Core inserts on the tables, built once. Same SQL and column defaults as the ORM-enabled
# forms, without the ORM bulk-insert bookkeeping, which cost about as much as the database
# work itself for one small upload (SQLite and PostgreSQL alike).
_INSERT_IMAGE = {
    "postgresql": pg_insert(StoredImage.__table__).on_conflict_do_nothing(index_elements=["sha256"]),
    "sqlite": sqlite_insert(StoredImage.__table__).on_conflict_do_nothing(index_elements=["sha256"]),
}
# One multi-row INSERT ... RETURNING; sort_by_parameter_order keeps ids in upload order.
_INSERT_PREDICTIONS = insert(Prediction.__table__).returning(
    Prediction.__table__.c.id, sort_by_parameter_order=True
)


@dataclass(frozen=True)
class PredictionResult:
    """What a predict endpoint answers with, kept from the insert (no re-read after commit)."""

    id: int
    predicted: int
    confidence: float
    probabilities: list
    model_version: str
    api_version: str


def store_images(uploads):
    """Keep each original upload once, by content digest, so retraining can re-read it later.

    One executemany for the whole batch (SQLAlchemy pages it, so any batch size fits the
    driver's parameter limits); images already stored are left as they are.
    Returns the digests in the order of ``uploads``.
    """
    digests = [hashlib.sha256(upload.data).hexdigest() for upload in uploads]
    rows = {}
    for digest, upload in zip(digests, uploads):
        rows.setdefault(digest, {"sha256": digest, "content_type": upload.content_type,
                                 "size": len(upload.data), "data": upload.data})
    statement = _INSERT_IMAGE["postgresql" if db.engine.dialect.name == "postgresql" else "sqlite"]
    db.session.execute(statement, list(rows.values()))
    return digests


def preprocess_uploads(uploads):
    """Turn raw uploads into model inputs; the first bad one refuses the whole request."""
    # Here: building the app must not load the ML stack.
    from app.ml.preprocessing import ImageRejected, preprocess_many

    # A batch takes as many threads as its inference may (one per core by default);
    # threads, not helper processes, which cost each worker far more memory.
    threads = current_app.config["INFERENCE_THREADS"] or os.cpu_count() or 1
    try:
        return preprocess_many([upload.data for upload in uploads], threads=threads,
                               max_pixels=current_app.config["MAX_IMAGE_PIXELS"])
    except ImageRejected as exc:
        if len(uploads) == 1:
            raise
        # Same refusal, but say which file of the batch it was.
        upload = uploads[exc.index]
        raise type(exc)(f"file {exc.index} ({upload.filename or 'unnamed'}): {exc}") from exc


def predict_uploads(uploads, *, user_id, api_version):
    """Predict every upload in one inference call and store each as a ``Prediction`` row.

    Nothing is written unless every upload was a valid image and the model answered.
    Returns ``([PredictionResult, ...], model_version)`` in the order of ``uploads``.
    """
    batch = preprocess_uploads(uploads)
    probabilities, version = current_app.extensions["model_service"].predict(batch)
    digests = store_images(uploads)
    values = []
    for digest, probs in zip(digests, probabilities):
        probs = [round(float(p), 6) for p in probs]
        predicted = max(range(len(probs)), key=probs.__getitem__)
        values.append({
            "user_id": user_id,
            "image_sha256": digest,
            "predicted": predicted,
            "confidence": probs[predicted],
            "probabilities": probs,
            "model_version": version,
            "api_version": api_version,
        })
    ids = db.session.scalars(_INSERT_PREDICTIONS, values).all()
    db.session.commit()
    results = [
        PredictionResult(id=id_, predicted=v["predicted"], confidence=v["confidence"],
                         probabilities=v["probabilities"], model_version=version, api_version=api_version)
        for id_, v in zip(ids, values)
    ]
    observe_predictions(results)
    return results, version


def list_own(user_id, page, per_page):
    """The caller's own predictions, newest first, each with the label they gave it (if any)."""
    query = (db.select(Prediction).filter_by(user_id=user_id).options(selectinload(Prediction.feedback))
             .order_by(Prediction.id.desc()))
    rows, total = page_of(query, page, per_page)
    return page_body([_own_body(row) for row in rows], page=page, per_page=per_page, total=total)


def prediction_body(prediction):
    """The v2 answer for one prediction: a ``PredictionResult`` or a stored ``Prediction``."""
    return {
        "prediction": prediction.predicted,
        "confidence": prediction.confidence,
        "probabilities": prediction.probabilities,
        "model_version": prediction.model_version,
        "prediction_id": prediction.id,
        "api_version": prediction.api_version,
    }


def _own_body(row):
    return {**prediction_body(row), "created_at": row.created_at,
            "feedback_label": row.feedback.label if row.feedback else None}
