"""Model versions in the database: which exist, which one is active, switching between them."""

import json
import logging
import os

from flask import current_app
from sqlalchemy.exc import IntegrityError

from app.entities import ModelVersion, utcnow
from app.errors import Conflict, NotFound
from app.extensions import db

log = logging.getLogger(__name__)

MANIFEST = "manifest.json"


def resolve_path(model_dir, file_path):
    """Stored paths are relative to MODEL_DIR so that the folder can move between hosts."""
    return file_path if os.path.isabs(file_path) else os.path.join(model_dir, file_path)


def sweep_stale_temp_files(model_dir, older_than_seconds=3600):
    """Remove temporary model files left by a process killed mid-save; returns how many.

    They are never loaded (only ``os.replace`` gives a file its final name); this frees the
    disk. Only old ones go, so a save in progress elsewhere is left alone.
    """
    import time

    removed = 0
    cutoff = time.time() - older_than_seconds
    for name in os.listdir(model_dir) if os.path.isdir(model_dir) else []:
        path = os.path.join(model_dir, name)
        if name.endswith(".tmp.keras") and os.path.getmtime(path) < cutoff:
            os.remove(path)
            removed += 1
    if removed:
        log.warning("removed %d stale temporary model file(s) from %s", removed, model_dir)
    return removed


def active_version():
    """The active ModelVersion row, or None."""
    return db.session.execute(
        db.select(ModelVersion).filter_by(status="active").order_by(ModelVersion.activated_at.desc())
    ).scalars().first()


def ensure_active_version():
    """The active row; on a fresh install, the shipped model registered as active first."""
    return active_version() or register_shipped_model(current_app.config["MODEL_DIR"])


def get_version(version):
    row = db.session.execute(db.select(ModelVersion).filter_by(version=version)).scalar_one_or_none()
    if row is None:
        raise NotFound(f"model version {version!r} not found", code="model_version_not_found")
    return row


def list_versions():
    return db.session.execute(db.select(ModelVersion).order_by(ModelVersion.created_at, ModelVersion.id)).scalars().all()


def register_shipped_model(model_dir):
    """Register the base model described by ``MODEL_DIR/manifest.json`` as active, once.

    Called when the database knows no model yet (a fresh install). Several workers may race
    here: the unique version name lets exactly one insert win.
    """
    path = os.path.join(model_dir, MANIFEST)
    if not os.path.exists(path):
        log.error("no active model in the database and no %s in %s", MANIFEST, model_dir)
        return None
    with open(path) as fh:
        manifest = json.load(fh)
    row = ModelVersion(
        version=manifest["version"],
        file_path=manifest["file"],
        sha256=manifest["sha256"],
        parent_version=None,
        metrics=manifest.get("metrics", {}),
        status="active",
        activated_at=utcnow(),
    )
    db.session.add(row)
    try:
        db.session.commit()
        log.info("registered shipped model %s", row.version)
    except IntegrityError:
        db.session.rollback()
    return active_version()


def save_version(model, version, *, parent_version, metrics, status="candidate"):
    """Write ``model`` atomically into MODEL_DIR and record it; the file is complete or absent."""
    from app.ml.artifacts import save_model_atomic

    model_dir = current_app.config["MODEL_DIR"]
    path, sha256 = save_model_atomic(model, model_dir, f"{version}.keras")
    row = ModelVersion(
        version=version, file_path=os.path.relpath(path, model_dir), sha256=sha256,
        parent_version=parent_version, metrics=metrics, status=status,
    )
    db.session.add(row)
    db.session.commit()
    return row


def next_base_version():
    """``base-N`` for the next model trained from scratch."""
    names = db.session.execute(db.select(ModelVersion.version).where(ModelVersion.version.like("base-%"))).scalars()
    numbers = [int(n.split("-", 1)[1]) for n in names if n.split("-", 1)[1].isdigit()]
    return f"base-{max(numbers, default=0) + 1}"


def train_base_version(data_dir, *, epochs=None, seed=0, eval_dir=None, activate=True, progress=None):
    """Train a model from scratch on MNIST-format data and register it (the CLI's train-base)."""
    from app.ml.datasets import load_labelled, load_mnist
    from app.ml.evaluation import accuracy
    from app.ml.training import train_base

    ensure_active_version()  # the shipped model keeps its name, the new one follows it
    x, y = load_mnist(data_dir)
    kwargs = {"seed": seed, "progress": progress}
    if epochs:
        kwargs["epochs"] = epochs
    model = train_base(x, y, **kwargs)
    metrics = {"trained_on": os.path.abspath(str(data_dir)), "train_samples": int(len(y)), "seed": seed}
    if eval_dir:
        x_eval, y_eval = load_labelled(eval_dir, for_evaluation=True)
        metrics["eval_accuracy"] = accuracy(lambda b: model(b, training=False).numpy(), x_eval, y_eval)
        metrics["eval_data"] = os.path.abspath(str(eval_dir))
    row = save_version(model, next_base_version(), parent_version=None, metrics=metrics)
    if activate:
        row = activate_version(row.version)
    return row


def evaluate_version(data_dir, *, version=None):
    """Accuracy of a version (default: active) on labelled data, through the API's preprocessing."""
    from app.ml.datasets import load_labelled
    from app.ml.evaluation import accuracy
    from app.ml.registry import ModelRegistry

    row = get_version(version) if version else ensure_active_version()
    if row is None:
        raise NotFound("no model version to evaluate", code="model_version_not_found")
    x, y = load_labelled(data_dir, for_evaluation=True)
    loaded = ModelRegistry().load(row.version, resolve_path(current_app.config["MODEL_DIR"], row.file_path), sha256=row.sha256)
    return {"accuracy": accuracy(loaded.predict, x, y), "n": int(len(y)), "model_version": row.version}


def activate_version(version, *, commit=True):
    """Make ``version`` the one every worker serves (rollback or roll forward).

    One transaction retires the previous active row and activates this one; workers pick
    the change up on their next check. The file must exist and match its sha256, else
    nothing changes. ``commit=False`` lets a caller commit it with its own changes.
    """
    row = get_version(version)
    if row.status == "active":
        return row
    path = resolve_path(current_app.config["MODEL_DIR"], row.file_path)
    if not os.path.exists(path):
        raise Conflict(f"model file for {version!r} is missing", code="model_file_missing")
    from app.ml.artifacts import sha256_file

    if sha256_file(path) != row.sha256:  # workers would refuse it: refuse here, visibly
        raise Conflict(f"model file for {version!r} does not match its recorded sha256", code="model_file_corrupt")
    # Activations take turns: under PostgreSQL's READ COMMITTED, two of them at once would
    # each retire only the active row they saw and leave two active. Locking the (few)
    # version rows first makes the second wait and then see the first one's result. They
    # are locked in id order: in table order, updated rows move, so two waiting activations
    # could take the locks in different orders and deadlock (seen in CI).
    # (SQLite has a single writer already; SQLAlchemy leaves FOR UPDATE out there.)
    db.session.execute(db.select(ModelVersion.id).order_by(ModelVersion.id).with_for_update()).all()
    db.session.execute(
        db.update(ModelVersion).where(ModelVersion.status == "active").values(status="retired")
    )
    row.status = "active"
    row.activated_at = utcnow()
    if commit:
        db.session.commit()
        log.info("model version %s activated", version)
    return row
