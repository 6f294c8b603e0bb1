"""Accuracy of a model on labelled data, in batches, through any predict function."""

from __future__ import annotations

from typing import Callable

import numpy as np

from app.ml.datasets import as_float_images


def probabilities(predict_fn: Callable[[np.ndarray], np.ndarray], x, batch_size: int = 256) -> np.ndarray:
    """``predict_fn``'s probabilities for images (n, 28, 28), uint8 or float, ``batch_size`` at a time."""
    x = as_float_images(x)
    out = [np.asarray(predict_fn(x[i:i + batch_size])) for i in range(0, len(x), batch_size)]
    return np.concatenate(out) if out else np.zeros((0, 10), np.float32)


def predictions(predict_fn: Callable[[np.ndarray], np.ndarray], x, batch_size: int = 256) -> np.ndarray:
    """Predicted digits for images (n, 28, 28), uint8 or float, ``batch_size`` at a time."""
    return np.argmax(probabilities(predict_fn, x, batch_size), axis=1)


def accuracy(predict_fn: Callable[[np.ndarray], np.ndarray], x, y, batch_size: int = 256) -> float:
    """Share of correct predictions (0..1); ``predict_fn`` maps a batch to probabilities."""
    y = np.asarray(y)
    if len(y) == 0:
        raise ValueError("no samples to evaluate on")
    return float(np.mean(predictions(predict_fn, x, batch_size) == y))


def report(predict_fn, x, y, batch_size: int = 256) -> dict:
    """``{"accuracy", "n"}`` plus per-digit accuracy, for model cards and job metrics."""
    y = np.asarray(y)
    predicted = predictions(predict_fn, x, batch_size)
    per_digit = {str(d): round(float(np.mean(predicted[y == d] == d)), 4) for d in range(10) if np.any(y == d)}
    return {"accuracy": float(np.mean(predicted == y)), "n": int(len(y)), "per_digit": per_digit}
