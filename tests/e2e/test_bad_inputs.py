"""Bad input over real HTTP: every case gets the contract's JSON error and its status, and
nothing is stored (each table's row count is the same after the request as before).

One production-config gunicorn serves the whole module. ``REFUSED`` is the matrix: one row
per case, read as "this request, sent by this account, is answered with this status and
error code". ``ACCEPTED`` lists the odd-but-valid images whose right answer is a prediction.
"""

import base64
import io
import json
import sqlite3
from pathlib import Path

import numpy as np
import pytest
import requests
from PIL import Image

from support import FIXTURES, LiveServer

pytestmark = pytest.mark.e2e

MAX_CONTENT_LENGTH = 5 * 1024 * 1024  # config.py's default, which the server runs with
TABLES = ("users", "stored_images", "predictions", "feedback", "retrain_jobs", "model_versions", "revoked_tokens")


# Images --------------------------------------------------------------------------------

def encoded(image, fmt, **options):
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, **options)
    return buffer.getvalue()


def digit_image():
    """A handwritten 5 (MNIST, white paper), as a Pillow image in mode L."""
    return Image.open(FIXTURES / "mnist50" / "00025.png").convert("L")


def png(image=None):
    return encoded(image or digit_image(), "PNG")


def jpeg(image=None):
    return encoded((image or digit_image()).convert("RGB"), "JPEG", quality=90)


def sixteen_bit_png():
    pixels = np.asarray(digit_image(), dtype=np.uint16) * 257  # the full 16-bit range
    image = Image.fromarray(pixels)
    assert image.mode == "I;16"
    return encoded(image, "PNG")


def cmyk_jpeg():
    return encoded(digit_image().convert("CMYK"), "JPEG", quality=90)


def palette_png():
    return encoded(digit_image().convert("P"), "PNG")


def pixel_bomb():
    """A small PNG whose header claims 144 megapixels (a 1-bit canvas compresses to nothing)."""
    return encoded(Image.new("1", (12000, 12000), 1), "PNG")


def many_frame_gif(frames=300):
    """An animated GIF of a blank page: hundreds of frames, no digit in any of them."""
    images = [Image.new("L", (64, 64), 255) for _ in range(frames)]
    return encoded(images[0], "GIF", save_all=True, append_images=images[1:], duration=20, loop=0)


def extreme_aspect(width, height):
    """A thin strip: a line of ink along it, the rest paper."""
    image = Image.new("L", (width, height), 255)
    pixels = np.asarray(image).copy()
    if width > height:
        pixels[height // 2, width // 4: 3 * width // 4] = 0
    else:
        pixels[height // 4: 3 * height // 4, width // 2] = 0
    return encoded(Image.fromarray(pixels), "PNG")


SVG = b'<svg xmlns="http://www.w3.org/2000/svg" width="28" height="28"><text x="8" y="20">7</text></svg>'
PDF = b"%PDF-1.4\n1 0 obj << /Type /Catalog >> endobj\ntrailer << /Root 1 0 R >>\n%%EOF\n"


# Requests ------------------------------------------------------------------------------
# A case builds its request lazily: ``fn(ctx) -> dict of requests.request keyword arguments``,
# where ctx knows the accounts and the ids the module's fixture made.

def upload(data, name="digit.png", content_type="image/png", field="file"):
    return lambda ctx: {"files": [(field, (name, data() if callable(data) else data, content_type))]}


def raw(body, content_type=None):
    return lambda ctx: {"data": body, "headers": {"Content-Type": content_type} if content_type else {}}


def as_json(body):
    return lambda ctx: {"data": json.dumps(body(ctx) if callable(body) else body),
                        "headers": {"Content-Type": "application/json"}}


def feedback_on(pick, **label):
    """JSON feedback naming the prediction ``pick(ctx)``."""
    return as_json(lambda ctx: {"prediction_id": pick(ctx), **label})


def own(ctx):
    return ctx["own_prediction"]


def labelled_upload(label):
    return lambda ctx: {"files": [("file", ("digit.png", png(), "image/png"))], "data": {"label": label}}


def query(**params):
    return lambda ctx: {"params": params}


V2, V1, BATCH, FEEDBACK = "/api/v2/predict", "/api/v1/predict", "/api/v2/predict/batch", "/api/v2/feedback"
REGISTER, LOGIN = "/auth/register", "/auth/login"
ADMIN = "admin"

#        case                                   method  path       who    request                                                  status  code
REFUSED = [
    # Content types
    ("no content type",                          "POST", V2,       "user", raw(png()),                                              415, "unsupported_media_type"),
    ("text/plain body",                          "POST", V2,       "user", raw(b"7", "text/plain"),                                 415, "unsupported_media_type"),
    ("urlencoded form",                          "POST", V2,       "user", raw(b"file=abc", "application/x-www-form-urlencoded"),   415, "unsupported_media_type"),
    ("image/png body, not multipart",            "POST", V1,       "user", raw(png(), "image/png"),                                 415, "unsupported_media_type"),
    ("multipart without a boundary",             "POST", V2,       "user", raw(b"--x\r\n", "multipart/form-data"),                  400, "bad_request"),
    ("batch sent as JSON",                       "POST", BATCH,    "user", as_json({"files": ["AAAA"]}),                            415, "unsupported_media_type"),
    ("feedback as text/plain",                   "POST", FEEDBACK, "user", raw(b"prediction_id=1", "text/plain"),               415, "unsupported_media_type"),
    ("register with a form body",                "POST", REGISTER, "anon", raw(b"username=eve&password=long-enough", "application/x-www-form-urlencoded"), 415, "unsupported_media_type"),
    # The file field
    ("multipart without 'file'",                 "POST", V2,       "user", upload(png, field="image"),                              422, "validation_error"),
    ("empty file",                               "POST", V2,       "user", upload(b""),                                             400, "empty_upload"),
    ("two 'file' fields",                        "POST", V2,       "user", lambda ctx: {"files": [("file", ("a.png", png(), "image/png")),
                                                                                                  ("file", ("b.png", png(), "image/png"))]}, 422, "validation_error"),
    ("batch without files",                      "POST", BATCH,    "user", upload(png, field="other"),                              422, "validation_error"),
    ("batch of 65 files",                        "POST", BATCH,    "user", lambda ctx: {"files": [("files", (f"{i}.png", png(), "image/png")) for i in range(65)]}, 422, "validation_error"),
    ("batch with one text file",                 "POST", BATCH,    "user", lambda ctx: {"files": [("files", ("a.png", png(), "image/png")),
                                                                                                  ("files", ("b.txt", b"seven", "text/plain"))]}, 415, "not_an_image"),
    # JSON bodies and base64
    ("malformed JSON",                           "POST", V2,       "user", raw(b'{"image": ', "application/json"),                  400, "invalid_json"),
    ("JSON array",                               "POST", V2,       "user", as_json([png().hex()]),                                  422, "validation_error"),
    ("image is a number",                        "POST", V2,       "user", as_json({"image": 7}),                                   422, "validation_error"),
    ("invalid base64",                           "POST", V2,       "user", as_json({"image": "not*base64!"}),                       400, "invalid_base64"),
    ("base64 of text",                           "POST", V2,       "user", as_json({"image": base64.b64encode(b"a seven").decode()}), 415, "not_an_image"),
    ("base64 of nothing",                        "POST", V2,       "user", as_json({"image": ""}),                                  400, "empty_upload"),
    ("JSON over MAX_CONTENT_LENGTH",             "POST", V2,       "user", as_json({"image": "A" * (MAX_CONTENT_LENGTH + 1024)}),   413, "request_entity_too_large"),
    ("multipart over MAX_CONTENT_LENGTH",        "POST", V2,       "user", upload(b"\0" * (MAX_CONTENT_LENGTH + 1024)),             413, "request_entity_too_large"),
    # Files that are no usable image
    ("truncated PNG",                            "POST", V2,       "user", upload(lambda: png()[:len(png()) // 2]),                 415, "not_an_image"),
    ("truncated JPEG",                           "POST", V2,       "user", upload(lambda: jpeg()[:len(jpeg()) // 2], "d.jpg", "image/jpeg"), 415, "not_an_image"),
    ("decompression bomb (144 MP header)",       "POST", V2,       "user", upload(pixel_bomb),                                      413, "image_too_large"),
    ("GIF of 300 blank frames",                  "POST", V2,       "user", upload(many_frame_gif, "anim.gif", "image/gif"),         422, "no_digit_found"),
    ("SVG",                                      "POST", V2,       "user", upload(SVG, "seven.svg", "image/svg+xml"),               415, "not_an_image"),
    ("PDF",                                      "POST", V2,       "user", upload(PDF, "scan.pdf", "application/pdf"),              415, "not_an_image"),
    ("plain text",                               "POST", V1,       "user", upload(b"seven\n", "seven.txt", "text/plain"),           415, "not_an_image"),
    ("zero bytes (v1)",                          "POST", V1,       "user", upload(b""),                                             400, "empty_upload"),
    ("4000 wide, 1 high, a line along it",       "POST", V2,       "user", upload(lambda: extreme_aspect(4000, 1)),                 422, "no_digit_found"),
    ("1 wide, 4000 high, a line along it",       "POST", V2,       "user", upload(lambda: extreme_aspect(1, 4000)),                 422, "no_digit_found"),
    ("3000 x 60: a 1 would be 5 px once reduced", "POST", V2,      "user", upload(lambda: extreme_aspect(3000, 60)),                422, "no_digit_found"),
    ("blank page",                               "POST", V2,       "user", upload(lambda: png(Image.new("L", (200, 200), 255))),    422, "no_digit_found"),
    # Labels
    ("label a string",                           "POST", FEEDBACK, "user", feedback_on(own, label="3"),                             422, "validation_error"),
    ("label a float",                            "POST", FEEDBACK, "user", feedback_on(own, label=3.5),                             422, "validation_error"),
    ("label 10",                                 "POST", FEEDBACK, "user", feedback_on(own, label=10),                              422, "validation_error"),
    ("label -1",                                 "POST", FEEDBACK, "user", feedback_on(own, label=-1),                              422, "validation_error"),
    ("label null",                               "POST", FEEDBACK, "user", feedback_on(own, label=None),                            422, "validation_error"),
    ("label true",                               "POST", FEEDBACK, "user", feedback_on(own, label=True),                            422, "validation_error"),
    ("label false",                              "POST", FEEDBACK, "user", feedback_on(own, label=False),                           422, "validation_error"),
    ("label a list",                             "POST", FEEDBACK, "user", feedback_on(own, label=[3]),                             422, "validation_error"),
    ("label missing",                            "POST", FEEDBACK, "user", feedback_on(own),                                        422, "validation_error"),
    ("multipart label 'three'",                  "POST", FEEDBACK, "user", labelled_upload("three"),                                422, "validation_error"),
    ("multipart label 10",                       "POST", FEEDBACK, "user", labelled_upload("10"),                                   422, "validation_error"),
    ("multipart label '²'",                      "POST", FEEDBACK, "user", labelled_upload("²"),                                    422, "validation_error"),
    ("multipart label empty",                    "POST", FEEDBACK, "user", labelled_upload(""),                                     422, "validation_error"),
    # Ids
    ("prediction id 2**63",                      "POST", FEEDBACK, "user", feedback_on(lambda ctx: 2**63, label=3),                 422, "validation_error"),
    ("prediction id 10**20",                     "POST", FEEDBACK, "user", feedback_on(lambda ctx: 10**20, label=3),                422, "validation_error"),
    ("prediction id -1",                         "POST", FEEDBACK, "user", feedback_on(lambda ctx: -1, label=3),                    422, "validation_error"),
    ("prediction id a string",                   "POST", FEEDBACK, "user", feedback_on(lambda ctx: str(ctx["own_prediction"]), label=3), 422, "validation_error"),
    ("prediction id nobody has",                 "POST", FEEDBACK, "user", feedback_on(lambda ctx: 2**31 - 1, label=3),             404, "prediction_not_found"),
    ("someone else's prediction",                "POST", FEEDBACK, "user", feedback_on(lambda ctx: ctx["other_prediction"], label=3), 403, "forbidden"),
    ("job id 0",                                 "GET",  "/admin/retrain/0", ADMIN, query(),                                        404, "not_found"),
    ("job id -1",                                "GET",  "/admin/retrain/-1", ADMIN, query(),                                       404, "not_found"),
    ("job id 10**20",                            "GET",  "/admin/retrain/100000000000000000000", ADMIN, query(),                    404, "not_found"),
    ("unknown model version",                    "POST", "/admin/models/no-such-version/activate", ADMIN, query(),                  404, "model_version_not_found"),
    ("model version of 10 KB (request line)",    "POST", "/admin/models/" + "v" * 10240 + "/activate", ADMIN, query(),              414, "uri_too_long"),
    ("a header of 10 KB",                        "GET",  FEEDBACK, "user", lambda ctx: {"headers": {"X-Padding": "p" * 10240}},       431, "request_header_fields_too_large"),
    ("retrain force 'maybe'",                    "POST", "/admin/retrain", ADMIN, as_json({"force": "maybe"}),                      422, "validation_error"),
    # Accounts
    ("username with SQL",                        "POST", REGISTER, "anon", as_json({"username": "x' OR '1'='1", "password": "long-enough-1"}), 422, "validation_error"),
    ("username drops a table",                   "POST", REGISTER, "anon", as_json({"username": "bob'); DROP TABLE users;--", "password": "long-enough-1"}), 422, "validation_error"),
    ("username with a NUL",                      "POST", REGISTER, "anon", as_json({"username": "ev\x00e", "password": "long-enough-1"}), 422, "validation_error"),
    ("username with a newline",                  "POST", REGISTER, "anon", as_json({"username": "eve\n", "password": "long-enough-1"}), 422, "validation_error"),
    ("username with an escape sequence",         "POST", REGISTER, "anon", as_json({"username": "eve\x1b[31m", "password": "long-enough-1"}), 422, "validation_error"),
    ("username of 10 KB",                        "POST", REGISTER, "anon", as_json({"username": "e" * 10240, "password": "long-enough-1"}), 422, "validation_error"),
    ("username a number",                        "POST", REGISTER, "anon", as_json({"username": 12345, "password": "long-enough-1"}), 422, "validation_error"),
    ("password of 73 ASCII bytes",               "POST", REGISTER, "anon", as_json({"username": "eve", "password": "p" * 73}),  422, "validation_error"),
    ("password of 40 'é' (80 bytes)",            "POST", REGISTER, "anon", as_json({"username": "eve", "password": "é" * 40}),  422, "validation_error"),
    ("password a number",                        "POST", REGISTER, "anon", as_json({"username": "eve", "password": 123456789}), 422, "validation_error"),
    ("password null",                            "POST", REGISTER, "anon", as_json({"username": "eve", "password": None}),      422, "validation_error"),
    ("password a list",                          "POST", REGISTER, "anon", as_json({"username": "eve", "password": ["long-enough-1"]}), 422, "validation_error"),
    ("login password of 10 KB",                  "POST", LOGIN,    "anon", as_json({"username": "alice", "password": "p" * 10240}), 401, "invalid_credentials"),
    ("login password a number",                  "POST", LOGIN,    "anon", as_json({"username": "alice", "password": 12345678}), 422, "validation_error"),
    ("login username with SQL",                  "POST", LOGIN,    "anon", as_json({"username": "' OR 1=1 --", "password": "whatever-1"}), 401, "invalid_credentials"),
    # Query parameters
    ("page 0",                                   "GET",  FEEDBACK, "user", query(page=0),                                           422, "validation_error"),
    ("page -1",                                  "GET",  FEEDBACK, "user", query(page=-1),                                          422, "validation_error"),
    ("page 2**31",                               "GET",  FEEDBACK, "user", query(page=2**31),                                       422, "validation_error"),
    ("page 'abc'",                               "GET",  FEEDBACK, "user", query(page="abc"),                                       422, "validation_error"),
    ("per_page 0",                               "GET",  FEEDBACK, "user", query(per_page=0),                                       422, "validation_error"),
    ("per_page 101",                             "GET",  FEEDBACK, "user", query(per_page=101),                                     422, "validation_error"),
    ("per_page 1.5",                             "GET",  FEEDBACK, "user", query(per_page=1.5),                                     422, "validation_error"),
]

# Odd but valid: a digit is a digit whatever the pixel format. Refusing these would turn
# away real scans (16-bit greyscale), print workflows (CMYK) and small exports (palette).
ACCEPTED = [
    ("16-bit greyscale PNG", upload(sixteen_bit_png)),
    ("CMYK JPEG", upload(cmyk_jpeg, "d.jpg", "image/jpeg")),
    ("palette PNG", upload(palette_png)),
]


def row_counts(database):
    with sqlite3.connect(f"file:{database}?mode=ro", uri=True) as conn:
        return {table: conn.execute(f"SELECT COUNT(*) FROM {table}").fetchone()[0] for table in TABLES}


@pytest.fixture(scope="module")
def deployment(tmp_path_factory):
    """A server, a user (alice) with a prediction of her own, another user's prediction, an admin."""
    server = LiveServer(tmp_path_factory.mktemp("bad-inputs"))
    server.cli("db", "upgrade")
    server.start()
    try:
        headers = {"user": server.register("alice", "alice-password-1"), "anon": {},
                   ADMIN: server.create_admin("root", "root-password-1")}
        bob = server.register("bob", "bob-password-1")
        ids = {}
        for name, who in (("own_prediction", headers["user"]), ("other_prediction", bob)):
            answer = requests.post(server.url + V2, headers=who, files={"file": ("d.png", png(), "image/png")}, timeout=30)
            assert answer.status_code == 200, answer.text
            ids[name] = answer.json()["prediction_id"]
        yield server, headers, ids
    finally:
        server.stop()


def send(server, method, path, headers, request):
    kwargs = dict(request)
    kwargs["headers"] = {**headers, **kwargs.get("headers", {})}
    return requests.request(method, server.url + path, timeout=60, **kwargs)


@pytest.mark.parametrize("case, method, path, who, build, status, code", REFUSED, ids=[row[0] for row in REFUSED])
def test_bad_input_is_refused_with_its_json_error_and_nothing_is_stored(deployment, case, method, path, who, build,
                                                                         status, code):
    server, headers, ids = deployment
    database = Path(server.workdir) / "live.sqlite3"
    before = row_counts(database)

    response = send(server, method, path, headers[who], build(ids))

    assert response.status_code == status, response.text[:500]
    assert response.headers["Content-Type"].startswith("application/json")
    error = response.json()["error"]
    assert error["code"] == code, error
    assert isinstance(error["message"], str) and error["message"]
    assert row_counts(database) == before


@pytest.mark.parametrize("case, build", ACCEPTED, ids=[row[0] for row in ACCEPTED])
def test_odd_pixel_formats_of_a_digit_are_predicted(deployment, case, build):
    server, headers, ids = deployment
    response = send(server, "POST", V2, headers["user"], build(ids))
    assert response.status_code == 200, response.text
    assert response.json()["prediction"] == 5


def test_the_matrix_is_at_least_forty_cases():
    assert len(REFUSED) >= 40
