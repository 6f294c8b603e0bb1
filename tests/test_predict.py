"""Predict endpoints through the Flask test client with the shipped model."""

import base64
import csv
import io

import pytest
from PIL import Image
from urllib3 import encode_multipart_formdata

from app.entities import Prediction, StoredImage
from app.extensions import db
from support import AuthActions, FIXTURES

DIGITS = FIXTURES / "mnist50"


def fixture_digits():
    with open(DIGITS / "labels.csv") as fh:
        return [(DIGITS / row["file"], int(row["label"])) for row in csv.DictReader(fh)]


def png_bytes(image):
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def upload(data, name="digit.png"):
    return {"file": (io.BytesIO(data), name)}


def counts(app):
    with app.app_context():
        return (db.session.scalar(db.select(db.func.count(Prediction.id))),
                db.session.scalar(db.select(db.func.count(StoredImage.sha256))))


@pytest.fixture
def digit():
    path, label = fixture_digits()[0]
    return path.read_bytes(), label


def test_v1_body_is_exactly_the_original(client, auth, digit):
    data, label = digit
    response = client.post("/api/v1/predict", headers=auth.headers(), data=upload(data))
    assert response.status_code == 200
    body = response.get_json()
    assert set(body) == {"prediccion", "probabilidad", "version"}
    assert body["version"] == "v1"
    assert body["prediccion"] == label
    assert isinstance(body["probabilidad"], float) and 0.5 < body["probabilidad"] <= 1.0


def test_v2_body_and_stored_prediction(app, client, auth, digit):
    data, label = digit
    response = client.post("/api/v2/predict", headers=auth.headers(), data=upload(data))
    assert response.status_code == 200
    body = response.get_json()
    assert set(body) == {"prediction", "confidence", "probabilities", "model_version", "prediction_id", "api_version"}
    assert body["api_version"] == "v2" and body["prediction"] == label
    assert len(body["probabilities"]) == 10 and abs(sum(body["probabilities"]) - 1) < 1e-3
    assert body["confidence"] == max(body["probabilities"])
    with app.app_context():
        row = db.session.get(Prediction, body["prediction_id"])
        assert row.predicted == label and row.model_version == body["model_version"] == "base-1"
        stored = db.session.get(StoredImage, row.image_sha256)
        assert stored.data == data  # the original is kept, byte for byte


def test_v2_accepts_base64_json_and_data_urls(client, auth, digit):
    data, label = digit
    headers = auth.headers()
    plain = client.post("/api/v2/predict", headers=headers, json={"image": base64.b64encode(data).decode()})
    assert plain.status_code == 200 and plain.get_json()["prediction"] == label
    data_url = "data:image/png;base64," + base64.b64encode(data).decode()
    assert client.post("/api/v2/predict", headers=headers, json={"image": data_url}).get_json()["prediction"] == label


def test_same_image_is_stored_once(app, client, auth, digit):
    headers = auth.headers()
    for _ in range(2):
        assert client.post("/api/v2/predict", headers=headers, data=upload(digit[0])).status_code == 200
    assert counts(app) == (2, 1)


def test_batch_keeps_order_and_matches_single_predictions(client, auth):
    headers = auth.headers()
    files = fixture_digits()[:12]
    response = client.post(
        "/api/v2/predict/batch", headers=headers,
        data={"files": [(io.BytesIO(path.read_bytes()), path.name) for path, _ in files]},
    )
    assert response.status_code == 200
    body = response.get_json()
    assert body["model_version"] == "base-1"
    assert len(body["predictions"]) == len(files)
    ids = [p["prediction_id"] for p in body["predictions"]]
    assert ids == sorted(ids)
    for (path, _label), batch_item in zip(files, body["predictions"]):
        single = client.post("/api/v2/predict", headers=headers, data=upload(path.read_bytes(), path.name)).get_json()
        assert single["prediction"] == batch_item["prediction"]
        assert single["probabilities"] == pytest.approx(batch_item["probabilities"], abs=1e-4)


def test_requires_a_token(client, digit):
    assert client.post("/api/v2/predict", data=upload(digit[0])).status_code == 401


def _big_header_png(width, height):
    """A real PNG whose header claims a huge canvas but whose file is small (a 1-bit image)."""
    return png_bytes(Image.new("1", (width, height), 1))


BAD_INPUTS = [
    ("empty file", lambda: {"file": (io.BytesIO(b""), "empty.png")}, 400, "empty_upload"),
    ("not an image", lambda: {"file": (io.BytesIO(b"hello, this is text"), "note.txt")}, 415, "not_an_image"),
    ("truncated png", lambda: {"file": (io.BytesIO(png_bytes(Image.new("L", (64, 64), 255))[:40]), "cut.png")}, 415, "not_an_image"),
    ("blank paper", lambda: {"file": (io.BytesIO(png_bytes(Image.new("L", (200, 200), 255))), "blank.png")}, 422, "no_digit_found"),
    ("pixel bomb", lambda: {"file": (io.BytesIO(_big_header_png(12000, 12000)), "bomb.png")}, 413, "image_too_large"),
    ("missing field", lambda: {"other": (io.BytesIO(b"x"), "x.png")}, 422, "validation_error"),
]


def as_sent_by_clients(form):
    """The multipart body requests, curl or a browser send for ``form`` (Werkzeug's test
    client leaves out the line break that must precede the boundary after an empty file)."""
    body, content_type = encode_multipart_formdata(
        {name: (filename, stream.read()) for name, (stream, filename) in form.items()}
    )
    return {"data": body, "content_type": content_type}


@pytest.mark.parametrize("name, make_form, status, code", BAD_INPUTS, ids=[b[0] for b in BAD_INPUTS])
@pytest.mark.parametrize("path", ["/api/v1/predict", "/api/v2/predict"])
def test_bad_uploads_are_refused_and_nothing_is_stored(app, client, auth, path, name, make_form, status, code):
    response = client.post(path, headers=auth.headers(), **as_sent_by_clients(make_form()))
    assert response.status_code == status, response.get_json()
    assert response.get_json()["error"]["code"] == code
    assert counts(app) == (0, 0)


def test_bad_json_bodies(app, client, auth):
    headers = auth.headers()
    cases = [
        (dict(json={"image": "%%% not base64"}), 400, "invalid_base64"),
        (dict(json={"picture": "abc"}), 422, "validation_error"),
        (dict(data="{broken", content_type="application/json"), 400, "invalid_json"),
        (dict(data="raw bytes", content_type="application/octet-stream"), 415, "unsupported_media_type"),
    ]
    for kwargs, status, code in cases:
        response = client.post("/api/v2/predict", headers=headers, **kwargs)
        assert (response.status_code, response.get_json()["error"]["code"]) == (status, code), kwargs
    assert counts(app) == (0, 0)


def test_upload_over_max_content_length_is_413(make_app, digit):
    app = make_app(MAX_CONTENT_LENGTH=2048)
    client = app.test_client()
    from support import AuthActions

    headers = AuthActions(client, app).headers()
    response = client.post("/api/v2/predict", headers=headers, data=upload(b"\x89PNG" + b"0" * 4096))
    assert response.status_code == 413 and response.get_json()["error"]["code"] == "request_entity_too_large"
    assert counts(app) == (0, 0)


def test_batch_refuses_a_bad_file_whole(app, client, auth, digit):
    files = [(io.BytesIO(digit[0]), "ok.png"), (io.BytesIO(b"not an image"), "bad.txt")]
    response = client.post("/api/v2/predict/batch", headers=auth.headers(), data={"files": files})
    assert response.status_code == 415
    assert "file 1 (bad.txt)" in response.get_json()["error"]["message"]
    assert counts(app) == (0, 0)


def test_large_batch_refusal_names_the_file_and_stores_nothing(app, client, auth):
    # 20 files: preprocessed in several processes; the refusal still names the right one.
    files = [(io.BytesIO(path.read_bytes()), path.name) for path, _ in fixture_digits()[:19]]
    files.insert(13, (io.BytesIO(png_bytes(Image.new("L", (90, 90), 255))), "blank.png"))
    response = client.post("/api/v2/predict/batch", headers=auth.headers(), data={"files": files})
    assert response.status_code == 422, response.get_json()
    assert response.get_json()["error"]["message"].startswith("file 13 (blank.png): ")
    assert counts(app) == (0, 0)


def test_a_batch_repeating_an_image_stores_it_once(app, client, auth, digit):
    files = [(io.BytesIO(digit[0]), f"{i}.png") for i in range(10)]
    response = client.post("/api/v2/predict/batch", headers=auth.headers(), data={"files": files})
    assert response.status_code == 200
    assert len({p["prediction_id"] for p in response.get_json()["predictions"]}) == 10
    assert counts(app) == (10, 1)


def test_batch_limit(make_app, digit):
    app = make_app(BATCH_MAX_FILES=3)
    client = app.test_client()
    from support import AuthActions

    headers = AuthActions(client, app).headers()
    files = [(io.BytesIO(digit[0]), f"{i}.png") for i in range(4)]
    response = client.post("/api/v2/predict/batch", headers=headers, data={"files": files})
    assert response.status_code == 422
    assert counts(app) == (0, 0)


def test_predict_rate_limits_answer_429_json(make_app, digit):
    app = make_app(RATELIMIT_ENABLED=True, RATELIMIT_V1_PREDICT="2 per day")
    client = app.test_client()
    from support import AuthActions

    headers = AuthActions(client, app).headers()
    statuses = [client.post("/api/v1/predict", headers=headers, data=upload(digit[0])).status_code for _ in range(3)]
    assert statuses == [200, 200, 429]
    limited = client.post("/api/v1/predict", headers=headers, data=upload(digit[0]))
    assert limited.get_json()["error"]["code"] == "rate_limited" and "Retry-After" in limited.headers


def test_ready_reports_the_model(client):
    response = client.get("/ready")
    assert response.status_code == 200
    assert response.get_json() == {"status": "ready", "database": "ok", "model_version": "base-1",
                                   "active_version": "base-1", "model_error": None}


def test_ready_is_503_without_a_model(make_app, tmp_path):
    empty = tmp_path / "no-models"
    empty.mkdir()
    app = make_app(MODEL_DIR=str(empty))
    response = app.test_client().get("/ready")
    assert response.status_code == 503 and response.get_json()["model_version"] is None
