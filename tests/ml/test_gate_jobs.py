"""The promotion gate and the retrain pipeline (split, fine-tune, evaluate, gate)."""

from pathlib import Path

import numpy as np
import pytest

from app.ml.gate import decide
from app.ml.jobs import run_retrain, stratified_holdout


def scores(feedback, replay):
    return {"feedback_holdout_accuracy": feedback, "replay_holdout_accuracy": replay}


# --------------------------------------------------------------------------- gate


@pytest.mark.parametrize("live, candidate, limit, passed", [
    (scores(0.90, 0.990), scores(0.95, 0.990), 0.5, True),
    (scores(0.90, 0.990), scores(0.89, 0.999), 0.5, False),   # worse on feedback
    (scores(0.90, 0.990), scores(0.8999, 0.990), 0.5, False),  # feedback a hair worse
    (scores(0.90, 0.990), scores(0.90, 0.990), 0.5, True),    # equal is enough
    (scores(0.90, 0.990), scores(0.95, 0.984), 0.5, False),   # 0.6 points forgotten
    (scores(0.90, 0.990), scores(0.95, 0.98499), 0.5, False),  # 0.501 points: just over
    (scores(0.90, 0.990), scores(0.95, 0.985), 0.5, True),    # exactly at the limit (0.5000000000000004 in floats)
    (scores(0.90, 0.990), scores(0.95, 0.987), 0.3, True),    # at the limit again: 0.3 in floats is 0.30000000000000027
    (scores(0.90, 0.990), scores(0.95, 0.9869), 0.3, False),  # 0.31 points: over
    (scores(0.90, 0.990), scores(0.95, 0.999), 0.0, True),    # a better replay score is never a regression
    (scores(0.90, 0.990), scores(0.95, 0.989), 0.0, False),   # zero tolerance
    (scores(None, 0.990), scores(None, 0.990), 0.5, True),    # no feedback hold-out: not held against
    (scores(0.90, 0.990), scores(None, 0.990), 0.5, True),
    (scores(0.90, None), scores(0.95, None), 0.5, False),     # no replay hold-out: forgetting unchecked
    (scores(0.90, 0.990), scores(0.95, None), 0.5, False),
    (scores(0.90, 0.990), {}, 0.5, False),                    # nothing measured at all
], ids=["pass", "worse-feedback", "feedback-hair-worse", "equal", "replay-0.6",
        "replay-just-over", "replay-at-limit", "replay-at-limit-0.3", "replay-over-0.3",
        "replay-better", "zero-tolerance", "no-feedback", "candidate-no-feedback",
        "no-replay", "candidate-no-replay", "empty"])
def test_gate(live, candidate, limit, passed):
    decision = decide(live, candidate, limit)
    assert decision.passed is passed
    assert len(decision.reasons) == 2  # one line about feedback, one about replay digits


def test_gate_reasons_say_what_failed():
    feedback = decide(scores(0.9, 0.99), scores(0.8, 0.99), 0.5)
    assert not feedback.passed and "feedback" in feedback.reasons[0] and "<" in feedback.reasons[0]
    replay = decide(scores(0.9, 0.99), scores(0.9, 0.97), 0.5)
    assert not replay.passed and "2.00 points below" in replay.reasons[1]
    missing = decide(scores(0.9, None), scores(0.9, None), 0.5)
    assert "forgetting cannot be checked" in missing.reasons[1]


# --------------------------------------------------------------------------- hold-out split


def check_holdout(y, fraction, seed):
    train, hold = stratified_holdout(y, fraction, seed)
    assert train.dtype.kind == "i" and hold.dtype.kind == "i"
    assert not set(train.tolist()) & set(hold.tolist())                       # disjoint
    assert sorted(train.tolist() + hold.tolist()) == list(range(len(y)))      # complete, no repeats
    for label in np.unique(y):
        count = int((y == label).sum())
        held = int((y[hold] == label).sum())
        if count >= 2:
            assert 1 <= held <= count - 1, (label, count, held)
            assert abs(held - count * fraction) <= 1  # about `fraction` of the class
        else:
            assert held == 0  # a singleton stays in training
    return train, hold


def test_stratified_holdout_small_example():
    y = np.array([0] * 10 + [1] * 5 + [2] * 2 + [3])
    train, hold = check_holdout(y, 0.2, seed=1)
    assert (y[hold] == 0).sum() == 2 and (y[hold] == 2).sum() == 1
    assert 17 in train  # the only 3


@pytest.mark.parametrize("seed", range(5))
def test_stratified_holdout_random_labels(seed):
    rng = np.random.default_rng(100 + seed)
    y = rng.integers(0, 10, rng.integers(5, 60))
    for fraction in (0.01, 0.2, 0.5, 0.9):
        check_holdout(y, fraction, seed)


def test_stratified_holdout_is_deterministic_by_seed():
    y = np.repeat(np.arange(10), 20)
    first = stratified_holdout(y, 0.2, seed=7)
    again = stratified_holdout(y, 0.2, seed=7)
    other = stratified_holdout(y, 0.2, seed=8)
    assert np.array_equal(first[0], again[0]) and np.array_equal(first[1], again[1])
    assert not np.array_equal(first[1], other[1])


# --------------------------------------------------------------------------- run_retrain


def test_run_retrain_reports_both_models_and_leaves_the_live_file(tiny_model_source, replay_digits):
    from app.ml.artifacts import sha256_file

    x, y = replay_digits
    keep = np.flatnonzero(y != 0)[:40]  # feedback labelled 1-9: the always-0 live model gets none right
    xf, yf = x[keep].astype(np.float32) / 255, y[keep]
    live = tiny_model_source / "tiny.keras"
    before = sha256_file(live)
    x_hold, y_hold = x[600:800], y[600:800]
    fractions = []
    result = run_retrain(live, xf, yf, x[:600], y[:600], epochs=1, max_regression_points=100,
                         replay_holdout=(x_hold, y_hold), progress=fractions.append)

    assert sha256_file(live) == before  # the live model's file is never written
    metrics = result.metrics
    _, expected_hold = stratified_holdout(yf.astype(np.int64), 0.2, 0)
    assert metrics["samples"] == {"feedback_train": 40 - len(expected_hold),
                                  "feedback_holdout": len(expected_hold),
                                  "replay_train": 600, "replay_holdout": 200}
    # Both models are scored on the same sets: the always-0 live model gets exactly the
    # share of zeros right, and every accuracy is a whole number of those samples.
    assert metrics["live"]["feedback_holdout_accuracy"] == 0.0
    assert metrics["live"]["replay_holdout_accuracy"] == pytest.approx(np.mean(y_hold == 0))
    assert set(metrics["live"]) == set(metrics["candidate"]) == {"feedback_holdout_accuracy",
                                                                 "replay_holdout_accuracy"}
    for name in ("live", "candidate"):
        for key, n in (("feedback_holdout_accuracy", len(expected_hold)), ("replay_holdout_accuracy", 200)):
            correct = metrics[name][key] * n
            assert 0 <= metrics[name][key] <= 1 and correct == pytest.approx(round(correct), abs=1e-6)

    assert fractions and all(0 <= f <= 1 for f in fractions)
    assert fractions == sorted(fractions) and fractions[-1] >= 0.9
    assert result.decision.passed  # nothing can be worse than 0 % with a 100-point allowance
    assert metrics["gate"]["passed"] is True and metrics["gate"]["reasons"] == result.decision.reasons
    assert metrics["epochs"] == 1
    assert result.candidate.predict(xf[:2], verbose=0).shape == (2, 10)


def test_split_replay_is_fixed_and_never_takes_more_than_half(replay_digits):
    from app.ml.jobs import split_replay

    _, y = replay_digits
    train, held = split_replay(y, 1000)
    assert len(held) == 1000 and len(train) == len(y) - 1000
    assert np.array_equal(np.bincount(y[held], minlength=10), np.bincount(y, minlength=10) // 2)
    assert np.array_equal(split_replay(y, 1000)[1], held)  # the same digits in every retrain
    small_train, small_held = split_replay(y[:300], 1000)
    assert len(small_train) + len(small_held) == 300 and abs(len(small_held) - 150) <= 10


# --------------------------------------------------------------------------- a poisoned candidate


def poisoned_copy(model, source, target):
    """The same network, except that whatever it took for ``source`` it now calls ``target``:
    what fine-tuning on ``source`` digits labelled ``target`` teaches it."""
    import keras

    poisoned = keras.models.clone_model(model)
    poisoned.set_weights(model.get_weights())
    dense = poisoned.get_layer("probs")
    kernel, bias = dense.get_weights()
    kernel[:, target], bias[target] = kernel[:, source], bias[source] + 1.0
    dense.set_weights([kernel, bias])
    return poisoned


def test_the_per_digit_gate_refuses_a_poisoned_candidate_that_the_overall_rules_pass(replay_digits):
    """The poisoned feedback in the hold-out makes the candidate look better there, and the
    replay allowance is generous: only the per-digit rule sees that the 7s are gone."""
    import keras

    from app.ml.jobs import judge, outputs

    base = Path(__file__).resolve().parents[2] / "models" / "base.keras"
    live = keras.models.load_model(base, compile=False)
    candidate = poisoned_copy(live, source=7, target=1)
    with np.load(base.parent / "replay.npz") as shipped:
        x_hold, y_hold = shipped["x_holdout"][::4].astype(np.float32) / 255, shipped["y_holdout"][::4]
    x, y = replay_digits
    sevens = np.flatnonzero(y == 7)[:12]
    x_fb = x[sevens].astype(np.float32) / 255
    y_fb = np.full(len(sevens), 1)  # the poison, held out beside the training part
    images = {"feedback_holdout": x_fb, "replay_holdout": x_hold}
    labels = {"feedback_holdout": y_fb, "replay_holdout": y_hold}
    live_out, candidate_out = outputs(live, images), outputs(candidate, images)

    scores, digits, decision = judge(live_out, candidate_out, labels, max_regression_points=100)
    assert decision.passed and digits is None  # without the per-digit rule it would go live
    assert scores["candidate"]["feedback_holdout_accuracy"] > scores["live"]["feedback_holdout_accuracy"]

    scores, digits, decision = judge(live_out, candidate_out, labels, 100, max_class_regression_points=2.0)
    assert not decision.passed
    seven = digits[7]
    assert seven["samples"] == int(np.sum(y_hold == 7)) and seven["live"] > 0.9 and seven["candidate"] < 0.1
    assert not seven["passed"] and seven["drop_points"] > 80
    assert any(reason.startswith("digit 7:") for reason in decision.reasons)
    # A healthy candidate (the live model itself) passes the same rule.
    assert judge(live_out, live_out, labels, 0.0, 2.0)[2].passed
