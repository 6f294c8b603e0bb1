"""Database tables (SQLAlchemy 2 declarative style).

Named ``entities`` so that nobody confuses these rows with the Keras model files that live
in the top-level ``models/`` folder.
"""

from datetime import datetime, timezone

from sqlalchemy import JSON, DateTime, ForeignKey, Index, LargeBinary, String, Text, UniqueConstraint
from sqlalchemy.orm import Mapped, mapped_column, relationship

from app.extensions import db


def utcnow():
    return datetime.now(timezone.utc).replace(tzinfo=None)


class User(db.Model):
    __tablename__ = "users"

    id: Mapped[int] = mapped_column(primary_key=True)
    username: Mapped[str] = mapped_column(String(64), unique=True)
    email: Mapped[str | None] = mapped_column(String(254))
    password_hash: Mapped[str] = mapped_column(String(128))
    role: Mapped[str] = mapped_column(String(16), default="user")
    active: Mapped[bool] = mapped_column(default=True)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    # Set when the account is deactivated: its tokens issued before it stay refused after it
    # is activated again (app.security.issued_before_cutoff). NULL: no cut-off.
    tokens_valid_after: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))


class RevokedToken(db.Model):
    """A logged-out token: checked on every authenticated request."""

    __tablename__ = "revoked_tokens"

    id: Mapped[int] = mapped_column(primary_key=True)
    jti: Mapped[str] = mapped_column(String(64), unique=True)
    token_type: Mapped[str] = mapped_column(String(16))
    user_id: Mapped[int | None] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"))
    revoked_at: Mapped[datetime] = mapped_column(default=utcnow)
    expires_at: Mapped[datetime | None]


class StoredImage(db.Model):
    """An uploaded original, stored once by content digest so retraining can re-read it."""

    __tablename__ = "stored_images"

    sha256: Mapped[str] = mapped_column(String(64), primary_key=True)
    content_type: Mapped[str | None] = mapped_column(String(64))
    size: Mapped[int]
    data: Mapped[bytes] = mapped_column(LargeBinary)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class Prediction(db.Model):
    __tablename__ = "predictions"
    __table_args__ = (Index("ix_predictions_user_created", "user_id", "created_at"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    user_id: Mapped[int | None] = mapped_column(ForeignKey("users.id", ondelete="SET NULL"))
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    image_sha256: Mapped[str] = mapped_column(ForeignKey("stored_images.sha256"))
    predicted: Mapped[int]
    confidence: Mapped[float]
    probabilities: Mapped[list] = mapped_column(JSON)
    model_version: Mapped[str] = mapped_column(String(64), index=True)
    api_version: Mapped[str] = mapped_column(String(8))

    user: Mapped["User | None"] = relationship()
    feedback: Mapped["Feedback | None"] = relationship(back_populates="prediction")


# Only accepted feedback is trained on.
FEEDBACK_STATUSES = ("accepted", "quarantined", "rejected")


class Feedback(db.Model):
    """A user's true label for an image: for one of their predictions or a new upload."""

    __tablename__ = "feedback"
    __table_args__ = (UniqueConstraint("prediction_id"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    prediction_id: Mapped[int | None] = mapped_column(ForeignKey("predictions.id", ondelete="CASCADE"))
    user_id: Mapped[int | None] = mapped_column(ForeignKey("users.id", ondelete="SET NULL"), index=True)
    image_sha256: Mapped[str] = mapped_column(ForeignKey("stored_images.sha256"))
    label: Mapped[int]
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(default=utcnow)
    # One of FEEDBACK_STATUSES, set by the trust rules or by an admin's review.
    status: Mapped[str] = mapped_column(String(16), default="accepted", server_default="accepted", index=True)
    # Why it has its status (a short code, e.g. "account_outlier"), and the numbers behind it.
    status_reason: Mapped[str | None] = mapped_column(String(64))
    status_detail: Mapped[dict | None] = mapped_column(JSON)
    # The admin who last accepted, rejected or relabelled it: an admin-verified label.
    reviewed_by: Mapped[int | None] = mapped_column(ForeignKey("users.id", ondelete="SET NULL"))
    reviewed_at: Mapped[datetime | None]

    prediction: Mapped["Prediction | None"] = relationship(back_populates="feedback")


class ModelVersion(db.Model):
    __tablename__ = "model_versions"

    id: Mapped[int] = mapped_column(primary_key=True)
    version: Mapped[str] = mapped_column(String(64), unique=True)
    file_path: Mapped[str] = mapped_column(String(512))
    sha256: Mapped[str] = mapped_column(String(64))
    # The ONNX export beside the .keras file (same stem) is what serving loads; NULL until a
    # version saved before exports existed has been exported (at the next worker start).
    onnx_sha256: Mapped[str | None] = mapped_column(String(64))
    parent_version: Mapped[str | None] = mapped_column(String(64))
    # Post-hoc calibration fitted when the version was trained: served probabilities are
    # softmax(log(p) / temperature). NULL: uncalibrated (temperature 1).
    temperature: Mapped[float | None]
    metrics: Mapped[dict] = mapped_column(JSON, default=dict)
    # candidate | active | retired | rejected
    status: Mapped[str] = mapped_column(String(16), default="candidate", index=True)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    activated_at: Mapped[datetime | None]


class RetrainJob(db.Model):
    __tablename__ = "retrain_jobs"

    id: Mapped[int] = mapped_column(primary_key=True)
    # queued | running | succeeded | rejected | failed
    status: Mapped[str] = mapped_column(String(16), default="queued", index=True)
    # Set to 1 while queued or running; NULL once finished. A unique index on it makes
    # "only one job at a time" a database rule that holds across workers and hosts.
    active_slot: Mapped[int | None] = mapped_column(unique=True)
    requested_by: Mapped[int | None] = mapped_column(ForeignKey("users.id", ondelete="SET NULL"))
    force: Mapped[bool] = mapped_column(default=False)
    progress: Mapped[float] = mapped_column(default=0.0)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    started_at: Mapped[datetime | None]
    finished_at: Mapped[datetime | None]
    # Who runs it ("host:pid") and when it last said it was alive: a job whose process
    # died is recognised by these and marked failed instead of blocking retrains forever.
    runner: Mapped[str | None] = mapped_column(String(128))
    heartbeat_at: Mapped[datetime | None]
    metrics: Mapped[dict | None] = mapped_column(JSON)
    error: Mapped[str | None] = mapped_column(Text)
    model_version: Mapped[str | None] = mapped_column(String(64))
    base_version: Mapped[str | None] = mapped_column(String(64))
