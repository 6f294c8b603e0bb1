"""Predictions: preprocess uploads, run one batched inference, store what was asked and answered."""

import hashlib

from flask import current_app
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert

from app.entities import Prediction, StoredImage
from app.extensions import db
from app.ml.preprocessing import ImageRejected, preprocess


def store_image(data, content_type=None):
    """Keep the original upload once, by content digest, so retraining can re-read it later."""
    digest = hashlib.sha256(data).hexdigest()
    insert = pg_insert if db.engine.dialect.name == "postgresql" else sqlite_insert
    db.session.execute(
        insert(StoredImage)
        .values(sha256=digest, content_type=content_type, size=len(data), data=data)
        .on_conflict_do_nothing(index_elements=["sha256"])
    )
    return digest


def preprocess_uploads(uploads):
    """Turn raw uploads into model inputs; the first bad one refuses the whole request."""
    import numpy as np

    max_pixels = current_app.config["MAX_IMAGE_PIXELS"]
    arrays = []
    for index, upload in enumerate(uploads):
        try:
            arrays.append(preprocess(upload.data, max_pixels=max_pixels))
        except ImageRejected as exc:
            if len(uploads) == 1:
                raise
            # Same refusal, but say which file of the batch it was.
            raise type(exc)(f"file {index} ({upload.filename or 'unnamed'}): {exc}") from exc
    return np.stack(arrays)


def predict_uploads(uploads, *, user_id, api_version):
    """Predict every upload in one inference call and store each as a ``Prediction`` row.

    Nothing is written unless every upload was a valid image and the model answered.
    """
    batch = preprocess_uploads(uploads)
    probabilities, version = current_app.extensions["model_service"].predict(batch)
    rows = []
    for upload, probs in zip(uploads, probabilities):
        digest = store_image(upload.data, upload.content_type)
        probs = [round(float(p), 6) for p in probs]
        predicted = max(range(len(probs)), key=probs.__getitem__)
        row = Prediction(
            user_id=user_id,
            image_sha256=digest,
            predicted=predicted,
            confidence=probs[predicted],
            probabilities=probs,
            model_version=version,
            api_version=api_version,
        )
        db.session.add(row)
        rows.append(row)
    db.session.commit()
    return rows, version
