"""The ML steps of one retrain job: split, fine-tune, evaluate both models, apply the gate.

No database and no Flask here: the service layer (``app/services/retraining.py``) feeds
arrays in, saves and registers what comes out. That keeps the recipe testable alone and
runnable from a worker process (RQ) as well as a thread.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Callable

import numpy as np

from app.ml import gate
from app.ml.calibration import calibrate
from app.ml.datasets import as_float_images, stratified_sample
from app.ml.evaluation import probabilities
from app.ml.training import fine_tune
from app.ml.trust import ADMIN_VOTER, cap_account_shares

Progress = Callable[[float], None]

# Share of feedback held out to compare candidate and live model on what users sent.
FEEDBACK_HOLDOUT = 0.2
# Replay digits held out to catch forgetting (never trained on in any retrain).
REPLAY_HOLDOUT = 1000


@dataclass
class RetrainResult:
    candidate: object  # keras.Model, imported lazily by callers
    decision: gate.GateDecision
    metrics: dict = field(default_factory=dict)


def stratified_holdout(y, fraction, seed):
    """Indices (train, holdout): about ``fraction`` of each class held out, seeded.

    A class with a single sample stays in training: there is nothing to compare it with.
    """
    y = np.asarray(y)
    _, sizes = np.unique(y, return_counts=True)
    counts = np.where(sizes >= 2, np.clip(np.round(sizes * fraction), 1, sizes - 1), 0)
    holdout = np.sort(stratified_sample(y, counts, np.random.default_rng(seed))).astype(np.int64)
    train = np.setdiff1d(np.arange(len(y)), holdout)
    return train, holdout


def split_replay(y_replay, holdout, seed=0):
    """A fixed split of the replay sample: the same held-out digits in every retrain."""
    holdout = min(holdout, len(y_replay) // 2)
    return stratified_holdout(y_replay, holdout / max(1, len(y_replay)), seed)


def trusted_holdout(y, accounts, trusted, fraction, seed, max_account_share, anchor_per_digit):
    """Indices (train, holdout) of the feedback: about ``fraction`` of each account's labels
    of each digit held out, then no account above ``max_account_share`` of the gate's
    samples of any digit (held-out feedback plus ``anchor_per_digit`` MNIST hold-out
    digits); what the cap leaves out goes back to training. Admin-verified labels are
    held out like the rest and never capped.
    """
    y = np.asarray(y, dtype=np.int64)
    groups = np.where(trusted, ADMIN_VOTER, accounts).astype(np.int64)
    _, group_index = np.unique(groups, return_inverse=True)
    train, hold = stratified_holdout(group_index * 10 + y, fraction, seed)
    if max_account_share is not None and len(hold):
        keep, _ = cap_account_shares(groups[hold], y[hold], trusted[hold], max_account_share,
                                     anchor_per_digit=anchor_per_digit, seed=seed)
        train, hold = np.sort(np.concatenate([train, hold[~keep]])), hold[keep]
    return train, hold


def outputs(model, images):
    """``{set name: probabilities}`` of a Keras model on each set of ``images`` (``{set name:
    x}``), by direct calls in batches: fast on CPU and never touching a serving object."""
    return {name: probabilities(lambda batch: model(batch, training=False), x) for name, x in images.items()}


def run_retrain(
    live_model_path,
    x_feedback,
    y_feedback,
    x_replay,
    y_replay,
    *,
    epochs,
    max_regression_points,
    seed=0,
    from_scratch=False,
    replay_holdout=None,
    progress: Progress | None = None,
    accounts=None,
    trusted=None,
    max_class_regression_points=None,
    max_account_share=None,
):
    """Fine-tune a candidate from the live model and decide whether it may replace it.

    ``replay_holdout`` is ``(x, y)`` of MNIST digits no model trained on (shipped in
    ``replay.npz``); without it a fixed part of the replay sample is held out instead.
    Returns a ``RetrainResult`` with the candidate, the gate's decision and metrics for
    both models on the same held-out feedback and replay digits.

    ``accounts`` (one id per feedback sample) and ``trusted`` (admin-verified) shape the
    held-out feedback so that no account dominates it (``trusted_holdout``); with
    ``max_class_regression_points`` the gate also compares both models digit by digit on
    held-out feedback and MNIST hold-out together.
    """
    import keras

    report = progress or (lambda _f: None)
    started = time.perf_counter()
    x_feedback = np.asarray(x_feedback, dtype=np.float32)
    y_feedback = np.asarray(y_feedback, dtype=np.int64)
    accounts = np.zeros(len(y_feedback), np.int64) if accounts is None else np.asarray(accounts, np.int64)
    trusted = np.zeros(len(y_feedback), bool) if trusted is None else np.asarray(trusted, bool)
    x_replay = as_float_images(x_replay)
    y_replay = np.asarray(y_replay)
    if replay_holdout is not None:
        x_rp_train, y_rp_train = x_replay, y_replay
        x_rp_hold, y_rp_hold = as_float_images(replay_holdout[0]), np.asarray(replay_holdout[1])
    else:
        rp_train, rp_hold = split_replay(y_replay, REPLAY_HOLDOUT)
        x_rp_train, y_rp_train = x_replay[rp_train], y_replay[rp_train]
        x_rp_hold, y_rp_hold = x_replay[rp_hold], y_replay[rp_hold]
    fb_train, fb_hold = trusted_holdout(y_feedback, accounts, trusted, FEEDBACK_HOLDOUT, seed, max_account_share,
                                        np.bincount(np.asarray(y_rp_hold, np.int64), minlength=10))
    report(0.02)

    # Training gets 90 % of the progress bar: it is where the time goes.
    candidate = fine_tune(
        live_model_path,
        x_feedback[fb_train], y_feedback[fb_train],
        x_rp_train, y_rp_train,
        epochs=epochs, seed=seed, from_scratch=from_scratch,
        progress=lambda f: report(0.02 + 0.9 * f),
    )
    train_seconds = time.perf_counter() - started

    live = keras.models.load_model(live_model_path, compile=False)
    x_held = {"feedback_holdout": x_feedback[fb_hold], "replay_holdout": x_rp_hold}
    y_held = {"feedback_holdout": y_feedback[fb_hold], "replay_holdout": y_rp_hold}
    candidate_out = outputs(candidate, x_held)
    scores, digits, decision = judge(outputs(live, x_held), candidate_out, y_held, max_regression_points,
                                     max_class_regression_points)
    # The candidate's temperature is fitted on the replay hold-out alone: MNIST digits no model
    # trained on, with labels no account can poison, and enough of them (1,000 shipped) for a
    # stable fit; held-out feedback is small and carries whatever labels users gave. The fit
    # carries over to users' uploads (bench/calibration.py), and a temperature never changes a
    # prediction, so the gate's accuracies on the same digits are unaffected.
    calibration = calibrate(candidate_out["replay_holdout"], y_rp_hold) if len(y_rp_hold) else None
    report(0.97)
    metrics = {
        **scores,
        "gate": {"passed": decision.passed, "reasons": decision.reasons,
                 "max_regression_points": max_regression_points,
                 "max_class_regression_points": max_class_regression_points, "per_digit": digits},
        "samples": {
            "feedback_train": int(len(fb_train)), "feedback_holdout": int(len(fb_hold)),
            "replay_train": int(len(y_rp_train)), "replay_holdout": int(len(y_rp_hold)),
        },
        "calibration": calibration,
        # Per account (admin-verified labels under ADMIN_VOTER): what trained, what judged.
        "per_account": _per_account(np.where(trusted, ADMIN_VOTER, accounts), fb_train, fb_hold),
        "epochs": epochs,
        "train_seconds": round(train_seconds, 2),
        "total_seconds": round(time.perf_counter() - started, 2),
    }
    return RetrainResult(candidate=candidate, decision=decision, metrics=metrics)


def judge(live, candidate, labels, max_regression_points, max_class_regression_points=None):
    """The gate on both models' ``outputs`` on the same held-out sets (``labels``: ``{"feedback_holdout":
    y, "replay_holdout": y}``): accuracies per set, the per-digit comparison over both sets
    together (None without ``max_class_regression_points``) and the gate's decision."""
    scores, predicted = {}, {}
    for name, probs in (("live", live), ("candidate", candidate)):
        predicted[name] = [np.argmax(probs[set_name], axis=1) for set_name in labels]
        scores[name] = {f"{set_name}_accuracy": float(np.mean(guess == y)) if len(y) else None
                        for guess, (set_name, y) in zip(predicted[name], labels.items())}
    digits = None
    if max_class_regression_points is not None:
        y_gate = np.concatenate([np.asarray(y) for y in labels.values()])
        digits = gate.per_digit(y_gate, np.concatenate(predicted["live"]), np.concatenate(predicted["candidate"]),
                                max_class_regression_points)
    return scores, digits, gate.decide(scores["live"], scores["candidate"], max_regression_points, digits)


def _per_account(groups, train, hold):
    ids = np.unique(groups)
    return {str(int(a)): {"train": int(np.sum(groups[train] == a)), "holdout": int(np.sum(groups[hold] == a))}
            for a in ids}
