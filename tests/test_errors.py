"""Every error is JSON in one shape; nothing answers with HTML."""

import json
import subprocess
import sys
import textwrap

from support import ROOT

# What a process that only builds the app (``flask db upgrade``, the CLI) must not load.
ML_STACK = ("app.ml.preprocessing", "app.ml.kernels", "numba", "llvmlite", "cv2", "tensorflow", "keras", "tf2onnx")


def modules_loaded_by(code):
    script = textwrap.dedent(code) + "\nimport json, sys\nprint(json.dumps(sorted(sys.modules)))\n"
    result = subprocess.run([sys.executable, "-c", script], cwd=ROOT, capture_output=True, text=True, check=True)
    return set(json.loads(result.stdout.splitlines()[-1]))


def test_error_handling_and_db_upgrade_do_not_load_the_ml_stack(tmp_path):
    loaded = modules_loaded_by("import app.errors")
    assert not [m for m in loaded if m.startswith("app.ml") or m.split(".")[0] == "numpy"]
    loaded = modules_loaded_by(f"""
        import flask_migrate
        from app import create_app
        app = create_app("testing", {{"SQLALCHEMY_DATABASE_URI": "sqlite:///{tmp_path / 'db.sqlite3'}"}})
        with app.app_context():
            flask_migrate.upgrade()
    """)
    assert "flask_migrate" in loaded and "app.api.uploads" in loaded
    assert not [m for m in loaded if m.split(".")[0] in ML_STACK or m in ML_STACK]


def assert_error(response, status, code=None):
    assert response.status_code == status
    assert response.mimetype == "application/json"
    body = response.get_json()
    assert set(body) == {"error"} and {"code", "message"} <= set(body["error"])
    if code:
        assert body["error"]["code"] == code
    return body["error"]


def test_unknown_path_is_json_404(client):
    assert_error(client.get("/no/such/thing"), 404, "not_found")


def test_wrong_method_is_json_405(client):
    response = client.get("/auth/login")
    assert_error(response, 405, "method_not_allowed")
    assert "POST" in response.headers["Allow"]


def test_body_over_the_limit_is_json_413(make_app):
    app = make_app(MAX_CONTENT_LENGTH=1024)
    client = app.test_client()
    response = client.post("/auth/register", data="x" * 4096, content_type="application/json")
    assert_error(response, 413)


def test_unexpected_errors_are_json_500_without_internals(app, client):
    @app.get("/boom")
    def boom():
        raise RuntimeError("secret internal detail")

    response = client.get("/boom")
    error = assert_error(response, 500, "internal_error")
    assert "secret" not in error["message"]


def test_request_id_is_echoed(client):
    response = client.get("/health", headers={"X-Request-ID": "abc-123"})
    assert response.headers["X-Request-ID"] == "abc-123"
    generated = client.get("/health", headers={"X-Request-ID": "bad id; drop"})
    assert len(generated.headers["X-Request-ID"]) == 32


def test_health_and_openapi(client):
    assert client.get("/health").get_json() == {"status": "ok"}
    spec = client.get("/openapi.json").get_json()
    assert spec["openapi"].startswith("3.")
    for path in ["/auth/register", "/auth/login", "/login", "/auth/refresh", "/auth/logout", "/auth/me",
                 "/api/v1/predict", "/api/v2/predict", "/api/v2/predict/batch", "/api/v2/feedback",
                 "/admin/models", "/admin/models/{version}/activate", "/admin/feedback/stats",
                 "/health", "/ready"]:
        assert path in spec["paths"], path
    assert "bearerAuth" in spec["components"]["securitySchemes"]
    docs = client.get("/docs", follow_redirects=True)
    assert docs.status_code == 200 and b"swagger" in docs.data.lower()
    # The UI's files come from this server, not from a CDN the network may not reach.
    assert b"https://" not in docs.data
    for asset in ("swagger-ui-bundle.js", "swagger-ui.css"):
        response = client.get(f"/docs/{asset}")
        assert response.status_code == 200 and len(response.data) > 10_000
    assert client.get("/docs/../config.py").status_code == 404


def test_docs_do_not_count_against_rate_limits(make_app):
    """The default limits are fixed by the first app of a process that uses the shared
    limiter, so /openapi.json (default limits only) is checked on a real server instead:
    tests/e2e/test_auth_http.py."""
    client = make_app(RATELIMIT_ENABLED=True, RATELIMIT_DEFAULT="2 per day", RATELIMIT_LOGIN="2 per day").test_client()
    statuses = [client.get(path).status_code for path in ["/docs/", "/docs/swagger-ui.css", "/docs/swagger-ui-bundle.js"] * 2]
    assert statuses == [200] * 6
    # ...while limits still hold elsewhere (the login limit is read per request)
    logins = [client.post("/auth/login", json={"username": "nobody", "password": "x" * 12}).status_code
              for _ in range(3)]
    assert logins == [401, 401, 429]


def test_upload_endpoints_document_their_refusals(client):
    paths = client.get("/openapi.json").get_json()["paths"]
    for path in ("/api/v1/predict", "/api/v2/predict", "/api/v2/predict/batch", "/api/v2/feedback"):
        responses = paths[path]["post"]["responses"]
        for status in ("400", "413", "415", "422"):
            assert responses[status]["content"]["application/json"]["schema"] == {"$ref": "#/components/schemas/Error"}, (path, status)
