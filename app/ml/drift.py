"""Has the traffic moved away from what the model was checked on?

The population stability index compares the share of samples in each bin of a reference
(the live model's predictions on held-out digits) with the same bins of recent traffic:
sum over bins of (recent - reference) * ln(recent / reference). By the usual reading,
under 0.1 is stable, 0.1-0.25 a moderate shift, over 0.25 a significant one.
"""

from __future__ import annotations

import numpy as np

# Shares are floored at this before the logarithm: an empty bin on one side would
# otherwise make the index infinite, however few samples it concerns.
_FLOOR = 1e-4
CONFIDENCE_BINS = 10


def population_stability_index(reference_counts, recent_counts) -> float:
    reference = np.asarray(reference_counts, dtype=np.float64)
    recent = np.asarray(recent_counts, dtype=np.float64)
    reference = np.maximum(reference / max(reference.sum(), 1.0), _FLOOR)
    recent = np.maximum(recent / max(recent.sum(), 1.0), _FLOOR)
    return float(np.sum((recent - reference) * np.log(recent / reference)))


def digit_counts(predicted) -> np.ndarray:
    """How often each digit 0-9 was predicted."""
    return np.bincount(np.asarray(predicted, dtype=np.int64), minlength=10)[:10]


def confidence_edges(reference_confidence, bins: int = CONFIDENCE_BINS) -> np.ndarray:
    """Bin edges at the reference's quantiles, so each bin holds about the same share of it
    (a well-trained model's confidences crowd near 1, where equal-width bins would lump
    almost everything into one)."""
    inner = np.unique(np.quantile(np.asarray(reference_confidence, np.float64), np.linspace(0, 1, bins + 1)[1:-1]))
    return np.concatenate(([-np.inf], inner, [np.inf]))


def confidence_counts(confidence, edges) -> np.ndarray:
    counts, _ = np.histogram(np.asarray(confidence, np.float64), bins=edges)
    return counts
