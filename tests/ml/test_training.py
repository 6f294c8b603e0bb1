"""Training recipes on tiny data: they run, report progress, and leave the live file alone."""

import keras
import numpy as np
import pytest
import tensorflow as tf

from app.ml.artifacts import sha256_file
from app.ml.network import build_model
from app.ml.training import (
    Augment,
    _stratified_pick,
    fine_tune,
    make_dataset,
    random_affine,
    train_base,
)


def weights_equal(a, b):
    return len(a) == len(b) and all(np.array_equal(x, y) for x, y in zip(a, b))


def batchnorm_weights(model):
    return [w for layer in model.layers if isinstance(layer, keras.layers.BatchNormalization)
            for w in layer.get_weights()]


def test_train_base_one_epoch_on_300_digits(replay_digits):
    x, y = replay_digits
    fractions = []
    model = train_base(x[:300], y[:300], epochs=1, seed=0, progress=fractions.append)
    assert fractions == [1.0]
    assert model.name == "digit_cnn" and tuple(model.output_shape) == (None, 10)
    assert model.layers[-1].activation is keras.activations.softmax
    probs = np.asarray(model(x[300:310].astype(np.float32) / 255.0, training=False))
    assert probs.shape == (10, 10) and (probs >= 0).all()
    assert np.allclose(probs.sum(axis=1), 1.0, atol=1e-5)
    # It really trained: the weights moved away from the same seed's initial ones.
    keras.utils.set_random_seed(0)
    assert not weights_equal(model.get_weights(), build_model().get_weights())


def test_train_base_rejects_bad_input(replay_digits):
    x, y = replay_digits
    with pytest.raises(ValueError):
        train_base(x[:10], y[:9], epochs=1)
    with pytest.raises(ValueError):
        train_base(x[:10], np.full(10, 10), epochs=1)
    with pytest.raises(ValueError):
        train_base(np.zeros((10, 32, 32), np.uint8), y[:10], epochs=1)
    with pytest.raises(ValueError):
        train_base(x[:10], y[:10], epochs=0)


def test_fine_tune_returns_a_new_model_and_leaves_the_file(tiny_model_source, replay_digits):
    path = tiny_model_source / "tiny.keras"
    before = sha256_file(path)
    serving = keras.models.load_model(path, compile=False)  # stands for the live object
    serving_weights = [w.copy() for w in serving.get_weights()]
    x, y = replay_digits
    xf = x[1000:1040].astype(np.float32) / 255.0
    fractions = []
    candidate = fine_tune(path, xf, y[1000:1040], x[:400], y[:400], epochs=1, progress=fractions.append)

    assert fractions == [1.0]
    assert candidate is not serving and isinstance(candidate, keras.Model)
    assert sha256_file(path) == before  # the file is never written
    assert weights_equal(serving.get_weights(), serving_weights)
    assert not weights_equal(candidate.get_weights(), serving_weights)  # it did learn something
    # BatchNorm statistics stay the base model's (frozen during fine-tuning).
    assert weights_equal(batchnorm_weights(candidate), batchnorm_weights(serving))
    probs = np.asarray(candidate(xf[:3], training=False))
    assert probs.shape == (3, 10) and np.allclose(probs.sum(axis=1), 1.0, atol=1e-5)


def test_fine_tune_rejects_bad_input(tiny_model_source, replay_digits):
    path = tiny_model_source / "tiny.keras"
    x, y = replay_digits
    with pytest.raises(ValueError):
        fine_tune(path, x[:10], y[:9], x[10:50], y[10:50], epochs=1)
    with pytest.raises(ValueError):
        fine_tune(path, x[:10], y[:10], x[10:50], y[10:50], epochs=0)
    with pytest.raises(ValueError):
        fine_tune(path, x[:0], y[:0], x[10:50], y[10:50], epochs=1)


def test_fine_tune_from_scratch(tiny_model_source, replay_digits):
    """A fresh full-size network on feedback + replay, not a copy of the (width-4) file."""
    path = tiny_model_source / "tiny.keras"
    tiny = keras.models.load_model(path, compile=False)
    x, y = replay_digits
    fractions = []
    model = fine_tune(path, x[:32], y[:32], x[32:96], y[32:96], epochs=1, from_scratch=True,
                      progress=fractions.append)
    assert fractions == [1.0] and model.name == "digit_cnn"
    assert model.count_params() == build_model().count_params() != tiny.count_params()
    probs = np.asarray(model(x[:2].astype(np.float32) / 255.0, training=False))
    assert probs.shape == (2, 10) and np.allclose(probs.sum(axis=1), 1.0, atol=1e-5)


def test_augmentation_is_repeatable_and_identity_at_zero(replay_digits):
    x, y = replay_digits
    xf = x[:16].astype(np.float32) / 255.0
    first = [b[0].numpy() for b in make_dataset(xf, y[:16], batch_size=8, epochs=1, seed=3, aug=Augment())]
    again = [b[0].numpy() for b in make_dataset(xf, y[:16], batch_size=8, epochs=1, seed=3, aug=Augment())]
    other = [b[0].numpy() for b in make_dataset(xf, y[:16], batch_size=8, epochs=1, seed=4, aug=Augment())]
    assert len(first) == 2 and all(np.array_equal(a, b) for a, b in zip(first, again))
    assert not all(np.array_equal(a, b) for a, b in zip(first, other))
    still = random_affine(tf.constant(xf), tf.constant([0, 0], tf.int64), Augment(0, 0, 0, 0))
    assert np.allclose(still.numpy(), xf, atol=1e-5)
    warped = random_affine(tf.constant(xf), tf.constant([0, 0], tf.int64), Augment())
    assert not np.allclose(warped.numpy(), xf, atol=1e-2)


def test_stratified_pick_balances_classes():
    y = np.repeat(np.arange(10), 50)
    rng = np.random.default_rng(0)
    idx = _stratified_pick(y, 200, rng)
    assert len(idx) == 200 and len(set(idx.tolist())) == 200
    assert (np.bincount(y[idx], minlength=10) == 20).all()
    more = _stratified_pick(y, 700, rng)  # more than the pool: everything once, then repeats
    assert len(more) == 700 and set(more.tolist()) == set(range(500))
    assert len(_stratified_pick(y, 0, rng)) == 0
    uneven = _stratified_pick(y, 205, rng)  # the 5 extra go to 5 different classes
    assert sorted(np.bincount(y[uneven], minlength=10).tolist()) == [20] * 5 + [21] * 5
    short = np.concatenate([np.zeros(5, int), np.repeat(np.arange(1, 10), 50)])
    topped = _stratified_pick(short, 100, rng)  # class 0 has 5 of its 10: the rest tops up
    assert len(set(topped.tolist())) == 100 and np.bincount(short[topped])[0] == 5


def test_configure_tensorflow_is_idempotent():
    from app.ml.training import configure_tensorflow

    first = configure_tensorflow(intra=2, inter=1)
    assert configure_tensorflow(intra=7, inter=7) == first
