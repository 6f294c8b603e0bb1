"""Training recipes on tiny data: they run, report progress, and leave the live file alone."""

import numpy as np
import pytest
import tensorflow as tf

from app.ml.artifacts import sha256_file
from app.ml.training import (
    Augment,
    _stratified_pick,
    fine_tune,
    make_dataset,
    random_affine,
    train_base,
)


def test_train_base_runs_and_reports_progress(ml_digits):
    x, y = ml_digits
    fractions = []
    model = train_base(x[:64], y[:64], epochs=2, batch_size=64, progress=fractions.append)
    assert fractions == [0.5, 1.0]
    probs = np.asarray(model(x[:3].astype(np.float32) / 255.0, training=False))
    assert probs.shape == (3, 10) and np.allclose(probs.sum(axis=1), 1.0, atol=1e-5)


def test_fine_tune_trains_a_copy_and_reports_progress(tiny_trained_model, ml_digits):
    path, sha256 = tiny_trained_model
    x, y = ml_digits
    xf = x[200:240].astype(np.float32) / 255.0
    fractions = []
    candidate = fine_tune(path, xf, y[200:240], x[300:700], y[300:700], epochs=1,
                          progress=fractions.append)
    assert fractions == [1.0]
    assert sha256_file(path) == sha256  # the live model's file is never written
    assert np.asarray(candidate(xf[:2], training=False)).shape == (2, 10)


def test_fine_tune_rejects_bad_input(tiny_trained_model, ml_digits):
    path, _ = tiny_trained_model
    x, y = ml_digits
    with pytest.raises(ValueError):
        fine_tune(path, x[:10], y[:9], x[10:50], y[10:50], epochs=1)
    with pytest.raises(ValueError):
        fine_tune(path, x[:10], y[:10], x[10:50], y[10:50], epochs=0)


@pytest.mark.slow
def test_fine_tune_from_scratch(tiny_trained_model, ml_digits):
    path, _ = tiny_trained_model
    x, y = ml_digits
    fractions = []
    model = fine_tune(path, x[:32], y[:32], x[32:96], y[32:96], epochs=1, from_scratch=True,
                      progress=fractions.append)
    assert fractions == [1.0] and model.name == "digit_cnn"


def test_augmentation_is_repeatable_and_identity_at_zero(ml_digits):
    x, y = ml_digits
    xf = x[:16].astype(np.float32) / 255.0
    first = [b[0].numpy() for b in make_dataset(xf, y[:16], batch_size=8, epochs=1, seed=3,
                                                  aug=Augment())]
    again = [b[0].numpy() for b in make_dataset(xf, y[:16], batch_size=8, epochs=1, seed=3,
                                                  aug=Augment())]
    assert all(np.array_equal(a, b) for a, b in zip(first, again))
    still = random_affine(tf.constant(xf), tf.constant([0, 0], tf.int64), Augment(0, 0, 0, 0))
    assert np.allclose(still.numpy(), xf, atol=1e-5)


def test_stratified_pick_balances_classes():
    y = np.repeat(np.arange(10), 50)
    rng = np.random.default_rng(0)
    idx = _stratified_pick(y, 200, rng)
    assert len(idx) == 200 and len(set(idx.tolist())) == 200
    assert (np.bincount(y[idx], minlength=10) == 20).all()
    assert len(_stratified_pick(y, 700, rng)) == 700  # more than the pool: with repeats
