"""Whose labels to believe: a trust score per account, and caps on any one account's share.

Pure numpy: the service layer (``app/services/trust.py``) feeds in each feedback row's
account, label, the live model's probabilities and its penultimate-layer embedding, and
writes the decisions back.

The evidence for one label is the live model and the other accounts:

* the **model** counts when it is confident (top probability >= ``model_confidence``);
* **peers**: every *other* account votes once, with the label of its own nearest sample in
  embedding space, if that sample is close enough (cosine >= ``neighbour_similarity``).
  One vote per account, however many images it sent, so a flood of images from one account
  (or from a few) cannot outvote many accounts.

A label is **unsupported** when

* the confident model says another digit and peers back the label by no more than they back
  the model, the model counting as ``MODEL_VOTES`` accounts; or
* at least two peers voted and two thirds of them agree on another digit, and the model
  is not confident of the label.

Honest users who correct real mistakes disagree with the model where it is wrong, and
other honest users back them there; an attacker disagrees where the model and other users
agree. An account is an **outlier** when its unsupported rate is at least ``min_rate`` and
more than ``outlier_mads`` robust deviations (MAD, floored at ``min_spread``) above the
median rate of the *other* judged accounts. With no other judged account there is nothing
to compare with, and nobody is an outlier.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import numpy as np

# A confident model weighs as much as this many agreeing accounts.
MODEL_VOTES = 2
# An admin-verified label weighs as much as this many agreeing accounts.
ADMIN_VOTES = 3
# Voter id of admin-verified labels (account ids are positive; deleted accounts are -1).
ADMIN_VOTER = -2
NUM_CLASSES = 10
_CHUNK = 512  # rows of the similarity matrix held at once


@dataclass(frozen=True)
class TrustRules:
    model_confidence: float = 0.75
    neighbour_similarity: float = 0.95
    min_labels: int = 20
    min_rate: float = 0.10
    outlier_mads: float = 5.0
    min_spread: float = 0.02

    @classmethod
    def from_config(cls, config):
        return cls(
            model_confidence=config["TRUST_MODEL_CONFIDENCE"],
            neighbour_similarity=config["TRUST_NEIGHBOUR_SIMILARITY"],
            min_labels=config["TRUST_MIN_LABELS"],
            min_rate=config["TRUST_MIN_RATE"],
            outlier_mads=config["TRUST_OUTLIER_MADS"],
            min_spread=config["TRUST_MIN_SPREAD"],
        )


@dataclass
class AccountTrust:
    """The numbers behind one account's verdict (what an admin sees)."""

    labels: int
    model_confident_disagreements: int  # the confident model said another digit
    peer_checked: int  # labels with at least one other account's vote
    peer_agreements: int  # ... whose most-voted digit is the label
    unsupported: int
    unsupported_rate: float
    judged: bool  # enough labels, and other judged accounts to compare with
    others_median_rate: float | None
    others_spread: float | None
    threshold: float | None
    outlier: bool

    def as_dict(self):
        return asdict(self)


@dataclass
class Assessment:
    accounts: dict  # account id -> AccountTrust
    unsupported: np.ndarray  # bool per sample
    votes: np.ndarray  # (n, 10) weighted peer votes per sample
    predicted: np.ndarray
    confidence: np.ndarray


def peer_votes(embeddings, voters, labels, similarity, weights=None):
    """``(n, 10)`` votes: for each sample, every *other* voter's nearest sample (cosine >=
    ``similarity``) adds that voter's weight to its label's column."""
    e = np.asarray(embeddings, dtype=np.float32)
    e = e / np.maximum(np.linalg.norm(e, axis=1, keepdims=True), 1e-12)
    voters = np.asarray(voters)
    labels = np.asarray(labels, dtype=np.int64)
    n = len(labels)
    votes = np.zeros((n, NUM_CLASSES), dtype=np.float64)
    groups = [(v, np.flatnonzero(voters == v)) for v in np.unique(voters)]
    weight_of = weights or {}
    for start in range(0, n, _CHUNK):
        rows = np.arange(start, min(n, start + _CHUNK))
        sims = e[rows] @ e.T
        for voter, cols in groups:
            sub = sims[:, cols]
            nearest = np.argmax(sub, axis=1)
            best = sub[np.arange(len(rows)), nearest]
            ok = (best >= similarity) & (voters[rows] != voter)
            np.add.at(votes, (rows[ok], labels[cols[nearest[ok]]]), weight_of.get(voter, 1.0))
    return votes


def assess(labels, accounts, probs, embeddings, trusted, rules: TrustRules = TrustRules()) -> Assessment:
    """Score every account; see the module docstring for the rule.

    ``accounts`` holds one account id per sample (-1: a deleted account), ``trusted`` marks
    admin-verified labels: they vote (as ``ADMIN_VOTES`` accounts) but are never judged.
    """
    labels = np.asarray(labels, dtype=np.int64)
    accounts = np.asarray(accounts, dtype=np.int64)
    trusted = np.asarray(trusted, dtype=bool)
    probs = np.asarray(probs, dtype=np.float64)
    predicted, confidence = probs.argmax(axis=1), probs.max(axis=1)
    voters = np.where(trusted, ADMIN_VOTER, accounts)
    votes = peer_votes(embeddings, voters, labels, rules.neighbour_similarity, {ADMIN_VOTER: float(ADMIN_VOTES)})

    idx = np.arange(len(labels))
    confident = confidence >= rules.model_confidence
    model_against = confident & (predicted != labels)
    for_label, for_model = votes[idx, labels], votes[idx, predicted]
    total = votes.sum(axis=1)
    top = votes.argmax(axis=1)
    peers_against = ((total >= 2) & (top != labels) & (votes[idx, top] * 3 >= 2 * total)
                     & ~(confident & (predicted == labels)))
    unsupported = (model_against & (for_label <= for_model + MODEL_VOTES)) | peers_against

    judged_ids = [a for a in np.unique(accounts[~trusted])
                  if np.sum((accounts == a) & ~trusted) >= rules.min_labels]
    rates = {a: float(np.mean(unsupported[(accounts == a) & ~trusted])) for a in judged_ids}
    result = {}
    for account in np.unique(accounts[~trusted]):
        mine = (accounts == account) & ~trusted
        checked = mine & (total > 0)
        rate = float(np.mean(unsupported[mine]))
        others = [r for a, r in rates.items() if a != account]
        judged = account in rates and bool(others)
        median = spread = threshold = None
        outlier = False
        if judged:
            median = float(np.median(others))
            mad = float(np.median(np.abs(np.asarray(others) - median)))
            spread = max(1.4826 * mad, rules.min_spread)
            threshold = median + rules.outlier_mads * spread
            outlier = rate >= rules.min_rate and rate > threshold
        result[int(account)] = AccountTrust(
            labels=int(mine.sum()),
            model_confident_disagreements=int(np.sum(model_against & mine)),
            peer_checked=int(checked.sum()),
            peer_agreements=int(np.sum(checked & (top == labels))),
            unsupported=int(np.sum(unsupported & mine)),
            unsupported_rate=round(rate, 4),
            judged=judged,
            others_median_rate=None if median is None else round(median, 4),
            others_spread=None if spread is None else round(spread, 4),
            threshold=None if threshold is None else round(threshold, 4),
            outlier=bool(outlier),
        )
    return Assessment(accounts=result, unsupported=unsupported, votes=votes, predicted=predicted,
                      confidence=confidence)


def sample_detail(assessment: Assessment, i: int) -> dict:
    """The evidence on one label, for its row's ``status_detail``."""
    votes = assessment.votes[i]
    return {
        "model_prediction": int(assessment.predicted[i]),
        "model_confidence": round(float(assessment.confidence[i]), 4),
        "peer_votes": {str(d): round(float(v), 2) for d, v in enumerate(votes) if v},
        "unsupported": bool(assessment.unsupported[i]),
    }


# --------------------------------------------------------------------------- caps


def cap_account_shares(accounts, labels, exempt, share, *, anchor_per_feedback=0.0, anchor_per_digit=None, seed=0):
    """Which samples to keep so that no account supplies more than ``share`` of the
    training samples, overall or for any one digit. Returns ``(keep mask, {account: dropped})``.

    The training samples are the kept feedback plus the replay digits mixed in with it:
    ``anchor_per_feedback`` replay digits per kept feedback sample, spread evenly over the
    digits (the fine-tuning recipe), and/or a fixed ``anchor_per_digit`` count (e.g. the
    MNIST hold-out, when the set is the gate's). ``exempt`` samples (admin-verified) are
    never dropped and belong to no account. Dropping shrinks the totals, so the caps are
    recomputed until nothing changes; ``seed`` picks which samples go.
    """
    accounts = np.asarray(accounts, dtype=np.int64)
    labels = np.asarray(labels, dtype=np.int64)
    exempt = np.asarray(exempt, dtype=bool)
    fixed = np.zeros(NUM_CLASSES) if anchor_per_digit is None else np.asarray(anchor_per_digit, dtype=np.float64)
    ids = np.unique(accounts[~exempt])
    counts = np.zeros((len(ids), NUM_CLASSES), dtype=np.int64)
    for row, account in enumerate(ids):
        counts[row] = np.bincount(labels[(accounts == account) & ~exempt], minlength=NUM_CLASSES)
    exempt_per_digit = np.bincount(labels[exempt], minlength=NUM_CLASSES)
    allowed = counts.copy()
    for _ in range(1000):  # each round only lowers counts: it settles fast
        per_digit = allowed.sum(axis=0) + exempt_per_digit
        feedback = per_digit.sum()
        replay = anchor_per_feedback * feedback
        digit_totals = per_digit + replay / NUM_CLASSES + fixed
        overall = feedback + replay + fixed.sum()
        digit_cap = np.ceil(share * digit_totals - 1e-9).astype(np.int64)
        new = np.minimum(allowed, digit_cap[None, :])
        overall_cap = math.ceil(share * overall - 1e-9)
        for row in range(len(ids)):
            if new[row].sum() > overall_cap:
                new[row] = _shrink(new[row], overall_cap)
        if np.array_equal(new, allowed):
            break
        allowed = new
    rng = np.random.default_rng(seed)
    keep = exempt.copy()
    dropped = {}
    for row, account in enumerate(ids):
        for digit in range(NUM_CLASSES):
            members = np.flatnonzero((accounts == account) & (labels == digit) & ~exempt)
            keep[rng.permutation(members)[: allowed[row, digit]]] = True
        dropped[int(account)] = int(counts[row].sum() - allowed[row].sum())
    return keep, dropped


def _shrink(counts, total):
    """Scale per-digit counts down to ``total`` in proportion (largest remainders)."""
    exact = counts * (total / counts.sum())
    out = np.floor(exact).astype(np.int64)
    for i in np.argsort(-(exact - out))[: total - out.sum()]:
        out[i] += 1
    return out
