"""Training recipes: the base model from scratch, and fine-tuning on user feedback.

Both take in-memory arrays and return a *new* Keras model; nothing here touches the
serving object or writes files (saving is `artifacts.save_model_atomic`'s job).

Augmentation is a random affine warp per image (shift, rotation, zoom, shear) done in
one `ImageProjectiveTransformV3` call per batch, with stateless random numbers keyed
on (seed, batch index) so a run is repeatable for a given seed.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable

import keras
import numpy as np
import tensorflow as tf

from app.ml.datasets import as_float_images, check_arrays, stratified_sample
from app.ml.network import build_model

Progress = Callable[[float], None] | None


@dataclass(frozen=True)
class Augment:
    """Ranges of the random affine warp (pixels, degrees, scale factor)."""

    shift: float = 2.5
    rotation_deg: float = 12.0
    zoom: float = 0.12
    shear: float = 0.15

    def scaled(self, k: float) -> "Augment":
        """The same warp, k times as strong (k < 1 for gentler fine-tuning)."""
        return Augment(self.shift * k, self.rotation_deg * k, self.zoom * k, self.shear * k)


BASE_AUGMENT = Augment()


# --------------------------------------------------------------------------- helpers


def _check_xy(x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    x, y = check_arrays(as_float_images(x), y, "training data")
    if len(x) == 0:
        raise ValueError("no samples to train on")
    return x, y.astype(np.int32)


def random_affine(images: tf.Tensor, seed: tf.Tensor, aug: Augment) -> tf.Tensor:
    """Warp each image of a (b,28,28) batch by its own random affine transform."""
    b = tf.shape(images)[0]
    u = tf.random.stateless_uniform((b, 6), seed=seed, minval=-1.0, maxval=1.0)
    angle = u[:, 0] * (aug.rotation_deg * math.pi / 180.0)
    scale = 1.0 + u[:, 1] * aug.zoom
    shear = u[:, 2] * aug.shear
    tx, ty = u[:, 3] * aug.shift, u[:, 4] * aug.shift
    cos, sin = tf.cos(angle), tf.sin(angle)
    # Output->input map: inverse of (rotate . shear . scale) about the centre, then shift.
    a0 = cos / scale
    a1 = (sin + shear * cos) / scale
    b0 = -sin / scale
    b1 = (cos - shear * sin) / scale
    c = 13.5
    a2 = c - a0 * (c + tx) - a1 * (c + ty)
    b2 = c - b0 * (c + tx) - b1 * (c + ty)
    zeros = tf.zeros_like(a0)
    transforms = tf.stack([a0, a1, a2, b0, b1, b2, zeros, zeros], axis=1)
    out = tf.raw_ops.ImageProjectiveTransformV3(
        images=images[..., None],
        transforms=transforms,
        output_shape=tf.constant([28, 28], tf.int32),
        fill_value=0.0,
        interpolation="BILINEAR",
        fill_mode="CONSTANT",
    )
    return out[..., 0]


def make_dataset(
    x: np.ndarray,
    y: np.ndarray,
    *,
    batch_size: int,
    epochs: int,
    seed: int,
    aug: Augment | None,
) -> tf.data.Dataset:
    """Shuffled, augmented batches for `epochs` epochs, deterministic for a seed."""
    ds = tf.data.Dataset.from_tensor_slices((x, y))
    ds = ds.shuffle(len(x), seed=seed, reshuffle_each_iteration=True)
    ds = ds.batch(batch_size).repeat(epochs).enumerate()

    def _map(i, batch):
        xb, yb = batch
        if aug is not None:
            xb = random_affine(xb, tf.stack([tf.cast(seed, tf.int64), i]), aug)
        return xb, yb

    return ds.map(_map, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True).prefetch(2)


def _schedule(peak_lr: float, total_steps: int, warmup_frac: float):
    """One-cycle-like: linear warm-up to `peak_lr`, cosine decay to ~0."""
    warmup = max(0, int(total_steps * warmup_frac))
    return keras.optimizers.schedules.CosineDecay(
        initial_learning_rate=peak_lr / 25.0 if warmup else peak_lr,
        decay_steps=max(1, total_steps - warmup),
        alpha=0.002,
        warmup_target=peak_lr if warmup else None,
        warmup_steps=warmup,
    )


def _fit(model, x, y, *, epochs, batch_size, seed, aug, peak_lr,
         warmup_frac, label_smoothing, weight_decay, progress, verbose):
    if epochs < 1:
        raise ValueError("epochs must be >= 1")
    steps = math.ceil(len(x) / batch_size)
    # Sparse CE has no label smoothing in Keras 3, so labels are one-hot.
    model.compile(
        optimizer=keras.optimizers.AdamW(learning_rate=_schedule(peak_lr, steps * epochs, warmup_frac),
                                         weight_decay=weight_decay),
        loss=keras.losses.CategoricalCrossentropy(label_smoothing=label_smoothing),
        metrics=[keras.metrics.CategoricalAccuracy(name="accuracy")],
    )
    ds = make_dataset(x, y, batch_size=batch_size, epochs=epochs, seed=seed, aug=aug)
    ds = ds.map(lambda xb, yb: (xb, tf.one_hot(yb, 10)))
    # The fraction of epochs done, after each epoch (1.0 after the last).
    report = keras.callbacks.LambdaCallback(on_epoch_end=lambda epoch, _logs: progress((epoch + 1) / epochs))
    model.fit(ds, epochs=epochs, steps_per_epoch=steps, callbacks=[report] if progress else [],
              verbose=verbose)
    return model


# --------------------------------------------------------------------------- base model


def train_base(
    x: np.ndarray,
    y: np.ndarray,
    *,
    epochs: int = 15,
    seed: int = 0,
    batch_size: int = 128,
    progress: Progress = None,
    peak_lr: float = 3e-3,
    augment: Augment | None = BASE_AUGMENT,
    verbose: int = 0,
) -> keras.Model:
    """Train the digit CNN from scratch, with augmentation and a one-cycle schedule, so
    10k digits are enough for >= 99 % on the MNIST test set.

    `x` is uint8 MNIST pixels or float (n,28,28) in [0,1]; `progress(fraction)` is called
    after each epoch. The same seed gives the same run (up to CPU float ordering)."""
    x, y = _check_xy(x, y)
    keras.utils.set_random_seed(seed)
    model = build_model()
    return _fit(model, x, y, epochs=epochs, batch_size=batch_size, seed=seed, aug=augment,
                peak_lr=peak_lr, warmup_frac=0.2, label_smoothing=0.1,
                weight_decay=1e-4, progress=progress, verbose=verbose)


# --------------------------------------------------------------------------- fine-tuning

# The fine-tuning recipe (see models/README.md and bench/finetune_recipe.py):
FT_REPLAY_RATIO = 2.0  # replay digits per feedback sample in every epoch
FT_PEAK_LR = 5e-4  # ~1/6 of the base model's peak: nudge, don't re-learn
FT_AUGMENT_SCALE = 0.6  # gentler warp; the feedback is augmented, replay is too


def fine_tune(
    model_path,
    x_new: np.ndarray,
    y_new: np.ndarray,
    x_replay: np.ndarray,
    y_replay: np.ndarray,
    *,
    epochs: int = 6,
    seed: int = 0,
    progress: Progress = None,
    from_scratch: bool = False,
    batch_size: int = 64,
    replay_ratio: float = FT_REPLAY_RATIO,
    peak_lr: float = FT_PEAK_LR,
    verbose: int = 0,
) -> keras.Model:
    """Adapt the live model to user feedback without forgetting MNIST; returns a candidate.

    Loads its own copy from `model_path` (the serving object is never compiled or fit).
    Each epoch mixes all feedback with `replay_ratio` times as many replay digits (drawn
    with a fixed seed, repeated if the replay set is small), trains at a low learning rate
    with BatchNorm frozen and mild augmentation on both. `from_scratch=True` instead
    trains a fresh network on feedback + all replay digits (slow; for a broken model).
    """
    x_new, y_new = _check_xy(x_new, y_new)
    x_replay, y_replay = _check_xy(x_replay, y_replay)
    keras.utils.set_random_seed(seed)
    rng = np.random.default_rng(seed)
    if from_scratch:
        return train_base(np.concatenate([x_new, x_replay]), np.concatenate([y_new, y_replay]),
                          epochs=epochs, seed=seed, batch_size=batch_size, progress=progress,
                          verbose=verbose)

    n_replay = int(round(len(x_new) * replay_ratio))
    idx = _stratified_pick(y_replay, n_replay, rng)
    x = np.concatenate([x_new, x_replay[idx]])
    y = np.concatenate([y_new, y_replay[idx]])

    model = keras.models.load_model(model_path, compile=False)
    for layer in model.layers:  # keep the base model's (MNIST's) BatchNorm statistics
        if isinstance(layer, keras.layers.BatchNormalization):
            layer.trainable = False  # Keras 3: also runs it in inference mode
    return _fit(model, x, y, epochs=epochs, batch_size=batch_size, seed=seed,
                aug=BASE_AUGMENT.scaled(FT_AUGMENT_SCALE), peak_lr=peak_lr, warmup_frac=0.1,
                label_smoothing=0.1, weight_decay=1e-4, progress=progress, verbose=verbose)


def _stratified_pick(y: np.ndarray, n: int, rng: np.random.Generator) -> np.ndarray:
    """`n` indices into `y` with classes as balanced as `y` allows (with replacement
    only when `n` exceeds the pool)."""
    if n <= 0:
        return np.zeros(0, dtype=np.int64)
    if n >= len(y):
        extra = rng.choice(len(y), n - len(y), replace=True)
        return np.concatenate([rng.permutation(len(y)), extra])
    n_classes = len(np.unique(y))
    per, left = divmod(n, n_classes)
    # The classes that get one more are drawn at random, so no digit is always favoured.
    counts = per + (rng.permutation(n_classes) < left)
    out = stratified_sample(y, counts, rng)
    if len(out) < n:  # a class ran short: top up from the rest
        rest = np.setdiff1d(np.arange(len(y)), out)
        out = np.concatenate([out, rng.choice(rest, n - len(out), replace=False)])
    return rng.permutation(out)


_tf_threads: tuple[int, int] | None = None


def configure_tensorflow(intra: int | None = None, inter: int | None = None) -> tuple[int, int]:
    """Size TensorFlow's thread pools once per training process, before its runtime starts
    (later calls are no-ops), so training beside serving workers does not oversubscribe the
    cores. Returns the (intra, inter) values in force (0 = TensorFlow's own choice)."""
    global _tf_threads
    if _tf_threads is None:
        try:
            if intra is not None:
                tf.config.threading.set_intra_op_parallelism_threads(int(intra))
            if inter is not None:
                tf.config.threading.set_inter_op_parallelism_threads(int(inter))
        except RuntimeError:  # the runtime already started (e.g. a model was loaded): keep its pools
            pass
        _tf_threads = (tf.config.threading.get_intra_op_parallelism_threads(),
                       tf.config.threading.get_inter_op_parallelism_threads())
    return _tf_threads
