"""The account flow against a real gunicorn server over real HTTP."""

import pytest
import requests

pytestmark = pytest.mark.e2e


def test_account_flow_and_admin_from_cli(live_server):
    server = live_server()
    base = server.url

    created = requests.post(base + "/auth/register", json={"username": "dora", "password": "dora-password"}, timeout=10)
    assert created.status_code == 201 and created.json()["role"] == "user"
    assert requests.post(base + "/auth/register", json={"username": "dora", "password": "dora-password"}, timeout=10).status_code == 409

    tokens = requests.post(base + "/login", json={"username": "dora", "password": "dora-password"}, timeout=10).json()
    access = {"Authorization": f"Bearer {tokens['access_token']}"}
    assert requests.get(base + "/auth/me", headers=access, timeout=10).json()["username"] == "dora"
    assert requests.get(base + "/admin/models", headers=access, timeout=10).status_code == 403

    refreshed = requests.post(base + "/auth/refresh", headers={"Authorization": f"Bearer {tokens['refresh_token']}"}, timeout=10)
    assert refreshed.status_code == 200
    assert requests.post(base + "/auth/logout", headers=access, timeout=10).status_code == 200
    revoked = requests.get(base + "/auth/me", headers=access, timeout=10)
    assert revoked.status_code == 401 and revoked.json()["error"]["code"] == "token_revoked"

    wrong = requests.post(base + "/auth/login", json={"username": "dora", "password": "wrong-password"}, timeout=10)
    assert wrong.status_code == 401 and wrong.headers["Content-Type"].startswith("application/json")

    admin = server.create_admin("chief", "chief-password-1")
    models = requests.get(base + "/admin/models", headers=admin, timeout=10)
    assert models.status_code == 200
    assert models.json()["active_version"]


def test_production_server_refuses_to_start_without_secrets(live_server):
    server = live_server(env={"SECRET_KEY": "", "JWT_SECRET_KEY": ""}, migrate=False, start=False)
    with pytest.raises(AssertionError, match="SECRET_KEY"):
        server.start(timeout=30)


def test_docs_and_the_openapi_document_do_not_count_against_limits(live_server):
    server = live_server(env={"RATELIMIT_ENABLED": "true", "RATELIMIT_DEFAULT": "3 per day"})
    paths = ["/openapi.json", "/docs/", "/docs/swagger-ui-bundle.js"] * 4
    assert [requests.get(server.url + path, timeout=10).status_code for path in paths] == [200] * 12
    limited = [requests.get(server.url + "/auth/me", timeout=10).status_code for _ in range(4)]
    assert limited == [401, 401, 401, 429]  # the default limits do hold elsewhere
