"""Liveness and readiness probes, and the Prometheus scrape."""

from flask import current_app

from app import metrics
from app.api import Blueprint
from app.errors import NotFound, rollback_quietly
from app.extensions import db, limiter
from app.schemas import ErrorSchema, HealthSchema, ReadySchema

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
    """Readiness: the database answers and a model is loaded.

    ``model_version`` is the version this process serves; when the active version's file
    will not load it is the most recently active version that does (``active_version`` and
    ``model_error`` say which and why)."""
    try:
        db.session.execute(db.text("SELECT 1"))
        database = "ok"
    except Exception:
        rollback_quietly()
        database = "unavailable"
    serving = current_app.extensions["model_service"]
    version = serving.ensure_loaded(quiet=True)
    ok = database == "ok" and version is not None
    body = {"status": "ready" if ok else "not_ready", "database": database, "model_version": version,
            # Serving a fallback (the active version's file would not load) or nothing: why.
            "active_version": serving.active_version, "model_error": serving.last_error}
    return body, 200 if ok else 503


@bp.get("/metrics")
@limiter.exempt
@bp.doc(
    security=[{"metricsToken": []}],
    responses={
        "200": {"description": "Prometheus text format, summed over every worker",
                "content": {"text/plain": {"schema": {"type": "string"}}}},
        "401": {"description": "METRICS_TOKEN is set and the request did not send it as a bearer token",
                "content": {"application/json": {"schema": ErrorSchema}}},
        "403": {"description": "no METRICS_TOKEN is set: only loopback may scrape, and nobody in production",
                "content": {"application/json": {"schema": ErrorSchema}}},
        "404": {"description": "METRICS_ENABLED is false", "content": {"application/json": {"schema": ErrorSchema}}},
    },
)
def scrape():
    """Prometheus metrics: requests, predictions, feedback, retrains, model swaps, drift."""
    if not current_app.config["METRICS_ENABLED"]:
        raise NotFound("metrics are turned off (METRICS_ENABLED=false)")
    metrics.check_scraper()
    return current_app.response_class(metrics.scrape(), mimetype="text/plain")
