"""Account administration: the admin list and its counts, deactivation and its refusals,
tokens refused at once and for good, the CLI, and a deactivated account's labels left out
of training."""

import io
import math
import time
from datetime import datetime, timezone

import pytest
from sqlalchemy import event

from app.entities import Feedback, StoredImage, User
from app.extensions import db
from support import mnist_png
from test_retrain import wait_for_job


def user_id(app, name):
    with app.app_context():
        return db.session.execute(db.select(User.id).filter_by(username=name)).scalar_one()


def add_feedback(app, name, statuses):
    """Feedback rows of ``name`` with these statuses, written straight into the database."""
    with app.app_context():
        owner = db.session.execute(db.select(User.id).filter_by(username=name)).scalar_one()
        for i, status in enumerate(statuses):
            sha = f"{name}-{i}".ljust(64, "0")[:64]
            db.session.add(StoredImage(sha256=sha, content_type="image/png", size=1, data=b"x"))
            db.session.flush()  # no relationship orders the two inserts
            db.session.add(Feedback(user_id=owner, image_sha256=sha, label=i % 10, status=status))
        db.session.commit()


def bearer(token):
    return {"Authorization": f"Bearer {token}"}


def tokens(client, name, password="correct-horse-1"):
    body = client.post("/auth/login", json={"username": name, "password": password}).get_json()
    return body["access_token"], body["refresh_token"]


def deactivate(client, admin, account_id, active=False):
    return client.patch(f"/admin/users/{account_id}", headers=admin, json={"active": active})


# --- the list ---------------------------------------------------------------------------

@pytest.mark.parametrize("app", ["sqlite", "postgres"], indirect=True)
def test_the_list_filters_pages_and_counts_feedback_per_status(app, client, auth):
    admin = auth.admin_headers()
    for name in ("alice", "bob", "carol"):
        auth.register(name, "correct-horse-1", email=f"{name}@example.com")
    add_feedback(app, "alice", ["accepted", "accepted", "quarantined", "rejected"])
    add_feedback(app, "bob", ["quarantined"])
    assert deactivate(client, admin, user_id(app, "bob")).status_code == 200

    everyone = client.get("/admin/users?per_page=100", headers=admin).get_json()
    assert everyone["total"] == 4 and everyone["pages"] == 1
    by_name = {item["username"]: item for item in everyone["items"]}
    assert [item["username"] for item in everyone["items"]] == ["root", "alice", "bob", "carol"]  # oldest first
    assert by_name["alice"]["feedback"] == {"accepted": 2, "quarantined": 1, "rejected": 1}
    assert by_name["bob"]["feedback"] == {"accepted": 0, "quarantined": 1, "rejected": 0}
    assert by_name["carol"]["feedback"] == {"accepted": 0, "quarantined": 0, "rejected": 0}
    assert by_name["alice"]["email"] == "alice@example.com" and by_name["alice"]["role"] == "user"
    assert by_name["bob"]["active"] is False and by_name["alice"]["active"] is True
    assert by_name["alice"]["created_at"].endswith("Z") or by_name["alice"]["created_at"].endswith("+00:00")

    def names(query):
        response = client.get(f"/admin/users?{query}", headers=admin)
        assert response.status_code == 200, response.get_json()
        return [item["username"] for item in response.get_json()["items"]]

    assert names("active=false") == ["bob"]
    assert names("active=true") == ["root", "alice", "carol"]
    assert names("role=admin") == ["root"]
    assert names("role=user&active=true") == ["alice", "carol"]
    page = client.get("/admin/users?per_page=3&page=2", headers=admin).get_json()
    assert [i["username"] for i in page["items"]] == ["carol"] and (page["total"], page["pages"]) == (4, 2)
    for bad in ("role=root", "active=maybe", "page=0", "per_page=101"):
        response = client.get(f"/admin/users?{bad}", headers=admin)
        assert response.status_code == 422 and response.get_json()["error"]["code"] == "validation_error", bad
    user = auth.headers("alice", "correct-horse-1")
    assert client.get("/admin/users", headers=user).status_code == 403


def test_the_counts_of_a_page_take_one_query_however_many_accounts(app, client, auth):
    """Statements counted, not timed: a page of 2 accounts and one of 12 cost the same."""
    auth.admin_headers()
    for i in range(11):
        auth.register(f"user{i}", "correct-horse-1")
        add_feedback(app, f"user{i}", ["accepted", "rejected"])

    from app.services import account_admin

    def statements(per_page):
        seen = []
        with app.app_context():
            listener = lambda *args: seen.append(args[2])  # noqa: E731  (the statement's text)
            event.listen(db.engine, "before_cursor_execute", listener)
            try:
                body = account_admin.list_accounts(1, per_page)
            finally:
                event.remove(db.engine, "before_cursor_execute", listener)
        assert len(body["items"]) == per_page
        return len(seen)

    assert statements(2) == statements(12) == 3  # the total, the page, the counts


# --- deactivation -----------------------------------------------------------------------

@pytest.mark.parametrize("app", ["sqlite", "postgres"], indirect=True)
def test_a_deactivated_accounts_tokens_are_refused_at_once_and_for_good(app, client, auth, replay_digits):
    admin = auth.admin_headers()
    auth.register("mallory", "correct-horse-1")
    access, refresh = tokens(client, "mallory")
    png = mnist_png(replay_digits[0][0])
    predicted = client.post("/api/v2/predict", headers=bearer(access), data={"file": (io.BytesIO(png), "d.png")})
    assert predicted.status_code == 200
    mallory = user_id(app, "mallory")

    response = deactivate(client, admin, mallory)
    assert response.status_code == 200
    body = response.get_json()
    assert body["id"] == mallory and body["username"] == "mallory" and body["active"] is False
    assert set(body["feedback"]) == {"accepted", "quarantined", "rejected"}

    refused = {
        "v2 predict": client.post("/api/v2/predict", headers=bearer(access), data={"file": (io.BytesIO(png), "d.png")}),
        "feedback": client.post("/api/v2/feedback", headers=bearer(access),
                                json={"prediction_id": predicted.get_json()["prediction_id"], "label": 3}),
        "v1 predict": client.post("/api/v1/predict", headers=bearer(access), data={"file": (io.BytesIO(png), "d.png")}),
        "me": client.get("/auth/me", headers=bearer(access)),
        "refresh": client.post("/auth/refresh", headers=bearer(refresh)),
        "logout": client.post("/auth/logout", headers=bearer(access)),
    }
    assert {name: (r.status_code, r.get_json()["error"]["code"]) for name, r in refused.items()} == {
        name: (401, "account_inactive") for name in refused}
    login = client.post("/auth/login", json={"username": "mallory", "password": "correct-horse-1"})
    assert login.status_code == 401 and login.get_json()["error"]["code"] == "invalid_credentials"
    with app.app_context():  # nothing was written for the refused requests
        assert db.session.scalar(db.select(db.func.count(Feedback.id))) == 0

    again = deactivate(client, admin, mallory)  # idempotent
    assert again.status_code == 200 and again.get_json() == body
    assert deactivate(client, admin, mallory, active=True).get_json()["active"] is True

    # Active again: the tokens issued before the deactivation stay refused (they may be the
    # stolen ones it was stopped for), as revoked; a fresh login's tokens work.
    still_refused = {
        "v2 predict": client.post("/api/v2/predict", headers=bearer(access), data={"file": (io.BytesIO(png), "d.png")}),
        "me": client.get("/auth/me", headers=bearer(access)),
        "refresh": client.post("/auth/refresh", headers=bearer(refresh)),
        "logout": client.post("/auth/logout", headers=bearer(access)),
    }
    assert {name: (r.status_code, r.get_json()["error"]["code"]) for name, r in still_refused.items()} == {
        name: (401, "token_revoked") for name in still_refused}
    fresh_access, fresh_refresh = tokens(client, "mallory")
    assert client.get("/auth/me", headers=bearer(fresh_access)).status_code == 200
    refreshed = client.post("/auth/refresh", headers=bearer(fresh_refresh))
    assert refreshed.status_code == 200
    assert client.get("/auth/me", headers=bearer(refreshed.get_json()["access_token"])).status_code == 200
    assert deactivate(client, admin, mallory, active=True).status_code == 200  # idempotent
    assert client.get("/auth/me", headers=bearer(fresh_access)).status_code == 200  # ... and cuts nothing off


def test_the_cut_off_is_compared_at_whole_seconds_and_refuses_its_own_second():
    """``iat`` is rounded down to the second: a token of the cut-off's second may predate it."""
    from app.security import issued_before_cutoff

    cutoff = datetime(2026, 11, 30, 12, 0, 5, 250000, tzinfo=timezone.utc)
    second = math.floor(cutoff.timestamp())
    assert issued_before_cutoff(second - 1, cutoff)
    assert issued_before_cutoff(second, cutoff)  # issued at 12:00:05.0 to .999: perhaps before it
    assert not issued_before_cutoff(second + 1, cutoff)
    # SQLite gives the timestamp back without its zone; it is UTC all the same
    assert issued_before_cutoff(second, cutoff.replace(tzinfo=None))
    assert not issued_before_cutoff(second + 1, cutoff.replace(tzinfo=None))
    assert not issued_before_cutoff(second + 1, datetime(2026, 11, 30, 12, 0, 5, tzinfo=timezone.utc))
    assert not issued_before_cutoff(0, None)  # never deactivated: no cut-off


def token_second(app, encoded):
    from flask_jwt_extended import decode_token

    with app.app_context():
        return decode_token(encoded)["iat"]


@pytest.mark.parametrize("app", ["sqlite", "postgres"], indirect=True)
def test_a_token_of_the_cut_offs_own_second_is_refused_and_one_of_the_next_second_works(app, client, auth):
    """The cut-off as stored and read back by each database (timestamptz on PostgreSQL)."""
    auth.register("alice", "correct-horse-1")
    access, refresh = tokens(client, "alice")
    issued = token_second(app, access)
    alice = user_id(app, "alice")

    def cut_off_at(unix_time):
        with app.app_context():
            db.session.get(User, alice).tokens_valid_after = datetime.fromtimestamp(unix_time, timezone.utc)
            db.session.commit()

    def me():
        response = client.get("/auth/me", headers=bearer(access))
        return response.status_code, (response.get_json().get("error") or {}).get("code")

    cut_off_at(issued + 0.999999)  # later in the token's own second
    assert me() == (401, "token_revoked")
    cut_off_at(issued)  # at the very start of it: the token may have come after, still refused
    assert me() == (401, "token_revoked")
    assert client.post("/auth/refresh", headers=bearer(refresh)).get_json()["error"]["code"] == "token_revoked"
    cut_off_at(issued - 0.000001)  # the last microsecond of the second before
    assert me() == (200, None)


def test_the_cut_off_is_read_by_the_token_checks_one_statement(app, client, auth):
    """Statements counted: a request with a cut-off to check costs what one without does."""
    auth.register("alice", "correct-horse-1")
    access, _ = tokens(client, "alice")

    def statements_of_me():
        seen = []
        with app.app_context():
            listener = lambda *args: seen.append(args[2])  # noqa: E731  (the statement's text)
            event.listen(db.engine, "before_cursor_execute", listener)
            try:
                assert client.get("/auth/me", headers=bearer(access)).status_code == 200
            finally:
                event.remove(db.engine, "before_cursor_execute", listener)
        return seen

    without = statements_of_me()
    with app.app_context():
        db.session.execute(db.update(User).values(tokens_valid_after=datetime(2026, 1, 1, tzinfo=timezone.utc)))
        db.session.commit()
    with_cutoff = statements_of_me()
    assert len(with_cutoff) == len(without)
    checks = [text for text in with_cutoff if "revoked_tokens" in text]
    assert len(checks) == 1 and "tokens_valid_after" in checks[0]


def test_activating_in_the_deactivations_second_waits_for_the_next_so_a_login_then_works(app, client, auth):
    """A deactivation undone at once: a login right after gets a token that works, its old one does not."""
    from app.security import cutoff_second
    from app.services import account_admin

    auth.register("alice", "correct-horse-1")
    old, _ = tokens(client, "alice")
    alice = user_id(app, "alice")
    with app.app_context():
        account_admin.set_active(alice, False)
        account_admin.set_active(alice, True)
        cutoff = db.session.get(User, alice).tokens_valid_after
        assert cutoff is not None
        assert math.floor(time.time()) > cutoff_second(cutoff)  # activation returned only past its second
    new, _ = tokens(client, "alice")
    assert token_second(app, new) > cutoff_second(cutoff) >= token_second(app, old)
    assert client.get("/auth/me", headers=bearer(new)).status_code == 200
    assert client.get("/auth/me", headers=bearer(old)).get_json()["error"]["code"] == "token_revoked"


def test_a_revoked_token_of_an_active_account_is_still_said_to_be_revoked(app, client, auth):
    auth.register("alice", "correct-horse-1")
    access, _ = tokens(client, "alice")
    assert client.post("/auth/logout", headers=bearer(access)).status_code == 200
    response = client.get("/auth/me", headers=bearer(access))
    assert response.status_code == 401 and response.get_json()["error"]["code"] == "token_revoked"


def test_a_deleted_accounts_tokens_are_refused_as_inactive(app, client, auth):
    auth.register("ghost", "correct-horse-1")
    access, refresh = tokens(client, "ghost")
    with app.app_context():
        db.session.execute(db.delete(User).filter_by(username="ghost"))
        db.session.commit()
    for response in (client.get("/auth/me", headers=bearer(access)), client.post("/auth/refresh", headers=bearer(refresh))):
        assert response.status_code == 401 and response.get_json()["error"]["code"] == "account_inactive"


def test_an_admin_cannot_deactivate_themself_and_another_admin_can(app, client, auth):
    root = auth.admin_headers()
    other = auth.headers("second-admin", "admin-password-2", role="admin")
    root_id, other_id = user_id(app, "root"), user_id(app, "second-admin")
    own = deactivate(client, root, root_id)
    assert own.status_code == 409 and own.get_json()["error"]["code"] == "cannot_deactivate_self"
    assert deactivate(client, root, root_id, active=True).status_code == 200  # a no-op on oneself is fine
    assert deactivate(client, other, root_id).status_code == 200
    # root's token is refused at once, also on the admin endpoints
    refused = client.get("/admin/users", headers=root)
    assert refused.status_code == 401 and refused.get_json()["error"]["code"] == "account_inactive"
    # second-admin is now the last active admin: only it is left, and it cannot deactivate itself
    assert deactivate(client, other, other_id).get_json()["error"]["code"] == "cannot_deactivate_self"


def test_the_last_active_admin_cannot_be_deactivated(app, auth):
    from app.errors import Conflict
    from app.services import account_admin

    auth.admin_headers()
    auth.headers("second-admin", "admin-password-2", role="admin")
    with app.app_context():
        root, second = (db.session.execute(db.select(User).filter_by(username=n)).scalar_one()
                        for n in ("root", "second-admin"))
        account_admin.set_active(second.id, False)
        with pytest.raises(Conflict) as refused:
            account_admin.set_active(root.id, False)
        assert refused.value.code == "last_admin"
        assert db.session.get(User, root.id).active is True
        account_admin.set_active(second.id, True)
        assert account_admin.set_active(root.id, False).active is False  # another admin is active again


def test_bad_requests_change_nothing(app, client, auth):
    admin = auth.admin_headers()
    auth.register("alice", "correct-horse-1")
    alice = user_id(app, "alice")
    for body in ({}, {"active": "false"}, {"active": 0}, {"active": 1}, {"active": None}, {"active": [False]},
                 {"active": False, "role": "admin"}, [False], "false"):
        response = client.patch(f"/admin/users/{alice}", headers=admin, json=body)
        assert response.status_code == 422, (body, response.get_json())
        assert response.get_json()["error"]["code"] == "validation_error"
    form = client.patch(f"/admin/users/{alice}", headers=admin, data={"active": "false"})
    assert form.status_code == 415 and form.get_json()["error"]["code"] == "unsupported_media_type"
    for missing in (999, 2**31 - 1):
        response = deactivate(client, admin, missing)
        assert response.status_code == 404 and response.get_json()["error"]["code"] == "user_not_found"
    for not_an_id in (0, 2**31, "alice"):
        assert deactivate(client, admin, not_an_id).status_code == 404
    with app.app_context():
        assert db.session.get(User, alice).active is True


def test_an_admin_action_is_logged_with_who_did_what_to_whom(app, client, auth, caplog):
    admin = auth.admin_headers()
    auth.register("alice", "correct-horse-1")
    caplog.set_level("INFO", logger="app.services.account_admin")
    deactivate(client, admin, user_id(app, "alice"))
    assert f"account alice (id {user_id(app, 'alice')}) deactivated by admin id {user_id(app, 'root')}" in caplog.text


# --- the command line -------------------------------------------------------------------

def test_cli_deactivates_activates_and_lists_with_the_same_refusals(app, client, auth, runner):
    auth.admin_headers()
    auth.register("alice", "correct-horse-1")
    add_feedback(app, "alice", ["accepted", "quarantined"])
    access, _ = tokens(client, "alice")

    done = runner.invoke(args=["users", "deactivate", "alice"])
    assert done.exit_code == 0 and "deactivated" in done.output, done.output
    assert client.get("/auth/me", headers=bearer(access)).get_json()["error"]["code"] == "account_inactive"
    listed = runner.invoke(args=["users", "list"])
    assert listed.exit_code == 0
    lines = {line.split()[1]: line.split() for line in listed.output.splitlines()}
    assert lines["alice"][2:] == ["user", "INACTIVE", "1/1/0"] and lines["root"][2:] == ["admin", "active", "0/0/0"]
    assert [line.split()[1] for line in runner.invoke(args=["users", "list", "--inactive"]).output.splitlines()] == ["alice"]

    assert runner.invoke(args=["users", "deactivate", "alice"]).exit_code == 0  # idempotent
    assert runner.invoke(args=["users", "activate", "alice"]).exit_code == 0
    assert client.get("/auth/me", headers=bearer(access)).get_json()["error"]["code"] == "token_revoked"
    assert client.get("/auth/me", headers=bearer(tokens(client, "alice")[0])).status_code == 200

    last = runner.invoke(args=["users", "deactivate", "root"])
    assert last.exit_code != 0 and "last_admin" in last.output
    unknown = runner.invoke(args=["users", "activate", "nobody"])
    assert unknown.exit_code != 0 and "user_not_found" in unknown.output
    with app.app_context():
        assert db.session.execute(db.select(User.active).filter_by(username="root")).scalar_one() is True


# --- training ---------------------------------------------------------------------------

def labelled_uploads(client, headers, digits, labels):
    for digit, label in zip(digits, labels):
        response = client.post("/api/v2/feedback", headers=headers,
                               data={"file": (io.BytesIO(mnist_png(digit)), "d.png"), "label": str(int(label))})
        assert response.status_code == 201, response.get_json()


def test_a_deactivated_accounts_labels_are_not_loaded_until_it_is_active_again(app, client, auth, replay_digits):
    from app.services import trust

    x, y = replay_digits
    admin = auth.admin_headers()
    labelled_uploads(client, auth.headers("alice"), x[:5], y[:5])
    labelled_uploads(client, auth.headers("mallory"), x[5:12], [1] * 7)
    mallory = user_id(app, "mallory")
    with app.app_context():
        assert len(trust.load_feedback()) == 12
    deactivate(client, admin, mallory)
    with app.app_context():
        feedback = trust.load_feedback()
        assert len(feedback) == 5 and mallory not in feedback.accounts and mallory not in feedback.usernames
        assert feedback.inactive == {"accounts": 1, "labels": 7}
        assert db.session.scalar(db.select(db.func.count(Feedback.id)).filter_by(user_id=mallory)) == 7  # kept
    deactivate(client, admin, mallory, active=True)
    with app.app_context():
        feedback = trust.load_feedback()
        assert len(feedback) == 12 and feedback.inactive == {"accounts": 0, "labels": 0}


def test_a_retrain_does_not_train_on_a_deactivated_accounts_labels(tiny_app, replay_digits):
    from support import AuthActions

    client = tiny_app.test_client()
    auth = AuthActions(client, tiny_app)
    x, y = replay_digits
    picked = [i for i in range(200) if y[i] != 0]
    labelled_uploads(client, auth.headers("alice"), x[picked[:30]], y[picked[:30]])
    labelled_uploads(client, auth.headers("mallory"), x[picked[30:70]], [(int(v) + 1) % 10 for v in y[picked[30:70]]])
    admin = auth.admin_headers()
    assert deactivate(client, admin, user_id(tiny_app, "mallory")).status_code == 200

    job = client.post("/admin/retrain", headers=admin, json={}).get_json()
    job = wait_for_job(client, admin, job["job_id"])
    assert job["status"] in ("succeeded", "rejected"), job
    metrics = job["metrics"]
    accounts = {a["username"]: a for a in metrics["accounts"]}
    assert set(accounts) == {"alice"}  # mallory is neither trained on nor judged
    samples = metrics["samples"]
    assert samples["feedback_train"] + samples["feedback_holdout"] == 30 - accounts["alice"]["capped"]
    assert metrics["trust"]["inactive_left_out"] == {"accounts": 1, "labels": 40}

    # Only a deactivated account's labels: nothing to train on at all.
    alice = user_id(tiny_app, "alice")
    deactivate(client, admin, alice)
    job = client.post("/admin/retrain", headers=admin, json={"force": True}).get_json()
    job = wait_for_job(client, admin, job["job_id"])
    assert job["status"] == "failed" and "only 0 usable feedback samples" in job["error"], job
