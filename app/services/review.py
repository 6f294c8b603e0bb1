"""The admin review queue: what deserves an admin's eye, and what an admin's decision does.

Two queues:

- ``quarantined``: feedback the trust rules held back, oldest first (by id). Worked first in,
  first out, nothing waits forever, and rows quarantined while an admin reads land after
  the pages already read instead of shifting them.
- ``uncertain``: the live model's predictions of the last ``REVIEW_UNCERTAIN_DAYS`` that
  nobody has labelled, least confident first (ties by id): where one label teaches the most.

An admin's decision (accept, reject, relabel, or a label on an unlabelled prediction) makes
the row admin-verified: ``reviewed_by``/``reviewed_at`` are set, the trust rules never change
it again, and its owner can no longer replace its label.
"""

import io
import re
from datetime import timedelta

from flask import current_app, url_for
from sqlalchemy import func
from sqlalchemy.exc import IntegrityError

from app.entities import Feedback, Prediction, StoredImage, User, utcnow
from app.errors import Conflict, NotFound, ValidationFailed
from app.extensions import db
from app.metrics import observe_feedback
from app.services.feedback import get_prediction
from app.services.model_versions import active_version
from app.services.pagination import page_body

# What each action sets; relabel is an accept with the admin's label.
STATUS_OF_ACTION = {"accept": "accepted", "reject": "rejected", "relabel": "accepted"}
REASON_OF_ACTION = {"accept": "admin_accepted", "reject": "admin_rejected", "relabel": "admin_relabelled"}
ADMIN_LABELLED = "admin_labelled"  # the reason of a label an admin gave on an unlabelled prediction

_DIGEST = re.compile(r"[0-9a-f]{64}")


def image_url(digest):
    return url_for("review.image", sha256=digest)


# --- the queues ---------------------------------------------------------------------------

def _feedback_rows(where):
    """(Feedback, Prediction or None, username or None) for the feedback matching ``where``."""
    return (
        db.select(Feedback, Prediction, User.username)
        .outerjoin(Prediction, Feedback.prediction_id == Prediction.id)
        .outerjoin(User, Feedback.user_id == User.id)
        .where(where)
    )


def feedback_item(feedback, prediction, username):
    return {
        "feedback_id": feedback.id,
        "prediction_id": feedback.prediction_id,
        "user_id": feedback.user_id,
        "username": username,
        "label": feedback.label,
        "predicted": prediction.predicted if prediction else None,
        "confidence": prediction.confidence if prediction else None,
        "model_version": prediction.model_version if prediction else None,
        "status": feedback.status,
        "reason": feedback.status_reason,
        "detail": feedback.status_detail,
        "reviewed_by": feedback.reviewed_by,
        "reviewed_at": feedback.reviewed_at,
        "image_url": image_url(feedback.image_sha256),
        "created_at": feedback.created_at,
    }


def quarantined(page, per_page):
    held = Feedback.status == "quarantined"
    total = db.session.scalar(db.select(func.count(Feedback.id)).where(held))
    rows = db.session.execute(
        _feedback_rows(held).order_by(Feedback.id).limit(per_page).offset((page - 1) * per_page)
    ).all()
    return page_body([feedback_item(*row) for row in rows], page=page, per_page=per_page, total=total,
                     queue="quarantined")


def _uncertain_filter():
    """Unlabelled predictions of the live version from the window; None if nothing is live yet."""
    live = active_version()
    if live is None:
        return None
    since = utcnow() - timedelta(days=current_app.config["REVIEW_UNCERTAIN_DAYS"])
    unlabelled = ~db.select(Feedback.id).where(Feedback.prediction_id == Prediction.id).exists()
    return (Prediction.model_version == live.version) & (Prediction.created_at >= since) & unlabelled


def uncertain(page, per_page):
    where = _uncertain_filter()
    if where is None:
        return page_body([], page=page, per_page=per_page, total=0, queue="uncertain")
    total = db.session.scalar(db.select(func.count(Prediction.id)).where(where))
    rows = db.session.execute(
        db.select(Prediction, User.username)
        .outerjoin(User, Prediction.user_id == User.id)
        .where(where)
        .order_by(Prediction.confidence, Prediction.id)
        .limit(per_page).offset((page - 1) * per_page)
    ).all()
    items = [
        {
            "prediction_id": prediction.id,
            "predicted": prediction.predicted,
            "confidence": prediction.confidence,
            "probabilities": prediction.probabilities,
            "model_version": prediction.model_version,
            "user_id": prediction.user_id,
            "username": username,
            "image_url": image_url(prediction.image_sha256),
            "created_at": prediction.created_at,
        }
        for prediction, username in rows
    ]
    return page_body(items, page=page, per_page=per_page, total=total, queue="uncertain")


def queue(name, page, per_page):
    return {"quarantined": quarantined, "uncertain": uncertain}[name](page, per_page)


# --- decisions ----------------------------------------------------------------------------

def _decide(feedback, action, label, admin_id, now):
    feedback.status = STATUS_OF_ACTION[action]
    feedback.status_reason = REASON_OF_ACTION[action]
    if action == "relabel":
        # The trust rules' numbers stay beside the label they were about.
        feedback.status_detail = {**(feedback.status_detail or {}), "previous_label": feedback.label}
        if label != feedback.label:
            feedback.label = label
            feedback.updated_at = now
    feedback.reviewed_by = admin_id
    feedback.reviewed_at = now


def review_many(feedback_ids, action, label=None, *, admin_id):
    """Apply one action to every listed feedback row, all or nothing: an unknown id changes none.

    ``label`` is the new label for relabel; for accept and reject, if given, the label the
    admin saw: a row whose label differs now is a 409 and nothing changes.

    Returns ``{"updated": n, "items": [...]}``, items in the order asked (repeats once).
    """
    ids = list(dict.fromkeys(feedback_ids))
    rows = {row[0].id: row for row in db.session.execute(_feedback_rows(Feedback.id.in_(ids))).all()}
    missing = [i for i in ids if i not in rows]
    if missing:
        noun = "feedback" if len(ids) == 1 else "feedback ids"
        raise NotFound(f"{noun} not found: {', '.join(map(str, missing[:20]))}", code="feedback_not_found",
                       details={"missing": missing})
    now = utcnow()
    for feedback, _prediction, _username in rows.values():
        _decide(feedback, action, label, admin_id, now)
    if action != "relabel" and label is not None:
        # The label the admin saw; its owner may have replaced it since the page was loaded.
        # Read after our flush, which holds the rows' write locks: no replacement can slip in between.
        db.session.flush()
        changed = db.session.scalars(
            db.select(Feedback.id).where(Feedback.id.in_(ids), Feedback.label != label).order_by(Feedback.id)
        ).all()
        if changed:
            db.session.rollback()
            raise Conflict(f"the label is no longer {label}: reload and review again", code="label_changed",
                           details={"feedback_ids": changed})
    # Built before the commit expires them: re-reading each row would cost a query apiece.
    items = [feedback_item(*rows[i]) for i in ids]
    db.session.commit()
    return {"updated": len(ids), "items": items}


def review_one(feedback_id, action, label=None, *, admin_id):
    return review_many([feedback_id], action, label, admin_id=admin_id)["items"][0]


def label_prediction(prediction_id, label, *, admin_id):
    """An admin's label on a prediction nobody has labelled: accepted and admin-verified.

    A prediction that already has feedback is a 409: review that feedback instead.
    """
    prediction = get_prediction(prediction_id)
    if prediction.feedback is not None:
        raise _already_labelled(prediction.feedback.id)
    now = utcnow()
    feedback = Feedback(prediction_id=prediction.id, user_id=admin_id, image_sha256=prediction.image_sha256,
                        label=label, status="accepted", status_reason=ADMIN_LABELLED, reviewed_by=admin_id,
                        reviewed_at=now, created_at=now, updated_at=now)
    db.session.add(feedback)
    try:
        db.session.commit()
    except IntegrityError:  # labelled concurrently (one feedback per prediction)
        db.session.rollback()
        existing = db.session.scalar(db.select(Feedback.id).where(Feedback.prediction_id == prediction_id))
        raise _already_labelled(existing) from None
    observe_feedback(feedback, prediction)
    return feedback_item(*db.session.execute(_feedback_rows(Feedback.id == feedback.id)).one())


def _already_labelled(feedback_id):
    return Conflict(f"this prediction already has feedback {feedback_id}: review it with "
                    f"POST /admin/review/feedback/{feedback_id}", code="feedback_exists",
                    details={"feedback_id": feedback_id})


# --- images and counts --------------------------------------------------------------------

def stored_image(digest):
    """``(bytes, content type, file extension)`` of a stored original.

    The type is read from the bytes, never taken from what the uploader claimed: a client
    could have sent an image as ``text/html``.
    """
    if not _DIGEST.fullmatch(digest):
        raise ValidationFailed("sha256 must be 64 lowercase hexadecimal digits",
                               details={"sha256": ["64 lowercase hexadecimal digits"]})
    row = db.session.get(StoredImage, digest)
    if row is None:
        raise NotFound(f"no stored image {digest}", code="image_not_found")
    content_type, extension = _image_type(row.data)
    return row.data, content_type, extension


def _image_type(data):
    from PIL import Image

    from app.ml.preprocessing import ALLOWED_FORMATS

    try:
        with Image.open(io.BytesIO(data), formats=list(ALLOWED_FORMATS)) as im:  # reads the header only
            kind = im.format
    except Exception:  # stored before today's formats: still the admin's to download, not to render
        return "application/octet-stream", "bin"
    return Image.MIME[kind], {"JPEG": "jpg"}.get(kind, kind.lower())


def quarantined_by_reason():
    """How many feedback rows are quarantined, per reason code."""
    rows = db.session.execute(
        db.select(Feedback.status_reason, func.count()).where(Feedback.status == "quarantined")
        .group_by(Feedback.status_reason)
    )
    return {reason or "unspecified": count for reason, count in rows}
