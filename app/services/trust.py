"""Whose feedback a retrain may learn from: trust per account, probation, per-account caps.

The scoring itself is ``app/ml/trust.py`` (numpy); this module reads the feedback rows,
runs the live model over their stored images, writes each row's status with the numbers
behind it, and picks the samples a retrain uses. Rows an admin reviewed (``reviewed_by``
set) are never changed here; admin-verified labels (reviewed and accepted, or given by an
admin) are evidence, are exempt from probation and caps, and are never judged.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from datetime import timedelta

import numpy as np
from flask import current_app
from sqlalchemy import func

from app.entities import Feedback, StoredImage, User, utcnow
from app.extensions import db

log = logging.getLogger(__name__)

QUARANTINED_REASON = "trust_outlier"
RELEASED_REASON = "trust_released"
DELETED_ACCOUNT = -1


@dataclass
class FeedbackSet:
    """Feedback rows that are not rejected, with their images preprocessed today."""

    ids: np.ndarray
    accounts: np.ndarray  # user id, DELETED_ACCOUNT for a deleted account
    labels: np.ndarray
    status: np.ndarray
    reviewed: np.ndarray  # an admin reviewed the row: the rules leave it alone
    trusted: np.ndarray  # admin-verified label
    x: np.ndarray
    usernames: dict = field(default_factory=dict)
    account_created: dict = field(default_factory=dict)
    skipped: int = 0
    inactive: dict = field(default_factory=dict)  # {"accounts", "labels"} of deactivated accounts, left out

    def __len__(self):
        return len(self.ids)


def load_feedback():
    """Every accepted or quarantined feedback row of an active (or deleted) account whose
    stored image still preprocesses."""
    from app.ml.preprocessing import ImageRejected, preprocess

    labeller = db.aliased(User)
    rows = db.session.execute(
        db.select(Feedback.id, Feedback.user_id, Feedback.label, Feedback.status, Feedback.reviewed_by,
                  labeller.role, labeller.username, labeller.created_at, StoredImage.data)
        .join(StoredImage, Feedback.image_sha256 == StoredImage.sha256)
        .outerjoin(labeller, Feedback.user_id == labeller.id)
        .where(Feedback.status != "rejected")
        # A deactivated account's labels are neither trained on nor evidence, until it is active again.
        .where(Feedback.user_id.is_(None) | labeller.active.is_(True))
        .order_by(Feedback.id)
    ).all()
    inactive = db.session.execute(
        db.select(func.count(func.distinct(Feedback.user_id)).label("accounts"), func.count().label("labels"))
        .join(User, Feedback.user_id == User.id).where(Feedback.status != "rejected", User.active.is_(False))
    ).one()._asdict()
    max_pixels = current_app.config["MAX_IMAGE_PIXELS"]
    kept, xs, skipped = [], [], 0
    usernames, created = {}, {}
    for row in rows:
        try:
            xs.append(preprocess(row.data, max_pixels=max_pixels))
        except ImageRejected:  # preprocessing changed since upload: leave it out, say so
            skipped += 1
            continue
        kept.append(row)
        if row.user_id is not None:
            usernames[row.user_id] = row.username
            created[row.user_id] = row.created_at
    column = lambda f, dtype=None: np.array([f(r) for r in kept], dtype=dtype)  # noqa: E731
    return FeedbackSet(
        ids=column(lambda r: r.id, np.int64),
        accounts=column(lambda r: DELETED_ACCOUNT if r.user_id is None else r.user_id, np.int64),
        labels=column(lambda r: r.label, np.int64),
        status=column(lambda r: r.status, object),
        reviewed=column(lambda r: r.reviewed_by is not None, bool),
        trusted=column(lambda r: (r.reviewed_by is not None and r.status == "accepted") or r.role == "admin", bool),
        x=np.stack(xs) if xs else np.zeros((0, 28, 28), np.float32),
        usernames=usernames, account_created=created, skipped=skipped, inactive=inactive,
    )


# --------------------------------------------------------------------------- trust


def assess(live, *, apply=True):
    """Score every account's stored feedback against the live version ``live`` and, with
    ``apply``, quarantine the rows of outlier accounts and release those no longer outliers:
    what a retrain does first, and ``flask feedback assess`` at any time.

    Returns ``(feedback, assessment, changes)`` where changes counts rows per new status.
    """
    import keras

    from app.ml import trust
    from app.ml.network import probabilities_and_embeddings
    from app.services.model_versions import keras_path, start_tensorflow

    start_tensorflow()
    feedback = load_feedback()
    rules = trust.TrustRules.from_config(current_app.config)
    if len(feedback):
        model = keras.models.load_model(keras_path(live), compile=False)
        probs, embeddings = probabilities_and_embeddings(model, feedback.x)
    else:
        probs, embeddings = np.zeros((0, 10)), np.zeros((0, 1))
    result = trust.assess(feedback.labels, feedback.accounts, probs, embeddings, feedback.trusted, rules)
    changes = _apply(feedback, result) if apply else {"quarantined": 0, "released": 0}
    return feedback, result, changes


def _apply(feedback, result):
    from app.ml.trust import sample_detail

    outlier = np.array([result.accounts[int(a)].outlier if int(a) in result.accounts else False
                        for a in feedback.accounts], dtype=bool)
    free = ~feedback.reviewed & ~feedback.trusted  # an admin's word stands
    quarantine = free & outlier & (feedback.status == "accepted")
    release = free & ~outlier & (feedback.status == "quarantined")
    changing = np.flatnonzero(quarantine | release)
    rows = {}
    for start in range(0, len(changing), 500):
        ids = [int(i) for i in feedback.ids[changing[start:start + 500]]]
        rows.update({row.id: row for row in db.session.execute(db.select(Feedback).where(Feedback.id.in_(ids))).scalars()})
    changes = {"quarantined": 0, "released": 0}
    now = utcnow().isoformat()
    for i in changing:
        row = rows[int(feedback.ids[i])]
        if quarantine[i]:
            row.status, row.status_reason = "quarantined", QUARANTINED_REASON
            changes["quarantined"] += 1
        elif row.status_reason == QUARANTINED_REASON:  # only what the rules held, they release
            row.status, row.status_reason = "accepted", RELEASED_REASON
            changes["released"] += 1
        else:
            continue
        account = result.accounts[int(feedback.accounts[i])]
        row.status_detail = {"account": account.as_dict(), "label": sample_detail(result, i), "assessed_at": now}
        feedback.status[i] = row.status
    db.session.commit()
    if changes["quarantined"] or changes["released"]:
        log.warning("trust rules: %d feedback rows quarantined, %d released", changes["quarantined"], changes["released"])
    return changes


# --------------------------------------------------------------------------- selection


def on_probation(feedback: FeedbackSet):
    """Per row: its account is too new and has given too few labels to count yet."""
    config = current_app.config
    now = utcnow()
    min_age = timedelta(hours=config["TRUST_PROBATION_HOURS"])
    min_labels = config["TRUST_PROBATION_LABELS"]
    ids, counts = np.unique(feedback.accounts, return_counts=True)
    labels_of = dict(zip(ids.tolist(), counts.tolist()))
    young = {
        account for account in labels_of
        if account in feedback.account_created
        and now - feedback.account_created[account] < min_age and labels_of[account] < min_labels
    }
    return np.array([not t and int(a) in young for a, t in zip(feedback.accounts, feedback.trusted)], dtype=bool)


@dataclass
class Selection:
    index: np.ndarray  # rows of the FeedbackSet a retrain uses
    probation: np.ndarray  # bool per row
    dropped_by_cap: dict  # account -> rows left out by RETRAIN_MAX_ACCOUNT_SHARE


def select_for_training(feedback: FeedbackSet, *, replay_per_feedback, seed=0):
    """Accepted rows, minus accounts on probation, capped so no account supplies more than
    ``RETRAIN_MAX_ACCOUNT_SHARE`` of the training samples (feedback plus
    ``replay_per_feedback`` replay digits per feedback sample), overall or per digit."""
    from app.ml.trust import cap_account_shares

    probation = on_probation(feedback)
    candidates = np.flatnonzero((feedback.status == "accepted") & ~probation)
    keep, dropped = cap_account_shares(
        feedback.accounts[candidates], feedback.labels[candidates], feedback.trusted[candidates],
        current_app.config["RETRAIN_MAX_ACCOUNT_SHARE"], anchor_per_feedback=replay_per_feedback, seed=seed,
    )
    return Selection(index=candidates[keep], probation=probation, dropped_by_cap=dropped)


def account_report(feedback: FeedbackSet, assessment, selection: Selection, per_account_split):
    """``metrics["accounts"]``: per account, what was used, capped, quarantined and why."""
    from app.ml.trust import ADMIN_VOTER

    out = []
    for account in np.unique(feedback.accounts):
        mine = (feedback.accounts == account) & ~feedback.trusted
        if not mine.any():
            continue
        split = per_account_split.get(str(int(account)), {"train": 0, "holdout": 0})
        trust = assessment.accounts.get(int(account)) if assessment else None
        out.append({
            "user_id": None if account == DELETED_ACCOUNT else int(account),
            "username": feedback.usernames.get(int(account)),
            "labels": int(mine.sum()),
            "used": split["train"],
            "gate_samples": split["holdout"],
            "capped": selection.dropped_by_cap.get(int(account), 0),
            "quarantined": int(np.sum(mine & (feedback.status == "quarantined"))),
            "on_probation": int(np.sum(mine & selection.probation)),
            "trust": trust.as_dict() if trust else None,
        })
    verified = per_account_split.get(str(ADMIN_VOTER))
    if verified:
        out.append({"user_id": None, "username": "(admin-verified labels)", "labels": int(feedback.trusted.sum()),
                    "used": verified["train"], "gate_samples": verified["holdout"], "capped": 0,
                    "quarantined": 0, "on_probation": 0, "trust": None})
    return out
