"""The promotion gate: may a retrained candidate replace the live model?

As TFX's Evaluator blesses a model against the current one, the candidate must be at least
as good as the live model on held-out feedback (what users sent), and must not forget
MNIST: on held-out replay digits it may lose at most ``max_regression_points`` percentage
points against the live model. Both models are measured on the very same samples.
"""

from __future__ import annotations

from dataclasses import dataclass, field

FEEDBACK = "feedback_holdout_accuracy"
REPLAY = "replay_holdout_accuracy"


@dataclass
class GateDecision:
    passed: bool
    reasons: list[str] = field(default_factory=list)


def decide(live: dict, candidate: dict, max_regression_points: float) -> GateDecision:
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
    return GateDecision(passed=passed, reasons=reasons)
