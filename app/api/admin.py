"""Admin: model versions, feedback statistics, retraining and accounts."""

from flask import current_app, url_for

from app.api import BEARER, Blueprint
from app.schemas import (
    MAX_ID,
    AccountPageSchema,
    AccountQuerySchema,
    AccountSchema,
    AccountUpdateSchema,
    ErrorSchema,
    FeedbackStatsSchema,
    ModelListSchema,
    ModelVersionSchema,
    RetrainAcceptedSchema,
    RetrainJobSchema,
    RetrainRequestSchema,
    StatsSchema,
    link_to,
)
from app.security import caller_id, role_required
from app.services import feedback as feedback_service
from app.services import account_admin, model_versions, monitoring, retraining

bp = Blueprint("admin", __name__, url_prefix="/admin", description="Administration (admin role)")

JOB_STATUS = "/admin/retrain/{job_id}"


def _version_body(row):
    return {
        "version": row.version,
        "status": row.status,
        "active": row.status == "active",
        "parent_version": row.parent_version,
        "sha256": row.sha256,
        "file_path": row.file_path,
        "temperature": row.temperature,
        "metrics": row.metrics or {},
        "created_at": row.created_at,
        "activated_at": row.activated_at,
    }


@bp.get("/models")
@role_required("admin")
@bp.response(200, ModelListSchema)
@bp.doc(security=BEARER, responses={"200": {"links": {"activate": link_to(
    "/admin/models/{version}/activate", parameters={"version": "$response.body#/active_version"},
    description="activate a listed version again (here: the active one, which changes nothing)")}}})
def list_models():
    """Every model version with its metrics, and which one is active."""
    active = model_versions.ensure_active_version()
    service = current_app.extensions["model_service"]
    return {
        "active_version": active.version if active else None,
        "served_version": service.current_version,
        "models": [_version_body(row) for row in model_versions.list_versions()],
    }


@bp.post("/models/<version>/activate")
@role_required("admin")
@bp.response(200, ModelVersionSchema)
@bp.alt_response(409, description="the version's files are missing or changed, or its calibration temperature is unusable")
@bp.doc(security=BEARER)
def activate_model(version):
    """Serve ``version`` from now on, in every worker (rollback or roll forward)."""
    row = model_versions.activate_version(version)
    current_app.extensions["model_service"].sync_if_serving()
    return _version_body(row)


@bp.get("/feedback/stats")
@role_required("admin")
@bp.response(200, FeedbackStatsSchema)
@bp.doc(security=BEARER)
def feedback_stats():
    """Feedback counts per label and model version, the live model's error rate, what is new."""
    return feedback_service.stats()


@bp.get("/stats")
@role_required("admin")
@bp.response(200, StatsSchema)
@bp.doc(security=BEARER)
def stats():
    """The live model on real traffic: drift of recent predictions, error rate per version
    (from users' labels, also per day), prediction and feedback counts."""
    return monitoring.stats()


@bp.post("/retrain")
@role_required("admin")
@bp.arguments(RetrainRequestSchema, required=False)
@bp.response(202, RetrainAcceptedSchema)
@bp.alt_response(409, description="a job is already queued or running")
@bp.alt_response(422, description="too little feedback")
@bp.alt_response(503, description="the retrain queue (Redis, with RETRAIN_BACKEND=rq) is unreachable: "
                                  "nothing started, the slot stays free")
@bp.doc(security=BEARER, responses={"202": {"links": {"status": link_to(
    JOB_STATUS, "get", parameters={"job_id": "$response.body#/job_id"}, description="poll the job")}}})
def start_retrain(data):
    """Start retraining on stored feedback in the background; poll ``status_url``."""
    job = retraining.start_retrain(requested_by=caller_id(), force=(data or {}).get("force", False))
    status_url = url_for("admin.retrain_status", job_id=job.id)
    return {"job_id": job.id, "status": job.status, "status_url": status_url}, 202, {"Location": status_url}


@bp.get(f"/retrain/<int(min=1, max={MAX_ID}):job_id>")  # any other number names no job: 404
@role_required("admin")
@bp.response(200, RetrainJobSchema)
@bp.doc(security=BEARER)
def retrain_status(job_id):
    """Status, progress, timings, metrics, resulting version and error of a retrain job."""
    return retraining.job_body(retraining.get_job(job_id))


@bp.get("/retrain")
@role_required("admin")
@bp.response(200, RetrainJobSchema(many=True))
@bp.doc(security=BEARER, responses={"200": {"links": {"status": link_to(
    JOB_STATUS, "get", parameters={"job_id": "$response.body#/0/job_id"}, description="the newest job")}}})
def list_retrain_jobs():
    """The 50 most recent retrain jobs, newest first."""
    return [retraining.job_body(job) for job in retraining.recent_jobs(50)]


# Documented on the account endpoints: the token failures and the role check.
ACCESS_ERRORS = ((401, "no token; an expired, revoked or invalid one; or the caller's account is no longer active "
                       "(account_inactive)"),
                 (403, "the token is not an admin's"))


def _errors(*statuses_and_descriptions):
    def decorate(view):
        for status, description in [*ACCESS_ERRORS, *statuses_and_descriptions]:
            view = bp.alt_response(status, schema=ErrorSchema, description=description)(view)
        return view

    return decorate


@bp.get("/users")
@role_required("admin")
@bp.arguments(AccountQuerySchema, location="query")
@bp.response(200, AccountPageSchema)
@_errors((422, "a query parameter is not valid"))
@bp.doc(security=BEARER)
def list_users(query):
    """A page of accounts, oldest first, each with its feedback counts per status;
    ``active`` and ``role`` filter them."""
    return account_admin.list_accounts(query["page"], query["per_page"], active=query.get("active"),
                                       role=query.get("role"))


@bp.patch(f"/users/<int(min=1, max={MAX_ID}):user_id>")  # any other number names no account: 404
@role_required("admin")
@bp.arguments(AccountUpdateSchema)
@bp.response(200, AccountSchema)
@_errors((404, "no such account"),
         (409, "cannot_deactivate_self: the caller's own account; last_admin: the last active admin"),
         (415, "the body is not JSON"),
         (422, "no boolean ``active``, or another field"))
@bp.doc(security=BEARER)
def update_user(data, user_id):
    """Deactivate an account (it cannot log in, its tokens are refused at once, its labels
    are not trained on) or activate it again. Setting what it already is changes nothing."""
    return account_admin.describe(account_admin.set_active(user_id, data["active"], by=caller_id()))
