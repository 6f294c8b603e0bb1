"""Entry points for RQ workers (``RETRAIN_BACKEND=rq``): ``rq worker retrain``.

The worker imports this module, builds the app once from the environment and runs the job
inside its context, exactly as the in-process thread backend does.
"""

import functools


@functools.cache
def _app():
    from app import create_app

    return create_app()


def run_retrain_job(job_id):
    from app.extensions import db
    from app.services.retraining import run_job

    with _app().app_context():
        try:
            job = run_job(job_id)
            return job.status if job else None
        finally:
            db.session.remove()
