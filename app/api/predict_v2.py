"""Version 2 of predict: probabilities, model version and a prediction id for feedback."""

from flask import current_app
from flask_jwt_extended import jwt_required

from app.api import BEARER, Blueprint, limit_from_setting
from app.api.uploads import (
    MANY_UPLOADS_BODY,
    SINGLE_UPLOAD_OR_BASE64_BODY,
    upload_endpoint,
    read_many_uploads,
    read_single_upload,
)
from app.schemas import BatchPredictionSchema, PageQuerySchema, PredictionPageSchema, PredictionV2Schema, link_to
from app.security import caller_id
from app.services import predictions as prediction_service
from app.services.predictions import predict_uploads, prediction_body

bp = Blueprint("predict_v2", __name__, url_prefix="/api/v2", description="Predict, version 2")


def _feedback_link(pointer):
    return {"feedback": link_to("/api/v2/feedback", requestBody={"prediction_id": f"$response.body#{pointer}"},
                                description="give the true label of this prediction")}


@bp.post("/predict")
@jwt_required()
@limit_from_setting("RATELIMIT_V2_PREDICT")
@bp.response(200, PredictionV2Schema)
@upload_endpoint(bp)
@bp.doc(security=BEARER, requestBody=SINGLE_UPLOAD_OR_BASE64_BODY,
        responses={"200": {"links": _feedback_link("/prediction_id")}})
def predict():
    """Predict one image: multipart ``file`` or JSON ``{"image": "<base64>"}``."""
    [row], _version = predict_uploads(
        [read_single_upload(allow_base64=True)], user_id=caller_id(), api_version="v2"
    )
    return prediction_body(row)


@bp.post("/predict/batch")
@jwt_required()
@limit_from_setting("RATELIMIT_V2_PREDICT")
@bp.response(200, BatchPredictionSchema)
@upload_endpoint(bp)
@bp.doc(security=BEARER, requestBody=MANY_UPLOADS_BODY,
        responses={"200": {"links": _feedback_link("/predictions/0/prediction_id")}})
def predict_batch():
    """Predict up to ``BATCH_MAX_FILES`` (64) images in one inference; results keep the order sent."""
    uploads = read_many_uploads(limit=current_app.config["BATCH_MAX_FILES"])
    rows, version = predict_uploads(uploads, user_id=caller_id(), api_version="v2")
    return {"predictions": [prediction_body(row) for row in rows], "model_version": version}


@bp.get("/predictions")
@jwt_required()
@bp.arguments(PageQuerySchema, location="query")
@bp.response(200, PredictionPageSchema)
@bp.doc(security=BEARER)
def list_own(query):
    """The caller's own predictions, newest first, with the label given to each (``?page=&per_page=``)."""
    return prediction_service.list_own(caller_id(), query["page"], query["per_page"])
