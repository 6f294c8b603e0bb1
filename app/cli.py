"""Command-line tools: ``flask --app wsgi <command>``."""

import json
import sys

import click
from flask import current_app
from flask.cli import AppGroup, with_appcontext
from marshmallow import ValidationError

from app.entities import User
from app.extensions import db
from app.schemas import RegisterSchema
from app.errors import ApiError
from app.services import account_admin, accounts, model_versions, retraining, trust


def init_app(app):
    app.cli.add_command(create_admin)
    app.cli.add_command(status)
    app.cli.add_command(purge_revocations)
    app.cli.add_command(model_cli)
    app.cli.add_command(feedback_cli)
    app.cli.add_command(users_cli)


@click.command("create-admin")
@with_appcontext
@click.argument("username")
@click.option("--email", default=None, help="where job reports are mailed")
@click.option("--password-stdin", is_flag=True, help="read the password from standard input")
def create_admin(username, email, password_stdin):
    """Create an admin account (or promote an existing user after checking the password)."""
    if password_stdin:
        password = sys.stdin.readline().rstrip("\r\n")
    else:
        password = click.prompt("Password", hide_input=True, confirmation_prompt=True)
    try:
        RegisterSchema().load({"username": username, "password": password, "email": email})
    except ValidationError as exc:
        raise click.ClickException(json.dumps(exc.messages))
    existing = db.session.execute(db.select(User).filter_by(username=username)).scalar_one_or_none()
    if existing is not None:
        accounts.authenticate(username, password)  # promoting needs the account's own password
        existing.role = "admin"
        if email:
            existing.email = email
        db.session.commit()
        click.echo(f"user {username!r} is now an admin")
        return
    user = accounts.create_user(username, password, email=email, role="admin")
    click.echo(f"admin {user.username!r} created (id {user.id})")


@click.command("status")
@with_appcontext
def status():
    """Say what a fresh install still needs: an admin, a model."""
    admins = db.session.scalar(db.select(db.func.count(User.id)).filter_by(role="admin"))
    model = model_versions.active_version()
    click.echo(f"database: {current_app.config['SQLALCHEMY_DATABASE_URI'].split('@')[-1]}")
    click.echo(f"model: {model.version if model else 'shipped model (registered on first use)'}")
    if not admins:
        click.echo(
            "No admin yet. Create the first one with:\n"
            "  printf '%s\\n' 'a-long-password' | .venv/bin/flask --app wsgi create-admin admin --password-stdin"
        )
    else:
        click.echo(f"admins: {admins}")


@click.command("purge-revocations")
@with_appcontext
def purge_revocations():
    """Delete revoked-token rows whose tokens have expired (logouts also sweep some)."""
    click.echo(f"{accounts.purge_expired_revocations()} expired revocations deleted")


model_cli = AppGroup("model", help="Train, evaluate, list and retrain digit models.")


@model_cli.command("list")
def list_models():
    """Every registered model version; * marks the active one."""
    rows = model_versions.list_versions()
    if not rows:
        click.echo("no model registered yet (the shipped one is registered on first use)")
    for row in rows:
        mark = "*" if row.status == "active" else " "
        click.echo(f"{mark} {row.version:<24} {row.status:<10} {json.dumps(row.metrics or {}, sort_keys=True)}")


@model_cli.command("train-base")
@click.option("--data", "data_dir", required=True, type=click.Path(exists=True), help="MNIST-format data (.npz or IDX)")
@click.option("--epochs", default=None, type=int, help="training epochs (default: the recipe's)")
@click.option("--seed", default=0, type=int)
@click.option("--eval", "eval_dir", default=None, type=click.Path(exists=True), help="held-out data to report accuracy on")
@click.option("--activate/--no-activate", default=True, help="serve the new model right away")
def train_base(data_dir, epochs, seed, eval_dir, activate):
    """Train a base model from scratch and register it as a new version."""
    row = model_versions.train_base_version(data_dir, epochs=epochs, seed=seed, eval_dir=eval_dir, activate=activate,
                                           progress=lambda f: click.echo(f"  {f:.0%}", err=True))
    click.echo(json.dumps({"model_version": row.version, "status": row.status, "metrics": row.metrics}))


@model_cli.command("export-onnx")
def export_onnx():
    """Export versions saved before ONNX exports existed (workers also do it when they start)."""
    done = model_versions.export_missing_onnx()
    missing = [row.version for row in model_versions.versions_without_onnx()]
    click.echo(json.dumps({"exported": done, "still_missing": missing}))
    if missing:
        sys.exit(1)


@model_cli.command("calibrate")
@click.option("--version", default=None, help="model version (default: the active one)")
@click.option("--clear", is_flag=True, help="serve the version uncalibrated (its temperature becomes NULL)")
def calibrate(version, clear):
    """Refit a version's calibration temperature on the replay hold-out digits, or clear it."""
    fit = model_versions.calibrate_version(version, clear=clear)
    row = model_versions.get_version(version) if version else model_versions.ensure_active_version()
    click.echo(json.dumps({"model_version": row.version, "temperature": row.temperature, "calibration": fit}))


@model_cli.command("evaluate")
@click.option("--data", "data_dir", required=True, type=click.Path(exists=True),
              help="MNIST-format data, or a folder of images with labels.csv")
@click.option("--version", default=None, help="model version (default: the active one)")
def evaluate(data_dir, version):
    """Accuracy of a model version on labelled data, through the API's preprocessing."""
    click.echo(json.dumps(model_versions.evaluate_version(data_dir, version=version)))


@model_cli.command("retrain")
@click.option("--wait", is_flag=True, help="run here and wait for the outcome")
@click.option("--force", is_flag=True, help="skip the promotion gate")
def retrain(wait, force):
    """Start a retrain on stored feedback, as POST /admin/retrain does."""
    job = retraining.start_retrain(requested_by=None, force=force, run_inline=wait)
    click.echo(json.dumps(retraining.job_body(job), default=str))
    if wait and job.status == "failed":
        sys.exit(1)


feedback_cli = AppGroup("feedback", help="Judge stored feedback.")


@feedback_cli.command("assess")
@click.option("--dry-run", is_flag=True, help="print the verdicts, change no feedback row")
def assess_feedback(dry_run):
    """Score every account's labels against the live model and the other accounts (the
    trust rules a retrain applies first); quarantine outliers, release the cleared.
    Prints one JSON object per account with the numbers behind its verdict."""
    live = model_versions.ensure_active_version()
    if live is None:
        raise click.ClickException("no active model to judge feedback with")
    feedback, assessment, changes = trust.assess(live, apply=not dry_run)
    for account, verdict in sorted(assessment.accounts.items()):
        click.echo(json.dumps({"user_id": None if account == trust.DELETED_ACCOUNT else account,
                               "username": feedback.usernames.get(account), **verdict.as_dict()}))
    click.echo(json.dumps({"model_version": live.version, "rows": len(feedback), "dry_run": dry_run, **changes}))


users_cli = AppGroup("users", help="List, deactivate and activate accounts.")


def _set_active(username, active):
    try:
        user = account_admin.set_active(account_admin.find_by_username(username).id, active)
    except ApiError as exc:  # unknown account, the last active admin: the API's refusals
        raise click.ClickException(f"{exc.message} ({exc.code})") from None
    click.echo(f"user {user.username!r} is {'active' if user.active else 'deactivated'}")


@users_cli.command("deactivate")
@click.argument("username")
def deactivate_user(username):
    """Deactivate an account: no login, its tokens refused at once, its labels not trained on."""
    _set_active(username, False)


@users_cli.command("activate")
@click.argument("username")
def activate_user(username):
    """Activate a deactivated account again."""
    _set_active(username, True)


@users_cli.command("list")
@click.option("--inactive", is_flag=True, help="only deactivated accounts")
def list_users(inactive):
    """Every account with its role, state and feedback counts (accepted/quarantined/rejected)."""
    page, per_page = 1, 100
    while True:
        body = account_admin.list_accounts(page, per_page, active=False if inactive else None)
        for item in body["items"]:
            counts = item["feedback"]
            click.echo(f"{item['id']:>6} {item['username']:<32} {item['role']:<6} "
                       f"{'active' if item['active'] else 'INACTIVE':<8} "
                       f"{counts['accepted']}/{counts['quarantined']}/{counts['rejected']}")
        if page >= body["pages"]:
            break
        page += 1
