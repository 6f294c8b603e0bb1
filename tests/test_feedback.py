"""Feedback rules and the admin's statistics."""

import io
from datetime import datetime, timedelta

import pytest

from app.entities import Feedback, StoredImage
from app.extensions import db
from support import AuthActions, mnist_png


@pytest.fixture
def app(tiny_app):
    """Everything here runs against the tiny model (the conftest's client and auth follow)."""
    return tiny_app


def predict(client, headers, png):
    response = client.post("/api/v2/predict", headers=headers, data={"file": (io.BytesIO(png), "d.png")})
    assert response.status_code == 200, response.get_json()
    return response.get_json()


def test_feedback_on_own_prediction_then_replace(tiny_app, client, auth, replay_digits):
    x, y = replay_digits
    headers = auth.headers()
    pred = predict(client, headers, mnist_png(x[1]))
    first = client.post("/api/v2/feedback", headers=headers, json={"prediction_id": pred["prediction_id"], "label": 3})
    assert first.status_code == 201
    body = first.get_json()
    assert {"id", "prediction_id", "label"} <= set(body) and body["label"] == 3

    again = client.post("/api/v2/feedback", headers=headers, json={"prediction_id": pred["prediction_id"], "label": 7})
    assert again.status_code == 201 and again.get_json()["id"] == body["id"] and again.get_json()["label"] == 7
    with tiny_app.app_context():
        rows = db.session.execute(db.select(Feedback)).scalars().all()
        assert len(rows) == 1 and rows[0].label == 7
        assert rows[0].updated_at >= rows[0].created_at


def test_feedback_on_someone_elses_prediction_is_403_but_admins_may(client, auth, replay_digits):
    x, _ = replay_digits
    owner = auth.headers("owner", "owner-password")
    pred = predict(client, owner, mnist_png(x[2]))
    other = auth.headers("other", "other-password")
    response = client.post("/api/v2/feedback", headers=other, json={"prediction_id": pred["prediction_id"], "label": 1})
    assert response.status_code == 403
    admin = auth.admin_headers()
    assert client.post("/api/v2/feedback", headers=admin, json={"prediction_id": pred["prediction_id"], "label": 1}).status_code == 201


@pytest.mark.parametrize("label", [10, -1, "3", 2.5, None, True])
def test_bad_labels_are_422_and_nothing_stored(tiny_app, client, auth, replay_digits, label):
    x, _ = replay_digits
    headers = auth.headers()
    pred = predict(client, headers, mnist_png(x[3]))
    response = client.post("/api/v2/feedback", headers=headers, json={"prediction_id": pred["prediction_id"], "label": label})
    assert response.status_code == 422
    with tiny_app.app_context():
        assert db.session.scalar(db.select(db.func.count(Feedback.id))) == 0


@pytest.mark.parametrize("prediction_id", [99168536603947040768, 2**31, 0, -5, "1", None])
def test_prediction_ids_no_row_can_have_are_422(tiny_app, client, auth, prediction_id):
    response = client.post("/api/v2/feedback", headers=auth.headers(), json={"prediction_id": prediction_id, "label": 6})
    assert response.status_code == 422, response.get_json()
    assert response.get_json()["error"]["code"] == "validation_error"
    with tiny_app.app_context():
        assert db.session.scalar(db.select(db.func.count(Feedback.id))) == 0


def test_feedback_timestamps_carry_their_utc_offset(client, auth, replay_digits):
    x, _ = replay_digits
    headers = auth.headers()
    pred = predict(client, headers, mnist_png(x[1]))
    given = client.post("/api/v2/feedback", headers=headers, json={"prediction_id": pred["prediction_id"], "label": 3})
    listed = client.get("/api/v2/feedback", headers=headers).get_json()["items"][0]
    for body in (given.get_json(), listed):
        for key in ("created_at", "updated_at"):
            assert datetime.fromisoformat(body[key]).utcoffset() == timedelta(0), body[key]


def test_pages_beyond_any_row_are_422_not_an_overflow(client, auth):
    response = client.get("/api/v2/feedback?page=99999999999999999999999", headers=auth.headers())
    assert response.status_code == 422


def test_unknown_prediction_is_404(client, auth):
    response = client.post("/api/v2/feedback", headers=auth.headers(), json={"prediction_id": 999, "label": 1})
    assert response.status_code == 404 and response.get_json()["error"]["code"] == "prediction_not_found"


def test_labelled_upload_without_prediction(tiny_app, client, auth, replay_digits):
    x, _ = replay_digits
    png = mnist_png(x[4])
    response = client.post("/api/v2/feedback", headers=auth.headers(),
                           data={"file": (io.BytesIO(png), "four.png"), "label": "4"})
    assert response.status_code == 201
    body = response.get_json()
    assert body["prediction_id"] is None and body["label"] == 4
    with tiny_app.app_context():
        assert db.session.scalar(db.select(db.func.count(StoredImage.sha256))) == 1


@pytest.mark.parametrize("form, status", [
    (lambda png: {"file": (io.BytesIO(png), "d.png"), "label": "12"}, 422),
    (lambda png: {"file": (io.BytesIO(png), "d.png"), "label": "-1"}, 422),
    (lambda png: {"file": (io.BytesIO(png), "d.png"), "label": "7.5"}, 422),
    (lambda png: {"file": (io.BytesIO(png), "d.png"), "label": "\u00b2"}, 422),  # isdigit(), but not an int
    (lambda png: {"file": (io.BytesIO(png), "d.png"), "label": ""}, 422),
    (lambda png: {"file": (io.BytesIO(png), "d.png")}, 422),
    (lambda png: {"label": "3"}, 415),  # a form without a file is not multipart
    (lambda png: {"file": (io.BytesIO(b"plain text"), "d.txt"), "label": "3"}, 415),
    (lambda png: {"file": (io.BytesIO(b""), "d.png"), "label": "3"}, 400),
])
def test_bad_labelled_uploads_store_nothing(tiny_app, client, auth, replay_digits, form, status):
    x, _ = replay_digits
    response = client.post("/api/v2/feedback", headers=auth.headers(), data=form(mnist_png(x[5])))
    assert response.status_code == status, response.get_json()
    with tiny_app.app_context():
        assert db.session.scalar(db.select(db.func.count(Feedback.id))) == 0
        assert db.session.scalar(db.select(db.func.count(StoredImage.sha256))) == 0


def test_list_own_feedback_is_paginated_and_private(client, auth, replay_digits):
    x, _ = replay_digits
    mine = auth.headers("mine", "mine-password")
    theirs = auth.headers("theirs", "theirs-password")
    for i in range(5):
        pred = predict(client, mine, mnist_png(x[10 + i]))
        client.post("/api/v2/feedback", headers=mine, json={"prediction_id": pred["prediction_id"], "label": i})
    pred = predict(client, theirs, mnist_png(x[20]))
    client.post("/api/v2/feedback", headers=theirs, json={"prediction_id": pred["prediction_id"], "label": 9})

    page = client.get("/api/v2/feedback?page=1&per_page=2", headers=mine).get_json()
    assert page["total"] == 5 and page["pages"] == 3 and len(page["items"]) == 2
    assert [item["label"] for item in page["items"]] == [4, 3]  # newest first
    last = client.get("/api/v2/feedback?page=3&per_page=2", headers=mine).get_json()
    assert [item["label"] for item in last["items"]] == [0]
    assert client.get("/api/v2/feedback?per_page=1000", headers=mine).status_code == 422


def test_stats(client, auth, replay_digits):
    x, _ = replay_digits
    user = auth.headers()
    for i, label in enumerate([0, 1, 1]):
        pred = predict(client, user, mnist_png(x[30 + i]))
        client.post("/api/v2/feedback", headers=user, json={"prediction_id": pred["prediction_id"], "label": label})
    client.post("/api/v2/feedback", headers=user, data={"file": (io.BytesIO(mnist_png(x[40])), "u.png"), "label": "2"})
    stats = client.get("/admin/feedback/stats", headers=auth.admin_headers()).get_json()
    assert stats["total"] == 4
    assert stats["per_label"]["1"] == 2 and stats["per_label"]["0"] == 1 and stats["per_label"]["2"] == 1
    # The tiny model always answers 0: one right, two wrong.
    assert stats["per_model_version"]["tiny-1"] == {"feedback": 3, "wrong": 2, "error_rate": 0.6667}
    assert stats["live_model_version"] == "tiny-1" and stats["live_model_error_rate"] == 0.6667
    assert stats["since_last_retrain"] == 4
