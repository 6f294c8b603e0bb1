"""Feedback: users' true labels, the rules on who may give them, and the admin's view."""


from sqlalchemy import func
from sqlalchemy.exc import IntegrityError

from app.entities import FEEDBACK_STATUSES, Feedback, Prediction, RetrainJob, utcnow
from app.errors import Conflict, Forbidden, NotFound, ValidationFailed
from app.extensions import db
from app.metrics import observe_feedback
from app.services.model_versions import ensure_active_version
from app.services.pagination import page_body, page_of
from app.services.predictions import preprocess_uploads, store_images


def _check_label(label):
    if isinstance(label, bool) or not isinstance(label, int) or not 0 <= label <= 9:
        raise ValidationFailed("label must be an integer from 0 to 9", details={"label": ["0-9"]})
    return label


def get_prediction(prediction_id):
    prediction = db.session.get(Prediction, prediction_id)
    if prediction is None:
        raise NotFound(f"prediction {prediction_id} not found", code="prediction_not_found")
    return prediction


def give_feedback(prediction_id, label, *, user_id, is_admin):
    """Label one of the caller's predictions (admins: any); again replaces the label.

    Returns ``(feedback, created)``.
    """
    label = _check_label(label)
    prediction = get_prediction(prediction_id)
    if prediction.user_id != user_id and not is_admin:
        raise Forbidden("you can only give feedback on your own predictions")
    feedback = prediction.feedback
    if feedback is not None:
        # An admin's decision is final for the account: else a held label could be swapped after review.
        if feedback.reviewed_by is not None and not is_admin:
            raise _reviewed(feedback.id)
        feedback.label = label
        feedback.updated_at = utcnow()
        db.session.flush()
        # Checked again holding the row's write lock: an admin may have reviewed it since it was read.
        reviewer = db.session.scalar(db.select(Feedback.reviewed_by).where(Feedback.id == feedback.id))
        if reviewer is not None and not is_admin:
            db.session.rollback()
            raise _reviewed(feedback.id)
        db.session.commit()
        observe_feedback(feedback, prediction)
        return feedback, False
    feedback = Feedback(
        prediction_id=prediction.id, user_id=user_id, image_sha256=prediction.image_sha256, label=label
    )
    db.session.add(feedback)
    try:
        db.session.commit()
    except IntegrityError:  # the same prediction labelled concurrently: replace instead
        db.session.rollback()
        return give_feedback(prediction_id, label, user_id=user_id, is_admin=is_admin)
    observe_feedback(feedback, prediction)
    return feedback, True


def _reviewed(feedback_id):
    return Conflict("an admin has reviewed this label; it can no longer be changed", code="feedback_reviewed",
                    details={"feedback_id": feedback_id})


def give_labelled_sample(upload, label, *, user_id):
    """A labelled image with no earlier prediction; it must be an image with a digit in it."""
    label = _check_label(label)
    preprocess_uploads([upload])  # refuse what retraining could not use, before storing anything
    [digest] = store_images([upload])
    feedback = Feedback(prediction_id=None, user_id=user_id, image_sha256=digest, label=label)
    db.session.add(feedback)
    db.session.commit()
    observe_feedback(feedback)
    return feedback


def serialize(feedback):
    prediction = feedback.prediction
    return {
        "id": feedback.id,
        "prediction_id": feedback.prediction_id,
        "label": feedback.label,
        "status": feedback.status,
        "predicted": prediction.predicted if prediction else None,
        "model_version": prediction.model_version if prediction else None,
        "created_at": feedback.created_at,
        "updated_at": feedback.updated_at,
    }


def list_own(user_id, page, per_page):
    query = db.select(Feedback).filter_by(user_id=user_id).order_by(Feedback.id.desc())
    rows, total = page_of(query, page, per_page)
    return page_body([serialize(f) for f in rows], page=page, per_page=per_page, total=total)


def error_counts(*by):
    """Per group of the ``by`` columns: how many accepted labels there are on predictions and how
    many of those predictions they call wrong (a quarantined or rejected label is not
    believed, so it is no evidence that the model erred)."""
    return (
        db.select(*by, func.count(), func.sum(db.case((Prediction.predicted != Feedback.label, 1), else_=0)))
        .select_from(Feedback)
        .join(Prediction, Feedback.prediction_id == Prediction.id)
        .where(Feedback.status == "accepted")
        .group_by(*by)
    )


def stats():
    """Counts per label, status and model version, and how often the live model was wrong
    (by the accepted labels: a quarantined or rejected one is not evidence of an error)."""
    total = db.session.scalar(db.select(func.count(Feedback.id)))
    labels = db.session.execute(db.select(Feedback.label, func.count()).group_by(Feedback.label))
    per_label = {str(d): 0 for d in range(10)} | {str(label): count for label, count in labels}
    statuses = db.session.execute(db.select(Feedback.status, func.count()).group_by(Feedback.status))
    per_status = dict.fromkeys(FEEDBACK_STATUSES, 0) | dict(statuses.all())

    per_version = {}
    for version, count, wrong in db.session.execute(error_counts(Prediction.model_version)):
        wrong = int(wrong or 0)
        per_version[version] = {"feedback": count, "wrong": wrong, "error_rate": round(wrong / count, 4)}
    uploads_only = db.session.scalar(db.select(func.count(Feedback.id)).where(Feedback.prediction_id.is_(None)))
    if uploads_only:
        per_version["(labelled uploads)"] = {"feedback": uploads_only, "wrong": None, "error_rate": None}

    live = ensure_active_version()
    live_stats = per_version.get(live.version) if live else None
    # When the last successful retrain started: feedback after that is new to the model.
    since = db.session.scalar(db.select(func.max(RetrainJob.started_at)).where(RetrainJob.status == "succeeded"))
    new = db.session.scalar(
        db.select(func.count(Feedback.id)).where(Feedback.updated_at > since) if since else db.select(func.count(Feedback.id))
    )
    return {
        "total": total,
        "per_label": per_label,
        "per_status": per_status,
        "per_model_version": per_version,
        "live_model_version": live.version if live else None,
        "live_model_error_rate": live_stats["error_rate"] if live_stats else None,
        "live_model_feedback": live_stats["feedback"] if live_stats else 0,
        "since_last_retrain": new,
        "last_retrain_at": since,
    }
