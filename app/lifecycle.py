"""What each serving process does once when it starts: recover, load, watch.

gunicorn calls ``on_worker_start`` from ``post_worker_init`` (after the fork, before the
first request); the development server gets the same from the first request it serves.
"""

import logging
import os
import threading

from flask import request

from app.errors import rollback_quietly

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
    model_dir = app.config["MODEL_DIR"]
    with app.app_context():
        # A step that fails (tables not migrated yet, versions not exported: /ready says so; a
        # bad manifest value: served uncalibrated, as before) does not stop the worker.
        _attempt("check for interrupted retrain jobs", fail_interrupted_jobs)
        _attempt("sweep temporary model files", sweep_stale_temp_files, model_dir)
        # Normally nothing to do; after an upgrade, a one-off that loads TensorFlow here.
        _attempt("export model versions to ONNX", export_missing_onnx)
        _attempt("backfill the shipped model's calibration temperature", backfill_shipped_temperature, model_dir)
        if app.config["MODEL_PRELOAD"]:
            service.ensure_loaded(quiet=True)
        db.session.remove()
    if app.config["RETRAIN_BACKEND"] == "rq":
        # The queue client (about 10 MB of modules) is loaded now, not inside whichever
        # request first starts a retrain: every worker's footprint is known from the start.
        import rq  # noqa: F401
    if app.config["MODEL_WATCH"]:
        service.start_watcher()


def _attempt(what, step, *args):
    """Run one start-up step; a failure is logged and rolled back."""
    try:
        step(*args)
    except Exception:
        rollback_quietly()
        log.exception("could not %s", what)


def init_app(app):
    """Run ``on_worker_start`` before the first request of a process that was not started by gunicorn."""

    @app.before_request
    def _first_request_in_this_process():
        if os.getpid() not in _started_pids(app) and request.endpoint != "health.health":
            on_worker_start(app)
