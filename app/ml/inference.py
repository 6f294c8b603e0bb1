"""How a loaded Keras model is run per request: ONNX Runtime, or a traced tf.function.

Calling a Keras model from Python pays TensorFlow's eager dispatch every time: about 1 ms
for one image on this machine, 2 ms inside a busy gunicorn worker, for some 0.2 ms of
arithmetic. ONNX Runtime runs the same graph in about 0.3 ms on the calling thread and
is faster on batches too (`bench/inference_speed.py`). Its pool threads are told not to
spin while idle: spinning shaved 0.1 ms off one image but cost the batch endpoint a third
of its throughput, by taking cores from the preprocessing processes and other requests. The model is converted in memory when it is loaded (tf2onnx,
under a second), so the artifact stays the one ``.keras`` file that training writes and the
registry hashes. The converted graph must reproduce Keras' own probabilities on a probe
batch before it may serve; if conversion fails or disagrees, the tf.function path serves
instead and the reason is logged.

Both runners are safe to call from many threads at once.
"""

from __future__ import annotations

import logging

import numpy as np

log = logging.getLogger(__name__)

BACKENDS = ("onnxruntime", "tensorflow")
# Batches of at least this many images are split over several threads.
BATCHED_FROM = 8
# Largest difference in any probability allowed between the converted graph and Keras.
AGREEMENT_TOLERANCE = 1e-4


class TensorFlowRunner:
    """``model(x, training=False)`` traced once with a ``None`` batch dimension."""

    backend = "tensorflow"

    def __init__(self, model):
        import tensorflow as tf

        # The closure holds the model, not a runner: no reference cycle to delay freeing.
        fn = tf.function(lambda x: model(x, training=False),
                         input_signature=[tf.TensorSpec([None, 28, 28], tf.float32)])
        self._concrete = fn.get_concrete_function()  # traced here, once

    def __call__(self, x: np.ndarray) -> np.ndarray:
        return self._concrete(x).numpy()


class OnnxRuntimeRunner:
    """The model converted to ONNX in memory and run by an ONNX Runtime session."""

    backend = "onnxruntime"

    def __init__(self, model, threads: int = 0):
        import onnxruntime
        import tensorflow as tf
        import tf2onnx

        if logging.getLogger("tf2onnx").level == logging.NOTSET:
            logging.getLogger("tf2onnx").setLevel(logging.WARNING)  # it logs every conversion at INFO
        spec = (tf.TensorSpec((None, 28, 28), tf.float32, name="image"),)
        proto, _ = tf2onnx.convert.from_keras(model, input_signature=spec, opset=17)
        graph = proto.SerializeToString()

        def session(intra_threads):
            options = onnxruntime.SessionOptions()
            options.intra_op_num_threads = intra_threads
            options.inter_op_num_threads = 1  # the graph is a single chain: nothing to run in parallel
            # Idle pool threads must sleep, not spin: they would take the cores from other
            # requests, workers and the preprocessing processes.
            options.add_session_config_entry("session.intra_op.allow_spinning", "0")
            return onnxruntime.InferenceSession(graph, options, providers=["CPUExecutionProvider"])

        # A few images are quickest on the calling thread alone (no hand-off to a pool);
        # batches are split over `threads` threads (0: one per physical core).
        self._single = session(1)
        self._batched = session(max(0, int(threads))) if int(threads) != 1 else self._single
        self._input = self._single.get_inputs()[0].name

    def __call__(self, x: np.ndarray) -> np.ndarray:
        session = self._single if len(x) < BATCHED_FROM else self._batched
        return session.run(None, {self._input: x})[0]


def probe_batch(n: int = 16) -> np.ndarray:
    """Fixed images for the agreement check: blank, full, random strokes and noise."""
    rng = np.random.default_rng(0)
    x = rng.random((n, 28, 28), dtype=np.float32)
    x[0] = 0.0
    x[1] = 1.0
    x[2:n // 2] = (x[2:n // 2] > 0.8).astype(np.float32)  # sparse, ink-like
    return x


def build_runner(model, backend: str = "onnxruntime", threads: int = 0):
    """The fastest runner for ``backend`` that reproduces the model's own outputs."""
    if backend not in BACKENDS:
        raise ValueError(f"unknown inference backend {backend!r}; use one of {', '.join(BACKENDS)}")
    if backend == "onnxruntime":
        try:
            runner = OnnxRuntimeRunner(model, threads)
            probe = probe_batch()
            expected = model(probe, training=False).numpy()
            # Both sessions must agree: the probe whole (batched) and in pieces (single).
            small = BATCHED_FROM - 1
            pieces = np.concatenate([runner(probe[i:i + small]) for i in range(0, len(probe), small)])
            difference = float(max(np.max(np.abs(runner(probe) - expected)), np.max(np.abs(pieces - expected))))
            if difference <= AGREEMENT_TOLERANCE:
                return runner
            log.error("ONNX conversion disagrees with Keras by %.2g; serving with TensorFlow", difference)
        except Exception:  # an unconvertible layer must not stop the model from serving
            log.exception("ONNX conversion failed; serving with TensorFlow")
    return TensorFlowRunner(model)
