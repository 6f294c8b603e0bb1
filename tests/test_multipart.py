"""Multipart bodies through Werkzeug's parser (app/api/uploads.py): clear errors, its limits, tricky valid bodies."""

import io
import os

import pytest
from urllib3 import encode_multipart_formdata
from urllib3.fields import RequestField

from app.entities import Prediction, StoredImage
from app.extensions import db

from support import FIXTURES


@pytest.fixture
def png():
    return (FIXTURES / "mnist50" / "00000.png").read_bytes()


def encode(fields, boundary=None):
    body, content_type = encode_multipart_formdata(fields, boundary=boundary)
    return body, content_type


def count(model):
    return db.session.scalar(db.select(db.func.count()).select_from(model))


def tricky_bytes(boundary, n=5000):
    """Binary content holding line breaks and pieces of the boundary, as PNG data can."""
    rng = os.urandom(n)
    return rng[:1000] + b"\r\n--" + boundary[:10] + b"\r\n" + rng[1000:3000] + b"\r\n-" + b"\r" + rng[3000:]


def test_tricky_but_valid_bodies_are_parsed_right(app):
    boundary = b"b0undary-" + os.urandom(8).hex().encode()
    latin1 = RequestField("latin", "café".encode("latin-1"))
    latin1.make_multipart(content_type="text/plain; charset=iso-8859-1")
    fields = [
        ("label", "7"),
        ("note", "façade ✓"),
        RequestField("file", tricky_bytes(boundary), filename="digit one.png"),
        RequestField("empty", b"", filename="empty.png"),
        RequestField("files", b"\x89PNG\r\n\x1a\n" + b"x" * 300, filename="ünïcode 数字.png"),
        ("blank", ""),
        latin1,
    ]
    for field in fields[2:5]:
        field.make_multipart(content_type="image/png")
    body, content_type = encode(fields, boundary.decode())
    with app.test_request_context("/", method="POST", data=body, content_type=content_type):
        from flask import request

        assert list(request.form.items(multi=True)) == [
            ("label", "7"), ("note", "façade ✓"), ("blank", ""), ("latin", "café")]
        files = request.files
        assert [(name, f.filename) for name, f in files.items(multi=True)] == [
            ("file", "digit one.png"), ("empty", "empty.png"), ("files", "ünïcode 数字.png")]
        assert files["file"].read() == fields[2].data and files["empty"].read() == b""
        assert files["files"].mimetype == "image/png"


def test_many_files_keep_their_order(app):
    files = [RequestField("files", os.urandom(200 + i), filename=f"{i}.png") for i in range(64)]
    for f in files:
        f.make_multipart(content_type="image/png")
    body, content_type = encode(files)
    with app.test_request_context("/", method="POST", data=body, content_type=content_type):
        from flask import request

        received = request.files.getlist("files")
        assert [f.filename for f in received] == [f"{i}.png" for i in range(64)]
        assert [f.read() for f in received] == [f.data for f in files]


def test_non_latin1_filename_reaches_the_stored_upload(app, client, auth, png):
    field = RequestField("file", png, filename="цифра ✓.png")
    field.make_multipart(content_type="image/png")
    body, content_type = encode([field])
    response = client.post("/api/v2/predict", headers=auth.headers(), data=body, content_type=content_type)
    assert response.status_code == 200, response.get_json()
    with app.app_context():
        assert count(Prediction) == 1 and count(StoredImage) == 1


@pytest.mark.parametrize("mangle", [
    lambda body, b: body[:-20],  # cut before the closing boundary
    lambda body, b: body[: len(body) // 2],  # cut inside the file
    lambda body, b: body.replace(b, b"another-boundary"),
    lambda body, b: body.replace(b"Content-Disposition: form-data; ", b"X-Other: "),
], ids=["truncated", "cut in the file", "wrong boundary", "no content-disposition"])
@pytest.mark.parametrize("path", ["/api/v2/predict", "/api/v2/predict/batch", "/api/v2/feedback"])
def test_malformed_body_is_a_clear_400_and_stores_nothing(app, client, auth, png, path, mangle):
    body, content_type = encode({"file": ("a.png", png), "files": ("b.png", png),
                                 "label": "3"})
    boundary = content_type.split("boundary=")[1].encode()
    response = client.post(path, headers=auth.headers(), data=mangle(body, boundary), content_type=content_type)
    assert response.status_code == 400
    error = response.get_json()["error"]
    assert error["code"] == "bad_request" and error["message"].startswith("malformed multipart body: ")
    with app.app_context():
        assert count(Prediction) == 0 and count(StoredImage) == 0


def test_missing_boundary_is_a_clear_400(client, auth, png):
    body, _ = encode({"file": ("a.png", png)})
    response = client.post("/api/v2/predict", headers=auth.headers(), data=body, content_type="multipart/form-data")
    assert response.status_code == 400
    message = response.get_json()["error"]["message"]
    assert message.startswith("malformed multipart body: ") and "boundary" in message


@pytest.mark.parametrize("path", ["/api/v1/predict", "/api/v2/predict"])
def test_two_files_where_one_is_taken_are_422_and_nothing_is_stored(app, client, auth, png, path):
    body, content_type = encode([("file", ("a.png", png)), ("file", ("b.png", png))])
    response = client.post(path, headers=auth.headers(), data=body, content_type=content_type)
    assert response.status_code == 422 and response.get_json()["error"]["details"] == {"file": ["exactly one file"]}
    with app.app_context():
        assert count(Prediction) == 0 and count(StoredImage) == 0


def test_too_many_parts_is_413(app, client, auth):
    limit = app.config["MAX_FORM_PARTS"]
    body, content_type = encode([("f", "1")] * (limit + 1))
    response = client.post("/api/v2/predict/batch", headers=auth.headers(), data=body, content_type=content_type)
    assert response.status_code == 413 and response.get_json()["error"]["code"] == "request_entity_too_large"
    body, content_type = encode([("f", "1")] * (limit - 1) + [("files", "x")])
    assert client.post("/api/v2/predict/batch", headers=auth.headers(), data=body,
                       content_type=content_type).status_code != 413


def test_text_field_over_max_form_memory_size_is_413(make_app):
    app = make_app(MAX_FORM_MEMORY_SIZE=200_000)
    body, content_type = encode({"label": "x" * 200_001, "file": ("a.png", b"x" * 10)})
    with app.test_request_context("/", method="POST", data=body, content_type=content_type):
        from flask import request
        from werkzeug.exceptions import RequestEntityTooLarge

        with pytest.raises(RequestEntityTooLarge):
            request.form
    # the limit is for text fields; a file five times that size is fine
    body, content_type = encode({"file": ("a.png", b"x" * 1_000_000)})
    with app.test_request_context("/", method="POST", data=body, content_type=content_type):
        from flask import request

        assert request.files["file"].read() == b"x" * 1_000_000
