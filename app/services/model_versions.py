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


def keras_path(row):
    """The version's .keras file. Stored paths are relative to MODEL_DIR so that the folder can
    move between hosts (``os.path.join`` keeps an absolute one as it is)."""
    return os.path.join(current_app.config["MODEL_DIR"], row.file_path)


def onnx_path(row):
    """The version's ONNX export: beside its .keras file, same stem."""
    from app.ml.onnx_model import onnx_path_for

    return onnx_path_for(keras_path(row))


def load_onnx(row, **options):
    """The version's ONNX export, hash checked against the row, as serving loads it
    (``options`` go to ``OnnxModel.from_file``). A version saved before exports existed has
    none until it is exported: 409."""
    from app.ml.onnx_model import OnnxModel

    if row.onnx_sha256 is None:
        raise Conflict(f"model version {row.version!r} has no ONNX export yet "
                       "(a worker start or `flask model export-onnx` makes it)", code="model_file_missing")
    return OnnxModel.from_file(row.version, onnx_path(row), row.onnx_sha256, **options)


def sweep_stale_temp_files(model_dir, older_than_seconds=3600):
    """Remove temporary model files left by a process killed mid-save; returns how many.

    They are never loaded (only ``os.replace`` gives a file its final name); this frees the
    disk. Only old ones go, so a save in progress elsewhere is left alone.
    """
    import time

    from app.ml.artifacts import TEMP_SUFFIXES

    removed = 0
    cutoff = time.time() - older_than_seconds
    for name in os.listdir(model_dir) if os.path.isdir(model_dir) else []:
        path = os.path.join(model_dir, name)
        if name.endswith(TEMP_SUFFIXES) and os.path.getmtime(path) < cutoff:
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


def fallback_candidates(active):
    """Versions to serve when ``active``'s file will not load: those that were active before,
    the most recent first (a version the gate rejected or nobody activated never served)."""
    return db.session.execute(
        db.select(ModelVersion).where(ModelVersion.activated_at.is_not(None), ModelVersion.version != active)
        .order_by(ModelVersion.activated_at.desc(), ModelVersion.id.desc())
    ).scalars().all()


def _read_manifest(model_dir):
    """The shipped model folder's manifest, or None without one."""
    path = os.path.join(model_dir, MANIFEST)
    if not os.path.exists(path):
        return None
    with open(path) as fh:
        return json.load(fh)


def _lock_versions():
    """Lock every version row until the commit, in id order: in table order, updated rows move,
    so two waiting lockers could take them in different orders and deadlock (seen in CI).
    (SQLite has a single writer already; SQLAlchemy leaves FOR UPDATE out there.)"""
    db.session.execute(db.select(ModelVersion.id).order_by(ModelVersion.id).with_for_update()).all()


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
    manifest = _read_manifest(model_dir)
    if manifest is None:
        log.error("no active model in the database and no %s in %s", MANIFEST, model_dir)
        return None
    row = ModelVersion(
        version=manifest["version"],
        file_path=manifest["file"],
        sha256=manifest["sha256"],
        onnx_sha256=manifest.get("onnx_sha256"),  # older folders have none: exported at start-up
        parent_version=None,
        # Older folders have none: served uncalibrated. A bad value is kept and refused at load.
        temperature=manifest.get("temperature"),
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


def backfill_shipped_temperature(model_dir):
    """Give the shipped version its manifest's temperature if its row has none; True if it did.

    Installs registered before calibration existed have a NULL temperature on the shipped
    row; the manifest now carries the one fitted for exactly that file (same sha256), so
    workers backfill it when they start instead of serving it uncalibrated. Other versions
    with a NULL temperature (retrains from before calibration) stay uncalibrated.
    """
    manifest = _read_manifest(model_dir)
    if manifest is None or manifest.get("temperature") is None:
        return False
    from app.ml.calibration import check_temperature

    temperature = check_temperature(manifest["temperature"])
    changed = db.session.execute(
        db.update(ModelVersion)
        .where(ModelVersion.version == manifest["version"], ModelVersion.sha256 == manifest["sha256"],
               ModelVersion.temperature.is_(None))
        .values(temperature=temperature)
    ).rowcount
    db.session.commit()
    if changed:
        log.info("model version %s: calibration temperature %s from %s", manifest["version"], temperature, MANIFEST)
    return bool(changed)


def save_version(model, version, *, parent_version, metrics, status="candidate", temperature=None):
    """Write ``model`` and its ONNX export atomically into MODEL_DIR and record them; each
    file is complete and checked, or absent. ``temperature``: its calibration (None: none)."""
    from app.ml.artifacts import save_model_atomic
    from app.ml.calibration import check_temperature

    temperature = check_temperature(temperature)  # a bad value is refused before any file is written
    model_dir = current_app.config["MODEL_DIR"]
    saved = save_model_atomic(model, model_dir, f"{version}.keras")
    row = ModelVersion(
        version=version, file_path=os.path.relpath(saved.path, model_dir), sha256=saved.sha256,
        onnx_sha256=saved.onnx_sha256, parent_version=parent_version, metrics=metrics, status=status,
        temperature=temperature,
    )
    db.session.add(row)
    db.session.commit()
    return row


def next_base_version():
    """``base-N`` for the next model trained from scratch."""
    names = db.session.execute(db.select(ModelVersion.version).where(ModelVersion.version.like("base-%"))).scalars()
    numbers = [int(n.split("-", 1)[1]) for n in names if n.split("-", 1)[1].isdigit()]
    return f"base-{max(numbers, default=0) + 1}"


def start_tensorflow():
    """Import TensorFlow in this process with its thread pools sized by the settings (before
    its runtime starts; later calls change nothing). Only processes that train call it."""
    from app.ml.training import configure_tensorflow

    configure_tensorflow(current_app.config["TF_INTRA_OP_THREADS"], current_app.config["TF_INTER_OP_THREADS"])


def train_base_version(data_dir, *, epochs=None, seed=0, eval_dir=None, activate=True, progress=None):
    """Train a model from scratch on MNIST-format data and register it (the CLI's train-base),
    calibrated on digits of ``data_dir`` it did not train on."""
    from app.ml.base_model import calibration_split
    from app.ml.calibration import calibrate
    from app.ml.datasets import as_float_images, load_labelled, load_mnist
    from app.ml.evaluation import accuracy
    from app.ml.training import train_base

    start_tensorflow()
    ensure_active_version()  # the shipped model keeps its name, the new one follows it
    x, y, x_held, y_held = calibration_split(*load_mnist(data_dir), seed=seed)
    kwargs = {"seed": seed, "progress": progress}
    if epochs:
        kwargs["epochs"] = epochs
    model = train_base(x, y, **kwargs)
    # Too little data to hold any digits out: left uncalibrated rather than fitted on training digits.
    fit = calibrate(model(as_float_images(x_held), training=False).numpy(), y_held) if len(y_held) else None
    metrics = {"trained_on": os.path.abspath(str(data_dir)), "train_samples": int(len(y)), "seed": seed,
               "calibration": fit}
    if eval_dir:
        x_eval, y_eval = load_labelled(eval_dir, for_evaluation=True)
        metrics["eval_accuracy"] = accuracy(lambda b: model(b, training=False).numpy(), x_eval, y_eval)
        metrics["eval_data"] = os.path.abspath(str(eval_dir))
    row = save_version(model, next_base_version(), parent_version=None, metrics=metrics,
                       temperature=fit and fit["temperature"])
    if activate:
        row = activate_version(row.version)
    return row


def evaluate_version(data_dir, *, version=None):
    """Accuracy of a version (default: active) on labelled data, through the API's preprocessing."""
    from app.ml.datasets import load_labelled
    from app.ml.evaluation import accuracy

    row = get_version(version) if version else ensure_active_version()
    if row is None:
        raise NotFound("no model version to evaluate", code="model_version_not_found")
    loaded = load_onnx(row)  # the file serving loads
    x, y = load_labelled(data_dir, for_evaluation=True)
    return {"accuracy": accuracy(loaded.predict, x, y), "n": int(len(y)), "model_version": row.version}


def calibrate_version(version=None, *, clear=False):
    """Refit a version's (default: the active one's) temperature, or clear it; workers follow
    at their next check.

    For versions saved before calibration existed, and to compare a version with and without
    it. Fitted on the replay hold-out digits in MODEL_DIR, as a retrain fits its candidate,
    through the ONNX export that serving loads.
    """
    from app.ml.calibration import calibrate_on_holdout

    row = get_version(version) if version else ensure_active_version()
    if row is None:
        raise NotFound("no model version to calibrate", code="model_version_not_found")
    if clear:
        row.temperature = None
        db.session.commit()
        return None
    fit = calibrate_on_holdout(load_onnx(row, warm=False), current_app.config["MODEL_DIR"])
    row.temperature = fit["temperature"]
    row.metrics = {**(row.metrics or {}), "calibration": fit}
    db.session.commit()
    log.info("model version %s: calibration temperature %s", row.version, row.temperature)
    return fit


def activate_version(version, *, commit=True):
    """Make ``version`` the one every worker serves (rollback or roll forward).

    One transaction retires the previous active row and activates this one; workers pick
    the change up on their next check. The file must exist and match its sha256, else
    nothing changes; the same holds for its ONNX export, which is what workers load.
    ``commit=False`` lets a caller commit it with its own changes.
    """
    row = get_version(version)
    if row.status == "active":
        return row
    from app.ml.onnx_model import sha256_file

    files = [(keras_path(row), row.sha256),
             (onnx_path(row), row.onnx_sha256)]
    for path, recorded in files:
        if recorded is None or not os.path.exists(path):
            raise Conflict(f"model file {os.path.basename(path)} for {version!r} is missing", code="model_file_missing")
        if sha256_file(path) != recorded:  # workers would refuse it: refuse here, visibly
            raise Conflict(f"model file {os.path.basename(path)} for {version!r} does not match its recorded sha256",
                           code="model_file_corrupt")
    from app.ml.calibration import check_temperature

    try:
        check_temperature(row.temperature)  # workers would refuse it too
    except ValueError as exc:
        raise Conflict(f"model version {version!r} has an unusable calibration: {exc}",
                       code="model_calibration_invalid") from None
    # Activations take turns: under PostgreSQL's READ COMMITTED, two of them at once would
    # each retire only the active row they saw and leave two active. Locking the (few)
    # version rows first makes the second wait and then see the first one's result.
    _lock_versions()
    db.session.execute(
        db.update(ModelVersion).where(ModelVersion.status == "active").values(status="retired")
    )
    row.status = "active"
    row.activated_at = utcnow()
    if commit:
        db.session.commit()
        log.info("model version %s activated", version)
    return row


def versions_without_onnx():
    """Versions whose ONNX export is not recorded or not on disk (saved before exports existed)."""
    return [row for row in list_versions() if row.onnx_sha256 is None or not os.path.exists(onnx_path(row))]


def export_missing_onnx():
    """Export every version that has a .keras file but no ONNX file yet; returns the versions done.

    A one-off for versions saved before exports existed, run at worker start and by
    ``flask model export-onnx``. It imports TensorFlow (tf2onnx) in this process, which
    serving otherwise never does. Exports take turns through a lock file in MODEL_DIR so
    that workers starting together export each file once and the row names the file that
    stays (a row lock as well across hosts on PostgreSQL).
    """
    import fcntl

    ensure_active_version()  # a fresh install registers the shipped model first
    if not versions_without_onnx():
        return []
    from app.ml.artifacts import export_onnx_atomic

    done = []
    with open(os.path.join(current_app.config["MODEL_DIR"], ".onnx-export.lock"), "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            db.session.expire_all()
            _lock_versions()
            for row in versions_without_onnx():  # re-read under the locks: another process may have done it
                path = keras_path(row)
                if not os.path.exists(path):
                    log.error("model version %s: %s is missing, cannot export it to ONNX", row.version, path)
                    continue
                log.warning("exporting model version %s to ONNX (loads TensorFlow into process %d)",
                            row.version, os.getpid())
                try:
                    _path, row.onnx_sha256 = export_onnx_atomic(path)
                except Exception:  # one bad file must not keep the others from serving
                    log.exception("could not export model version %s to ONNX", row.version)
                    continue
                done.append(row.version)
            db.session.commit()
        except BaseException:
            db.session.rollback()
            raise
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)
    return done
