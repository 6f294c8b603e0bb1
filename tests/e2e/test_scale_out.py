"""Scaling out: several gunicorn workers share rate limits through Redis and data through PostgreSQL.

Needs ``TEST_REDIS_URL`` (a scratch Redis: these tests delete its rate-limit keys) and, for
the PostgreSQL deployment, ``TEST_POSTGRES_URL``; each test skips without what it needs.
Every request opens a fresh connection, so gunicorn hands them to whichever worker accepts
first; ``X-Served-By`` says which one answered. The kernel decides who accepts, and a busy
machine may hand a short run of requests to one worker only, so checks that must hold in
every worker repeat their request until each worker has answered it.
"""

import os
import time
from concurrent.futures import ThreadPoolExecutor

import pytest
import requests

from support import FRESH, REDIS_SKIP_REASON, ask_every_worker

pytestmark = pytest.mark.e2e

LOGIN_LIMIT = 5


def redis_url():
    url = os.environ.get("TEST_REDIS_URL")
    if not url:
        pytest.skip(REDIS_SKIP_REASON)
    return url


def clear_rate_limits(url):
    """Forget counts left by earlier tests or runs: every test client here is 127.0.0.1."""
    import redis

    client = redis.Redis.from_url(url)
    try:
        keys = list(client.scan_iter(match="*LIMITER*"))
        if keys:
            client.delete(*keys)
    finally:
        client.close()


def scale_out_env(url, login_limit):
    """Several workers, limits counted in Redis; no model is loaded (these tests predict nothing)."""
    return {
        "RATELIMIT_ENABLED": "true",
        "RATELIMIT_STORAGE_URI": url,
        "RATELIMIT_LOGIN": login_limit,
        "SERVED_BY_HEADER": "true",
        "MODEL_PRELOAD": "false",
        "MODEL_WATCH": "false",
    }


def start_workers(live_server, workers=2, **kwargs):
    """A started deployment whose ``workers`` processes have each answered a request."""
    server = live_server(workers=workers, wait_for="/health", **kwargs)
    seen = set()
    deadline = time.monotonic() + 120
    while len(seen) < workers:
        assert time.monotonic() < deadline, f"only {seen} answered:\n{server.log()}"
        seen.add(requests.get(server.url + "/health", headers=FRESH, timeout=10).headers["X-Served-By"])
    return server


def post(server, path, **kwargs):
    return requests.post(server.url + path, headers={**FRESH, **kwargs.pop("headers", {})}, timeout=30, **kwargs)


def test_login_limit_is_counted_once_across_workers(live_server):
    url = redis_url()
    clear_rate_limits(url)
    server = start_workers(live_server, env=scale_out_env(url, f"{LOGIN_LIMIT} per minute"))
    assert post(server, "/auth/register", json={"username": "eve", "password": "eve-password-1"}).status_code == 201

    # Password guessing: failed and successful attempts count alike.
    attempts = [post(server, "/auth/login", json={"username": "eve", "password": password})
                for password in ["eve-password-1", "guess-1", "eve-password-1", "guess-2", "eve-password-1", "eve-password-1"]]
    assert [r.status_code for r in attempts] == [200, 401, 200, 401, 200, 429]
    # One counter, whichever worker answered.
    assert [r.headers["X-RateLimit-Remaining"] for r in attempts[:LOGIN_LIMIT]] == ["4", "3", "2", "1", "0"]

    limited = attempts[-1]
    assert limited.headers["Content-Type"].startswith("application/json")
    assert 0 < int(limited.headers["Retry-After"]) <= 60
    error = limited.json()["error"]
    assert error["code"] == "rate_limited" and "rate limit exceeded" in error["message"]

    # Every worker refuses from now on, including any that answered none of the attempts above.
    more = ask_every_worker(lambda: post(server, "/auth/login", json={"username": "eve", "password": "eve-password-1"}))
    assert {r.status_code for r in more} == {429}
    # Other routes have their own limits: the worker is refusing logins only.
    assert requests.get(server.url + "/health", headers=FRESH, timeout=10).status_code == 200


def test_accounts_across_workers_on_postgres(live_server):
    url = redis_url()
    clear_rate_limits(url)
    server = start_workers(live_server, database="postgres", env=scale_out_env(url, "200 per minute"))

    # The same name from eight clients at once: the unique index decides, across processes.
    with ThreadPoolExecutor(8) as pool:
        racing = list(pool.map(lambda _: post(server, "/auth/register", json={"username": "zed", "password": "zed-password-1"}),
                               range(8)))
    assert sorted(r.status_code for r in racing) == [201] + [409] * 7

    names = [f"user{i}" for i in range(6)]
    for name in names:
        assert post(server, "/auth/register", json={"username": name, "password": f"{name}-password"}).status_code == 201
    logins = [post(server, "/auth/login", json={"username": name, "password": f"{name}-password"}) for name in names]
    assert [r.status_code for r in logins] == [200] * len(names)

    # A token issued by one worker is honoured by every worker.
    token = {"Authorization": f"Bearer {logins[0].json()['access_token']}", **FRESH}
    answers = ask_every_worker(lambda: requests.get(server.url + "/auth/me", headers=token, timeout=10))
    assert {(r.status_code, r.json()["username"]) for r in answers} == {(200, "user0")}

    # Logged out in one request: refused by every worker (the blocklist is in the database).
    assert post(server, "/auth/logout", headers=token).status_code == 200
    refused = ask_every_worker(lambda: requests.get(server.url + "/auth/me", headers=token, timeout=10))
    assert {(r.status_code, r.json()["error"]["code"]) for r in refused} == {(401, "token_revoked")}

    import psycopg

    with psycopg.connect(server.database_url) as conn:
        assert conn.execute("SELECT count(*) FROM users").fetchone()[0] == len(names) + 1
        assert conn.execute("SELECT count(*) FROM revoked_tokens").fetchone()[0] == 1
