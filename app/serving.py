"""The model this process serves, kept in step with the database.

The database says which version is active; every process checks that at most once per
``MODEL_SYNC_SECONDS`` (a background thread, so no request waits for it) and, when it
changed, loads that version's ONNX file (``app.ml.onnx_model``: hash checked against the
row, sessions built and warmed) outside any lock requests take, then swaps the live
reference in one assignment. Requests read that reference once and keep the object they
got, so a swap never blocks or fails them and each answer names the version that made it.
A file that is missing, broken or does not match its row is refused: the previous model
stays live. The row's calibration temperature is part of what is served: a version whose
temperature was set later (the shipped model's, backfilled from its manifest) is served
with it from the next check on, without reloading the file.

Serving never imports TensorFlow, Keras or tf2onnx: the ONNX file was exported and checked
when the version was saved (``app.ml.artifacts``).
"""

import logging
import os
import threading
import time

from app.errors import ServiceUnavailable
from app.extensions import db
from app.metrics import observe_model_swap
from app.services import model_versions

log = logging.getLogger(__name__)


class ModelService:
    def __init__(self):
        self.app = None
        self._live = None  # the OnnxModel serving now; replaced whole, never changed in place
        self._load_lock = threading.Lock()
        self._watcher_lock = threading.Lock()
        self._watcher = None
        self._watcher_pid = None
        self._stop = threading.Event()
        self.last_error = None

    def init_app(self, app):
        self.app = app
        app.extensions["model_service"] = self

    @property
    def current_version(self):
        live = self._live
        return live.version if live is not None else None

    @property
    def current_temperature(self):
        live = self._live
        return live.temperature if live is not None else None

    def _serves(self, row):
        live = self._live
        return live is not None and live.version == row.version and live.temperature == row.temperature

    def _load(self, row):
        from app.ml.onnx_model import OnnxModel

        if row.onnx_sha256 is None:
            raise RuntimeError(f"model version {row.version!r} has no ONNX export yet "
                               "(a worker start or `flask model export-onnx` makes it)")
        path = model_versions.onnx_path(row)
        return OnnxModel.from_file(row.version, path, row.onnx_sha256, threads=self.app.config["INFERENCE_THREADS"],
                                   temperature=row.temperature)

    def sync(self):
        """Load the database's active version if this process serves another; return it.

        Must run inside an app context. On any error the previous model stays live.
        """
        row = model_versions.ensure_active_version()
        if row is None or self._serves(row):
            return self.current_version
        with self._load_lock:
            # Re-read under the lock: two syncs racing must not end on the older version.
            db.session.expire_all()
            row = model_versions.ensure_active_version()
            if row.version == self.current_version and not self._serves(row):
                self._live = self._live.with_temperature(row.temperature)
                log.info("serving model %s with temperature %s", row.version, row.temperature)
            elif row.version != self.current_version:
                started = time.perf_counter()
                previous = self.current_version
                self._live = self._load(row)  # one reference assignment: atomic for readers
                observe_model_swap(previous, row.version)
                log.info("serving model %s (loaded in %.2fs)", row.version, time.perf_counter() - started)
        return row.version

    def sync_if_serving(self):
        """After an activation made here: swap this process at once instead of at the next check."""
        if self.current_version is not None:
            self.sync()

    def ensure_loaded(self, quiet=False):
        """Load the active model if none is loaded yet; return the served version or None."""
        if self.current_version is None:
            try:
                self.sync()
                self.last_error = None
            except Exception as exc:  # a broken file or database must not crash the worker
                self.last_error = str(exc)
                log.exception("could not load the active model")
                db.session.rollback()
                if not quiet:
                    raise ServiceUnavailable("no model is loaded yet", code="model_unavailable") from None
        return self.current_version

    def predict(self, batch):
        """(probabilities (n, 10), version) for a float batch (n, 28, 28), from one model even mid-swap."""
        live = self._live  # read once
        if live is None:
            self.ensure_loaded(quiet=True)
            live = self._live
            if live is None:
                raise ServiceUnavailable("no model is loaded yet", code="model_unavailable")
        return live.predict(batch), live.version

    def start_watcher(self):
        """Start this process's version watcher once (after a fork, the child starts its own)."""
        if self._watcher_pid == os.getpid() and self._watcher and self._watcher.is_alive():
            return
        with self._watcher_lock:
            if self._watcher_pid == os.getpid() and self._watcher and self._watcher.is_alive():
                return
            self._stop.clear()
            self._watcher = threading.Thread(target=self._watch, name="model-watcher", daemon=True)
            self._watcher_pid = os.getpid()
            self._watcher.start()

    def stop_watcher(self):
        self._stop.set()
        if self._watcher:
            self._watcher.join(timeout=5)

    def _watch(self):
        interval = self.app.config["MODEL_SYNC_SECONDS"]
        while not self._stop.wait(interval):
            with self.app.app_context():
                try:
                    self.sync()
                except Exception:
                    db.session.rollback()
                    log.exception("model sync failed; still serving %s", self.current_version)
                finally:
                    db.session.remove()
