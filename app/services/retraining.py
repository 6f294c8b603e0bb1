"""Retrain jobs: who may start one, one at a time, running it, and recording the outcome.

"One job at a time" is a database rule (a unique ``active_slot``), so it holds across
gunicorn workers and hosts. The ML work itself is ``app.ml.jobs.run_retrain``.
"""

import logging
import os
import socket
import threading
from datetime import timedelta

from flask import current_app
from sqlalchemy.exc import IntegrityError

from app.entities import Feedback, RetrainJob, utcnow
from app.errors import ApiError, Conflict, NotFound, ServiceUnavailable
from app.extensions import db
from app.metrics import observe_retrain
from app.services import model_versions

log = logging.getLogger(__name__)

ACTIVE_SLOT = 1


def job_body(job):
    duration = None
    if job.started_at and job.finished_at:
        duration = round((job.finished_at - job.started_at).total_seconds(), 2)
    return {
        "job_id": job.id,
        "status": job.status,
        "progress": round(job.progress or 0.0, 4),
        "force": job.force,
        "metrics": job.metrics,
        "model_version": job.model_version,
        "base_version": job.base_version,
        "error": job.error,
        "created_at": job.created_at,
        "started_at": job.started_at,
        "finished_at": job.finished_at,
        "duration_seconds": duration,
    }


def get_job(job_id):
    job = db.session.get(RetrainJob, job_id)
    if job is None:
        raise NotFound(f"retrain job {job_id} not found", code="job_not_found")
    return job


def recent_jobs(limit):
    return db.session.execute(db.select(RetrainJob).order_by(RetrainJob.id.desc()).limit(limit)).scalars().all()


def usable_feedback_count():
    """Feedback a retrain may learn from: only ``accepted`` rows (not quarantined or rejected)."""
    return db.session.scalar(db.select(db.func.count(Feedback.id)).where(Feedback.status == "accepted"))


def _pid_alive(pid):
    """Whether a process with this pid runs here; a zombie (exited, not yet reaped) does not."""
    try:
        with open(f"/proc/{pid}/stat") as fh:
            # The state follows the parenthesised command name, which may contain spaces.
            return fh.read().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False
    except OSError:  # no /proc here: ask the kernel instead
        pass
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _is_dead(job, now, stale_after):
    """A queued/running job whose runner is gone: same host and pid not alive, or silent too long."""
    if job.runner:
        host, _, pid = job.runner.rpartition(":")
        if host == socket.gethostname() and pid.isdigit() and not _pid_alive(int(pid)):
            return True
    last_sign = job.heartbeat_at or job.started_at or job.created_at
    return last_sign is not None and now - last_sign > stale_after


def fail_interrupted_jobs():
    """Mark jobs whose process died as failed ("interrupted"); returns how many.

    Runs at start-up and before a new job is admitted, so a killed worker never leaves a
    job ``running`` forever or blocks the next retrain.
    """
    now = utcnow()
    stale_after = timedelta(seconds=current_app.config["RETRAIN_STALE_SECONDS"])
    jobs = db.session.execute(
        db.select(RetrainJob).where(RetrainJob.status.in_(("queued", "running")))
    ).scalars().all()
    count = 0
    for job in jobs:
        # A queued job handed to RQ has no runner until a worker takes it: only staleness counts.
        if job.runner is None and job.status == "queued" and current_app.config["RETRAIN_BACKEND"] == "rq":
            if now - job.created_at <= stale_after:
                continue
        if _is_dead(job, now, stale_after):
            _finish(job, "failed", error="interrupted: the process running this job stopped")
            count += 1
    if count:
        log.warning("marked %d interrupted retrain job(s) as failed", count)
    return count


def start_retrain(*, requested_by, force=False, run_inline=False):
    """Admit a new job (422 too little feedback, 409 one is already queued or running) and start it."""
    available = usable_feedback_count()
    needed = current_app.config["RETRAIN_MIN_FEEDBACK"]
    if available < needed:
        raise ApiError(
            f"{available} feedback samples stored, {needed} needed to retrain",
            status=422, code="not_enough_feedback", details={"available": available, "required": needed},
        )
    fail_interrupted_jobs()
    job = RetrainJob(status="queued", active_slot=ACTIVE_SLOT, requested_by=requested_by, force=bool(force))
    db.session.add(job)
    try:
        db.session.commit()
    except IntegrityError:
        db.session.rollback()
        current = db.session.execute(db.select(RetrainJob).filter_by(active_slot=ACTIVE_SLOT)).scalar_one_or_none()
        raise Conflict(
            "a retrain job is already queued or running",
            code="retrain_in_progress",
            details={"job_id": current.id if current else None},
        ) from None
    job_id = job.id
    try:
        dispatch(job_id, run_inline=run_inline)
    except Exception as exc:  # e.g. Redis down: the job must not hold the slot as `queued`
        log.error("could not start retrain job %s: %s: %s", job_id, type(exc).__name__, exc)
        db.session.rollback()
        _finish(db.session.get(RetrainJob, job_id), "failed", error=f"not started: {type(exc).__name__}: {exc}")
        raise ServiceUnavailable(
            f"the retrain queue is unavailable ({type(exc).__name__}); nothing was started, try again later",
            code="retrain_queue_unavailable", details={"job_id": job_id},
        ) from None
    db.session.refresh(job)
    return job


def dispatch(job_id, *, run_inline=False):
    """Run the job here, in a background thread, or on an RQ worker (``RETRAIN_BACKEND``)."""
    app = current_app._get_current_object()
    if run_inline:
        run_job(job_id)
        return
    backend = app.config["RETRAIN_BACKEND"]
    if backend == "rq":
        from redis import Redis
        from rq import Queue

        timeout = app.config["REDIS_SOCKET_TIMEOUT"]  # a Redis that does not answer must not hang the request
        connection = Redis.from_url(app.config["REDIS_URL"], socket_connect_timeout=timeout, socket_timeout=timeout)
        queue = Queue(app.config["RETRAIN_QUEUE"], connection=connection)
        queue.enqueue("app.tasks.run_retrain_job", job_id, job_timeout=3600)
        return
    thread = threading.Thread(target=_run_in_app, args=(app, job_id), name=f"retrain-{job_id}", daemon=True)
    thread.start()


def _run_in_app(app, job_id):
    with app.app_context():
        try:
            run_job(job_id)
        finally:
            db.session.remove()


def _update(job, **values):
    for key, value in values.items():
        setattr(job, key, value)
    job.heartbeat_at = utcnow()
    db.session.commit()


def _finish(job, status, **values):
    if status in ("succeeded", "rejected"):
        values["progress"] = 1.0
    # active_slot=None frees the slot: the next job may start.
    _update(job, status=status, finished_at=utcnow(), active_slot=None, **values)


def run_job(job_id):
    """Run one job to its end: succeeded (new version live), rejected (gate said no) or failed."""
    from app.services import notifications

    job = db.session.get(RetrainJob, job_id)
    if job is None or job.status != "queued":
        return
    config = current_app.config
    live = model_versions.ensure_active_version()
    _update(job, status="running", started_at=utcnow(), runner=f"{socket.gethostname()}:{os.getpid()}",
            progress=0.0, base_version=live.version if live else None)
    _log_phase(job, "started", "from %s", job.base_version)
    try:
        # From here this process holds TensorFlow (training, the ONNX export), whether it is
        # an RQ worker, the CLI, or a web worker running a thread-backend job: that worker
        # keeps it until it restarts. Serving alone never imports it.
        from app.ml.datasets import load_replay
        from app.ml.jobs import run_retrain
        from app.ml.training import FT_REPLAY_RATIO
        from app.services import trust

        model_versions.start_tensorflow()
        if live is None:
            raise RuntimeError("no active model to retrain from")
        x_replay, y_replay, replay_holdout = load_replay(config["MODEL_DIR"])
        # Whose labels to believe is decided before anything trains on them.
        feedback, assessment, changes = trust.assess(live)
        selection = trust.select_for_training(feedback, replay_per_feedback=FT_REPLAY_RATIO, seed=config["RETRAIN_SEED"])
        used = selection.index
        x, y = feedback.x[used], feedback.labels[used]
        _log_phase(job, "data", "%d feedback samples used of %d (%d skipped, %d quarantined now, %d released, "
                   "%d on probation, %d capped), %d replay digits", len(y), len(feedback), feedback.skipped,
                   changes["quarantined"], changes["released"], int(selection.probation.sum()),
                   sum(selection.dropped_by_cap.values()), len(y_replay))
        if len(y) < config["RETRAIN_MIN_FEEDBACK"]:
            raise RuntimeError(f"only {len(y)} usable feedback samples")

        def progress(fraction):
            _update(job, progress=round(min(fraction, 0.99), 4))

        result = run_retrain(
            model_versions.keras_path(live), x, y, x_replay, y_replay,
            epochs=config["RETRAIN_EPOCHS"], seed=config["RETRAIN_SEED"],
            max_regression_points=config["RETRAIN_MAX_REGRESSION"],
            from_scratch=config["RETRAIN_FROM_SCRATCH"], replay_holdout=replay_holdout, progress=progress,
            accounts=feedback.accounts[used], trusted=feedback.trusted[used],
            max_class_regression_points=config["RETRAIN_MAX_CLASS_REGRESSION"],
            max_account_share=config["RETRAIN_MAX_ACCOUNT_SHARE"],
        )
        per_account = result.metrics.pop("per_account")
        metrics = {**result.metrics, "feedback_skipped": feedback.skipped, "forced": bool(job.force),
                   "accounts": trust.account_report(feedback, assessment, selection, per_account),
                   "trust": {**changes, "max_account_share": config["RETRAIN_MAX_ACCOUNT_SHARE"],
                             "inactive_left_out": feedback.inactive}}
        promote = result.decision.passed or job.force
        _log_phase(job, "gated", "gate %s%s", "passed" if result.decision.passed else "failed",
                   " (forced)" if job.force and not result.decision.passed else "")
        row = model_versions.save_version(
            result.candidate, f"retrain-{job.id}", parent_version=live.version, metrics=metrics,
            status="candidate" if promote else "rejected",
            temperature=(result.metrics.get("calibration") or {}).get("temperature"),
        )
        if promote:
            # One commit: the new version goes live exactly when the job says it succeeded.
            model_versions.activate_version(row.version, commit=False)
        _finish(job, "succeeded" if promote else "rejected", metrics=metrics, model_version=row.version)
    except Exception as exc:
        db.session.rollback()
        log.exception("retrain job %s failed", job_id)
        job = db.session.get(RetrainJob, job_id)
        _finish(job, "failed", error=f"{type(exc).__name__}: {exc}")
    observe_retrain(job)
    _log_phase(job, "finished", "%s", job.status)
    if job.status == "succeeded":
        _swap_here()
    notifications.job_finished(job)
    return job


def _log_phase(job, phase, message, *args):
    """One line per phase of a job, with its id (a field of its own in JSON logs)."""
    log.info("retrain job %s %s: " + message, job.id, phase, *args, extra={"job_id": job.id, "phase": phase})


def _swap_here():
    """Serve the new version in this process now; other workers follow within a second."""
    try:
        current_app.extensions["model_service"].sync_if_serving()
    except Exception:  # the watcher retries; the job's outcome stands
        log.exception("could not swap to the new model in this process yet")
