"""Liveness and readiness probes."""

from flask import current_app
from flask_smorest import Blueprint

from app.extensions import db, limiter
from app.schemas import HealthSchema, ReadySchema

bp = Blueprint("health", __name__, description="Probes for load balancers and orchestrators")


@bp.get("/health")
@limiter.exempt
@bp.response(200, HealthSchema)
def health():
    """Liveness: the process answers."""
    return {"status": "ok"}


@bp.get("/ready")
@limiter.exempt
@bp.response(200, ReadySchema)
@bp.alt_response(503, schema=ReadySchema, description="database or model not ready")
def ready():
    """Readiness: the database answers and a model is loaded."""
    try:
        db.session.execute(db.text("SELECT 1"))
        database = "ok"
    except Exception:
        db.session.rollback()
        database = "unavailable"
    serving = current_app.extensions.get("model_service")
    version = serving.ensure_loaded(quiet=True) if serving else None
    ok = database == "ok" and version is not None
    body = {"status": "ready" if ok else "not_ready", "database": database, "model_version": version}
    return body, 200 if ok else 503
