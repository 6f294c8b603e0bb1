"""Accuracy helpers through any predict function."""

import numpy as np
import pytest

from app.ml.evaluation import accuracy, report


def one_hot_predictor(answers):
    """A predict function that answers ``answers`` in order, batch after batch."""
    state = {"i": 0}

    def predict(batch):
        n = len(batch)
        out = np.eye(10, dtype=np.float32)[answers[state["i"]:state["i"] + n]]
        state["i"] += n
        return out

    return predict


def test_accuracy_in_batches_and_report():
    y = np.array([0, 1, 2, 3, 4, 5, 6, 7, 8, 9] * 3)
    answers = y.copy()
    answers[:3] = 9  # three wrong (digits 0, 1, 2)
    x = np.zeros((len(y), 28, 28), np.uint8)
    assert accuracy(one_hot_predictor(answers), x, y, batch_size=7) == pytest.approx(27 / 30)
    result = report(one_hot_predictor(answers), x, y, batch_size=4)
    assert result["n"] == 30 and result["accuracy"] == pytest.approx(0.9)
    assert result["per_digit"]["3"] == 1.0 and result["per_digit"]["0"] == pytest.approx(2 / 3, abs=1e-4)


def test_accuracy_refuses_empty_sets():
    with pytest.raises(ValueError):
        accuracy(one_hot_predictor([]), np.zeros((0, 28, 28)), np.zeros(0))
