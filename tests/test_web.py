"""The browser pages as HTTP sees them (the browser itself: tests/e2e/test_browser.py), and
the caller's own predictions, which the drawing page lists."""

import io
import re
from html.parser import HTMLParser

import pytest

from support import mnist_png


@pytest.fixture
def app(tiny_app):
    return tiny_app


@pytest.mark.parametrize("path", ["/", "/admin"])
def test_pages_are_served_with_a_strict_content_security_policy(client, path):
    response = client.get(path)
    assert response.status_code == 200 and response.mimetype == "text/html"
    policy = response.headers["Content-Security-Policy"]
    directives = dict(d.strip().split(" ", 1) for d in policy.split(";"))
    assert directives["default-src"] == "'none'" and directives["script-src"] == "'self'"
    assert directives["style-src"] == "'self'" and directives["frame-ancestors"] == "'none'"
    assert "unsafe-inline" not in policy and "unsafe-eval" not in policy
    assert response.headers["X-Content-Type-Options"] == "nosniff"
    assert response.headers["Referrer-Policy"] == "no-referrer"
    html = response.get_data(as_text=True)
    # Nothing inline that the policy would block, and nothing from another host.
    assert not re.search(r"<script(?![^>]*\bsrc=)", html) and "<style" not in html and " style=" not in html
    assert not re.search(r"""(src|href)=["']https?://""", html)
    for asset in re.findall(r"""(?:src|href)=["'](/assets/[^"']+)""", html):
        served = client.get(asset)
        assert served.status_code == 200, asset
        assert served.headers["X-Content-Type-Options"] == "nosniff"


def test_scripts_never_put_tokens_in_web_storage_or_cookies(client):
    for name in ("api.js", "draw.js", "admin.js"):
        source = client.get(f"/assets/{name}").get_data(as_text=True)
        assert "localStorage" not in source and "sessionStorage" not in source and "document.cookie" not in source
        assert "innerHTML" not in source  # text from the API is never parsed as markup


def test_pages_do_not_count_against_rate_limits_but_the_api_still_does(make_app, tiny_model_dir):
    """The default limits are fixed by the first app of a process that uses the shared
    limiter, so they are checked on a real server too: tests/e2e/test_browser.py."""
    client = make_app(MODEL_DIR=str(tiny_model_dir), RATELIMIT_ENABLED=True, RATELIMIT_DEFAULT="2 per day",
                      RATELIMIT_LOGIN="2 per day").test_client()
    assert [client.get(path).status_code for path in ["/", "/admin", "/assets/app.css"] * 2] == [200] * 6
    logins = [client.post("/auth/login", json={"username": "nobody", "password": "x" * 12}).status_code
              for _ in range(3)]
    assert logins == [401, 401, 429]


def test_the_api_is_unchanged_by_the_pages(client):
    # JSON errors as before, no page headers on the API, bearer tokens only.
    response = client.get("/api/v2/feedback")
    assert response.status_code == 401 and response.get_json()["error"]["code"] == "authorization_required"
    assert "Content-Security-Policy" not in response.headers
    assert client.post("/").status_code == 405 and client.post("/").get_json()["error"]["code"]
    assert client.get("/nowhere").get_json()["error"]["code"] == "not_found"


def predict(client, headers, png):
    response = client.post("/api/v2/predict", headers=headers, data={"file": (io.BytesIO(png), "d.png")})
    assert response.status_code == 200, response.get_json()
    return response.get_json()


def test_own_predictions_are_listed_newest_first_with_their_labels_and_private(client, auth, replay_digits):
    x, _ = replay_digits
    mine = auth.headers("mine", "mine-password")
    theirs = auth.headers("theirs", "theirs-password")
    made = [predict(client, mine, mnist_png(x[i])) for i in range(3)]
    predict(client, theirs, mnist_png(x[5]))
    client.post("/api/v2/feedback", headers=mine, json={"prediction_id": made[1]["prediction_id"], "label": 4})

    page = client.get("/api/v2/predictions?page=1&per_page=2", headers=mine).get_json()
    assert page["total"] == 3 and page["pages"] == 2 and page["page"] == 1 and page["per_page"] == 2
    assert [item["prediction_id"] for item in page["items"]] == [made[2]["prediction_id"], made[1]["prediction_id"]]
    first, second = page["items"]
    assert first["feedback_label"] is None and second["feedback_label"] == 4
    assert first["prediction"] == made[2]["prediction"] and first["model_version"] == "tiny-1"
    assert len(first["probabilities"]) == 10 and first["api_version"] == "v2"
    assert first["created_at"].endswith("+00:00")
    last = client.get("/api/v2/predictions?page=2&per_page=2", headers=mine).get_json()
    assert [item["prediction_id"] for item in last["items"]] == [made[0]["prediction_id"]]
    assert client.get("/api/v2/predictions?page=9&per_page=2", headers=mine).get_json()["items"] == []


@pytest.mark.parametrize("query", ["per_page=0", "per_page=101", "page=0", "page=abc", "page=99999999999999999999"])
def test_own_predictions_refuse_bad_pages(client, auth, query):
    response = client.get(f"/api/v2/predictions?{query}", headers=auth.headers())
    assert response.status_code == 422 and response.get_json()["error"]["code"] == "validation_error"


def test_own_predictions_need_a_token_and_are_documented(client):
    assert client.get("/api/v2/predictions").status_code == 401
    operation = client.get("/openapi.json").get_json()["paths"]["/api/v2/predictions"]["get"]
    assert operation["security"] == [{"bearerAuth": []}]
    assert {p["name"] for p in operation["parameters"]} == {"page", "per_page"}


class _Elements(HTMLParser):
    """Every element of a page with an id, and every button: (tag, attributes)."""

    def __init__(self):
        super().__init__()
        self.by_id, self.buttons = {}, []

    def handle_starttag(self, tag, attrs):
        attributes = dict(attrs)
        if "id" in attributes:
            self.by_id[attributes["id"]] = (tag, attributes)
        if tag == "button":
            self.buttons.append(attributes)


def test_admin_page_has_an_accounts_panel_of_real_controls(client):
    page = _Elements()
    page.feed(client.get("/admin").get_data(as_text=True))
    assert page.by_id["accounts-title"][0] == "h1"
    assert page.by_id["accounts"][0] == "tbody"
    assert page.by_id["accounts-status"][1]["role"] == "status"
    filters = [page.by_id[f"accounts-{kind}"] for kind in ("all", "active", "inactive")]
    # The filters are toggle buttons: the one shown is pressed, and each names its ?active= value.
    assert [(tag, a["type"], a["aria-pressed"], a["data-active"]) for tag, a in filters] == [
        ("button", "button", "true", ""), ("button", "button", "false", "true"), ("button", "button", "false", "false")]
    assert page.by_id["accounts-filter"][1]["role"] == "group" and page.by_id["accounts-filter"][1]["aria-label"]
    assert page.by_id["accounts-prev"][0] == page.by_id["accounts-next"][0] == "button"
    assert all(button.get("type") in ("button", "submit") for button in page.buttons)  # none submits by accident


def test_admin_page_asks_the_account_endpoints_it_calls_and_opens_no_dialogs(client):
    script = client.get("/assets/admin.js").get_data(as_text=True)
    assert 'api("GET", `/admin/users?' in script and 'api("PATCH", `/admin/users/${' in script
    paths = client.get("/openapi.json").get_json()["paths"]
    assert "get" in paths["/admin/users"] and "patch" in paths["/admin/users/{user_id}"]
    for name in ("api.js", "draw.js", "admin.js"):
        source = client.get(f"/assets/{name}").get_data(as_text=True)
        assert not re.search(r"\b(confirm|alert|prompt)\(", source), name  # status lines say what happened
