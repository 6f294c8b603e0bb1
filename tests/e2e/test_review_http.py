"""The admin review queue against a real gunicorn server over real HTTP (shipped model)."""

import csv

import pytest
import requests
import sqlalchemy
from prometheus_client.parser import text_string_to_metric_families

from support import FIXTURES

pytestmark = pytest.mark.e2e


def uploads(n):
    with open(FIXTURES / "mnist50" / "labels.csv") as fh:
        rows = list(csv.DictReader(fh))[:n]
    return [((FIXTURES / "mnist50" / row["file"]).read_bytes(), row["file"], int(row["label"])) for row in rows]


METRICS_TOKEN = "review-scrape-token-0123456789abcdef"


def quarantined_gauge(server):
    response = requests.get(server.url + "/metrics", headers={"Authorization": f"Bearer {METRICS_TOKEN}"}, timeout=10)
    assert response.status_code == 200, response.text
    text = response.text
    return {s.labels["reason"]: s.value for family in text_string_to_metric_families(text)
            for s in family.samples if s.name == "digit_feedback_quarantined"}


def test_review_round_trip(live_server):
    server = live_server(env={"METRICS_TOKEN": METRICS_TOKEN})
    base = server.url
    user = server.register("vera")
    admin = server.create_admin("chief", "chief-password-1")

    sent = uploads(4)
    made = []
    for data, name, _label in sent:
        response = requests.post(base + "/api/v2/predict", headers=user, files={"file": (name, data)}, timeout=30)
        assert response.status_code == 200, response.text
        made.append(response.json())
    labelled, wrong = made[0], made[1]
    given = [requests.post(base + "/api/v2/feedback", headers=user, timeout=10,
                           json={"prediction_id": p["prediction_id"], "label": label}).json()
             for p, label in ((labelled, sent[0][2]), (wrong, (sent[1][2] + 1) % 10))]

    # The unlabelled ones wait in the uncertain queue, least confident first, with their originals.
    queue = requests.get(base + "/admin/review", params={"queue": "uncertain"}, headers=admin, timeout=10).json()
    unlabelled = sorted(made[2:], key=lambda p: (p["confidence"], p["prediction_id"]))
    assert [i["prediction_id"] for i in queue["items"]] == [p["prediction_id"] for p in unlabelled]
    assert queue["total"] == 2 and queue["items"][0]["username"] == "vera"
    item = queue["items"][0]
    image = requests.get(base + item["image_url"], headers=admin, timeout=10)
    data = next(d for (d, _n, _l), p in zip(sent, made) if p["prediction_id"] == item["prediction_id"])
    assert image.status_code == 200 and image.content == data
    assert image.headers["X-Content-Type-Options"] == "nosniff"
    assert image.headers["Content-Type"] in ("image/png", "image/jpeg")
    assert image.headers["Content-Disposition"].startswith("inline; filename=")
    assert requests.get(base + item["image_url"], headers=user, timeout=10).status_code == 403

    labelled_by_admin = requests.post(f"{base}/admin/review/predictions/{item['prediction_id']}", headers=admin,
                                      json={"label": 4}, timeout=10)
    assert labelled_by_admin.status_code == 201 and labelled_by_admin.json()["status"] == "accepted"
    assert requests.get(base + "/admin/review", params={"queue": "uncertain"}, headers=admin, timeout=10).json()["total"] == 1

    # The trust rules hold the wrong label (their result written as they would write it).
    engine = sqlalchemy.create_engine(server.database_url)
    with engine.begin() as conn:
        conn.execute(sqlalchemy.text("UPDATE feedback SET status='quarantined', status_reason='trust_outlier' "
                                     "WHERE id=:id"), {"id": given[1]["id"]})
    engine.dispose()
    held = requests.get(base + "/admin/review", headers=admin, timeout=10).json()
    assert [(i["feedback_id"], i["reason"], i["username"]) for i in held["items"]] == [
        (given[1]["id"], "trust_outlier", "vera")]
    assert quarantined_gauge(server) == {"trust_outlier": 1}

    # Bulk with an unknown id: nothing changes.
    refused = requests.post(base + "/admin/review/bulk", headers=admin, timeout=10,
                            json={"action": "reject", "feedback_ids": [given[1]["id"], 424242]})
    assert refused.status_code == 404 and refused.json()["error"]["details"] == {"missing": [424242]}
    assert requests.get(base + "/admin/review", headers=admin, timeout=10).json()["total"] == 1

    rejected = requests.post(f"{base}/admin/review/feedback/{given[1]['id']}", headers=admin,
                             json={"action": "reject"}, timeout=10)
    assert rejected.status_code == 200 and rejected.json()["status"] == "rejected"
    assert quarantined_gauge(server) == {}
    own = requests.get(base + "/api/v2/feedback", headers=user, timeout=10).json()["items"]
    assert {i["id"]: i["status"] for i in own} == {given[0]["id"]: "accepted", given[1]["id"]: "rejected"}
    again = requests.post(base + "/api/v2/feedback", headers=user, timeout=10,
                          json={"prediction_id": wrong["prediction_id"], "label": 3})
    assert again.status_code == 409 and again.json()["error"]["code"] == "feedback_reviewed"

    stats = requests.get(base + "/admin/feedback/stats", headers=admin, timeout=10).json()
    assert stats["per_status"] == {"accepted": 2, "quarantined": 0, "rejected": 1}
