"""The promotion gate and the retrain pipeline's splits."""

import numpy as np
import pytest

from app.ml.gate import decide
from app.ml.jobs import run_retrain, stratified_holdout


def scores(feedback, replay):
    return {"feedback_holdout_accuracy": feedback, "replay_holdout_accuracy": replay}


@pytest.mark.parametrize("live, candidate, limit, passed", [
    (scores(0.90, 0.990), scores(0.95, 0.990), 0.5, True),
    (scores(0.90, 0.990), scores(0.89, 0.999), 0.5, False),   # worse on feedback
    (scores(0.90, 0.990), scores(0.95, 0.984), 0.5, False),   # 0.6 points forgotten
    (scores(0.90, 0.990), scores(0.95, 0.985), 0.5, True),    # exactly at the limit
    (scores(0.90, 0.990), scores(0.95, 0.98499), 0.5, False),  # 0.501 points: just over
    (scores(0.90, 0.990), scores(0.95, 0.987), 0.3, True),    # 0.3 in floats is 0.30000000000000027
    (scores(0.90, 0.990), scores(0.8999, 0.990), 0.5, False),  # feedback a hair worse
    (scores(0.90, 0.990), scores(0.90, 0.990), 0.5, True),    # equal is enough
    (scores(None, 0.990), scores(None, 0.990), 0.5, True),    # no feedback hold-out
    (scores(0.90, None), scores(0.95, None), 0.5, False),     # forgetting unchecked
])
def test_gate(live, candidate, limit, passed):
    decision = decide(live, candidate, limit)
    assert decision.passed is passed
    assert decision.reasons


def test_stratified_holdout():
    y = np.array([0] * 10 + [1] * 5 + [2] * 2 + [3])
    train, hold = stratified_holdout(y, 0.2, seed=1)
    assert sorted(np.concatenate([train, hold]).tolist()) == list(range(len(y)))
    assert not set(train) & set(hold)
    for label in (0, 1, 2):
        assert (y[hold] == label).sum() >= 1 and (y[train] == label).sum() >= 1
    assert 3 not in y[hold]  # a single sample stays in training
    again = stratified_holdout(y, 0.2, seed=1)
    assert np.array_equal(again[1], hold)


def test_run_retrain_reports_both_models_and_leaves_the_live_file(tiny_model_source, replay_digits):
    from app.ml.artifacts import sha256_file

    x, y = replay_digits
    keep = y != 0
    xf, yf = x[keep][:40].astype(np.float32) / 255, y[keep][:40]
    live = tiny_model_source / "tiny.keras"
    before = sha256_file(live)
    fractions = []
    result = run_retrain(live, xf, yf, x[200:600], y[200:600], epochs=1, max_regression_points=100,
                         replay_holdout=(x[600:800], y[600:800]), progress=fractions.append)
    assert sha256_file(live) == before
    assert result.metrics["live"]["feedback_holdout_accuracy"] == 0.0  # always answers 0
    assert set(result.metrics["live"]) == set(result.metrics["candidate"])
    assert result.metrics["samples"]["replay_holdout"] == 200
    assert fractions == sorted(fractions) and fractions[-1] >= 0.9
    assert result.decision.passed
    assert result.candidate.predict(xf[:2], verbose=0).shape == (2, 10)
