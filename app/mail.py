"""Sending mail from background threads without ever failing the caller."""

import logging
import threading

from flask import current_app
from flask_mail import Message

from app.extensions import mail

log = logging.getLogger(__name__)


def send_mail(subject, recipients, body, *, wait=False):
    """Send a plain-text message in a background thread; failures are logged, not raised.

    Returns the thread (join it in tests, or pass ``wait=True``). With no ``MAIL_SERVER``
    configured nothing is sent: development and tests stay quiet by default.
    """
    recipients = [r for r in recipients if r]
    app = current_app._get_current_object()
    if not recipients:
        return None
    if not app.config.get("MAIL_SERVER"):
        log.info("mail not configured; not sending %r to %s", subject, recipients)
        return None
    message = Message(subject=subject, recipients=recipients, body=body)
    thread = threading.Thread(target=_deliver, args=(app, message), name="send-mail", daemon=True)
    thread.start()
    if wait:
        thread.join()
    return thread


def _deliver(app, message):
    with app.app_context():
        try:
            mail.send(message)
            log.info("mail sent: %r to %s", message.subject, message.recipients)
        except Exception:  # a mail outage must never fail the job that sends it
            log.exception("could not send mail %r to %s", message.subject, message.recipients)
