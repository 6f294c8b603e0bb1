"""The admin review queue: access, the two queues' order and paging, each decision and what
retraining then uses, bulk all-or-nothing, the image endpoint, and bad input everywhere.

Queue contents are written straight into the database (the trust rules that quarantine
feedback are another module's; here only their result, the row's status, matters).
"""

import functools
import hashlib
import io
from datetime import timedelta

import numpy as np
import pytest
from PIL import Image
from prometheus_client.parser import text_string_to_metric_families

from app.entities import Feedback, Prediction, StoredImage, User, utcnow
from app.extensions import db
from app.schemas import MAX_ID
from support import SHIPPED_MODELS, mnist_png


@pytest.fixture
def app(request, make_app, tiny_model_dir):
    """The tiny model (fast); ``parametrize("app", ["postgres"], indirect=True)`` for PostgreSQL."""
    return make_app(database=getattr(request, "param", "sqlite"), MODEL_DIR=str(tiny_model_dir))


@pytest.fixture
def admin(auth):
    return auth.admin_headers()


@pytest.fixture
def user(auth):
    return auth.headers("uma", "uma-password-1")


# --- building queue contents ---------------------------------------------------------------

@functools.cache
def png(seed):
    """A PNG of a real digit (retraining re-reads the images: a blank one would be skipped)."""
    with np.load(SHIPPED_MODELS / "replay.npz") as replay:
        return mnist_png(replay["x"][seed])


def stored(seed, content_type="image/png"):
    data = png(seed)
    digest = hashlib.sha256(data).hexdigest()
    if db.session.get(StoredImage, digest) is None:
        db.session.add(StoredImage(sha256=digest, content_type=content_type, size=len(data), data=data))
        db.session.flush()  # before the row naming it: no relationship tells the ORM the order
    return digest


def live_version():
    from app.services.model_versions import ensure_active_version

    return ensure_active_version().version


def user_id(name):
    """The account's id, made on first use (as the ``user`` fixture makes it: same password)."""
    from app.services.accounts import create_user

    found = db.session.scalar(db.select(User.id).filter_by(username=name))
    return found if found is not None else create_user(name, f"{name}-password-1").id


def add_prediction(app, *, confidence, seed, username="uma", version=None, age=timedelta(0)):
    with app.app_context():
        probabilities = [round((1 - confidence) / 9, 6)] * 10
        probabilities[3] = confidence
        row = Prediction(user_id=user_id(username), image_sha256=stored(seed), predicted=3, confidence=confidence,
                         probabilities=probabilities, model_version=version or live_version(), api_version="v2",
                         created_at=utcnow() - age)
        db.session.add(row)
        db.session.commit()
        return row.id


def add_feedback(app, *, seed, label=7, status="quarantined", reason="trust_outlier", detail=None,
                 username="uma", prediction_id=None):
    with app.app_context():
        digest = db.session.get(Prediction, prediction_id).image_sha256 if prediction_id else stored(seed)
        row = Feedback(prediction_id=prediction_id, user_id=user_id(username), image_sha256=digest, label=label,
                       status=status, status_reason=reason,
                       status_detail=detail if detail is not None else {"disagreement": 0.8, "peers_median": 0.1})
        db.session.add(row)
        db.session.commit()
        return row.id


def snapshot(app):
    """Every feedback row as plain values: 'nothing changed' compares two of these."""
    with app.app_context():
        return sorted(
            (f.id, f.label, f.status, f.status_reason, f.reviewed_by, f.reviewed_at, f.prediction_id)
            for f in db.session.execute(db.select(Feedback)).scalars()
        )


def training_labels(app):
    """The labels the next retrain may learn from (accepted), read the way the job reads them."""
    from app.services.trust import load_feedback

    with app.app_context():
        feedback = load_feedback()
        return sorted(feedback.labels[feedback.status == "accepted"].tolist())


def error_code(response, status):
    assert response.status_code == status, (response.status_code, response.get_data(as_text=True))
    body = response.get_json()
    assert set(body) == {"error"} and {"code", "message"} <= set(body["error"]), body
    return body["error"]["code"]


def review_page(client, headers, **query):
    response = client.get("/admin/review", headers=headers, query_string=query)
    assert response.status_code == 200, response.get_json()
    return response.get_json()


# --- access --------------------------------------------------------------------------------

def endpoints(app):
    """One valid request per endpoint (method, path, JSON body)."""
    prediction = add_prediction(app, confidence=0.4, seed=1)
    feedback = add_feedback(app, seed=2)
    with app.app_context():
        digest = db.session.get(Feedback, feedback).image_sha256
    return [
        ("get", "/admin/review?queue=quarantined", None),
        ("get", "/admin/review?queue=uncertain", None),
        ("post", f"/admin/review/feedback/{feedback}", {"action": "accept"}),
        ("post", f"/admin/review/predictions/{prediction}", {"label": 3}),
        ("post", "/admin/review/bulk", {"action": "reject", "feedback_ids": [feedback]}),
        ("get", f"/admin/images/{digest}", None),
    ]


def test_only_admins_get_in(app, client, auth, user):
    from flask_jwt_extended import create_access_token

    with app.app_context():
        expired = create_access_token(identity=str(user_id("uma")), additional_claims={"role": "admin"},
                                      expires_delta=timedelta(seconds=-5))
    revoked = auth.admin_headers()
    assert client.post("/auth/logout", headers=revoked).status_code == 200
    requests = endpoints(app)
    before = snapshot(app)
    for method, path, body in requests:
        call = getattr(client, method)
        assert error_code(call(path, json=body), 401) == "authorization_required", path
        assert error_code(call(path, json=body, headers=user), 403) == "forbidden", path
        assert error_code(call(path, json=body, headers={"Authorization": f"Bearer {expired}"}), 401) == "token_expired"
        assert error_code(call(path, json=body, headers=revoked), 401) == "token_revoked", path
        assert error_code(call(path, json=body, headers={"Authorization": "Bearer not.a.token"}), 401) == "invalid_token"
    assert snapshot(app) == before


def test_every_endpoint_is_in_the_openapi_document(client):
    spec = client.get("/openapi.json").get_json()
    for path, method in [("/admin/review", "get"), ("/admin/review/feedback/{feedback_id}", "post"),
                         ("/admin/review/predictions/{prediction_id}", "post"), ("/admin/review/bulk", "post"),
                         ("/admin/images/{sha256}", "get")]:
        operation = spec["paths"][path][method]
        assert operation["security"] == [{"bearerAuth": []}]
        for status in ("401", "403"):
            assert operation["responses"][status]["content"]["application/json"]["schema"] == {
                "$ref": "#/components/schemas/Error"}, (path, status)
    items = spec["components"]["schemas"]["ReviewPage"]["properties"]["items"]["items"]["oneOf"]
    assert {ref["$ref"].rsplit("/", 1)[1] for ref in items} == {"ReviewFeedbackItem", "ReviewPredictionItem"}
    assert {"ReviewFeedbackItem", "ReviewPredictionItem"} <= set(spec["components"]["schemas"])


# --- the quarantined queue -----------------------------------------------------------------

def test_quarantined_queue_oldest_first_with_reasons_and_paging(app, client, admin):
    prediction = add_prediction(app, confidence=0.97, seed=50, username="mallory")
    held = [add_feedback(app, seed=10 + i, username="mallory", detail={"disagreement": 0.5 + i / 100})
            for i in range(6)]
    held.insert(2, add_feedback(app, seed=99, label=1, username="mallory", prediction_id=prediction))
    held.sort()
    add_feedback(app, seed=30, status="accepted", reason=None)  # neither of these is in the queue
    add_feedback(app, seed=31, status="rejected", reason="admin_rejected")

    pages = [review_page(client, admin, queue="quarantined", page=p, per_page=3) for p in (1, 2, 3, 4)]
    assert [(b["queue"], b["page"], b["per_page"], b["total"], b["pages"]) for b in pages] == [
        ("quarantined", p, 3, 7, 3) for p in (1, 2, 3, 4)]
    ids = [item["feedback_id"] for body in pages for item in body["items"]]
    assert ids == held  # every held row once, oldest first, across the pages
    assert pages[3]["items"] == []

    on_prediction = next(item for body in pages for item in body["items"] if item["prediction_id"] == prediction)
    assert on_prediction == {
        "feedback_id": held[held.index(on_prediction["feedback_id"])], "prediction_id": prediction,
        "user_id": on_prediction["user_id"], "username": "mallory", "label": 1, "predicted": 3,
        "confidence": 0.97, "model_version": "tiny-1", "status": "quarantined", "reason": "trust_outlier",
        "detail": {"disagreement": 0.8, "peers_median": 0.1}, "reviewed_by": None, "reviewed_at": None,
        "image_url": on_prediction["image_url"], "created_at": on_prediction["created_at"]}
    upload = pages[0]["items"][0]
    assert upload["prediction_id"] is None and upload["predicted"] is None and upload["confidence"] is None
    assert upload["detail"] == {"disagreement": 0.5}
    assert upload["created_at"].endswith("+00:00")
    image = client.get(upload["image_url"], headers=admin)
    assert image.status_code == 200 and image.data == png(10)
    assert review_page(client, admin) == pages[0] | {"per_page": 20, "pages": 1,
                                                      "items": [i for b in pages for i in b["items"]]}


# --- the uncertain queue -------------------------------------------------------------------

def test_uncertain_queue_least_confident_unlabelled_recent_predictions_of_the_live_model(app, client, admin):
    confidences = [0.9, 0.31, 0.55, 0.31, 0.42, 0.77, 0.6]
    ids = [add_prediction(app, confidence=c, seed=i) for i, c in enumerate(confidences)]
    labelled = add_prediction(app, confidence=0.2, seed=20)
    add_feedback(app, seed=0, status="accepted", reason=None, prediction_id=labelled)
    held = add_prediction(app, confidence=0.21, seed=21)
    add_feedback(app, seed=0, status="quarantined", prediction_id=held)  # labelled too, if held
    add_prediction(app, confidence=0.1, seed=22, version="retired-0")
    add_prediction(app, confidence=0.1, seed=23, age=timedelta(days=8))  # outside REVIEW_UNCERTAIN_DAYS=7

    expected = [i for _, i in sorted(zip(confidences, ids))]  # ties (0.31) by id
    pages = [review_page(client, admin, queue="uncertain", page=p, per_page=2) for p in (1, 2, 3, 4, 5)]
    assert {(b["total"], b["pages"]) for b in pages} == {(7, 4)}
    assert [item["prediction_id"] for b in pages for item in b["items"]] == expected
    first = pages[0]["items"][0]
    assert set(first) == {"prediction_id", "predicted", "confidence", "probabilities", "model_version", "user_id",
                          "username", "image_url", "created_at"}
    assert (first["confidence"], first["predicted"], first["model_version"], first["username"]) == (0.31, 3, "tiny-1", "uma")
    assert len(first["probabilities"]) == 10

    # Labelling one takes it out of the queue; a longer window lets the old one in.
    assert client.post(f"/admin/review/predictions/{expected[0]}", headers=admin, json={"label": 8}).status_code == 201
    assert [i["prediction_id"] for i in review_page(client, admin, queue="uncertain", per_page=100)["items"]] == expected[1:]
    app.config["REVIEW_UNCERTAIN_DAYS"] = 9
    assert review_page(client, admin, queue="uncertain")["total"] == 7


def test_uncertain_queue_follows_real_predictions(app, client, admin, user, replay_digits):
    x, _ = replay_digits
    made = [client.post("/api/v2/predict", headers=user, data={"file": (io.BytesIO(mnist_png(x[i])), "d.png")}).get_json()
            for i in range(3)]
    body = review_page(client, admin, queue="uncertain")
    assert sorted(i["prediction_id"] for i in body["items"]) == sorted(m["prediction_id"] for m in made)
    client.post("/api/v2/feedback", headers=user, json={"prediction_id": made[0]["prediction_id"], "label": 5})
    body = review_page(client, admin, queue="uncertain")
    assert made[0]["prediction_id"] not in [i["prediction_id"] for i in body["items"]] and body["total"] == 2


# --- decisions and what retraining uses ----------------------------------------------------

def test_accept_reject_relabel_decide_what_retraining_uses(app, client, admin):
    accept, reject, relabel = (add_feedback(app, seed=s, label=label) for s, label in ((1, 4), (2, 5), (3, 6)))
    add_feedback(app, seed=4, label=1, status="accepted", reason=None)
    assert training_labels(app) == [1]  # held rows are not trained on

    response = client.post(f"/admin/review/feedback/{accept}", headers=admin, json={"action": "accept"})
    assert response.status_code == 200
    body = response.get_json()
    assert (body["feedback_id"], body["status"], body["reason"], body["label"]) == (accept, "accepted", "admin_accepted", 4)
    assert body["reviewed_by"] is not None and body["reviewed_at"].endswith("+00:00")
    assert body["detail"] == {"disagreement": 0.8, "peers_median": 0.1}  # the numbers that held it stay
    assert training_labels(app) == [1, 4]

    body = client.post(f"/admin/review/feedback/{reject}", headers=admin, json={"action": "reject"}).get_json()
    assert (body["status"], body["reason"]) == ("rejected", "admin_rejected")
    assert training_labels(app) == [1, 4]

    body = client.post(f"/admin/review/feedback/{relabel}", headers=admin, json={"action": "relabel", "label": 9}).get_json()
    assert (body["status"], body["reason"], body["label"]) == ("accepted", "admin_relabelled", 9)
    assert body["detail"]["previous_label"] == 6
    assert training_labels(app) == [1, 4, 9]

    # A decision can be reversed: the accepted row rejected again.
    client.post(f"/admin/review/feedback/{accept}", headers=admin, json={"action": "reject"})
    assert training_labels(app) == [1, 9]
    assert review_page(client, admin)["total"] == 0
    with app.app_context():
        admin_id = user_id("root")
        rows = {f.id: f for f in db.session.execute(db.select(Feedback)).scalars()}
        assert all(rows[i].reviewed_by == admin_id and rows[i].reviewed_at for i in (accept, reject, relabel))


def test_admin_labels_an_unlabelled_prediction_once(app, client, admin):
    prediction = add_prediction(app, confidence=0.35, seed=1)
    response = client.post(f"/admin/review/predictions/{prediction}", headers=admin, json={"label": 8})
    assert response.status_code == 201
    body = response.get_json()
    with app.app_context():
        admin_id = user_id("root")
    assert (body["prediction_id"], body["label"], body["predicted"], body["status"], body["reason"]) == (
        prediction, 8, 3, "accepted", "admin_labelled")
    assert body["user_id"] == admin_id == body["reviewed_by"] and body["username"] == "root"
    assert training_labels(app) == [8]

    before = snapshot(app)
    again = client.post(f"/admin/review/predictions/{prediction}", headers=admin, json={"label": 2})
    assert error_code(again, 409) == "feedback_exists"
    assert again.get_json()["error"]["details"] == {"feedback_id": body["feedback_id"]}
    assert snapshot(app) == before


def test_a_reviewed_label_is_final_for_its_owner(app, client, admin, user, replay_digits):
    x, _ = replay_digits
    made = client.post("/api/v2/predict", headers=user, data={"file": (io.BytesIO(mnist_png(x[1])), "d.png")}).get_json()
    given = client.post("/api/v2/feedback", headers=user, json={"prediction_id": made["prediction_id"], "label": 5})
    assert given.status_code == 201 and given.get_json()["status"] == "accepted"
    feedback_id = given.get_json()["id"]
    client.post(f"/admin/review/feedback/{feedback_id}", headers=admin, json={"action": "relabel", "label": 1})
    before = snapshot(app)
    refused = client.post("/api/v2/feedback", headers=user, json={"prediction_id": made["prediction_id"], "label": 5})
    assert error_code(refused, 409) == "feedback_reviewed"
    assert snapshot(app) == before
    own = client.get("/api/v2/feedback", headers=user).get_json()["items"]
    assert [(i["id"], i["label"], i["status"]) for i in own] == [(feedback_id, 1, "accepted")]


def test_bulk_is_all_or_nothing(app, client, admin):
    ids = [add_feedback(app, seed=s, label=s) for s in range(1, 6)]
    before = snapshot(app)
    unknown = client.post("/admin/review/bulk", headers=admin,
                          json={"action": "accept", "feedback_ids": [ids[0], 987654, ids[1], 987655]})
    assert error_code(unknown, 404) == "feedback_not_found"
    assert unknown.get_json()["error"]["details"] == {"missing": [987654, 987655]}
    assert snapshot(app) == before and training_labels(app) == []

    done = client.post("/admin/review/bulk", headers=admin,
                       json={"action": "relabel", "label": 0, "feedback_ids": [ids[3], ids[1], ids[3]]})
    assert done.status_code == 200
    body = done.get_json()
    assert body["updated"] == 2
    assert [(i["feedback_id"], i["label"], i["status"], i["reason"]) for i in body["items"]] == [
        (ids[3], 0, "accepted", "admin_relabelled"), (ids[1], 0, "accepted", "admin_relabelled")]
    assert training_labels(app) == [0, 0]

    body = client.post("/admin/review/bulk", headers=admin, json={"action": "accept", "feedback_ids": ids}).get_json()
    assert body["updated"] == 5 and {i["status"] for i in body["items"]} == {"accepted"}
    assert training_labels(app) == [0, 0, 1, 3, 5]
    body = client.post("/admin/review/bulk", headers=admin, json={"action": "reject", "feedback_ids": ids[:4]}).get_json()
    assert body["updated"] == 4 and training_labels(app) == [5]


@pytest.mark.parametrize("app", ["postgres"], indirect=True)
def test_queues_and_bulk_on_postgresql(app, client, admin):
    held = [add_feedback(app, seed=s) for s in range(1, 5)]
    predictions = [add_prediction(app, confidence=c, seed=10 + i) for i, c in enumerate((0.5, 0.3, 0.4))]
    add_feedback(app, seed=0, status="accepted", reason=None, prediction_id=predictions[0])
    assert [i["feedback_id"] for i in review_page(client, admin, per_page=3, page=2)["items"]] == held[3:]
    assert [i["prediction_id"] for i in review_page(client, admin, queue="uncertain")["items"]] == [
        predictions[1], predictions[2]]
    before = snapshot(app)
    assert client.post("/admin/review/bulk", headers=admin,
                       json={"action": "accept", "feedback_ids": [*held, MAX_ID]}).status_code == 404
    assert snapshot(app) == before
    assert client.post("/admin/review/bulk", headers=admin, json={"action": "accept", "feedback_ids": held}).status_code == 200
    assert review_page(client, admin)["total"] == 0


# --- bad input: the contract's error, nothing changed --------------------------------------

@pytest.mark.parametrize("query", [
    {"queue": "everything"}, {"queue": ""}, {"page": 0}, {"page": MAX_ID + 1}, {"page": "x"}, {"per_page": 0},
    {"per_page": 101}, {"per_page": -1}, {"per_page": 2**70},
])
def test_bad_queue_queries_are_422(client, admin, query):
    assert error_code(client.get("/admin/review", headers=admin, query_string=query), 422) == "validation_error"


ACTION_BODIES = [
    {}, {"action": "approve"}, {"action": "relabel"}, {"action": "relabel", "label": None},
    {"action": "relabel", "label": 10}, {"action": "relabel", "label": -1}, {"action": "relabel", "label": "3"},
    {"action": "relabel", "label": 2.5}, {"action": "relabel", "label": True}, {"action": "accept", "label": None},
    {"action": "reject", "label": 11}, {"action": "accept", "extra": 1}, {"action": ["accept"]}, [], "accept",
]


def test_accept_or_reject_with_the_label_seen_refuses_a_label_changed_since(app, client, admin):
    first, second = add_feedback(app, seed=1, label=7), add_feedback(app, seed=2, label=2)
    before = snapshot(app)
    stale = client.post(f"/admin/review/feedback/{first}", headers=admin, json={"action": "accept", "label": 6})
    assert error_code(stale, 409) == "label_changed"
    bulk = client.post("/admin/review/bulk", headers=admin, json={"action": "reject", "label": 7, "feedback_ids": [first, second]})
    assert error_code(bulk, 409) == "label_changed" and bulk.get_json()["error"]["details"] == {"feedback_ids": [second]}
    assert snapshot(app) == before
    seen = client.post(f"/admin/review/feedback/{first}", headers=admin, json={"action": "accept", "label": 7})
    assert seen.status_code == 200 and (seen.get_json()["status"], seen.get_json()["label"]) == ("accepted", 7)


def write_just_before_the_next_flush(statement, **params):
    """Commit ``statement`` from another connection the moment a session next flushes: the
    other party's write landing between the request's read and its own write."""
    from sqlalchemy import event

    def other_party(_session, _context, _instances):
        with db.engine.connect() as other:
            other.execute(db.text(statement), params)
            other.commit()

    event.listen(db.session, "before_flush", other_party, once=True)


@pytest.mark.parametrize("app", ["sqlite", "postgres"], indirect=True)
def test_an_owner_replacing_the_label_while_the_admin_accepts_it_is_caught(app, client, admin):
    feedback_id = add_feedback(app, seed=1, label=7)
    with app.app_context():
        write_just_before_the_next_flush("UPDATE feedback SET label = 1 WHERE id = :id", id=feedback_id)
    raced = client.post(f"/admin/review/feedback/{feedback_id}", headers=admin, json={"action": "accept", "label": 7})
    assert error_code(raced, 409) == "label_changed"
    with app.app_context():
        row = db.session.get(Feedback, feedback_id)
        assert (row.label, row.status, row.reviewed_by) == (1, "quarantined", None)


@pytest.mark.parametrize("app", ["sqlite", "postgres"], indirect=True)
def test_an_admin_reviewing_while_the_owner_replaces_the_label_wins(app, client, admin, user, replay_digits):
    x, _ = replay_digits
    made = client.post("/api/v2/predict", headers=user, data={"file": (io.BytesIO(mnist_png(x[1])), "d.png")}).get_json()
    given = client.post("/api/v2/feedback", headers=user, json={"prediction_id": made["prediction_id"], "label": 5}).get_json()
    with app.app_context():
        admin_id = user_id("root")
        write_just_before_the_next_flush("UPDATE feedback SET status = 'rejected', reviewed_by = :admin WHERE id = :id",
                                         admin=admin_id, id=given["id"])
    raced = client.post("/api/v2/feedback", headers=user, json={"prediction_id": made["prediction_id"], "label": 6})
    assert error_code(raced, 409) == "feedback_reviewed"
    with app.app_context():
        row = db.session.get(Feedback, given["id"])
        assert (row.label, row.status, row.reviewed_by) == (5, "rejected", admin_id)


@pytest.mark.parametrize("body", ACTION_BODIES)
def test_bad_actions_change_nothing(app, client, admin, body):
    feedback_id = add_feedback(app, seed=1)
    before = snapshot(app)
    response = client.post(f"/admin/review/feedback/{feedback_id}", headers=admin, json=body)
    assert error_code(response, 422) == "validation_error"
    assert snapshot(app) == before


@pytest.mark.parametrize("body", [
    *[body | {"feedback_ids": [1]} for body in ACTION_BODIES if isinstance(body, dict)],
    {"action": "accept"}, {"action": "accept", "feedback_ids": []}, {"action": "accept", "feedback_ids": [0]},
    {"action": "accept", "feedback_ids": [MAX_ID + 1]}, {"action": "accept", "feedback_ids": [2**70]},
    {"action": "accept", "feedback_ids": ["1"]}, {"action": "accept", "feedback_ids": [1.5]},
    {"action": "accept", "feedback_ids": [None]}, {"action": "accept", "feedback_ids": 1},
    {"action": "accept", "feedback_ids": list(range(1, 502))},
])
def test_bad_bulk_requests_change_nothing(app, client, admin, body):
    add_feedback(app, seed=1)
    before = snapshot(app)
    assert error_code(client.post("/admin/review/bulk", headers=admin, json=body), 422) == "validation_error"
    assert snapshot(app) == before


@pytest.mark.parametrize("body", [{}, {"label": 10}, {"label": "3"}, {"label": None}, {"label": 1, "action": "accept"}])
def test_bad_admin_labels_change_nothing(app, client, admin, body):
    prediction = add_prediction(app, confidence=0.5, seed=1)
    before = snapshot(app)
    assert error_code(client.post(f"/admin/review/predictions/{prediction}", headers=admin, json=body), 422) == "validation_error"
    assert snapshot(app) == before


@pytest.mark.parametrize("path", ["feedback", "predictions"])
@pytest.mark.parametrize("target", ["999999", str(MAX_ID), str(MAX_ID + 1), "99168536603947040768", "0", "-1", "x"])
def test_ids_no_row_can_have_are_404(app, client, admin, path, target):
    add_feedback(app, seed=1)
    before = snapshot(app)
    body = {"action": "accept"} if path == "feedback" else {"label": 1}
    code = error_code(client.post(f"/admin/review/{path}/{target}", headers=admin, json=body), 404)
    assert code == ("not_found" if not target.isdigit() or int(target) > MAX_ID or target == "0"
                    else {"feedback": "feedback_not_found", "predictions": "prediction_not_found"}[path])
    assert snapshot(app) == before


@pytest.mark.parametrize("endpoint", ["feedback/1", "predictions/1", "bulk"])
def test_bodies_that_are_not_json_are_refused(app, client, admin, endpoint):
    add_feedback(app, seed=1)
    add_prediction(app, confidence=0.5, seed=2)
    before = snapshot(app)
    url = f"/admin/review/{endpoint}"
    broken = client.post(url, headers=admin, data="{not json", content_type="application/json")
    assert error_code(broken, 400) == "bad_request"
    form = client.post(url, headers=admin, data={"action": "accept", "label": "1"})
    assert error_code(form, 415) == "unsupported_media_type"
    assert snapshot(app) == before


# --- the image endpoint --------------------------------------------------------------------

def test_images_are_served_with_safe_headers_and_their_real_type(app, client, admin):
    with app.app_context():
        digest = stored(7, content_type="text/html")  # what the uploader claimed is not what we say
        db.session.commit()
    response = client.get(f"/admin/images/{digest}", headers=admin)
    assert response.status_code == 200 and response.data == png(7)
    assert response.mimetype == "image/png"
    assert response.headers["X-Content-Type-Options"] == "nosniff"
    assert response.headers["Content-Disposition"] == f'inline; filename="{digest}.png"'
    assert "sandbox" in response.headers["Content-Security-Policy"]
    assert response.headers["Cache-Control"].startswith("private")

    jpeg = io.BytesIO()
    Image.new("RGB", (8, 8), "white").save(jpeg, format="JPEG")
    with app.app_context():
        jpeg_digest = hashlib.sha256(jpeg.getvalue()).hexdigest()
        db.session.add(StoredImage(sha256=jpeg_digest, content_type=None, size=len(jpeg.getvalue()), data=jpeg.getvalue()))
        db.session.commit()
    response = client.get(f"/admin/images/{jpeg_digest}", headers=admin)
    assert response.mimetype == "image/jpeg" and response.headers["Content-Disposition"].endswith('.jpg"')


@pytest.mark.parametrize("digest, status, code", [
    ("0" * 64, 404, "image_not_found"),
    ("A" * 64, 422, "validation_error"),  # digests are lowercase, as hashlib writes them
    ("g" * 64, 422, "validation_error"),
    ("0" * 63 + " ", 422, "validation_error"),
    ("0" * 63, 404, "not_found"),  # no route: only 64 characters name an image
    ("0" * 65, 404, "not_found"),
    ("%00" * 64, 422, "validation_error"),
    ("../" * 21 + "a", 404, "not_found"),
])
def test_unknown_or_malformed_digests(client, admin, digest, status, code):
    assert error_code(client.get(f"/admin/images/{digest}", headers=admin), status) == code


def test_image_requests_have_their_own_rate_limit(make_app, tiny_model_dir):
    app = make_app(MODEL_DIR=str(tiny_model_dir), RATELIMIT_ENABLED=True, RATELIMIT_ADMIN_IMAGES="2 per day")
    client = app.test_client()
    from support import AuthActions

    admin = AuthActions(client, app).admin_headers()
    statuses = [client.get(f"/admin/images/{'0' * 64}", headers=admin).status_code for _ in range(3)]
    assert statuses == [404, 404, 429]
    assert error_code(client.get(f"/admin/images/{'0' * 64}", headers=admin), 429) == "rate_limited"


# --- counts: admin stats and /metrics ------------------------------------------------------

def test_counts_per_status_and_quarantined_gauge_by_reason(app, client, admin):
    for seed, status, reason in [(1, "quarantined", "trust_outlier"), (2, "quarantined", "trust_outlier"),
                                 (3, "quarantined", "new_account"), (4, "rejected", "admin_rejected"),
                                 (5, "accepted", None)]:
        add_feedback(app, seed=seed, status=status, reason=reason)
    stats = client.get("/admin/feedback/stats", headers=admin).get_json()
    assert stats["per_status"] == {"accepted": 1, "quarantined": 3, "rejected": 1}
    assert client.get("/admin/stats", headers=admin).get_json()["feedback"]["per_status"]["quarantined"] == 3

    def quarantined_gauge():
        text = client.get("/metrics").get_data(as_text=True)
        return {s.labels["reason"]: s.value for family in text_string_to_metric_families(text)
                for s in family.samples if s.name == "digit_feedback_quarantined"}

    assert quarantined_gauge() == {"trust_outlier": 2, "new_account": 1}
    with app.app_context():
        ids = db.session.scalars(db.select(Feedback.id).filter_by(status_reason="trust_outlier")).all()
    client.post("/admin/review/bulk", headers=admin, json={"action": "accept", "feedback_ids": ids})
    assert quarantined_gauge() == {"new_account": 1}


def test_error_rates_count_only_the_labels_the_service_believes(app, client, admin):
    """A held or rejected label says nothing about the model: the error rates leave it out."""
    right = add_prediction(app, confidence=0.9, seed=1)
    wrong = add_prediction(app, confidence=0.9, seed=2)
    held = add_prediction(app, confidence=0.9, seed=3)
    refused = add_prediction(app, confidence=0.9, seed=4)
    add_feedback(app, seed=1, label=3, status="accepted", reason=None, prediction_id=right)
    add_feedback(app, seed=2, label=5, status="accepted", reason=None, prediction_id=wrong)
    add_feedback(app, seed=3, label=1, prediction_id=held)
    add_feedback(app, seed=4, label=1, status="rejected", reason="admin_rejected", prediction_id=refused)
    add_feedback(app, seed=5, label=2, status="accepted", reason=None)  # a labelled upload
    stats = client.get("/admin/feedback/stats", headers=admin).get_json()
    version = stats["live_model_version"]
    assert stats["total"] == 5
    assert stats["per_model_version"][version] == {"feedback": 2, "wrong": 1, "error_rate": 0.5}
    assert stats["per_model_version"]["(labelled uploads)"]["feedback"] == 1
    by_day = client.get("/admin/stats", headers=admin).get_json()["feedback_by_day"]
    assert [(row["feedback"], row["wrong"]) for row in by_day] == [(2, 1)]
