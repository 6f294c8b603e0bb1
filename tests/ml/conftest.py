"""Fixtures for the ML package: shipped digits and a tiny trained model in a temp folder.

Nothing here writes to the repository's ``models/``: every model file lives under pytest's
temporary directories. The tiny model is trained for real (1 epoch on 200 digits, a few
seconds) so that loading, fine-tuning and serving see a genuine trained Keras file.
"""

import os
from pathlib import Path

import numpy as np
import pytest

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

SHIPPED_REPLAY = Path(__file__).resolve().parents[2] / "models" / "replay.npz"


@pytest.fixture(scope="session")
def ml_digits():
    """(x uint8 [n,28,28], y uint8 [n]): the replay sample shipped in ``models/replay.npz``."""
    with np.load(SHIPPED_REPLAY) as data:
        return data["x"], data["y"]


def build_tiny_model():
    """One small strided conv and a dense softmax: ~7k parameters, trains in a second."""
    import keras
    from keras import layers

    inputs = keras.Input(shape=(28, 28), name="image")
    x = layers.Reshape((28, 28, 1))(inputs)
    x = layers.Conv2D(8, 3, strides=2, activation="relu")(x)
    x = layers.MaxPooling2D()(x)
    x = layers.Flatten()(x)
    outputs = layers.Dense(10, activation="softmax", name="probs")(x)
    return keras.Model(inputs, outputs, name="tiny")


@pytest.fixture(scope="session")
def tiny_trained_model(tmp_path_factory, ml_digits):
    """The ``SavedModel`` (.keras and .onnx) of a tiny model trained 1 epoch on 200 shipped digits."""
    import keras

    from app.ml.artifacts import save_model_atomic

    x, y = ml_digits
    keras.utils.set_random_seed(0)
    model = build_tiny_model()
    model.compile(optimizer="adam", loss="sparse_categorical_crossentropy")
    model.fit(x[:200].astype(np.float32) / 255.0, y[:200].astype(np.int32), epochs=1,
              batch_size=32, verbose=0)
    folder = tmp_path_factory.mktemp("tiny-trained")
    return save_model_atomic(model, str(folder), "tiny.keras")
