"""The promotion gate: may a retrained candidate replace the live model?

As TFX's Evaluator blesses a model against the current one, the candidate must be at least
as good as the live model on held-out feedback (what users sent), and must not forget
MNIST: on held-out replay digits it may lose at most ``max_regression_points`` percentage
points against the live model. Both models are measured on the very same samples.

Poisoned feedback can make a candidate look better on feedback that carries the same
poison, so the held-out feedback comes only from trusted labels (see ``app/ml/jobs.py``),
and a per-digit rule (``per_digit``/``decide``'s ``per_digit``) refuses a candidate that
loses more than ``max_class_regression_points`` on any one digit: a poisoned digit cannot
hide inside an overall average.
"""

from __future__ import annotations

from dataclasses import dataclass, field

FEEDBACK = "feedback_holdout_accuracy"
REPLAY = "replay_holdout_accuracy"


@dataclass
class GateDecision:
    passed: bool
    reasons: list[str] = field(default_factory=list)


def per_digit(y, live_predicted, candidate_predicted, max_class_regression_points: float) -> list[dict]:
    """One entry per digit: both models' accuracy on the samples labelled with it (None
    when there are none), the candidate's loss in points, and whether that is allowed."""
    import numpy as np

    y = np.asarray(y)
    rows = []
    for digit in range(10):
        mask = y == digit
        n = int(mask.sum())
        live = float(np.mean(live_predicted[mask] == digit)) if n else None
        candidate = float(np.mean(candidate_predicted[mask] == digit)) if n else None
        drop = round(100.0 * (live - candidate), 2) if n else 0.0
        rows.append({"digit": digit, "live": None if live is None else round(live, 4),
                     "candidate": None if candidate is None else round(candidate, 4),
                     "drop_points": drop, "passed": drop <= max_class_regression_points + 1e-9, "samples": n})
    return rows


def decide(live: dict, candidate: dict, max_regression_points: float, per_digit_rows=None) -> GateDecision:
    """Compare accuracies (0..1) under the keys ``feedback_holdout_accuracy`` and
    ``replay_holdout_accuracy``; a missing feedback hold-out (too few samples) is not held
    against the candidate, a missing replay hold-out is (forgetting would go unseen)."""
    reasons = []
    passed = True
    live_fb, cand_fb = live.get(FEEDBACK), candidate.get(FEEDBACK)
    if live_fb is None or cand_fb is None:
        reasons.append("no held-out feedback to compare on")
    elif cand_fb + 1e-9 < live_fb:
        passed = False
        reasons.append(f"held-out feedback: candidate {cand_fb:.2%} < live {live_fb:.2%}")
    else:
        reasons.append(f"held-out feedback: candidate {cand_fb:.2%} >= live {live_fb:.2%}")

    live_rp, cand_rp = live.get(REPLAY), candidate.get(REPLAY)
    if live_rp is None or cand_rp is None:
        passed = False
        reasons.append("no held-out replay digits: forgetting cannot be checked")
    else:
        drop = 100.0 * (live_rp - cand_rp)
        if drop > max_regression_points + 1e-9:
            passed = False
            reasons.append(f"replay digits: candidate {cand_rp:.2%} is {drop:.2f} points below live "
                           f"{live_rp:.2%} (allowed {max_regression_points:g})")
        else:
            reasons.append(f"replay digits: candidate {cand_rp:.2%} vs live {live_rp:.2%} "
                           f"({drop:+.2f} points, allowed {max_regression_points:g})")
    if per_digit_rows:
        worst = max(per_digit_rows, key=lambda r: r["drop_points"])
        reasons.append(f"per digit: the largest loss is {worst['drop_points']:+.2f} points (digit {worst['digit']})")
    for row in per_digit_rows or ():
        if not row["passed"]:
            passed = False
            reasons.append(f"digit {row['digit']}: candidate {row['candidate']:.2%} is {row['drop_points']:.2f} points "
                           f"below live {row['live']:.2%} on {row['samples']} trusted samples")
    return GateDecision(passed=passed, reasons=reasons)
