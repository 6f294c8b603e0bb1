"""The model each worker process serves, kept in step with the database.

The database says which version is active; every process checks that at most once per
``MODEL_SYNC_SECONDS`` (a background thread, so no request waits for it) and, when it
changed, loads the new file and swaps the registry's reference. In-flight requests keep
the model object they already hold, so a swap never blocks or fails them.

TensorFlow is imported only when a model is first needed, so CLI commands such as
``flask db upgrade`` stay fast.
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
        self.registry = None
        self._load_lock = threading.Lock()
        self._watcher_lock = threading.Lock()
        self._watcher = None
        self._watcher_pid = None
        self._stop = threading.Event()
        self.last_error = None

    def init_app(self, app):
        from app.ml.inference import BACKENDS

        if app.config["INFERENCE_BACKEND"] not in BACKENDS:  # refuse at start-up, not at first load
            raise RuntimeError(f"INFERENCE_BACKEND must be one of {', '.join(BACKENDS)}, "
                               f"not {app.config['INFERENCE_BACKEND']!r}")
        self.app = app
        app.extensions["model_service"] = self

    @property
    def model_dir(self):
        return self.app.config["MODEL_DIR"]

    @property
    def current_version(self):
        current = self.registry.current if self.registry else None
        return current.version if current else None

    def _registry(self):
        if self.registry is None:
            from app.ml.registry import ModelRegistry, configure_tensorflow

            configure_tensorflow(
                intra=self.app.config["TF_INTRA_OP_THREADS"], inter=self.app.config["TF_INTER_OP_THREADS"]
            )
            self.registry = ModelRegistry(
                backend=self.app.config["INFERENCE_BACKEND"], threads=self.app.config["TF_INTRA_OP_THREADS"]
            )
        return self.registry

    def sync(self):
        """Load the database's active version if this process serves another; return it.

        Must run inside an app context. Loading happens outside any lock that requests take.
        """
        row = model_versions.ensure_active_version()
        if row is None or row.version == self.current_version:
            return self.current_version
        with self._load_lock:
            # Re-read under the lock: two syncs racing must not end on the older version.
            db.session.expire_all()
            row = model_versions.ensure_active_version()
            if row.version != self.current_version:
                path = model_versions.resolve_path(self.model_dir, row.file_path)
                started = time.perf_counter()
                previous = self.current_version
                self._registry().load(row.version, path, sha256=row.sha256)
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
        """Probabilities for a float batch (n, 28, 28) and the version that produced them."""
        if self.ensure_loaded(quiet=True) is None:
            raise ServiceUnavailable("no model is loaded yet", code="model_unavailable")
        return self.registry.predict(batch)

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
