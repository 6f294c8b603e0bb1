"""Entry points for RQ workers (``RETRAIN_BACKEND=rq``): ``rq worker retrain``.

The worker imports this module, builds the app once from the environment and runs the job
inside its context, exactly as the in-process thread backend does.
"""

_app = None


def _get_app():
    global _app
    if _app is None:
        from app import create_app

        _app = create_app()
    return _app


def run_retrain_job(job_id):
    from app.extensions import db
    from app.services.retraining import run_job

    app = _get_app()
    with app.app_context():
        try:
            job = run_job(job_id)
            return job.status if job else None
        finally:
            db.session.remove()
