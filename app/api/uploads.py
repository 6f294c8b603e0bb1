"""Reading image uploads from a request (multipart files or JSON base64), and answering
the preprocessing's refusals of them with an HTTP status."""

import base64
import binascii
import functools
from dataclasses import dataclass

import flask
from flask import request
from werkzeug.exceptions import BadRequest
from werkzeug.formparser import FormDataParser

from app.errors import ApiError, UnsupportedMediaType, ValidationFailed
from app.metrics import observe_refusal
from app.schemas import ErrorSchema


class _StrictFormDataParser(FormDataParser):
    """Werkzeug's form parser, except that a body it cannot parse is a 400 that says so.

    Werkzeug's default (``silent=True``) hands the view an empty form, and the client would
    be told a field is missing when its body was cut short or named another boundary.
    Its limits stay: more than ``MAX_FORM_PARTS`` parts or a text field over
    ``MAX_FORM_MEMORY_SIZE`` is a 413, a body over ``MAX_CONTENT_LENGTH`` too.
    """

    def __init__(self, *args, **kwargs):
        super().__init__(*args, silent=False, **kwargs)

    def parse(self, stream, mimetype, content_length, options=None):
        try:
            return super().parse(stream, mimetype, content_length, options)
        except ValueError as exc:
            kind = "multipart" if mimetype == "multipart/form-data" else "form"
            raise BadRequest(f"malformed {kind} body: {exc}") from None


class UploadRequest(flask.Request):
    form_data_parser_class = _StrictFormDataParser


@dataclass(frozen=True)
class Upload:
    data: bytes
    filename: str | None = None
    content_type: str | None = None


# OpenAPI request bodies for the upload endpoints (the schemas cannot express "either").
SINGLE_UPLOAD_BODY = {
    "required": True,
    "content": {
        "multipart/form-data": {
            "schema": {
                "type": "object",
                "properties": {"file": {"type": "string", "format": "binary"}},
                "required": ["file"],
            }
        }
    },
}
SINGLE_UPLOAD_OR_BASE64_BODY = {
    "required": True,
    "content": {
        **SINGLE_UPLOAD_BODY["content"],
        "application/json": {
            "schema": {
                "type": "object",
                "properties": {"image": {"type": "string", "format": "byte", "description": "base64 image file"}},
                "required": ["image"],
            }
        },
    },
}
MANY_UPLOADS_BODY = {
    "required": True,
    "content": {
        "multipart/form-data": {
            "schema": {
                "type": "object",
                "properties": {"files": {"type": "array", "items": {"type": "string", "format": "binary"}}},
                "required": ["files"],
            }
        }
    },
}


# The HTTP status of each refusal of the preprocessing (``ImageRejected.code``).
REFUSAL_STATUS = {"empty_upload": 400, "not_an_image": 415, "image_too_large": 413, "no_digit_found": 422}

# The refusals every upload endpoint can answer with, for the OpenAPI document.
UPLOAD_ERRORS = {
    400: "empty upload, malformed multipart body or invalid base64",
    413: "body over MAX_CONTENT_LENGTH, image over MAX_IMAGE_PIXELS, or too many multipart parts",
    415: "not an image, or neither multipart/form-data nor JSON",
    422: "no digit found in the image, or a required field missing",
}


def upload_endpoint(blueprint):
    """Decorator for the views that take images: answer the preprocessing's refusals with
    their status (REFUSAL_STATUS) and list UPLOAD_ERRORS among the documented responses."""

    def decorate(view):
        @functools.wraps(view)
        def answering_refusals(*args, **kwargs):
            # Imported here: the ML stack loads with the first upload, not with every
            # process that builds the app (``flask db upgrade``).
            from app.ml.preprocessing import ImageRejected

            try:
                return view(*args, **kwargs)
            except ImageRejected as exc:
                observe_refusal(exc.code)
                raise ApiError(str(exc), status=REFUSAL_STATUS.get(exc.code, 400), code=exc.code) from exc

        for status, description in UPLOAD_ERRORS.items():
            answering_refusals = blueprint.alt_response(status, schema=ErrorSchema, description=description)(
                answering_refusals
            )
        return answering_refusals

    return decorate


def _unsupported():
    return UnsupportedMediaType("send the image as multipart/form-data (field 'file') or JSON {\"image\": \"<base64>\"}")


def read_json_object():
    """The request's JSON body, which must be an object."""
    body = request.get_json(silent=True)
    if body is None:
        raise ApiError("request body is not valid JSON", code="invalid_json")
    if not isinstance(body, dict):
        raise ValidationFailed("request body must be a JSON object")
    return body


def _from_file_storage(storage):
    return Upload(storage.read(), storage.filename, storage.mimetype or None)


def read_multipart_file(field="file"):
    if not request.mimetype.startswith("multipart/form-data"):
        raise _unsupported()
    files = request.files.getlist(field)
    if not files:
        raise ValidationFailed(f"multipart field '{field}' is required", details={field: ["required"]})
    if len(files) > 1:  # which one was meant? Answering for the first would hide the mistake
        raise ValidationFailed(f"send one file in '{field}', not {len(files)}", details={field: ["exactly one file"]})
    return _from_file_storage(files[0])


def read_single_upload(allow_base64=False):
    """One image from multipart ``file`` or, where allowed, JSON ``{"image": base64}``."""
    if allow_base64 and request.is_json:
        image = read_json_object().get("image")
        if not isinstance(image, str):
            raise ValidationFailed("'image' must be a base64 string", details={"image": ["required"]})
        if image.startswith("data:") and "," in image:  # accept data URLs from browsers' canvases
            image = image.split(",", 1)[1]
        try:
            data = base64.b64decode(image, validate=True)
        except (binascii.Error, ValueError):
            raise ApiError("'image' is not valid base64", code="invalid_base64") from None
        return Upload(data, None, None)
    return read_multipart_file()


def read_many_uploads(field="files", limit=64):
    """Several images from repeated multipart fields, in the order sent."""
    if not request.mimetype.startswith("multipart/form-data"):
        raise _unsupported()
    files = request.files.getlist(field)
    if not files:
        raise ValidationFailed(f"multipart field '{field}' is required", details={field: ["required"]})
    if len(files) > limit:
        raise ValidationFailed(f"at most {limit} files per batch", details={field: [f"at most {limit}"]})
    return [_from_file_storage(f) for f in files]
