"""Real digits through the serving path: preprocessing, then the shipped model as workers serve it.

Uses only what the repository ships (``models/``, ``tests/fixtures/mnist50``), never
``/work/shared``.
"""

import csv
import io
import json

import numpy as np
import pytest
from PIL import Image

from app.ml.datasets import as_float_images
from app.ml.preprocessing import preprocess

from support import FIXTURES, SHIPPED_MODELS


@pytest.fixture(scope="module")
def shipped_model():
    """The shipped ONNX export, loaded (hash-checked against its manifest) as the service does."""
    from app.ml.onnx_model import OnnxModel

    manifest = json.loads((SHIPPED_MODELS / "manifest.json").read_text())
    return OnnxModel.from_file(manifest["version"], SHIPPED_MODELS / manifest["onnx_file"], manifest["onnx_sha256"])


def test_shipped_model_reads_the_mnist50_uploads(shipped_model):
    """50 realistic uploads of MNIST test digits: at least 48 must be read right."""
    folder = FIXTURES / "mnist50"
    with open(folder / "labels.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert len(rows) == 50
    x = np.stack([preprocess((folder / row["file"]).read_bytes()) for row in rows])
    y = np.array([int(row["label"]) for row in rows])
    probs = shipped_model.predict(x)
    assert probs.shape == (50, 10)
    predicted = probs.argmax(axis=1)
    wrong = [(rows[i]["file"], int(y[i]), int(predicted[i])) for i in np.flatnonzero(predicted != y)]
    assert len(wrong) <= 2, f"{50 - len(wrong)}/50 right; (file, label, predicted): {wrong}"


def upscaled_png(digit_uint8, dark_on_light):
    """A 28x28 MNIST digit drawn 5x larger, as a PNG upload, in either polarity."""
    pixels = 255 - digit_uint8 if dark_on_light else digit_uint8
    buffer = io.BytesIO()
    Image.fromarray(pixels).resize((140, 140), Image.Resampling.BICUBIC).save(buffer, format="PNG")
    return buffer.getvalue()


def test_real_mnist_digits_in_either_polarity_come_back_as_mnist(replay_digits, shipped_model):
    x, y = replay_digits
    digits, labels = x[:20], y[:20]
    dark = np.stack([preprocess(upscaled_png(d, dark_on_light=True)) for d in digits])
    light = np.stack([preprocess(upscaled_png(d, dark_on_light=False)) for d in digits])
    assert np.abs(dark - light).max() < 0.02  # polarity makes (next to) no difference
    originals = as_float_images(digits)
    per_digit = np.abs(dark - originals).reshape(20, -1).mean(axis=1)
    drifted = {int(i): round(float(per_digit[i]), 3) for i in np.flatnonzero(per_digit >= 0.08)}
    assert not drifted, f"replay digits far from their MNIST originals (index: mean abs diff): {drifted}"
    assert np.abs(originals[0] - originals[1]).mean() > 0.1  # (different digits are far apart)
    assert (shipped_model.predict(dark).argmax(axis=1) == labels).mean() >= 0.95
