"""Feedback from users: the true label of a prediction, or a labelled upload."""

from flask import request
from flask_jwt_extended import get_jwt, jwt_required

from app.api import BEARER, Blueprint
from app.api.uploads import read_json_object, read_multipart_file, upload_endpoint
from app.errors import UnsupportedMediaType
from app.schemas import ErrorSchema, FeedbackPageSchema, FeedbackRequestSchema, FeedbackSchema, LabelFormSchema, PageQuerySchema
from app.security import caller_id
from app.services import feedback as feedback_service

bp = Blueprint("feedback", __name__, url_prefix="/api/v2", description="Feedback on predictions")

FEEDBACK_BODY = {
    "required": True,
    "content": {
        "application/json": {"schema": FeedbackRequestSchema},
        "multipart/form-data": {
            "schema": {
                "type": "object",
                "properties": {
                    "file": {"type": "string", "format": "binary"},
                    "label": {"type": "integer", "minimum": 0, "maximum": 9},
                },
                "required": ["file", "label"],
            }
        },
    },
}


@bp.post("/feedback")
@jwt_required()
@bp.response(201, FeedbackSchema)
@bp.alt_response(409, schema=ErrorSchema, description="feedback_reviewed: an admin has reviewed this label")
@upload_endpoint(bp)
@bp.doc(security=BEARER, requestBody=FEEDBACK_BODY)
def give():
    """Tell the service the true digit: JSON ``{prediction_id, label}`` or multipart ``file`` + ``label``.

    Giving feedback on the same prediction again replaces its label, unless an admin has
    reviewed it (409).
    """
    if request.mimetype.startswith("multipart/form-data"):
        upload = read_multipart_file()
        label = LabelFormSchema().load({"label": request.form.get("label")})["label"]
        feedback = feedback_service.give_labelled_sample(upload, label, user_id=caller_id())
    elif request.is_json:
        data = FeedbackRequestSchema().load(read_json_object())
        feedback, _created = feedback_service.give_feedback(
            data["prediction_id"], data["label"], user_id=caller_id(), is_admin=get_jwt().get("role") == "admin"
        )
    else:
        raise UnsupportedMediaType("send JSON or multipart/form-data")
    return feedback_service.serialize(feedback)


@bp.get("/feedback")
@jwt_required()
@bp.arguments(PageQuerySchema, location="query")
@bp.response(200, FeedbackPageSchema)
@bp.doc(security=BEARER)
def list_own(query):
    """The caller's own feedback, newest first (``?page=&per_page=``)."""
    return feedback_service.list_own(caller_id(), query["page"], query["per_page"])
