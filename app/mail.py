"""Sending mail from background threads without ever failing the caller."""

import logging
import smtplib
import threading

from flask import current_app
from flask_mail import Connection, Message

log = logging.getLogger(__name__)


class TimedConnection(Connection):
    """Flask-Mail's connection, with ``MAIL_TIMEOUT`` on the socket.

    Flask-Mail 0.10 opens ``smtplib.SMTP`` without a timeout: a server that accepts the
    connection but never answers would block the sending thread (and ``wait=True``) forever.
    """

    def __init__(self, state, timeout):
        super().__init__(state)
        self.timeout = timeout

    def configure_host(self):
        smtp_class = smtplib.SMTP_SSL if self.mail.use_ssl else smtplib.SMTP
        host = smtp_class(self.mail.server, self.mail.port, timeout=self.timeout)
        host.set_debuglevel(int(self.mail.debug))
        if self.mail.use_tls:
            host.starttls()
        if self.mail.username and self.mail.password:
            host.login(self.mail.username, self.mail.password)
        return host


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
            with TimedConnection(app.extensions["mail"], app.config["MAIL_TIMEOUT"]) as connection:
                connection.send(message)
            log.info("mail sent: %r to %s", message.subject, message.recipients)
        except Exception:  # a mail outage must never fail the job that sends it
            log.exception("could not send mail %r to %s", message.subject, message.recipients)
