"""Attacks on authentication, over real HTTP.

Every admin endpoint, found in the app's url_map (so a new one is covered with no change
here), refuses every token in ``ATTACKS`` with the contract's JSON error, and nothing
changes. Then: logins that fail say the same thing and do the same bcrypt work whoever
the user is; guessing is rate-limited; behind a proxy, only the trusted X-Forwarded-For
hops decide who the client is.
"""

import base64
import json
import sqlite3
import time
from pathlib import Path

import bcrypt
import jwt
import re

import pytest
import requests

from app import create_app
from support import LiveServer

pytestmark = pytest.mark.e2e

TABLES = ("users", "stored_images", "predictions", "feedback", "retrain_jobs", "model_versions")


# The admin endpoints ----------------------------------------------------------------------

def _text_value(converter):
    """A value the path converter accepts: a version name, or a digest where 64 characters are needed."""
    return next(value for value in ("base-1", "0" * 64) if re.fullmatch(converter.regex, value))


def admin_endpoints():
    """(method, path) of every route whose view needs the admin role, path values filled in."""
    app = create_app("testing", test_config={"SQLALCHEMY_DATABASE_URI": "sqlite://", "MODEL_WATCH": False,
                                             "MODEL_PRELOAD": False})
    adapter = app.url_map.bind("localhost")
    endpoints = []
    for rule in app.url_map.iter_rules():
        if getattr(app.view_functions[rule.endpoint], "required_role", None) != "admin":
            continue
        values = {name: 1 if type(converter).__name__ == "IntegerConverter" else _text_value(converter)
                  for name, converter in rule._converters.items()}
        for method in sorted(rule.methods - {"HEAD", "OPTIONS"}):
            endpoints.append((method, adapter.build(rule.endpoint, values, method=method)))
    return endpoints


ADMIN_ENDPOINTS = admin_endpoints()


def test_every_route_under_admin_needs_the_admin_role():
    app = create_app("testing", test_config={"SQLALCHEMY_DATABASE_URI": "sqlite://", "MODEL_WATCH": False,
                                             "MODEL_PRELOAD": False})
    # The web blueprint's /admin is an HTML shell with no data: it signs in and then calls
    # the JSON endpoints, which are what must be guarded.
    under_admin = {rule.endpoint for rule in app.url_map.iter_rules()
                   if rule.rule.startswith("/admin") and not rule.endpoint.startswith("web.")}
    guarded = {endpoint for endpoint in under_admin
               if getattr(app.view_functions[endpoint], "required_role", None) == "admin"}
    assert under_admin and guarded == under_admin
    assert len(ADMIN_ENDPOINTS) >= 7


# Tokens ------------------------------------------------------------------------------------

def b64(data):
    return base64.urlsafe_b64encode(json.dumps(data, separators=(",", ":")).encode()).rstrip(b"=").decode()


def parts(token):
    header, payload, signature = token.split(".")
    pad = lambda s: s + "=" * (-len(s) % 4)  # noqa: E731
    return json.loads(base64.urlsafe_b64decode(pad(header))), json.loads(base64.urlsafe_b64decode(pad(payload))), signature


def bearer(token):
    return {"Authorization": f"Bearer {token}"}


def expired(ctx):
    _, payload, _ = parts(ctx["admin"]["access_token"])
    payload.update(iat=int(time.time()) - 3600, nbf=int(time.time()) - 3600, exp=int(time.time()) - 60)
    return bearer(jwt.encode(payload, ctx["secret"], algorithm="HS256"))


def signed_with_another_key(ctx):
    _, payload, _ = parts(ctx["admin"]["access_token"])
    return bearer(jwt.encode(payload, "not-the-server-key-" + "x" * 32, algorithm="HS256"))


def alg_none(ctx):
    _, payload, _ = parts(ctx["admin"]["access_token"])
    return bearer(f"{b64({'alg': 'none', 'typ': 'JWT'})}.{b64(payload)}.")


def alg_hs512(ctx):
    """The server's own key, another algorithm than the one it issues: refused all the same."""
    _, payload, _ = parts(ctx["admin"]["access_token"])
    return bearer(jwt.encode(payload, ctx["secret"], algorithm="HS512"))


def forged_role(ctx):
    """A user's own token with ``"role": "admin"`` written into it; the signature is the old one."""
    header, payload, signature = parts(ctx["user"]["access_token"])
    payload["role"] = "admin"
    return bearer(f"{b64(header)}.{b64(payload)}.{signature}")


#  attack                                     headers                                                    status  code
ATTACKS = [
    ("no token",                              lambda ctx: {},                                            401, "authorization_required"),
    ("not a bearer token",                    lambda ctx: {"Authorization": "Basic cm9vdDpyb290"},       401, "authorization_required"),
    ("garbage token",                         lambda ctx: bearer("not.a.token"),                         401, "invalid_token"),
    ("expired token",                         expired,                                                   401, "token_expired"),
    ("signed with another key",               signed_with_another_key,                                   401, "invalid_token"),
    ("alg: none",                             alg_none,                                                  401, "invalid_token"),
    ("alg: HS512 with the server's key",      alg_hs512,                                                 401, "invalid_token"),
    ("forged role claim",                     forged_role,                                               401, "invalid_token"),
    ("a user's token",                        lambda ctx: bearer(ctx["user"]["access_token"]),           403, "forbidden"),
    ("refresh token as access token",         lambda ctx: bearer(ctx["admin"]["refresh_token"]),         401, "invalid_token"),
    ("revoked token",                         lambda ctx: bearer(ctx["revoked"]["access_token"]),        401, "token_revoked"),
    ("deactivated admin's token",             lambda ctx: bearer(ctx["deactivated"]["access_token"]),    401, "account_inactive"),
    ("deleted admin's token",                 lambda ctx: bearer(ctx["deleted"]["access_token"]),        401, "account_inactive"),
    ("demoted admin's token",                 lambda ctx: bearer(ctx["demoted"]["access_token"]),        403, "forbidden"),
]


def sql(server, statement, *args):
    with sqlite3.connect(Path(server.workdir) / "live.sqlite3") as conn:
        conn.execute("PRAGMA foreign_keys=ON")
        conn.execute(statement, args)


def snapshot(server):
    with sqlite3.connect(f"file:{Path(server.workdir) / 'live.sqlite3'}?mode=ro", uri=True) as conn:
        counts = {table: conn.execute(f"SELECT COUNT(*) FROM {table}").fetchone()[0] for table in TABLES}
        versions = conn.execute("SELECT version, status, activated_at FROM model_versions ORDER BY id").fetchall()
    return counts, versions


def login(server, name, password):
    answer = requests.post(server.url + "/auth/login", json={"username": name, "password": password}, timeout=30)
    assert answer.status_code == 200, answer.text
    return answer.json()


def admin_tokens(server, name):
    """Register ``name``, make it an admin in the database, log in: its tokens carry the role."""
    password = f"{name}-password-1"
    assert requests.post(server.url + "/auth/register", json={"username": name, "password": password},
                         timeout=30).status_code == 201
    sql(server, "UPDATE users SET role = 'admin' WHERE username = ?", name)
    return login(server, name, password)


@pytest.fixture(scope="module")
def attacked(tmp_path_factory):
    server = LiveServer(tmp_path_factory.mktemp("auth-attacks"))
    server.cli("db", "upgrade")
    server.start()
    try:
        ctx = {"secret": server.env["JWT_SECRET_KEY"]}
        for name in ("admin", "revoked", "deactivated", "deleted", "demoted"):
            ctx[name] = admin_tokens(server, name)
        server.register("plain-user", "plain-user-password")
        ctx["user"] = login(server, "plain-user", "plain-user-password")
        assert requests.post(server.url + "/auth/logout", headers=bearer(ctx["revoked"]["access_token"]),
                             timeout=30).status_code == 200
        sql(server, "UPDATE users SET active = 0 WHERE username = 'deactivated'")
        sql(server, "DELETE FROM users WHERE username = 'deleted'")
        sql(server, "UPDATE users SET role = 'user' WHERE username = 'demoted'")
        yield server, ctx
    finally:
        server.stop()


@pytest.mark.parametrize("method, path", ADMIN_ENDPOINTS, ids=[f"{m} {p}" for m, p in ADMIN_ENDPOINTS])
def test_every_admin_endpoint_refuses_every_attack(attacked, method, path):
    server, ctx = attacked
    before = snapshot(server)
    answers = {}
    for attack, make_headers, status, code in ATTACKS:
        response = requests.request(method, server.url + path, headers=make_headers(ctx), json={}, timeout=30)
        assert response.headers["Content-Type"].startswith("application/json"), (attack, response.text)
        answers[attack] = (response.status_code, response.json().get("error", {}).get("code"))
    assert answers == {attack: (status, code) for attack, _, status, code in ATTACKS}
    assert snapshot(server) == before
    # The genuine admin gets past authentication (the endpoint answers for itself).
    genuine = requests.request(method, server.url + path, headers=bearer(ctx["admin"]["access_token"]), json={},
                               timeout=30)
    assert genuine.status_code not in (401, 403), genuine.text


def test_tokens_of_the_wrong_kind_are_refused_at_refresh(attacked):
    server, ctx = attacked
    wrong = {
        "access token as refresh token": bearer(ctx["admin"]["access_token"]),
        "deactivated admin's refresh token": bearer(ctx["deactivated"]["refresh_token"]),
    }
    for name, headers in wrong.items():
        response = requests.post(server.url + "/auth/refresh", headers=headers, timeout=30)
        assert response.status_code == 401, (name, response.text)
    assert requests.post(server.url + "/auth/refresh", headers=bearer(ctx["admin"]["refresh_token"]),
                         timeout=30).status_code == 200


# Logins ------------------------------------------------------------------------------------

def test_failed_logins_say_the_same_whoever_the_user_is(attacked):
    server, ctx = attacked
    tries = {
        "unknown user": {"username": "nobody-here", "password": "some-password-1"},
        "wrong password": {"username": "plain-user", "password": "not-the-password"},
        "deactivated user, right password": {"username": "deactivated", "password": "deactivated-password-1"},
        "password over 72 bytes": {"username": "plain-user", "password": "p" * 100},
    }
    answers = {name: requests.post(server.url + "/auth/login", json=body, timeout=30) for name, body in tries.items()}
    bodies = {name: (answer.status_code, answer.json()) for name, answer in answers.items()}
    assert len({json.dumps(body, sort_keys=True) for body in bodies.values()}) == 1, bodies
    assert bodies["unknown user"][0] == 401


def test_an_unknown_user_costs_the_same_bcrypt_work_as_a_wrong_password(app, client, auth, monkeypatch):
    """Counted, not timed: each failed login runs bcrypt once, at the configured cost."""
    auth.register("known-user", "known-password-1")
    with app.app_context():
        from app.entities import User
        from app.extensions import db

        db.session.add(User(username="asleep", password_hash=bcrypt.hashpw(b"asleep-password-1", bcrypt.gensalt(4)).decode(),
                            active=False))
        db.session.commit()
    client.post("/auth/login", json={"username": "warm-up", "password": "x" * 8})  # the dummy hash is made once
    calls = []
    real_hashpw = bcrypt.hashpw
    monkeypatch.setattr(bcrypt, "hashpw", lambda password, salt: calls.append(salt[:7]) or real_hashpw(password, salt))

    work = {}
    for name, body in {
        "unknown user": {"username": "nobody", "password": "some-password-1"},
        "wrong password": {"username": "known-user", "password": "wrong-password-1"},
        "inactive user": {"username": "asleep", "password": "asleep-password-1"},
        "right password": {"username": "known-user", "password": "known-password-1"},
    }.items():
        calls.clear()
        status = client.post("/auth/login", json=body).status_code
        work[name] = (status, list(calls))
    cost = f"$2b${app.config['BCRYPT_LOG_ROUNDS']:02d}$".encode()
    assert work == {
        "unknown user": (401, [cost]),
        "wrong password": (401, [cost]),
        "inactive user": (401, [cost]),
        "right password": (200, [cost]),
    }


def test_password_guessing_is_rate_limited_per_client_whatever_the_username(live_server):
    server = live_server(env={"RATELIMIT_ENABLED": "true", "RATELIMIT_LOGIN": "5 per minute"})
    assert requests.post(server.url + "/auth/register", json={"username": "target", "password": "target-password-1"},
                         timeout=30).status_code == 201
    statuses = []
    for i in range(7):
        # Another username each time, and a forged X-Forwarded-For: neither escapes the
        # limit, which is on the client's address (no trusted proxy: PROXY_FIX_HOPS=0).
        response = requests.post(server.url + "/auth/login", headers={"X-Forwarded-For": f"203.0.113.{i}"},
                                 json={"username": f"target{i % 2 or ''}", "password": f"guess-{i}"}, timeout=30)
        statuses.append(response.status_code)
    assert statuses == [401] * 5 + [429] * 2
    assert response.json()["error"]["code"] == "rate_limited" and int(response.headers["Retry-After"]) > 0
    right = requests.post(server.url + "/auth/login", json={"username": "target", "password": "target-password-1"},
                          timeout=30)
    assert right.status_code == 429  # the right password does not get round the limit either


def test_behind_a_proxy_only_the_trusted_hops_name_the_client(live_server):
    """PROXY_FIX_HOPS=1: the address the one trusted proxy appended is the client; whatever
    the client wrote before it (a forged first hop) changes nothing."""
    server = live_server(env={"RATELIMIT_ENABLED": "true", "RATELIMIT_LOGIN": "3 per minute", "PROXY_FIX_HOPS": "1"})

    def attempt(forwarded_for):
        return requests.post(server.url + "/auth/login", headers={"X-Forwarded-For": forwarded_for},
                             json={"username": "someone", "password": "a-guess-1"}, timeout=30).status_code

    # One client behind the proxy (198.51.100.7), forging a different first hop each time.
    assert [attempt(f"10.0.0.{i}, 198.51.100.7") for i in range(4)] == [401, 401, 401, 429]
    # Another client behind the same proxy has a budget of its own.
    assert attempt("198.51.100.8") == 401
