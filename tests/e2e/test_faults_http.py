"""Faults under a real gunicorn server: the database stopped and started again, Redis
stopped under the RQ backend and the rate limits, a corrupt model file at start-up.

The database and Redis here are servers of the test's own (not the shared ones of
``.ci/run``): the test stops and starts them. Killing the server mid-retrain and a dead SMTP
server are in ``test_learning_loop.py``; in-process faults in ``tests/test_faults.py``.
"""

import uuid

import pytest
import requests

from support import (FRESH, LOOP_ENV, LiveServer, OwnPostgres, OwnRedis, ask_every_worker, constant_model, feed,
                     free_port, fresh_postgres_database, mnist_png, wait_until)

pytestmark = pytest.mark.e2e

@pytest.fixture
def own_postgres():
    server = OwnPostgres()
    try:
        server.start()
        yield server
    finally:
        server.destroy()


@pytest.fixture
def own_redis(tmp_path):
    server = OwnRedis(tmp_path)
    try:
        server.start()
        yield server
    finally:
        server.stop()


def predict(server, headers, image):
    return requests.post(server.url + "/api/v2/predict", headers={**headers, **FRESH}, timeout=30,
                         files={"file": ("d.png", image, "image/png")})


def test_database_down_is_503_json_and_the_server_recovers_by_itself(own_postgres, tmp_path, replay_digits):
    server = LiveServer(tmp_path / "deploy", database_url=fresh_postgres_database(own_postgres.url, "digit_faults"),
                        env={"WEB_CONCURRENCY": "2", "SERVED_BY_HEADER": "true"})
    server.workdir.mkdir(exist_ok=True)
    server.cli("db", "upgrade")
    try:
        server.start()
        user = server.register("patient")
        image = mnist_png(replay_digits[0][3])
        before = ask_every_worker(lambda: predict(server, user, image))
        assert {r.status_code for r in before} == {200}

        own_postgres.stop()
        assert requests.get(server.url + "/health", timeout=30).status_code == 200
        ready = requests.get(server.url + "/ready", timeout=30)
        assert ready.status_code == 503
        assert ready.json()["database"] == "unavailable" and ready.json()["model_version"] == "base-1"
        down = ask_every_worker(lambda: predict(server, user, image))  # each worker answers, none hangs
        down += [requests.post(server.url + "/api/v2/feedback", headers=user, json={"prediction_id": 1, "label": 3},
                               timeout=30),
                 requests.post(server.url + "/auth/login", json={"username": "patient", "password": "user-password-1"},
                               timeout=30)]
        for response in down:
            assert response.status_code == 503, response.text
            assert response.headers["Content-Type"] == "application/json"
            assert response.json()["error"]["code"] == "database_unavailable"
            assert response.headers["Retry-After"]

        own_postgres.start()
        # Nobody restarts the server: the pool reconnects on its own.
        wait_until(lambda: all(requests.get(server.url + "/ready", headers=FRESH, timeout=30).status_code == 200
                               for _ in range(6)), 60, "ready again")
        after = ask_every_worker(lambda: predict(server, user, image))
        assert {r.status_code for r in after} == {200}
        stored = requests.post(server.url + "/api/v2/feedback", headers=user, timeout=30,
                               json={"prediction_id": after[-1].json()["prediction_id"], "label": 3})
        assert stored.status_code == 201, stored.text
        assert "database unavailable: connection failed" in server.log_path.read_text()

        # Workers that start while the database is down serve nothing yet, then catch up alone.
        own_postgres.stop()
        server.stop()
        server.start(wait_for="/health")
        ready = requests.get(server.url + "/ready", timeout=30)
        assert ready.status_code == 503 and ready.json()["model_version"] is None
        assert predict(server, user, image).json()["error"]["code"] == "database_unavailable"
        own_postgres.start()
        wait_until(lambda: all(requests.get(server.url + "/ready", headers=FRESH, timeout=30).status_code == 200
                               for _ in range(6)), 60, "ready after starting without a database")
        assert {r.status_code for r in ask_every_worker(lambda: predict(server, user, image))} == {200}
    finally:
        server.stop()


def test_redis_down_with_the_rq_backend_and_redis_rate_limits(live_server, own_redis, tiny_model_source, replay_digits):
    env = {**LOOP_ENV, "RETRAIN_BACKEND": "rq", "REDIS_URL": own_redis.url,
           "RETRAIN_QUEUE": f"retrain-faults-{uuid.uuid4().hex[:8]}", "RATELIMIT_ENABLED": "true",
           "RATELIMIT_STORAGE_URI": own_redis.url, "RATELIMIT_DEFAULT": "10000 per hour",
           "RATELIMIT_V2_PREDICT": "10000 per hour", "RATELIMIT_LOGIN": "5 per minute", "REDIS_SOCKET_TIMEOUT": "3"}
    server = live_server(env=env, workers=2, model_source=tiny_model_source)
    admin = server.create_admin()
    user = server.register("feeder")
    feed(server, user, replay_digits)
    image = mnist_png(replay_digits[0][3])
    assert predict(server, user, image).headers["X-RateLimit-Limit"] == "10000"

    own_redis.stop()
    # Rate limits: counted in each worker's memory meanwhile (RATELIMIT_IN_MEMORY_FALLBACK_ENABLED).
    # Requests in flight while a worker switches are let through unlimited
    # (RATELIMIT_SWALLOW_ERRORS); every one is answered, and once both have switched, limited.
    assert {r.status_code for r in ask_every_worker(lambda: predict(server, user, image))} == {200}
    answers = ask_every_worker(lambda: predict(server, user, image))
    assert {r.status_code for r in answers} == {200} and all("X-RateLimit-Limit" in r.headers for r in answers)
    logins = []
    while len(logins) < 2 * 5 + 1 and 429 not in [r.status_code for r in logins]:  # 5 a minute in each worker
        logins.append(requests.post(server.url + "/auth/login", headers=FRESH, timeout=30,
                                    json={"username": "feeder", "password": "user-password-1"}))
    assert {r.status_code for r in logins} <= {200, 429} and logins[-1].status_code == 429, \
        [r.status_code for r in logins]
    assert logins[-1].json()["error"]["code"] == "rate_limited"
    # Retraining: a clear 503, twice (the first refusal holds no slot), nothing left queued.
    for _ in range(2):
        response = requests.post(server.url + "/admin/retrain", headers=admin, json={}, timeout=30)
        assert response.status_code == 503, response.text
        assert response.json()["error"]["code"] == "retrain_queue_unavailable"
        job_id = response.json()["error"]["details"]["job_id"]
        job = requests.get(f"{server.url}/admin/retrain/{job_id}", headers=admin, timeout=30).json()
        assert job["status"] == "failed" and job["error"].startswith("not started")
    assert "Rate limit storage unreachable - falling back to in-memory storage" in server.log_path.read_text()

    own_redis.start()
    response = requests.post(server.url + "/admin/retrain", headers=admin, json={}, timeout=30)
    assert response.status_code == 202, response.text
    assert requests.get(server.url + response.json()["status_url"], headers=admin, timeout=30).json()["status"] == "queued"


def test_a_corrupt_model_file_at_start_up_serves_the_last_good_version(live_server, tiny_model_source, replay_digits):
    from app import create_app
    from app.extensions import db
    from app.services import model_versions

    server = live_server(env=LOOP_ENV, workers=2, model_source=tiny_model_source, start=False)
    # Version "three" saved and activated the way the admin API does it, then its file torn.
    app = create_app("testing", test_config={"SQLALCHEMY_DATABASE_URI": server.database_url,
                                             "MODEL_DIR": str(server.model_dir), "MODEL_WATCH": False})
    with app.app_context():
        model_versions.ensure_active_version()
        model_versions.save_version(constant_model(3), "three", parent_version="tiny-1", metrics={})
        model_versions.activate_version("three")
        db.session.remove()
        db.engine.dispose()
    path = server.model_dir / "three.onnx"
    path.write_bytes(path.read_bytes()[:1000])

    server.start()
    body = requests.get(server.url + "/ready", timeout=30).json()
    assert body["model_version"] == "tiny-1" and body["active_version"] == "three", body
    assert "sha256" in body["model_error"]
    assert "cannot load the active model three" in server.log() and "serving tiny-1 instead" in server.log()
    user = server.register("reader")
    answers = ask_every_worker(lambda: predict(server, user, mnist_png(replay_digits[0][3])))
    assert {(r.status_code, r.json()["model_version"]) for r in answers} == {(200, "tiny-1")}


@pytest.mark.parametrize("swallow", ["true", "false"])
def test_a_rate_limit_storage_error_the_fallback_does_not_catch_lets_the_request_through(live_server, swallow):
    # Flask-Limiter switches to its in-memory fallback on the first storage error and
    # re-raises the errors of requests already in flight: with several threads per worker,
    # some of those were 500s when Redis went down. RATELIMIT_SWALLOW_ERRORS (default true)
    # lets such a request through; with the fallback off every request is one, and without
    # the setting (the control) every one is a 500.
    dead = f"redis://127.0.0.1:{free_port()}/0"
    env = {"RATELIMIT_ENABLED": "true", "RATELIMIT_STORAGE_URI": dead, "REDIS_SOCKET_TIMEOUT": "1",
           "RATELIMIT_IN_MEMORY_FALLBACK_ENABLED": "false", "RATELIMIT_DEFAULT": "1000 per hour"}
    if swallow == "false":
        env["RATELIMIT_SWALLOW_ERRORS"] = "false"
    server = live_server(env=env, wait_for="/health")
    response = requests.post(server.url + "/auth/register", headers=FRESH, timeout=30,
                             json={"username": "alice", "password": "correct-horse-1"})
    assert response.status_code == (201 if swallow == "true" else 500), response.text
    if swallow == "false":
        assert response.json()["error"]["code"] == "internal_error"
