"""The digit CNN: small enough to train on 2 CPU cores in minutes and to ship in < 2 MB.

Three conv-BN-ReLU stages (28 -> 14 -> 7 -> 5) and global average pooling instead of a
big dense layer: most of the accuracy for a fraction of the parameters. Augmentation is
*not* part of the network (it lives in `training.py`), so the saved file holds only
standard layers and serving never pays for it.
"""

from __future__ import annotations

import keras
from keras import layers

INPUT_SHAPE = (28, 28)
NUM_CLASSES = 10


def _conv_bn_relu(x, filters: int, name: str, padding: str = "same"):
    x = layers.Conv2D(filters, 3, padding=padding, use_bias=False, name=f"{name}_conv")(x)
    x = layers.BatchNormalization(name=f"{name}_bn")(x)
    return layers.ReLU(name=f"{name}_relu")(x)


def build_model(width: int = 24, dropout: float = 0.3) -> keras.Model:
    """Build the digit CNN: input float (n,28,28) in [0,1] (a trailing channel axis is
    also accepted by callers reshaping first), output (n,10) softmax probabilities.

    `width` scales every stage (24 -> about 0.16 M parameters, under 1 MB as .keras
    without optimizer state); the defaults are the shipped base model's.
    """
    w = width
    inputs = keras.Input(shape=INPUT_SHAPE, name="image")
    x = layers.Reshape((*INPUT_SHAPE, 1), name="add_channel")(inputs)
    x = _conv_bn_relu(x, w, "s1a")
    x = _conv_bn_relu(x, w, "s1b")
    x = layers.MaxPooling2D(name="s1_pool")(x)  # 14x14
    x = _conv_bn_relu(x, 2 * w, "s2a")
    x = _conv_bn_relu(x, 2 * w, "s2b")
    x = layers.MaxPooling2D(name="s2_pool")(x)  # 7x7
    x = _conv_bn_relu(x, 4 * w, "s3a")
    x = _conv_bn_relu(x, 4 * w, "s3b", padding="valid")  # 5x5
    x = layers.GlobalAveragePooling2D(name="gap")(x)
    x = layers.Dropout(dropout, name="dropout")(x)
    outputs = layers.Dense(NUM_CLASSES, activation="softmax", name="probs")(x)
    return keras.Model(inputs, outputs, name="digit_cnn")


def probabilities_and_embeddings(model: keras.Model, x, batch_size: int = 256):
    """``(probs (n,10), embeddings (n,d))`` of images ``(n,28,28)`` in [0,1].

    The embedding is what the last (softmax) layer sees: the penultimate-layer features in
    which images the network takes for the same digit lie close together. The trust score
    compares labels of neighbours there (``app/ml/trust.py``). The ONNX export serves only
    the softmax, so this runs the Keras file, in processes that already hold TensorFlow.
    """
    import numpy as np

    head = model.layers[-1]
    both = keras.Model(model.inputs[0], [model.outputs[0], head.input])
    probs, feats = [], []
    for start in range(0, len(x), batch_size):
        p, f = both(np.asarray(x[start:start + batch_size], dtype=np.float32), training=False)
        probs.append(np.asarray(p))
        feats.append(np.asarray(f).reshape(len(p), -1))
    if not probs:
        return np.zeros((0, NUM_CLASSES), np.float32), np.zeros((0, head.input.shape[-1] or 0), np.float32)
    return np.concatenate(probs), np.concatenate(feats)
