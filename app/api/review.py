"""Admin review queue: quarantined feedback and uncertain predictions, and the admin's decisions."""

from flask import current_app

from app.api import BEARER, Blueprint, limit_from_setting
from app.schemas import (
    MAX_ID,
    AdminLabelSchema,
    BulkReviewResultSchema,
    BulkReviewSchema,
    ErrorSchema,
    ReviewActionSchema,
    ReviewFeedbackItemSchema,
    ReviewPageSchema,
    ReviewQuerySchema,
    review_action_body,
)
from app.security import caller_id, role_required
from app.services import review

bp = Blueprint("review", __name__, url_prefix="/admin",
               description="Review queue (admin role): quarantined feedback and the live model's least confident "
                           "unlabelled predictions; admins' labels are trusted")

# Documented on every endpoint here: the token failures and the role check.
ACCESS_ERRORS = {401: "no token, or an expired, revoked or invalid one", 403: "the token is not an admin's"}


def documented(*statuses_and_descriptions):
    """The endpoint's error answers in the OpenAPI document, beside ACCESS_ERRORS."""

    def decorate(view):
        for status, description in [*ACCESS_ERRORS.items(), *statuses_and_descriptions]:
            view = bp.alt_response(status, schema=ErrorSchema, description=description)(view)
        return bp.doc(security=BEARER)(view)

    return decorate


@bp.get("/review")
@role_required("admin")
@bp.arguments(ReviewQuerySchema, location="query")
@bp.response(200, ReviewPageSchema)
@documented()
def queue(query):
    """A page of the review queue: ``quarantined`` feedback (oldest first) or ``uncertain``
    predictions (the live model's least confident unlabelled ones of the last REVIEW_UNCERTAIN_DAYS)."""
    return review.queue(query["queue"], query["page"], query["per_page"])


@bp.post(f"/review/feedback/<int(min=1, max={MAX_ID}):feedback_id>")  # any other number names no row: 404
@role_required("admin")
@bp.arguments(ReviewActionSchema)
@bp.response(200, ReviewFeedbackItemSchema)
@bp.doc(requestBody=review_action_body())
@documented((404, "no such feedback"), (409, "label_changed: the label is no longer the one given with accept/reject"))
def review_feedback(data, feedback_id):
    """Accept, reject or relabel one feedback row; it becomes admin-verified."""
    return review.review_one(feedback_id, data["action"], data.get("label"), admin_id=caller_id())


@bp.post("/review/bulk")
@role_required("admin")
@bp.arguments(BulkReviewSchema)
@bp.response(200, BulkReviewResultSchema)
@bp.doc(requestBody=review_action_body(bulk=True))
@documented((404, "an id names no feedback: nothing was changed"),
            (409, "label_changed: a row's label is no longer the one given with accept/reject; nothing was changed"))
def review_bulk(data):
    """One action on up to 500 feedback rows, all or nothing."""
    return review.review_many(data["feedback_ids"], data["action"], data.get("label"), admin_id=caller_id())


@bp.post(f"/review/predictions/<int(min=1, max={MAX_ID}):prediction_id>")
@role_required("admin")
@bp.arguments(AdminLabelSchema)
@bp.response(201, ReviewFeedbackItemSchema)
@documented((404, "no such prediction"), (409, "the prediction already has feedback: review that instead"))
def label_prediction(data, prediction_id):
    """Label a prediction nobody has labelled (accepted, admin-verified)."""
    return review.label_prediction(prediction_id, data["label"], admin_id=caller_id())


IMAGE_TYPES = ["image/png", "image/jpeg", "image/gif", "image/bmp", "image/webp"]


@bp.get("/images/<string(length=64):sha256>")
@limit_from_setting("RATELIMIT_ADMIN_IMAGES")
@role_required("admin")
@bp.doc(
    # The route takes any 64 characters; the digest is lowercase hex (422 otherwise).
    parameters=[{"in": "path", "name": "sha256", "required": True,
                 "schema": {"type": "string", "pattern": "^[0-9a-f]{64}$"}}],
    responses={"200": {"description": "the original upload, its type read from its bytes",
                       "content": {kind: {"schema": {"type": "string", "format": "binary"}} for kind in IMAGE_TYPES}}},
)
@documented((404, "no stored image with this digest"), (422, "not 64 lowercase hexadecimal digits"))
def image(sha256):
    """A stored original upload (the queue's ``image_url``)."""
    data, content_type, extension = review.stored_image(sha256)
    return current_app.response_class(data, mimetype=content_type, headers={
        "X-Content-Type-Options": "nosniff",
        # The name is our digest, never the uploader's file name.
        "Content-Disposition": f'inline; filename="{sha256}.{extension}"',
        # Opened on its own, it may not run anything (defence in depth behind the type check).
        "Content-Security-Policy": "default-src 'none'; sandbox",
        # Content-addressed: the bytes behind a digest never change. Private: admins only.
        "Cache-Control": "private, max-age=86400, immutable",
    })
