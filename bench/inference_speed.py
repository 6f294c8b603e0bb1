"""In-process inference: the served ONNX export against Keras' predict, side by side.

    python bench/inference_speed.py [--model models/base.keras] [--calls 200]

Single images: median and p95 of ``--calls`` calls each of the fast path
(``OnnxModel.predict``: the ``.onnx`` export beside ``--model``, run by ONNX Runtime as
workers serve it), a traced ``tf.function`` around ``model(x, training=False)``,
``model.predict`` and ``model.predict_on_batch``, interleaved call by call so that all see
the same machine load. Batches of 64: images/s of the fast path, the ``tf.function`` and
``model.predict``. Memory: RSS before and after 30 loads alternating between two copies of
the ONNX file. Target: the fast path at least 20x faster than ``model.predict`` for one image.
"""

import argparse
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from _paths import ROOT  # noqa: E402  (sets up imports first)


def rss_mb():
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def timed(fn):
    started = time.perf_counter()
    fn()
    return (time.perf_counter() - started) * 1000


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default=str(ROOT / "models" / "base.keras"))
    parser.add_argument("--calls", type=int, default=200)
    args = parser.parse_args()

    import keras
    import tensorflow as tf

    from app.ml.onnx_model import OnnxModel, onnx_path_for

    onnx_file = onnx_path_for(args.model)
    loaded = OnnxModel.from_file("bench", onnx_file, None)
    model = keras.models.load_model(args.model, compile=False)
    traced = tf.function(lambda x: model(x, training=False), input_signature=[tf.TensorSpec([None, 28, 28], tf.float32)])
    concrete = traced.get_concrete_function()

    def tensorflow_runner(x):
        return concrete(x).numpy()

    print(f"fast path: ONNX Runtime on {onnx_file}")
    rng = np.random.default_rng(0)
    one = rng.random((1, 28, 28), dtype=np.float32)
    batch = rng.random((64, 28, 28), dtype=np.float32)
    for _ in range(5):  # warm every path
        loaded.predict(one), tensorflow_runner(one), model.predict(one, verbose=0), model.predict_on_batch(one)

    single = {"fast path": [], "tf.function": [], "model.predict": [], "predict_on_batch": []}
    for _ in range(args.calls):
        single["fast path"].append(timed(lambda: loaded.predict(one)))
        single["tf.function"].append(timed(lambda: tensorflow_runner(one)))
        single["model.predict"].append(timed(lambda: model.predict(one, verbose=0)))
        single["predict_on_batch"].append(timed(lambda: model.predict_on_batch(one)))
    batched = {"fast path": [], "tf.function": [], "model.predict": []}
    for _ in range(max(20, args.calls // 10)):
        batched["fast path"].append(timed(lambda: loaded.predict(batch)))
        batched["tf.function"].append(timed(lambda: tensorflow_runner(batch)))
        batched["model.predict"].append(timed(lambda: model.predict(batch, verbose=0)))

    workdir = Path(tempfile.mkdtemp(prefix="swap-bench-"))
    copies = [workdir / "a.onnx", workdir / "b.onnx"]
    for copy in copies:
        shutil.copy(onnx_file, copy)
    before = rss_mb()
    live = loaded
    for i in range(30):
        live = OnnxModel.from_file(f"v{i}", copies[i % 2], None)  # the previous one is freed, as in serving
        live.predict(one)
    after = rss_mb()
    shutil.rmtree(workdir)

    fast = statistics.median(single["fast path"])
    print(f"\nsingle image, {args.calls} interleaved calls each")
    print(f"{'path':<20}{'median ms':>11}{'p95 ms':>9}{'vs fast path':>14}")
    for name, times in single.items():
        p95 = sorted(times)[int(0.95 * len(times)) - 1]
        print(f"{name:<20}{statistics.median(times):>11.2f}{p95:>9.2f}{statistics.median(times) / fast:>13.1f}x")
    print("\nbatch of 64")
    for name, times in batched.items():
        print(f"{name:<20}{64000 / statistics.median(times):>11.0f} images/s")
    print(f"\nRSS across 30 model loads: {before:.0f} MB -> {after:.0f} MB ({after - before:+.0f} MB)")
    ratio = statistics.median(single["model.predict"]) / fast
    print(f"fast path is {ratio:.1f}x faster than model.predict for one image (target >= 20x)")
    return 0 if ratio >= 20 else 1


if __name__ == "__main__":
    sys.exit(main())
