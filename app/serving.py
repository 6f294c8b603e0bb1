"""The model this process serves, kept in step with the database.

The database says which version is active; every process checks that at most once per
``MODEL_SYNC_SECONDS`` (a background thread, so no request waits for it) and, when it
changed, loads that version's ONNX file (``app.ml.onnx_model``: hash checked against the
row, sessions built and warmed) outside any lock requests take, then swaps the live
reference in one assignment. Requests read that reference once and keep the object they
got, so a swap never blocks or fails them and each answer names the version that made it.
A file that is missing, broken or does not match its row is refused: the previous model
stays live. A process that starts with nothing live and finds the active version's file
unusable serves the most recently active version that loads instead (logged, and reported
by ``/ready``) until the active one becomes loadable or another is activated; a refused
file is tried again only once it changed on disk. The row's calibration temperature is part
of what is served: a version whose temperature was set later (the shipped model's,
backfilled from its manifest) is served with it from the next check on, without reloading
the file.

Serving never imports TensorFlow, Keras or tf2onnx: the ONNX file was exported and checked
when the version was saved (``app.ml.artifacts``).
"""

import logging
import os
import threading
import time

from app.errors import ServiceUnavailable, rollback_quietly
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
        self.active_version = None  # what the database said is active, at the last check
        self._refused = None  # (version, sha256, file stat) of an active file that would not load
        self._sync_failing = False

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
        return model_versions.load_onnx(row, threads=self.app.config["INFERENCE_THREADS"],
                                        temperature=row.temperature)

    def _signature(self, row):
        """What must change before a refused file is tried again: the row's hash or the file."""
        try:
            stat = os.stat(model_versions.onnx_path(row))
            on_disk = (stat.st_mtime_ns, stat.st_size, stat.st_ino)
        except OSError:
            on_disk = None
        return row.version, row.onnx_sha256, on_disk

    def sync(self):
        """Load the database's active version if this process serves another; return the served one.

        Must run inside an app context. On any error the previous model stays live (the error
        is raised); with nothing live yet, the most recently active version that loads is
        served instead. An active file that was refused is not read again until it changes.
        """
        row = model_versions.ensure_active_version()
        self.active_version = row.version if row is not None else None
        if row is None or self._serves(row) or self._refused == self._signature(row):
            return self.current_version
        with self._load_lock:
            # Re-read under the lock: two syncs racing must not end on the older version.
            db.session.expire_all()
            row = model_versions.ensure_active_version()
            self.active_version = row.version
            if row.version == self.current_version:
                if not self._serves(row):
                    self._live = self._live.with_temperature(row.temperature)
                    log.info("serving model %s with temperature %s", row.version, row.temperature)
            elif self._refused != self._signature(row):
                started = time.perf_counter()
                previous = self.current_version
                try:
                    loaded = self._load(row)
                except Exception as exc:
                    self._refused = self._signature(row)
                    self.last_error = f"model {row.version}: {type(exc).__name__}: {exc}"
                    loaded = self._fallback(row) if self._live is None else None
                    if loaded is None:
                        log.error("cannot load the active model %s (%s); %s", row.version, self.last_error,
                                  f"still serving {previous}" if previous else "serving nothing")
                        raise
                else:
                    self._refused = None
                    self.last_error = None
                self._live = loaded  # one reference assignment: atomic for readers
                observe_model_swap(previous, loaded.version)
                log.info("serving model %s (loaded in %.2fs)", loaded.version, time.perf_counter() - started)
        return self.current_version

    def _fallback(self, active):
        """The most recently active other version whose file loads, or None (each refusal logged)."""
        for row in model_versions.fallback_candidates(active.version):
            try:
                loaded = self._load(row)
            except Exception as exc:
                log.error("fallback model %s cannot be loaded either: %s: %s", row.version, type(exc).__name__, exc)
                continue
            log.error("cannot load the active model %s (%s); serving %s instead, the most recently active "
                      "version that loads, until %s loads or another version is activated",
                      active.version, self.last_error, row.version, active.version)
            return loaded
        return None

    def sync_if_serving(self):
        """After an activation made here: swap this process at once instead of at the next check."""
        if self.current_version is not None:
            self.sync()

    def ensure_loaded(self, quiet=False):
        """Load the active model if none is loaded yet; return the served version or None."""
        if self.current_version is None:
            try:
                self.sync()  # clears last_error once the active version loads
            except Exception as exc:  # a broken file or database must not crash the worker
                self.last_error = f"{type(exc).__name__}: {exc}"
                log.exception("could not load the active model")
                rollback_quietly()
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
                    if self._sync_failing:
                        log.warning("model sync works again; serving %s", self.current_version)
                    self._sync_failing = False
                except Exception:
                    rollback_quietly()
                    # Once per outage, not once a second (the database may be down for a while).
                    if not self._sync_failing:
                        log.exception("model sync failed; still serving %s", self.current_version)
                    self._sync_failing = True
                finally:
                    db.session.remove()
