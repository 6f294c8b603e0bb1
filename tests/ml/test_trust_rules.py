"""Trust per account, per-account caps and the per-digit gate, on synthetic evidence.

Embeddings are ten well-separated clusters (one per digit) with a little noise; the
"model" is a probability table. That is exactly the information the rules see, so each
test states the evidence and the verdict it must produce.
"""

import math

import numpy as np
import pytest

from app.ml import gate
from app.ml.trust import ADMIN_VOTES, TrustRules, assess, cap_account_shares, peer_votes

RULES = TrustRules()


class World:
    """Digit clusters in a 32-d embedding, and a model that is right and confident unless told."""

    def __init__(self, seed=0):
        self.rng = np.random.default_rng(seed)
        self.centres = self.rng.normal(size=(10, 32))
        self.labels, self.accounts, self.truth, self.trusted = [], [], [], []
        self.wrong_model = {}  # true digit -> what the model confidently says instead

    def add(self, account, digits, label_as=None, trusted=False):
        for digit in digits:
            self.truth.append(digit)
            self.labels.append(digit if label_as is None else label_as(digit))
            self.accounts.append(account)
            self.trusted.append(trusted)

    def honest(self, account, n=30):
        self.add(account, [i % 10 for i in range(n)])

    def arrays(self):
        truth = np.array(self.truth)
        emb = self.centres[truth] + 0.05 * self.rng.normal(size=(len(truth), 32))
        said = np.array([self.wrong_model.get(d, d) for d in truth])
        probs = np.full((len(truth), 10), 0.1 / 9)
        probs[np.arange(len(truth)), said] = 0.9
        return np.array(self.labels), np.array(self.accounts), probs, emb, np.array(self.trusted)

    def assess(self, rules=RULES):
        return assess(*self.arrays(), rules)


def test_an_account_mislabelling_one_digit_is_an_outlier_and_honest_ones_are_not():
    world = World()
    for account in (1, 2, 3, 4):
        world.honest(account)
    world.add(9, [7] * 40, label_as=lambda d: 1)
    result = world.assess()
    attacker = result.accounts[9]
    assert attacker.outlier and attacker.judged
    assert attacker.unsupported == 40 and attacker.unsupported_rate == 1.0
    assert attacker.model_confident_disagreements == 40
    assert attacker.threshold == pytest.approx(max(0.0, 0.0 + RULES.outlier_mads * RULES.min_spread))
    assert attacker.others_median_rate == 0.0
    for account in (1, 2, 3, 4):
        honest = result.accounts[account]
        assert not honest.outlier and honest.unsupported == 0
        assert honest.peer_checked == 30 and honest.peer_agreements == 30  # peers vote for their labels


def test_honest_users_correcting_a_confidently_wrong_model_back_each_other():
    world = World()
    world.wrong_model = {6: 8}  # the model says 8 for every 6, confidently
    for account in (1, 2, 3, 4, 5):
        world.honest(account)
    world.add(9, [3] * 30, label_as=lambda d: 5)
    result = world.assess()
    for account in (1, 2, 3, 4, 5):
        honest = result.accounts[account]
        assert honest.model_confident_disagreements == 3  # their 6s
        assert honest.unsupported == 0 and not honest.outlier  # 4 other accounts back each 6
    assert result.accounts[9].outlier


def test_poison_spread_over_three_accounts_is_still_outvoted():
    world = World()
    for account in (1, 2, 3, 4, 5):
        world.honest(account)
    for attacker in (7, 8, 9):
        world.add(attacker, [7] * 25, label_as=lambda d: 1)
    result = world.assess()
    for attacker in (7, 8, 9):
        # Two other attackers back each label (2 votes); the confident model alone weighs 2.
        assert result.accounts[attacker].unsupported == 25 and result.accounts[attacker].outlier
    assert not any(result.accounts[a].outlier for a in (1, 2, 3, 4, 5))


def test_half_right_half_wrong_is_caught_by_its_rate():
    world = World()
    for account in (1, 2, 3, 4):
        world.honest(account)
    world.add(9, [7] * 20, label_as=lambda d: 1)
    world.add(9, [2, 3, 4, 5, 6] * 4)
    attacker = world.assess().accounts[9]
    assert attacker.unsupported == 20 and attacker.unsupported_rate == 0.5 and attacker.outlier


def test_peers_agreeing_against_a_label_count_even_where_the_model_is_unsure():
    world = World()
    for account in (1, 2, 3):
        world.honest(account)
    world.add(9, [4] * 30, label_as=lambda d: 9)
    labels, accounts, probs, emb, trusted = world.arrays()
    probs[:] = 0.1  # a model with no opinion at all
    result = assess(labels, accounts, probs, emb, trusted, RULES)
    assert result.accounts[9].model_confident_disagreements == 0
    assert result.accounts[9].unsupported == 30 and result.accounts[9].outlier
    assert not any(result.accounts[a].outlier for a in (1, 2, 3))


def test_no_outlier_without_other_accounts_or_enough_labels():
    alone = World()
    alone.add(9, [7] * 40, label_as=lambda d: 1)
    verdict = alone.assess().accounts[9]
    assert verdict.unsupported == 40 and not verdict.judged and not verdict.outlier  # nothing to compare with
    few = World()
    for account in (1, 2, 3):
        few.honest(account)
    few.add(9, [7] * (RULES.min_labels - 1), label_as=lambda d: 1)
    verdict = few.assess().accounts[9]
    assert not verdict.judged and not verdict.outlier


def test_the_outlier_rule_is_relative_to_the_other_accounts():
    world = World()
    for account in (1, 2, 3, 4):
        world.honest(account)
    world.add(9, [7] * 5, label_as=lambda d: 1)  # 5 of 35: 14 %
    world.add(9, list(range(10)) * 3)
    assert world.assess().accounts[9].outlier
    strict = TrustRules(min_rate=0.2)  # ... but under an absolute floor of 20 % it is not
    assert not world.assess(strict).accounts[9].outlier


def test_admin_verified_labels_vote_heavily_and_are_never_judged():
    world = World()
    world.honest(1)
    world.honest(2)
    world.add(50, [7] * 20, trusted=True)
    labels, accounts, probs, emb, trusted = world.arrays()
    result = assess(labels, accounts, probs, emb, trusted, RULES)
    assert 50 not in result.accounts
    seven = next(i for i, (lab, acc) in enumerate(zip(labels, accounts)) if lab == 7 and acc == 1)
    assert result.votes[seven, 7] == 1 + ADMIN_VOTES  # account 2 and the admin-verified labels


def test_peer_votes_one_per_other_account_and_only_when_close():
    emb = np.array([[1.0, 0], [1.0, 0.01], [1.0, 0.02], [1.0, 0.03], [0, 1.0]])
    voters = np.array([1, 2, 2, 2, 3])
    labels = np.array([4, 5, 5, 6, 9])
    votes = peer_votes(emb, voters, labels, similarity=0.95)
    assert votes[0].tolist() == [0, 0, 0, 0, 0, 1, 0, 0, 0, 0]  # account 2 votes once, with its nearest (5)
    assert votes[4].sum() == 0  # nobody close to sample 4
    assert votes[1, 4] == 1 and votes[1].sum() == 1  # own account never votes


# --------------------------------------------------------------------------- caps


def check_caps(accounts, labels, exempt, keep, share, per_feedback=0.0, anchor=None):
    anchor = np.zeros(10) if anchor is None else np.asarray(anchor, float)
    kept_labels = labels[keep]
    feedback = keep.sum()
    per_digit = np.bincount(kept_labels, minlength=10) + per_feedback * feedback / 10 + anchor
    overall = feedback * (1 + per_feedback) + anchor.sum()
    for account in np.unique(accounts[~exempt]):
        mine = keep & (accounts == account) & ~exempt
        assert mine.sum() <= math.ceil(share * overall - 1e-9)
        assert np.all(np.bincount(labels[mine], minlength=10) <= np.ceil(share * per_digit - 1e-9))
    assert keep[exempt].all()


def test_caps_cut_a_flooding_account_overall_and_per_digit():
    accounts = np.array([1] * 300 + [2] * 100 + [3] * 100 + [4] * 100)
    labels = np.array([1] * 300 + [i % 10 for i in range(300)])
    exempt = np.zeros(len(labels), bool)
    keep, dropped = cap_account_shares(accounts, labels, exempt, 0.35, anchor_per_feedback=2.0)
    check_caps(accounts, labels, exempt, keep, 0.35, 2.0)
    assert dropped[1] > 200 and dropped[2] == dropped[3] == dropped[4] == 0
    assert keep[accounts != 1].all()


def test_caps_leave_a_sole_evenly_spread_labeller_alone_and_cut_a_skewed_one():
    labels = np.array([i % 10 for i in range(200)])
    keep, dropped = cap_account_shares(np.ones(200), labels, np.zeros(200, bool), 0.35, anchor_per_feedback=2.0)
    assert keep.all() and dropped == {1: 0}
    skewed = np.array([7] * 100 + [i % 10 for i in range(100)])
    keep, dropped = cap_account_shares(np.ones(200), skewed, np.zeros(200, bool), 0.35, anchor_per_feedback=2.0)
    check_caps(np.ones(200), skewed, np.zeros(200, bool), keep, 0.35, 2.0)
    assert 0 < dropped[1] and np.bincount(skewed[keep], minlength=10)[7] < 110


def test_admin_verified_labels_are_exempt_from_caps():
    accounts = np.array([1] * 100 + [2] * 30)
    labels = np.array([3] * 100 + [i % 10 for i in range(30)])
    exempt = np.array([True] * 100 + [False] * 30)
    keep, dropped = cap_account_shares(accounts, labels, exempt, 0.2, anchor_per_feedback=2.0)
    assert keep[:100].all() and 1 not in dropped
    check_caps(accounts, labels, exempt, keep, 0.2, 2.0)


@pytest.mark.parametrize("seed", range(4))
def test_caps_hold_for_random_populations(seed):
    rng = np.random.default_rng(seed)
    n = int(rng.integers(50, 400))
    accounts = rng.integers(1, int(rng.integers(2, 8)), n)
    labels = rng.integers(0, 10, n)
    exempt = rng.random(n) < 0.1
    share = float(rng.uniform(0.2, 0.6))
    anchor = rng.integers(0, 30, 10)
    keep, dropped = cap_account_shares(accounts, labels, exempt, share, anchor_per_digit=anchor, seed=seed)
    check_caps(accounts, labels, exempt, keep, share, anchor=anchor)
    assert sum(dropped.values()) == n - keep.sum()


# --------------------------------------------------------------------------- per-digit gate


def test_per_digit_gate_refuses_a_candidate_that_forgot_one_digit():
    y = np.repeat(np.arange(10), 20)
    live = y.copy()
    live[:2] = 5  # live gets 0 wrong twice: 90 %
    candidate = y.copy()
    candidate[y == 7] = 1  # poisoned: every 7 is a 1
    candidate[:2] = 0  # ... and better on the 0s
    rows = gate.per_digit(y, live, candidate, 2.0)
    assert [r["digit"] for r in rows] == list(range(10))
    seven = rows[7]
    assert seven == {"digit": 7, "live": 1.0, "candidate": 0.0, "drop_points": 100.0, "passed": False, "samples": 20}
    assert rows[0]["drop_points"] == -10.0 and rows[0]["passed"]
    overall = {"feedback_holdout_accuracy": 0.9, "replay_holdout_accuracy": 0.99}
    better = {"feedback_holdout_accuracy": 0.95, "replay_holdout_accuracy": 0.99}
    decision = gate.decide(overall, better, 0.5, rows)
    assert not decision.passed and any(r.startswith("digit 7:") for r in decision.reasons)
    assert gate.decide(overall, better, 0.5, gate.per_digit(y, live, live, 2.0)).passed


def test_per_digit_gate_allows_the_configured_loss_and_skips_absent_digits():
    y = np.array([3] * 50 + [4] * 50)
    live = y.copy()
    candidate = y.copy()
    candidate[0] = 0  # one 3 in 50 lost: 2 points
    rows = gate.per_digit(y, live, candidate, 2.0)
    assert rows[3]["drop_points"] == 2.0 and rows[3]["passed"]
    assert not gate.per_digit(y, live, candidate, 1.9)[3]["passed"]
    assert rows[0] == {"digit": 0, "live": None, "candidate": None, "drop_points": 0.0, "passed": True, "samples": 0}
