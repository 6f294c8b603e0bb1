"""Request and response schemas: validation at the edge and the OpenAPI document."""

import re
from datetime import timezone

from marshmallow import Schema, ValidationError, fields, validate, validates

USERNAME_PATTERN = re.compile(r"^[A-Za-z0-9_.-]{3,32}$")
PASSWORD_MIN_LENGTH = 8
# bcrypt only reads 72 bytes (bcrypt 5 raises beyond): refuse instead of silently truncating.
PASSWORD_MAX_BYTES = 72
# Ids are INTEGER columns (32-bit on PostgreSQL): a larger number can name no row, and
# handing it to the database driver would overflow instead of answering.
MAX_ID = 2**31 - 1


class UtcDateTime(fields.DateTime):
    """Timestamps are stored as naive UTC; the API says so with the offset (RFC 3339)."""

    def _serialize(self, value, attr, obj, **kwargs):
        if value is not None and value.tzinfo is None:
            value = value.replace(tzinfo=timezone.utc)
        return super()._serialize(value, attr, obj, **kwargs)


class ErrorBody(Schema):
    code = fields.String(required=True, metadata={"example": "validation_error"})
    message = fields.String(required=True)
    details = fields.Dict(metadata={"description": "field errors, when there are any"})


class ErrorSchema(Schema):
    error = fields.Nested(ErrorBody, required=True)


class RegisterSchema(Schema):
    username = fields.String(required=True, metadata={"example": "ada"})
    password = fields.String(required=True, load_only=True, metadata={"example": "correct horse battery"})
    email = fields.Email(load_default=None, allow_none=True)

    @validates("username")
    def _username(self, value, **_):
        if not USERNAME_PATTERN.match(value):
            raise ValidationError("3-32 characters: letters, digits, '_', '.', '-'")

    @validates("password")
    def _password(self, value, **_):
        if len(value) < PASSWORD_MIN_LENGTH:
            raise ValidationError(f"at least {PASSWORD_MIN_LENGTH} characters")
        if len(value.encode("utf-8")) > PASSWORD_MAX_BYTES:
            raise ValidationError(f"at most {PASSWORD_MAX_BYTES} bytes")


class LoginSchema(Schema):
    username = fields.String(required=True)
    password = fields.String(required=True, load_only=True)


class UserSchema(Schema):
    id = fields.Integer()
    username = fields.String()
    role = fields.String(metadata={"enum": ["user", "admin"]})


class TokenPairSchema(Schema):
    access_token = fields.String()
    refresh_token = fields.String()


class AccessTokenSchema(Schema):
    access_token = fields.String()


class MessageSchema(Schema):
    message = fields.String()


class HealthSchema(Schema):
    status = fields.String(metadata={"example": "ok"})


class ReadySchema(Schema):
    status = fields.String(metadata={"example": "ready"})
    database = fields.String()
    model_version = fields.String(allow_none=True)


class PredictionV1Schema(Schema):
    prediccion = fields.Integer(metadata={"description": "predicted digit"})
    probabilidad = fields.Float(metadata={"description": "its probability"})
    version = fields.String(metadata={"example": "v1"})


class PredictionV2Schema(Schema):
    prediction = fields.Integer()
    confidence = fields.Float()
    probabilities = fields.List(fields.Float(), metadata={"description": "10 probabilities, digit 0 first"})
    model_version = fields.String()
    prediction_id = fields.Integer()
    api_version = fields.String(metadata={"example": "v2"})


class BatchPredictionSchema(Schema):
    predictions = fields.List(fields.Nested(PredictionV2Schema))
    model_version = fields.String()


class FeedbackRequestSchema(Schema):
    prediction_id = fields.Integer(required=True, strict=True, validate=validate.Range(1, MAX_ID))
    label = fields.Integer(required=True, strict=True, validate=validate.Range(0, 9))


class LabelFormSchema(Schema):
    """The ``label`` form field of a labelled upload (a string in multipart, so not strict)."""

    label = fields.Integer(required=True, validate=validate.Range(0, 9))


class FeedbackSchema(Schema):
    id = fields.Integer()
    prediction_id = fields.Integer(allow_none=True)
    label = fields.Integer()
    predicted = fields.Integer(allow_none=True, metadata={"description": "what the model said, if predicted"})
    model_version = fields.String(allow_none=True)
    created_at = UtcDateTime()
    updated_at = UtcDateTime()


class PageQuerySchema(Schema):
    page = fields.Integer(load_default=1, validate=validate.Range(1, MAX_ID))
    per_page = fields.Integer(load_default=20, validate=validate.Range(1, 100))


class FeedbackPageSchema(Schema):
    items = fields.List(fields.Nested(FeedbackSchema))
    page = fields.Integer()
    per_page = fields.Integer()
    total = fields.Integer()
    pages = fields.Integer()


class FeedbackStatsSchema(Schema):
    total = fields.Integer()
    per_label = fields.Dict(keys=fields.String(), values=fields.Integer())
    per_model_version = fields.Dict(keys=fields.String(), values=fields.Dict())
    live_model_version = fields.String(allow_none=True)
    live_model_error_rate = fields.Float(allow_none=True)
    live_model_feedback = fields.Integer()
    since_last_retrain = fields.Integer()
    last_retrain_at = UtcDateTime(allow_none=True)


class DriftSchema(Schema):
    model_version = fields.String(allow_none=True, metadata={"description": "the served version the window is of"})
    window = fields.Integer(metadata={"description": "DRIFT_WINDOW: how many recent predictions are compared"})
    predictions = fields.Integer(metadata={"description": "recent predictions of that version in the window"})
    digit_psi = fields.Float(allow_none=True, metadata={"description": "population stability index of the predicted "
                             "digits against the held-out digits (<0.1 stable, >0.25 shifted)"})
    confidence_psi = fields.Float(allow_none=True, metadata={"description": "the same for the confidence served"})
    recent_digit_share = fields.List(fields.Float(), allow_none=True)
    reference_digit_share = fields.List(fields.Float(), allow_none=True)


class VersionQualitySchema(Schema):
    model_version = fields.String()
    predictions = fields.Integer()
    feedback = fields.Integer(metadata={"description": "labels given on this version's predictions"})
    wrong = fields.Integer(metadata={"description": "of those, labels that disagree with the prediction"})
    error_rate = fields.Float(metadata={"description": "wrong / feedback: the live error-rate estimate"})


class FeedbackDaySchema(Schema):
    day = fields.String(metadata={"example": "2026-11-30"})
    model_version = fields.String()
    feedback = fields.Integer()
    wrong = fields.Integer()
    error_rate = fields.Float()


class StatsSchema(Schema):
    live_model_version = fields.String(allow_none=True)
    drift = fields.Nested(DriftSchema)
    versions = fields.List(fields.Nested(VersionQualitySchema))
    predictions_per_version = fields.Dict(keys=fields.String(), values=fields.Integer())
    feedback = fields.Nested(FeedbackStatsSchema)
    feedback_by_day = fields.List(fields.Nested(FeedbackDaySchema), metadata={"description": "last 30 days"})


class ModelVersionSchema(Schema):
    version = fields.String()
    status = fields.String(metadata={"enum": ["candidate", "active", "retired", "rejected"]})
    active = fields.Boolean()
    parent_version = fields.String(allow_none=True)
    sha256 = fields.String()
    file_path = fields.String()
    metrics = fields.Dict()
    created_at = UtcDateTime()
    activated_at = UtcDateTime(allow_none=True)


class ModelListSchema(Schema):
    active_version = fields.String(allow_none=True)
    served_version = fields.String(allow_none=True, metadata={"description": "what this worker serves now"})
    models = fields.List(fields.Nested(ModelVersionSchema))


class RetrainRequestSchema(Schema):
    force = fields.Boolean(load_default=False, metadata={"description": "skip the promotion gate"})


class RetrainJobSchema(Schema):
    job_id = fields.Integer()
    status = fields.String(metadata={"enum": ["queued", "running", "succeeded", "rejected", "failed"]})
    progress = fields.Float()
    force = fields.Boolean()
    metrics = fields.Dict(allow_none=True, metadata={"description": (
        "when finished: both models' held-out accuracies; gate {passed, reasons, per_digit: "
        "[{digit, live, candidate, drop_points, passed, samples}]}; accounts: [{user_id, username, "
        "labels, used, gate_samples, capped, quarantined, on_probation, trust: {the numbers behind "
        "the verdict}}]; samples; timings")})
    model_version = fields.String(allow_none=True)
    base_version = fields.String(allow_none=True)
    error = fields.String(allow_none=True)
    created_at = UtcDateTime()
    started_at = UtcDateTime(allow_none=True)
    finished_at = UtcDateTime(allow_none=True)
    duration_seconds = fields.Float(allow_none=True)


class RetrainAcceptedSchema(Schema):
    job_id = fields.Integer()
    status = fields.String()
    status_url = fields.String()
