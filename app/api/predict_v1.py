"""Version 1 of predict: the original service's response keys, kept for its clients."""

from flask_jwt_extended import jwt_required

from app.api import BEARER, Blueprint, limit_from_setting
from app.api.uploads import SINGLE_UPLOAD_BODY, upload_endpoint, read_single_upload
from app.schemas import PredictionV1Schema
from app.security import caller_id
from app.services.predictions import predict_uploads

bp = Blueprint("predict_v1", __name__, url_prefix="/api/v1", description="Predict, version 1 (legacy keys)")


@bp.post("/predict")
@jwt_required()
@limit_from_setting("RATELIMIT_V1_PREDICT")
@bp.response(200, PredictionV1Schema)
@upload_endpoint(bp)
@bp.doc(security=BEARER, requestBody=SINGLE_UPLOAD_BODY)
def predict():
    """Predict the digit in an uploaded image (multipart field ``file``)."""
    [row], _version = predict_uploads([read_single_upload()], user_id=caller_id(), api_version="v1")
    return {"prediccion": row.predicted, "probabilidad": row.confidence, "version": "v1"}
