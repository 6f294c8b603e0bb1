"""Multipart parsing (app/multipart.py): the same results as Werkzeug's parser, its limits, clear errors."""

import io
import os

import pytest
from urllib3 import encode_multipart_formdata
from urllib3.fields import RequestField
from werkzeug.exceptions import RequestEntityTooLarge
from werkzeug.formparser import MultiPartParser

from app.entities import Prediction, StoredImage
from app.extensions import db
from app.multipart import parse_multipart


def encode(fields, boundary=None):
    body, content_type = encode_multipart_formdata(fields, boundary=boundary)
    return body, content_type.split("boundary=")[1].encode()


def both(body, boundary, **limits):
    """(ours, Werkzeug's) parse of ``body``, each as comparable plain data."""
    def plain(form, files):
        return (list(form.items(multi=True)),
                [(name, f.filename, f.content_type, f.read(), sorted(f.headers.items()))
                 for name, f in files.items(multi=True)])

    ours = plain(*parse_multipart(io.BytesIO(body), boundary, **limits))
    theirs = plain(*MultiPartParser(**limits).parse(io.BytesIO(body), boundary, len(body)))
    return ours, theirs


def tricky_bytes(boundary, n=5000):
    """Binary content holding line breaks and pieces of the boundary, as PNG data can."""
    rng = os.urandom(n)
    return rng[:1000] + b"\r\n--" + boundary[:10] + b"\r\n" + rng[1000:3000] + b"\r\n-" + b"\r" + rng[3000:]


def test_same_result_as_werkzeug_for_what_clients_send():
    boundary = b"b0undary-" + os.urandom(8).hex().encode()
    fields = [
        ("label", "7"),
        ("note", "façade ✓"),
        RequestField("file", tricky_bytes(boundary), filename="digit one.png"),
        RequestField("empty", b"", filename="empty.png"),
        RequestField("files", b"\x89PNG\r\n\x1a\n" + os.urandom(300), filename="ünïcode.png"),
        ("blank", ""),
    ]
    for field in fields:
        if isinstance(field, RequestField):
            field.make_multipart(content_type="image/png")
    body, b = encode(fields, boundary.decode())
    ours, theirs = both(body, b)
    assert ours == theirs
    assert [name for name, *_ in ours[1]] == ["file", "empty", "files"] and ours[1][1][3] == b""
    assert ours[0] == [("label", "7"), ("note", "façade ✓"), ("blank", "")]


def test_many_files_keep_their_order():
    files = [RequestField("files", os.urandom(200 + i), filename=f"{i}.png") for i in range(64)]
    for f in files:
        f.make_multipart(content_type="image/png")
    body, b = encode(files)
    ours, theirs = both(body, b)
    assert ours == theirs and [f[1] for f in ours[1]] == [f"{i}.png" for i in range(64)]


def test_text_charset_as_werkzeug_decodes_it():
    field = RequestField("name", "café".encode("latin-1"))
    field.make_multipart(content_type="text/plain; charset=iso-8859-1")
    body, b = encode([field])
    ours, theirs = both(body, b)
    assert ours == theirs and ours[0] == [("name", "café")]


def test_limits_are_werkzeugs():
    body, b = encode([("f", str(i)) for i in range(11)])
    for parse in (lambda: parse_multipart(io.BytesIO(body), b, max_form_parts=10),
                  lambda: MultiPartParser(max_form_parts=10).parse(io.BytesIO(body), b, len(body))):
        with pytest.raises(RequestEntityTooLarge):
            parse()
    assert len(parse_multipart(io.BytesIO(body), b, max_form_parts=11)[0].getlist("f")) == 11
    body, b = encode([("big", "x" * 1001)])
    with pytest.raises(RequestEntityTooLarge):
        parse_multipart(io.BytesIO(body), b, max_form_memory_size=1000)
    # the memory limit is for text fields; files of that size are fine
    body, b = encode({"file": ("a.png", b"x" * 5000)})
    assert parse_multipart(io.BytesIO(body), b, max_form_memory_size=1000)[1]["file"].read() == b"x" * 5000


@pytest.mark.parametrize("mangle", [
    lambda body, b: body[:-20],  # cut before the closing boundary
    lambda body, b: body.replace(b, b"another-boundary"),
    lambda body, b: body.replace(b"Content-Disposition: form-data; ", b"X-Other: "),
    lambda body, b: b"garbage" + body,
], ids=["truncated", "wrong boundary", "no content-disposition", "garbage first"])
def test_malformed_bodies_are_errors(mangle):
    body, b = encode({"file": ("a.png", b"data")})
    with pytest.raises(ValueError):
        parse_multipart(io.BytesIO(mangle(body, b)), b)


def test_malformed_body_is_a_clear_400_and_stores_nothing(app, client, auth):
    body, b = encode({"file": ("a.png", b"data")})
    response = client.post("/api/v2/predict", headers=auth.headers(), data=body[:-20],
                           content_type=f"multipart/form-data; boundary={b.decode()}")
    assert response.status_code == 400
    error = response.get_json()["error"]
    assert error["code"] == "bad_request" and error["message"].startswith("malformed multipart body")
    response = client.post("/api/v2/predict", headers=auth.headers(), data=body, content_type="multipart/form-data")
    assert response.status_code == 400 and "no boundary" in response.get_json()["error"]["message"]
    with app.app_context():
        assert db.session.scalar(db.select(db.func.count()).select_from(Prediction)) == 0
        assert db.session.scalar(db.select(db.func.count()).select_from(StoredImage)) == 0


def test_too_many_parts_is_413(app, client, auth):
    limit = app.config["MAX_FORM_PARTS"]
    body, b = encode([("f", "1")] * (limit + 1))
    response = client.post("/api/v2/predict/batch", headers=auth.headers(), data=body,
                           content_type=f"multipart/form-data; boundary={b.decode()}")
    assert response.status_code == 413 and response.get_json()["error"]["code"] == "request_entity_too_large"
