"""Mail to the admins when a retrain job ends."""

import json
import logging

from flask import current_app

from app.entities import User
from app.extensions import db
from app.mail import send_mail

log = logging.getLogger(__name__)


def admin_recipients():
    """``ADMIN_EMAILS`` if set, else every active admin account with an email address."""
    configured = current_app.config["ADMIN_EMAILS"]
    if configured:
        return list(configured)
    return list(db.session.execute(
        db.select(User.email).where(User.role == "admin", User.active.is_(True), User.email.is_not(None))
    ).scalars())


def job_finished(job, *, wait=False):
    """Tell the admins how a retrain ended; never raises (a mail outage changes nothing else)."""
    try:
        recipients = admin_recipients()
        subject = f"[digit-service] retrain job {job.id} {job.status}"
        lines = [
            f"Retrain job {job.id} ended: {job.status}.",
            f"Base model: {job.base_version}",
            f"Resulting model: {job.model_version or '-'}"
            + (" (now serving)" if job.status == "succeeded" else ""),
        ]
        if job.error:
            lines.append(f"Error: {job.error}")
        if job.metrics:
            lines += ["", "Metrics:", json.dumps(job.metrics, indent=2, sort_keys=True, default=str)]
        return send_mail(subject, recipients, "\n".join(lines), wait=wait)
    except Exception:
        log.exception("could not prepare the mail for job %s", job.id)
        return None
