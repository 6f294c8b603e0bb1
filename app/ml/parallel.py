"""Preprocessing a batch of uploads on every core.

OpenCV and Pillow's decoders release the GIL, but the Python between their calls holds
it, so two threads preprocess a batch markedly slower than two processes
(bench/batch_preprocessing.py): a batch is split into contiguous chunks handed to worker
processes. They are started with ``spawn``: a serving process runs threads (requests,
the model watcher, ONNX Runtime's pools, and TensorFlow's during a thread-backend
retrain), and a threaded process must never be forked. They import this module and
``app.ml.preprocessing`` only (numpy, Pillow, OpenCV), and are started lazily, once per
serving process.
"""

from __future__ import annotations

import logging
import multiprocessing
import os
import threading
import time
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool

import numpy as np

log = logging.getLogger(__name__)

# What a pool that cannot start or lost a process raises (never an upload's refusal).
_POOL_FAILURES = (BrokenProcessPool, OSError, RuntimeError)


def _chunks(n: int, parts: int) -> list[tuple[int, int]]:
    """``parts`` contiguous (start, stop) ranges covering range(n), sizes differing by <= 1."""
    size, extra = divmod(n, parts)
    bounds, start = [], 0
    for part in range(parts):
        stop = start + size + (part < extra)
        if stop > start:
            bounds.append((start, stop))
        start = stop
    return bounds


def _ready(parent_pid: int) -> None:
    """Runs first in each worker process (unpickling it imported this module and the
    preprocessing) and makes the process exit when its parent is gone.

    A serving process killed without clean-up (SIGKILL, or SIGTERM to the development
    server) cannot stop its helpers, and they would wait for work forever: each of them
    holds both ends of the task queue, so they never see it close.
    """
    import app.ml.preprocessing  # noqa: F401  (OpenCV and numpy load now, not in the first batch)

    threading.Thread(target=_exit_with_parent, args=(parent_pid,), name="parent-watch", daemon=True).start()


def _exit_with_parent(parent_pid: int, interval: float = 1.0) -> None:
    while os.getppid() == parent_pid:
        time.sleep(interval)
    os._exit(0)


class PreprocessPool:
    """Preprocesses batches of at least ``min_batch`` items in ``processes`` processes.

    Smaller batches (and every batch when ``processes`` < 2) are preprocessed in the
    calling thread: sending work to another process costs more than a few images take.
    Results and refusals are exactly those of the serial ``preprocess_many``; if a
    worker process dies, the batch is redone serially and a fresh pool started next time.
    """

    def __init__(self, processes: int, *, min_batch: int = 8):
        self.processes = max(0, int(processes))
        self.min_batch = max(2, int(min_batch))
        self._executor: ProcessPoolExecutor | None = None
        self._lock = threading.Lock()

    @property
    def enabled(self) -> bool:
        return self.processes >= 2

    def start(self) -> None:
        """Start the worker processes now (otherwise: at the first large batch) and wait for them.

        If they cannot start (for example a script without an ``if __name__ == "__main__"``
        guard, which ``spawn`` re-imports), this logs why and preprocesses in the calling
        thread from then on: slower batches, never failed ones.
        """
        if not self.enabled:
            return
        try:
            # Each process imports numpy, Pillow and the preprocessing as it starts (its
            # initializer lives in this module); waiting for trivial tasks pays that here.
            list(self._get_executor().map(_chunks, [1] * self.processes, [1] * self.processes))
        except _POOL_FAILURES:
            log.exception("preprocessing processes did not start; batches are preprocessed in the request thread")
            self.shutdown(wait=False)
            self.processes = 0

    def preprocess_many(self, items, *, max_pixels: int | None = None) -> np.ndarray:
        # Imported here: the app builds its pool without loading the preprocessing.
        from app.ml.preprocessing import DEFAULT_MAX_PIXELS, preprocess_many

        max_pixels = DEFAULT_MAX_PIXELS if max_pixels is None else max_pixels
        if not self.enabled or len(items) < self.min_batch:
            return preprocess_many(items, max_pixels=max_pixels)
        try:
            executor = self._get_executor()
            futures = [
                executor.submit(preprocess_many, items[start:stop], start=start, max_pixels=max_pixels)
                for start, stop in _chunks(len(items), self.processes)
            ]
            # In order, so the first refused item of the batch is the one reported.
            return np.concatenate([future.result() for future in futures])
        except _POOL_FAILURES:
            # A process died (or none could start): this batch is done here, the next
            # one gets fresh processes.
            log.exception("batch preprocessing in processes failed; preprocessing this batch here")
            self.shutdown(wait=False)
            return preprocess_many(items, max_pixels=max_pixels)

    def shutdown(self, *, wait: bool = True) -> None:
        """Stop the processes; the next large batch starts fresh ones."""
        with self._lock:
            executor, self._executor = self._executor, None
        if executor is not None:
            executor.shutdown(wait=wait, cancel_futures=True)

    def _get_executor(self) -> ProcessPoolExecutor:
        with self._lock:
            if self._executor is None:
                self._executor = ProcessPoolExecutor(
                    max_workers=self.processes, mp_context=multiprocessing.get_context("spawn"),
                    initializer=_ready, initargs=(os.getpid(),),
                )
            return self._executor
