"""What each serving process does once when it starts: recover, load, watch.

gunicorn calls ``on_worker_start`` from ``post_worker_init`` (after the fork, before the
first request); the development server gets the same from the first request it serves.
"""

import logging
import os
import threading

from flask import request

log = logging.getLogger(__name__)
_lock = threading.Lock()


def _started_pids(app):
    return app.extensions.setdefault("lifecycle_started_pids", set())


def on_worker_start(app):
    """Fail jobs whose process died, export versions saved before ONNX exports existed, give
    the shipped version its manifest's calibration if its row predates it, load and warm the
    active model, start the version watcher."""
    with _lock:
        if os.getpid() in _started_pids(app):
            return
        _started_pids(app).add(os.getpid())
    from app.extensions import db
    from app.services.model_versions import backfill_shipped_temperature, export_missing_onnx, sweep_stale_temp_files
    from app.services.retraining import fail_interrupted_jobs

    service = app.extensions["model_service"]
    with app.app_context():
        try:
            fail_interrupted_jobs()
        except Exception:  # e.g. tables not migrated yet: /ready will say so
            db.session.rollback()
            log.exception("could not check for interrupted retrain jobs")
        try:
            sweep_stale_temp_files(app.config["MODEL_DIR"])
        except OSError:
            log.exception("could not sweep temporary model files")
        try:
            # Normally nothing to do; after an upgrade, a one-off that loads TensorFlow here.
            export_missing_onnx()
        except Exception:  # the versions stay unservable until it works; /ready says so
            db.session.rollback()
            log.exception("could not export model versions to ONNX")
        try:
            backfill_shipped_temperature(app.config["MODEL_DIR"])
        except Exception:  # e.g. a bad manifest value: served uncalibrated, as before
            db.session.rollback()
            log.exception("could not backfill the shipped model's calibration temperature")
        if app.config["MODEL_PRELOAD"]:
            service.ensure_loaded(quiet=True)
        db.session.remove()
    if app.config["RETRAIN_BACKEND"] == "rq":
        # The queue client (about 10 MB of modules) is loaded now, not inside whichever
        # request first starts a retrain: every worker's footprint is known from the start.
        import rq  # noqa: F401
    if app.config["MODEL_WATCH"]:
        service.start_watcher()


def init_app(app):
    """Run ``on_worker_start`` before the first request of a process that was not started by gunicorn."""

    @app.before_request
    def _first_request_in_this_process():
        if os.getpid() not in _started_pids(app) and request.endpoint not in ("health.health",):
            on_worker_start(app)
