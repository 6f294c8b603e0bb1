"""Request and response schemas: validation at the edge and the OpenAPI document."""

import re
from datetime import timezone

from marshmallow import Schema, ValidationError, fields, validate, validates, validates_schema

from app.entities import FEEDBACK_STATUSES
from app.services.accounts import ROLES

# Usernames: letters, digits, '_', '.', '-'. Checked with fullmatch: a `$` also matches
# before a trailing newline, and "ada\n" would have been a second "ada".
USERNAME_CHARS = "A-Za-z0-9_.-"
USERNAME_MIN_LENGTH, USERNAME_MAX_LENGTH = 3, 32
USERNAME_PATTERN = re.compile(f"[{USERNAME_CHARS}]*")
PASSWORD_MIN_LENGTH = 8
# bcrypt only reads 72 bytes (bcrypt 5 raises beyond): refuse instead of silently truncating.
PASSWORD_MAX_BYTES = 72
# Ids are INTEGER columns (32-bit on PostgreSQL): a larger number can name no row, and
# handing it to the database driver would overflow instead of answering.
MAX_ID = 2**31 - 1


def link_to(path, method="post", **definition):
    """An OpenAPI link to the operation at ``path``: which values of this exchange it takes
    (clients and the stateful fuzzer follow them, e.g. from a prediction to its feedback)."""
    return {"operationRef": "#/paths/" + path.replace("~", "~0").replace("/", "~1") + "/" + method, **definition}


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
    # The limits are validators (not only checks in code) so that /openapi.json states them.
    username = fields.String(
        required=True,
        validate=validate.Length(USERNAME_MIN_LENGTH, USERNAME_MAX_LENGTH),
        metadata={"example": "ada", "pattern": f"^[{USERNAME_CHARS}]*$"},
    )
    password = fields.String(
        required=True,
        load_only=True,
        # bcrypt counts bytes, JSON Schema characters: maxLength is the ASCII case.
        validate=validate.Length(min=PASSWORD_MIN_LENGTH, max=PASSWORD_MAX_BYTES,
                                 error="{min} characters to {max} bytes"),
        metadata={"example": "correct horse battery",
                  "description": f"{PASSWORD_MIN_LENGTH} characters to {PASSWORD_MAX_BYTES} bytes of UTF-8"},
    )
    email = fields.Email(load_default=None, allow_none=True)

    @validates("username")
    def _username(self, value, **_):
        if not USERNAME_PATTERN.fullmatch(value):
            raise ValidationError("only letters, digits, '_', '.' and '-'")

    @validates("password")
    def _password(self, value, **_):
        if len(value.encode("utf-8")) > PASSWORD_MAX_BYTES:
            raise ValidationError(f"at most {PASSWORD_MAX_BYTES} bytes")


class LoginSchema(Schema):
    username = fields.String(required=True)
    password = fields.String(required=True, load_only=True)


class UserSchema(Schema):
    id = fields.Integer()
    username = fields.String()
    role = fields.String(metadata={"enum": ["user", "admin"]})


class AccessTokenSchema(Schema):
    access_token = fields.String()


class TokenPairSchema(AccessTokenSchema):
    refresh_token = fields.String()


class MessageSchema(Schema):
    message = fields.String()


class HealthSchema(Schema):
    status = fields.String(metadata={"example": "ok"})


class ReadySchema(Schema):
    status = fields.String(metadata={"example": "ready", "enum": ["ready", "not_ready"]})
    database = fields.String(metadata={"enum": ["ok", "unavailable"]})
    model_version = fields.String(allow_none=True, metadata={"description": "the version this process serves"})
    active_version = fields.String(allow_none=True, metadata={
        "description": "the version the database marks active; differs from model_version while this process "
                       "serves a fallback because the active version's file does not load"})
    model_error = fields.String(allow_none=True, metadata={
        "description": "why the active version is not served (missing or corrupt file, database down), if it is not"})


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
    status = fields.String(metadata={"enum": list(FEEDBACK_STATUSES),
                                     "description": "only accepted labels are trained on"})
    predicted = fields.Integer(allow_none=True, metadata={"description": "what the model said, if predicted"})
    model_version = fields.String(allow_none=True)
    created_at = UtcDateTime()
    updated_at = UtcDateTime()


class PageQuerySchema(Schema):
    page = fields.Integer(load_default=1, validate=validate.Range(1, MAX_ID))
    per_page = fields.Integer(load_default=20, validate=validate.Range(1, 100))


class PageSchema(Schema):
    """Where a page of ``items`` stands in the whole list (services.pagination.page_body)."""

    page = fields.Integer()
    per_page = fields.Integer()
    total = fields.Integer()
    pages = fields.Integer()


class FeedbackPageSchema(PageSchema):
    items = fields.List(fields.Nested(FeedbackSchema))


class OwnPredictionSchema(PredictionV2Schema):
    created_at = UtcDateTime()
    feedback_label = fields.Integer(allow_none=True, metadata={"description": "the label the caller gave it, if any"})


class PredictionPageSchema(PageSchema):
    items = fields.List(fields.Nested(OwnPredictionSchema))


class FeedbackStatsSchema(Schema):
    total = fields.Integer()
    per_label = fields.Dict(keys=fields.String(), values=fields.Integer())
    per_status = fields.Dict(keys=fields.String(), values=fields.Integer(),
                             metadata={"description": "accepted, quarantined and rejected (each present, 0 if none)"})
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
    temperature = fields.Float(allow_none=True, metadata={
        "description": "calibration: served probabilities are softmax(log(p) / temperature); null: uncalibrated"})
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
        "the verdict}}]; trust: {quarantined, released, max_account_share, inactive_left_out: {accounts, labels} "
        "(deactivated accounts' labels, not used)}; samples; timings")})
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


# --- the admin review queue -------------------------------------------------------------

REVIEW_QUEUES = ("quarantined", "uncertain")
REVIEW_ACTIONS = ("accept", "reject", "relabel")
# One bulk request reviews at most this many rows: a page of the web page, several times over.
BULK_MAX_IDS = 500


class ReviewQuerySchema(PageQuerySchema):
    queue = fields.String(load_default="quarantined", validate=validate.OneOf(REVIEW_QUEUES), metadata={
        "description": "quarantined: feedback the trust rules held, oldest first; uncertain: the live model's least "
                       "confident recent predictions that nobody has labelled, least confident first"})


class ReviewFeedbackItemSchema(Schema):
    feedback_id = fields.Integer()
    prediction_id = fields.Integer(allow_none=True, metadata={"description": "null for a labelled upload"})
    user_id = fields.Integer(allow_none=True, metadata={"description": "the account that gave the label"})
    username = fields.String(allow_none=True)
    label = fields.Integer()
    predicted = fields.Integer(allow_none=True)
    confidence = fields.Float(allow_none=True)
    model_version = fields.String(allow_none=True)
    status = fields.String(metadata={"enum": list(FEEDBACK_STATUSES)})
    reason = fields.String(allow_none=True, metadata={"description": "why it has its status (a short code)",
                                                      "example": "trust_outlier"})
    detail = fields.Dict(allow_none=True, metadata={"description": "the numbers behind the reason"})
    reviewed_by = fields.Integer(allow_none=True, metadata={"description": "the admin who last reviewed it"})
    reviewed_at = UtcDateTime(allow_none=True)
    image_url = fields.String(metadata={"example": "/admin/images/9f86d08...", "description": "admins only"})
    created_at = UtcDateTime()


class ReviewPredictionItemSchema(Schema):
    prediction_id = fields.Integer()
    predicted = fields.Integer()
    confidence = fields.Float()
    probabilities = fields.List(fields.Float(), metadata={"description": "10 probabilities, digit 0 first"})
    model_version = fields.String()
    user_id = fields.Integer(allow_none=True)
    username = fields.String(allow_none=True)
    image_url = fields.String()
    created_at = UtcDateTime()


class ReviewItem(fields.Field):
    """One queue item: a feedback row (the quarantined queue) or a prediction (the uncertain queue).

    The two schemas are registered as components by ``register_review_schemas``, so the
    OpenAPI document can name them in a ``oneOf``.
    """

    def __init__(self, **kwargs):
        refs = [{"$ref": f"#/components/schemas/{name}"} for name in REVIEW_ITEM_SCHEMAS]
        super().__init__(metadata={"oneOf": refs}, **kwargs)

    def _serialize(self, value, attr, obj, **kwargs):
        schema = ReviewFeedbackItemSchema if "feedback_id" in value else ReviewPredictionItemSchema
        return schema().dump(value)


REVIEW_ITEM_SCHEMAS = {"ReviewFeedbackItem": ReviewFeedbackItemSchema, "ReviewPredictionItem": ReviewPredictionItemSchema}


def register_review_schemas(spec):
    """Name the queue's item schemas in the document before any endpoint refers to them."""
    for name, schema in REVIEW_ITEM_SCHEMAS.items():
        spec.components.schema(name, schema=schema)


class ReviewPageSchema(PageSchema):
    queue = fields.String(metadata={"enum": list(REVIEW_QUEUES)})
    items = fields.List(ReviewItem(), metadata={"description": "ReviewFeedbackItem (quarantined queue) or "
                                                               "ReviewPredictionItem (uncertain queue)"})


class ReviewActionSchema(Schema):
    action = fields.String(required=True, validate=validate.OneOf(REVIEW_ACTIONS))
    label = fields.Integer(strict=True, validate=validate.Range(0, 9))

    @validates_schema
    def _relabel_needs_a_label(self, data, **_):
        if data["action"] == "relabel" and "label" not in data:
            raise ValidationError("required for relabel", "label")


class BulkReviewSchema(ReviewActionSchema):
    feedback_ids = fields.List(fields.Integer(strict=True, validate=validate.Range(1, MAX_ID)), required=True,
                               validate=validate.Length(1, BULK_MAX_IDS))


def review_action_body(bulk=False):
    """The OpenAPI request body of ReviewActionSchema / BulkReviewSchema.

    Written out because "label is required for relabel" takes a ``oneOf`` that marshmallow
    cannot describe; the constraints are the schemas' own constants.
    """
    label = {"type": "integer", "minimum": 0, "maximum": 9}
    extra = {}
    if bulk:
        extra = {"feedback_ids": {"type": "array", "minItems": 1, "maxItems": BULK_MAX_IDS,
                                  "items": {"type": "integer", "minimum": 1, "maximum": MAX_ID},
                                  "description": f"1 to {BULK_MAX_IDS} feedback ids: all exist or nothing changes"}}
    required = ["feedback_ids"] if bulk else []
    decide = {"type": "object", "additionalProperties": False, "required": ["action", *required], "properties": {
        "action": {"type": "string", "enum": ["accept", "reject"]},
        "label": {**label, "description": "optional: the label the admin saw; if the row's label is no longer this "
                                          "(its owner changed it), 409 label_changed and nothing changes"},
        **extra}}
    relabel = {"type": "object", "additionalProperties": False, "required": ["action", "label", *required],
               "properties": {"action": {"type": "string", "enum": ["relabel"]},
                              "label": {**label, "description": "the admin's label: the row becomes accepted with it"},
                              **extra}}
    return {"required": True, "content": {"application/json": {"schema": {"oneOf": [decide, relabel]}}}}


class BulkReviewResultSchema(Schema):
    updated = fields.Integer()
    items = fields.List(fields.Nested(ReviewFeedbackItemSchema))


class AdminLabelSchema(Schema):
    label = fields.Integer(required=True, strict=True, validate=validate.Range(0, 9))


# --- account administration -------------------------------------------------------------


class StrictBoolean(fields.Boolean):
    """Only JSON ``true`` or ``false``: marshmallow's Boolean also takes "yes", 1 or "on"."""

    def _deserialize(self, value, attr, data, **kwargs):
        if not isinstance(value, bool):
            raise self.make_error("invalid")
        return value


class AccountQuerySchema(PageQuerySchema):
    active = fields.Boolean(metadata={"description": "only active (true) or deactivated (false) accounts"})
    role = fields.String(validate=validate.OneOf(ROLES))


class AccountFeedbackSchema(Schema):
    accepted = fields.Integer()
    quarantined = fields.Integer()
    rejected = fields.Integer()


class AccountSchema(Schema):
    id = fields.Integer()
    username = fields.String()
    email = fields.String(allow_none=True)
    role = fields.String(metadata={"enum": list(ROLES)})
    active = fields.Boolean(metadata={"description": "false: cannot log in, its tokens are refused, its labels are "
                                                     "not trained on"})
    created_at = UtcDateTime()
    feedback = fields.Nested(AccountFeedbackSchema, metadata={"description": "its feedback rows per status"})


class AccountPageSchema(PageSchema):
    items = fields.List(fields.Nested(AccountSchema))


class AccountUpdateSchema(Schema):
    active = StrictBoolean(required=True, metadata={
        "description": "false deactivates the account at once; true activates it again"})
