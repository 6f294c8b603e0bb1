"""Trust rules on stored feedback: quarantine and release, admins' reviews, probation, caps,
and what a retrain job reports about them."""

import io
import json
from datetime import timedelta

import numpy as np
import pytest

from app.entities import Feedback, User, utcnow
from app.extensions import db
from support import mnist_png
from test_retrain import wait_for_job


def labelled_upload(client, headers, image, label):
    response = client.post("/api/v2/feedback", headers=headers,
                           data={"file": (io.BytesIO(mnist_png(image)), "d.png"), "label": str(int(label))})
    assert response.status_code == 201, response.get_json()
    return response.get_json()["id"]


def predict_and_label(client, headers, image, label):
    predicted = client.post("/api/v2/predict", headers=headers, data={"file": (io.BytesIO(mnist_png(image)), "d.png")})
    assert predicted.status_code == 200, predicted.get_json()
    prediction_id = predicted.get_json()["prediction_id"]
    response = client.post("/api/v2/feedback", headers=headers, json={"prediction_id": prediction_id, "label": int(label)})
    assert response.status_code in (200, 201), response.get_json()
    return prediction_id, response.get_json()["id"]


def honest_users(client, auth, replay_digits, users=3, n=25, start=0):
    x, y = replay_digits
    for u in range(users):
        headers = auth.headers(f"honest{u}")
        for i in range(start + u * n, start + (u + 1) * n):
            labelled_upload(client, headers, x[i], y[i])


def rows(app, **filters):
    with app.app_context():
        return {f.id: (f.status, f.status_reason, f.status_detail, f.label)
                for f in db.session.execute(db.select(Feedback).filter_by(**filters)).scalars()}


def user_id(app, name):
    with app.app_context():
        return db.session.execute(db.select(User.id).filter_by(username=name)).scalar_one()


def assess(runner):
    result = runner.invoke(args=["feedback", "assess"])
    assert result.exit_code == 0, result.output
    lines = [json.loads(line) for line in result.output.splitlines()]
    return {line["username"]: line for line in lines[:-1]}, lines[-1]


@pytest.mark.parametrize("app", ["sqlite", "postgres"], indirect=True)
def test_an_attacker_is_quarantined_with_numbers_and_released_once_honest(app, client, auth, runner, replay_digits):
    """The shipped model and three honest accounts against one that calls 7s 1s."""
    x, y = replay_digits
    honest_users(client, auth, replay_digits)
    mallory = auth.headers("mallory")
    sevens = np.flatnonzero(y == 7)[-25:]
    predictions = [predict_and_label(client, mallory, x[i], 1)[0] for i in sevens]
    auth.admin_headers()
    mallory_id, admin_id = user_id(app, "mallory"), user_id(app, "root")
    # An admin already reviewed (and accepted) one of mallory's labels: the rules never touch it.
    with app.app_context():
        reviewed = db.session.execute(db.select(Feedback).filter_by(user_id=mallory_id).order_by(Feedback.id)).scalars().first()
        reviewed.reviewed_by, reviewed.reviewed_at = admin_id, utcnow()
        db.session.commit()
        reviewed_id = reviewed.id

    verdicts, summary = assess(runner)
    attacker = verdicts["mallory"]
    assert attacker["outlier"] and attacker["judged"] and attacker["labels"] == 24  # the reviewed row is trusted
    assert attacker["unsupported_rate"] >= 0.9 and attacker["unsupported_rate"] > attacker["threshold"]
    assert all(not verdicts[f"honest{u}"]["outlier"] for u in range(3))
    assert summary["quarantined"] == 24 and summary["released"] == 0

    held = rows(app, user_id=mallory_id)
    assert held.pop(reviewed_id)[:2] == ("accepted", None)
    assert {status for status, *_ in held.values()} == {"quarantined"}
    status, reason, detail, _ = next(iter(held.values()))
    assert reason == "trust_outlier"
    assert detail["account"]["unsupported_rate"] == attacker["unsupported_rate"]
    assert detail["label"]["model_prediction"] == 7 and detail["label"]["unsupported"] is True
    assert detail["label"]["model_confidence"] >= 0.75
    assert all(status == "accepted" for status, *_ in rows(app, status="accepted").values())
    with app.app_context():
        from app.services.retraining import usable_feedback_count

        assert usable_feedback_count() == 75 + 1

    # Mallory corrects every label: the next assessment releases the rows, with the numbers.
    # The one an admin reviewed is final for its owner (409) and keeps the admin's decision.
    answers = [client.post("/api/v2/feedback", headers=mallory, json={"prediction_id": prediction_id, "label": 7})
               for prediction_id in predictions]
    assert [a.status_code for a in answers] == [409] + [201] * 24
    verdicts, summary = assess(runner)
    assert not verdicts["mallory"]["outlier"] and verdicts["mallory"]["unsupported"] == 0
    assert summary == {**summary, "quarantined": 0, "released": 24}
    released = rows(app, user_id=mallory_id)
    assert released.pop(reviewed_id)[:2] == ("accepted", None)
    assert {(status, reason) for status, reason, *_ in released.values()} == {("accepted", "trust_released")}


def test_rules_never_change_rows_an_admin_reviewed(app, client, auth, runner, replay_digits):
    x, y = replay_digits
    honest_users(client, auth, replay_digits)
    mallory = auth.headers("mallory")
    sevens = np.flatnonzero(y == 7)[-25:]
    for i in sevens:
        labelled_upload(client, mallory, x[i], 1)
    auth.admin_headers()
    mallory_id, admin_id = user_id(app, "mallory"), user_id(app, "root")
    with app.app_context():
        ids = db.session.execute(db.select(Feedback.id).filter_by(user_id=mallory_id).order_by(Feedback.id)).scalars().all()
        # An admin confirmed the rules' quarantine of one row and accepted another.
        by_hand = db.session.get(Feedback, ids[0])
        by_hand.status, by_hand.status_reason, by_hand.reviewed_by = "quarantined", "trust_outlier", admin_id
        accepted = db.session.get(Feedback, ids[1])
        accepted.reviewed_by = admin_id
        db.session.commit()
    assess(runner)
    # Now the account looks honest to the rules: releases must skip the row the admin held.
    with app.app_context():
        for f in db.session.execute(db.select(Feedback).filter_by(user_id=mallory_id)).scalars():
            f.label = 7
        db.session.commit()
    _, summary = assess(runner)
    assert summary["released"] == 23
    after = rows(app, user_id=mallory_id)
    assert after[ids[0]][:2] == ("quarantined", "trust_outlier")
    assert after[ids[1]][:2] == ("accepted", None)


def test_dry_run_changes_nothing(app, client, auth, runner, replay_digits):
    x, y = replay_digits
    honest_users(client, auth, replay_digits)
    mallory = auth.headers("mallory")
    for i in np.flatnonzero(y == 7)[-25:]:
        labelled_upload(client, mallory, x[i], 1)
    result = runner.invoke(args=["feedback", "assess", "--dry-run"])
    assert result.exit_code == 0, result.output
    assert json.loads(result.output.splitlines()[-1])["dry_run"] is True
    assert {status for status, *_ in rows(app).values()} == {"accepted"}


def test_probation_counts_new_accounts_after_an_age_or_enough_labels(make_app, replay_digits):
    from app.services import trust
    from support import AuthActions

    app = make_app(TRUST_PROBATION_LABELS=10, TRUST_PROBATION_HOURS=24)
    client = app.test_client()
    auth = AuthActions(client, app)
    x, y = replay_digits
    given = {}
    for name, n in (("newbie", 5), ("busy", 12), ("veteran", 5)):
        headers = auth.headers(name)
        given[name] = [labelled_upload(client, headers, x[i], y[i]) for i in range(len(given) * 20, len(given) * 20 + n)]
    admin = auth.admin_headers()
    given["root"] = [labelled_upload(client, admin, x[i], y[i]) for i in range(100, 103)]
    with app.app_context():
        veteran = db.session.execute(db.select(User).filter_by(username="veteran")).scalar_one()
        veteran.created_at = utcnow() - timedelta(hours=25)
        db.session.commit()
        feedback = trust.load_feedback()
        selection = trust.select_for_training(feedback, replay_per_feedback=2.0)
        used = set(feedback.ids[selection.index].tolist())
        probation = set(feedback.ids[selection.probation].tolist())
    assert probation == set(given["newbie"])
    assert used == set(given["busy"]) | set(given["veteran"]) | set(given["root"])


def test_caps_cut_a_flooding_account_and_spare_admin_labels(make_app, replay_digits):
    from app.services import trust
    from support import AuthActions

    app = make_app(RETRAIN_MAX_ACCOUNT_SHARE=0.35)
    client = app.test_client()
    auth = AuthActions(client, app)
    x, y = replay_digits
    threes = np.flatnonzero(y == 3)
    flooder = auth.headers("flooder")
    for i in threes[:40]:
        labelled_upload(client, flooder, x[i], 3)
    honest_users(client, auth, replay_digits, users=2, n=20)
    admin = auth.admin_headers()
    for i in threes[40:70]:
        labelled_upload(client, admin, x[i], 3)
    with app.app_context():
        feedback = trust.load_feedback()
        selection = trust.select_for_training(feedback, replay_per_feedback=2.0)
        kept = np.zeros(len(feedback), bool)
        kept[selection.index] = True
    flood = feedback.accounts == user_id(app, "flooder")
    honest = np.isin(feedback.accounts, [user_id(app, "honest0"), user_id(app, "honest1")])
    assert kept[feedback.trusted].all() and feedback.trusted.sum() == 30  # admin labels: exempt
    assert kept[honest].all()
    assert selection.dropped_by_cap[user_id(app, "flooder")] == 40 - kept[flood].sum() > 0
    # What stayed obeys the cap: the flooder's 3s are at most 35 % of all 3s trained on.
    threes_trained = np.sum(kept & (feedback.labels == 3)) + 2.0 * kept.sum() / 10
    assert kept[flood].sum() <= np.ceil(0.35 * threes_trained)


def test_a_job_reports_accounts_and_the_per_digit_gate(make_app, tiny_model_dir, replay_digits):
    """Tiny model: the numbers are what they are; the shape and the bookkeeping must hold."""
    from support import AuthActions

    app = make_app(MODEL_DIR=str(tiny_model_dir), RETRAIN_EPOCHS=1, RETRAIN_MAX_REGRESSION=100.0,
                   RETRAIN_MAX_CLASS_REGRESSION=-1.0,  # every digit must gain a point: impossible for 0
                   RETRAIN_MAX_ACCOUNT_SHARE=0.35, TRUST_MIN_RATE=2.0)  # no quarantine: caps alone
    client = app.test_client()
    auth = AuthActions(client, app)
    x, y = replay_digits
    alice, bob = auth.headers("alice"), auth.headers("bob")
    for i in [i for i in range(60) if y[i] != 0][:30]:
        labelled_upload(client, alice, x[i], y[i])
    for i in np.flatnonzero(y == 3)[:30]:
        labelled_upload(client, bob, x[i], 3)
    admin = auth.admin_headers()
    job_id = client.post("/admin/retrain", headers=admin, json={}).get_json()["job_id"]
    job = wait_for_job(client, admin, job_id)
    assert job["status"] == "rejected", job
    gate = job["metrics"]["gate"]
    assert gate["max_class_regression_points"] == -1.0 and gate["passed"] is False
    assert [d["digit"] for d in gate["per_digit"]] == list(range(10))
    zero = gate["per_digit"][0]
    assert set(zero) == {"digit", "live", "candidate", "drop_points", "passed", "samples"}
    assert zero["live"] == 1.0 and zero["passed"] is False and zero["samples"] > 0  # the always-0 live model
    assert any(reason.startswith("digit 0:") for reason in gate["reasons"])

    accounts = {a["username"]: a for a in job["metrics"]["accounts"]}
    assert set(accounts) == {"alice", "bob"}
    for account in accounts.values():
        assert {"user_id", "username", "used", "capped", "quarantined", "trust"} <= set(account)
        assert account["quarantined"] == 0 and account["trust"]["labels"] == 30
    assert accounts["bob"]["capped"] > 0 and accounts["alice"]["capped"] == 0
    samples = job["metrics"]["samples"]
    assert sum(a["used"] for a in accounts.values()) == samples["feedback_train"]
    assert sum(a["gate_samples"] for a in accounts.values()) == samples["feedback_holdout"]
    assert accounts["bob"]["used"] + accounts["bob"]["gate_samples"] == 30 - accounts["bob"]["capped"]


def test_a_label_an_admin_reviewed_is_final_for_its_owner(app, client, auth, replay_digits):
    """A review vouches for one label: the owner may not turn it into another that skips every rule."""
    x, y = replay_digits
    user = auth.headers("alice")
    auth.admin_headers()
    prediction_id, row_id = predict_and_label(client, user, x[0], y[0])
    with app.app_context():
        row = db.session.get(Feedback, row_id)
        row.reviewed_by, row.reviewed_at = user_id(app, "root"), utcnow()
        db.session.commit()
    wrong = (int(y[0]) + 1) % 10
    answer = client.post("/api/v2/feedback", headers=user, json={"prediction_id": prediction_id, "label": wrong})
    assert answer.status_code == 409 and answer.get_json()["error"]["code"] == "feedback_reviewed"
    assert rows(app)[row_id][:2] == ("accepted", None) and rows(app)[row_id][3] == int(y[0])
