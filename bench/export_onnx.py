"""Export a Keras digit model to an ONNX file, the way the service exports its own.

    python bench/export_onnx.py models/base.keras /tmp/base.onnx

Used by ``bench/load.py`` for the BentoML peer while a checkout has no ``models/base.onnx``
beside its ``.keras`` file: input "image" (None, 28, 28) float32, output (None, 10)
probabilities, checked against Keras' own outputs before the file is written.
"""

import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


def export(keras_path, onnx_path):
    import keras
    import numpy as np
    import onnxruntime
    import tensorflow as tf
    import tf2onnx

    model = keras.models.load_model(keras_path, compile=False)
    spec = (tf.TensorSpec((None, 28, 28), tf.float32, name="image"),)
    proto, _ = tf2onnx.convert.from_keras(model, input_signature=spec, opset=17)
    graph = proto.SerializeToString()
    probe = np.random.default_rng(0).random((16, 28, 28), dtype=np.float32)
    session = onnxruntime.InferenceSession(graph, providers=["CPUExecutionProvider"])
    difference = float(np.max(np.abs(session.run(None, {"image": probe})[0] - model(probe, training=False).numpy())))
    if difference > 1e-4:
        raise SystemExit(f"the ONNX graph disagrees with Keras by {difference:.2g}")
    partial = f"{onnx_path}.partial"
    with open(partial, "wb") as fh:
        fh.write(graph)
    os.replace(partial, onnx_path)


if __name__ == "__main__":
    if len(sys.argv) != 3:
        raise SystemExit(__doc__)
    export(sys.argv[1], sys.argv[2])
