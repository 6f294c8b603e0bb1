"""Mail over real SMTP: an aiosmtpd server on loopback receives what the service sends.

Flask-Mail reads its settings once, in ``init_app``: every app here is built with them as
overrides (``MAIL_SUPPRESS_SEND=False`` too, since the testing config suppresses sending).
"""

import email
import email.policy
import logging
import smtplib
import socket
import time
from types import SimpleNamespace

import pytest
from aiosmtpd.controller import Controller

from app.entities import RetrainJob, User
from app.extensions import db
from app.mail import send_mail
from app.services import notifications
from app.services.accounts import create_user
from support import free_port

SENDER = "digit-service@test.example"


class Inbox:
    """An aiosmtpd handler that keeps every message it accepts."""

    def __init__(self):
        self.messages = []

    async def handle_DATA(self, server, session, envelope):
        parsed = email.message_from_bytes(envelope.content, policy=email.policy.default)
        self.messages.append(SimpleNamespace(mail_from=envelope.mail_from, rcpt_tos=list(envelope.rcpt_tos),
                                             message=parsed, body=parsed.get_body().get_content()))
        return "250 Message accepted for delivery"


@pytest.fixture
def smtp_server():
    """A real SMTP server on 127.0.0.1 (its ``inbox.port``), stopped after the test."""
    inbox = Inbox()
    controller = Controller(inbox, hostname="127.0.0.1", port=free_port())
    controller.start()
    inbox.port = controller.port
    yield inbox
    controller.stop()


@pytest.fixture
def mail_app(make_app, smtp_server):
    """An app that really sends mail, to ``smtp_server``."""
    return make_app(MAIL_SERVER="127.0.0.1", MAIL_PORT=smtp_server.port, MAIL_SUPPRESS_SEND=False,
                    MAIL_DEFAULT_SENDER=SENDER, MAIL_TIMEOUT=5.0)


def finished_job(**values):
    """A retrain job row as ``run_job`` leaves it, stored so it has an id."""
    job = RetrainJob(active_slot=None, progress=1.0, base_version="base-1", **values)
    db.session.add(job)
    db.session.commit()
    return job


def test_send_mail_delivers_subject_recipients_and_body(mail_app, smtp_server):
    with mail_app.app_context():
        thread = send_mail("Grüße from the digit service", ["ops@example.com", "", "lead@example.com"],
                           "First line\nsecond line: ünïcode", wait=True)
    assert thread is not None and not thread.is_alive()
    [received] = smtp_server.messages
    assert received.mail_from == SENDER
    assert sorted(received.rcpt_tos) == ["lead@example.com", "ops@example.com"]  # the blank one is dropped
    assert received.message["Subject"] == "Grüße from the digit service"
    assert received.message["From"] == SENDER
    assert sorted(a.addr_spec for a in received.message["To"].addresses) == ["lead@example.com", "ops@example.com"]
    assert received.body.splitlines() == ["First line", "second line: ünïcode"]


def test_send_mail_in_the_background_returns_at_once(mail_app, smtp_server):
    with mail_app.app_context():
        thread = send_mail("background", ["ops@example.com"], "body")
    thread.join(timeout=30)
    assert [m.message["Subject"] for m in smtp_server.messages] == ["background"]


def test_job_finished_mails_the_configured_admins_outcome_and_metrics(make_app, smtp_server):
    app = make_app(MAIL_SERVER="127.0.0.1", MAIL_PORT=smtp_server.port, MAIL_SUPPRESS_SEND=False,
                   ADMIN_EMAILS=["ops@example.com", "lead@example.com"])
    with app.app_context():
        create_user("boss", "boss-password-1", role="admin", email="boss@example.com")  # ADMIN_EMAILS wins
        job = finished_job(status="succeeded", model_version="retrain-7",
                           metrics={"feedback_holdout_accuracy": 0.9375, "replay_accuracy": 0.981})
        notifications.job_finished(job, wait=True)
        job_id = job.id
    [received] = smtp_server.messages
    assert sorted(received.rcpt_tos) == ["lead@example.com", "ops@example.com"]
    assert received.message["Subject"] == f"[digit-service] retrain job {job_id} succeeded"
    body = received.body
    assert f"Retrain job {job_id} ended: succeeded." in body
    assert "Base model: base-1" in body
    assert "Resulting model: retrain-7 (now serving)" in body
    assert '"feedback_holdout_accuracy": 0.9375' in body and '"replay_accuracy": 0.981' in body


def test_job_finished_falls_back_to_active_admins_with_an_email(make_app, smtp_server):
    app = make_app(MAIL_SERVER="127.0.0.1", MAIL_PORT=smtp_server.port, MAIL_SUPPRESS_SEND=False, ADMIN_EMAILS=[])
    with app.app_context():
        create_user("boss", "boss-password-1", role="admin", email="boss@example.com")
        create_user("nomail", "nomail-password-1", role="admin")
        create_user("gone", "gone-password-1", role="admin", email="gone@example.com")
        db.session.execute(db.update(User).where(User.username == "gone").values(active=False))
        create_user("pat", "pat-password-1", email="pat@example.com")  # not an admin
        db.session.commit()
        job = finished_job(status="failed", error="RuntimeError: only 3 usable feedback samples")
        notifications.job_finished(job, wait=True)
        job_id = job.id
    [received] = smtp_server.messages
    assert received.rcpt_tos == ["boss@example.com"]
    assert received.message["Subject"] == f"[digit-service] retrain job {job_id} failed"
    assert "Error: RuntimeError: only 3 usable feedback samples" in received.body
    assert "Resulting model: -" in received.body and "now serving" not in received.body


def test_job_finished_without_any_admin_address_sends_nothing(make_app, smtp_server):
    app = make_app(MAIL_SERVER="127.0.0.1", MAIL_PORT=smtp_server.port, MAIL_SUPPRESS_SEND=False, ADMIN_EMAILS=[])
    with app.app_context():
        create_user("nomail", "nomail-password-1", role="admin")
        assert notifications.job_finished(finished_job(status="rejected"), wait=True) is None
    assert smtp_server.messages == []


def test_a_dead_smtp_server_is_logged_and_raises_nothing(make_app, caplog):
    app = make_app(MAIL_SERVER="127.0.0.1", MAIL_PORT=free_port(), MAIL_SUPPRESS_SEND=False,
                   ADMIN_EMAILS=["ops@example.com"])  # nobody listens on that port
    with app.app_context(), caplog.at_level(logging.ERROR, logger="app.mail"):
        thread = send_mail("nobody hears this", ["ops@example.com"], "body", wait=True)
        assert thread is not None and not thread.is_alive()
        job = finished_job(status="succeeded", model_version="retrain-1")
        notifications.job_finished(job, wait=True)
        job_id = job.id
    failures = [r for r in caplog.records if r.name == "app.mail" and r.levelno == logging.ERROR]
    assert [r.getMessage().split(" to ")[0] for r in failures] == [
        "could not send mail 'nobody hears this'",
        f"could not send mail '[digit-service] retrain job {job_id} succeeded'",
    ]
    assert all(isinstance(r.exc_info[1], ConnectionRefusedError) for r in failures)


def test_a_silent_smtp_server_times_out_instead_of_hanging(make_app, caplog):
    """A server that accepts connections but never answers must not block the sender forever."""
    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen(8)  # the kernel completes handshakes; nobody ever sends the SMTP greeting
        app = make_app(MAIL_SERVER="127.0.0.1", MAIL_PORT=silent.getsockname()[1], MAIL_SUPPRESS_SEND=False,
                       MAIL_TIMEOUT=0.5)
        started = time.monotonic()
        with app.app_context(), caplog.at_level(logging.ERROR, logger="app.mail"):
            send_mail("into the void", ["ops@example.com"], "body", wait=True)
        assert time.monotonic() - started < 10
    [failure] = [r for r in caplog.records if r.name == "app.mail"]
    assert "could not send mail 'into the void'" in failure.getMessage()
    assert isinstance(failure.exc_info[1], (TimeoutError, socket.timeout, smtplib.SMTPException))


def test_without_mail_server_nothing_is_attempted(make_app, monkeypatch, caplog):
    attempts = []

    class NoSMTP:
        def __init__(self, *args, **kwargs):
            attempts.append(args)
            raise AssertionError("no SMTP connection may be opened")

    monkeypatch.setattr(smtplib, "SMTP", NoSMTP)
    app = make_app(MAIL_SERVER=None, MAIL_SUPPRESS_SEND=False, ADMIN_EMAILS=["ops@example.com"])
    with app.app_context(), caplog.at_level(logging.INFO, logger="app.mail"):
        assert send_mail("quiet", ["ops@example.com"], "body", wait=True) is None
        assert notifications.job_finished(finished_job(status="succeeded"), wait=True) is None
    assert attempts == []
    assert any("mail not configured" in r.getMessage() for r in caplog.records if r.name == "app.mail")
