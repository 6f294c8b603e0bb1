"""Account administration over real HTTP: two gunicorn workers, one database.

An admin deactivates an account whose tokens are in use: its very next request is refused
by whichever worker takes it; the admin's own and the last admin's deactivation are
refused; the command line does the same as the API; activated again, the account logs in,
and the tokens it had before stay refused on every worker.
"""

import pytest
import requests

from support import FRESH, ask_every_worker, mnist_png

pytestmark = pytest.mark.e2e


def code(response):
    return response.status_code, response.json()["error"]["code"]


@pytest.mark.parametrize("database", ["sqlite", "postgres"])
def test_a_deactivated_account_is_refused_on_every_worker_at_once(live_server, replay_digits, database):
    server = live_server(workers=2, env={"SERVED_BY_HEADER": "true"}, database=database)
    admin = server.create_admin("boss", "boss-password-1")
    assert requests.post(server.url + "/auth/register", json={"username": "mallory", "password": "mallory-password-1"},
                         timeout=30).status_code == 201
    pair = requests.post(server.url + "/auth/login", json={"username": "mallory", "password": "mallory-password-1"},
                         timeout=30).json()
    access = {"Authorization": f"Bearer {pair['access_token']}", **FRESH}
    refresh = {"Authorization": f"Bearer {pair['refresh_token']}", **FRESH}
    image = mnist_png(replay_digits[0][0])

    def predict():
        return requests.post(server.url + "/api/v2/predict", headers=access, files={"file": ("d.png", image, "image/png")},
                             timeout=30)

    predicted = predict()
    assert predicted.status_code == 200, predicted.text
    users = requests.get(server.url + "/admin/users?role=user", headers=admin, timeout=30).json()
    assert [item["username"] for item in users["items"]] == ["mallory"]
    mallory = users["items"][0]["id"]

    answer = requests.patch(f"{server.url}/admin/users/{mallory}", headers=admin, json={"active": False}, timeout=30)
    assert answer.status_code == 200 and answer.json()["active"] is False, answer.text

    # The very next requests, on both workers: refused, whatever the endpoint.
    assert {code(r) for r in ask_every_worker(predict)} == {(401, "account_inactive")}
    feedback = requests.post(server.url + "/api/v2/feedback", headers=access, timeout=30,
                             json={"prediction_id": predicted.json()["prediction_id"], "label": 5})
    assert code(feedback) == (401, "account_inactive")
    assert code(requests.post(server.url + "/auth/refresh", headers=refresh, timeout=30)) == (401, "account_inactive")
    login = requests.post(server.url + "/auth/login", json={"username": "mallory", "password": "mallory-password-1"},
                          timeout=30)
    assert code(login) == (401, "invalid_credentials")
    inactive = requests.get(server.url + "/admin/users?active=false", headers=admin, timeout=30).json()
    assert [(item["username"], item["feedback"]) for item in inactive["items"]] == [
        ("mallory", {"accepted": 0, "quarantined": 0, "rejected": 0})]

    # An admin may not lock themself out, nor the service out of its last admin (the CLI).
    boss = requests.get(server.url + "/admin/users?role=admin", headers=admin, timeout=30).json()["items"][0]["id"]
    own = requests.patch(f"{server.url}/admin/users/{boss}", headers=admin, json={"active": False}, timeout=30)
    assert code(own) == (409, "cannot_deactivate_self")
    last = server.cli("users", "deactivate", "boss", check=False)
    assert last.returncode != 0 and "last_admin" in last.stderr, (last.stdout, last.stderr)
    assert requests.get(server.url + "/admin/users", headers=admin, timeout=30).status_code == 200

    # Activated again (from the command line): its old tokens stay refused on every worker,
    # the account logs in and predicts.
    server.cli("users", "activate", "mallory")
    assert {code(r) for r in ask_every_worker(predict)} == {(401, "token_revoked")}
    assert code(requests.post(server.url + "/auth/refresh", headers=refresh, timeout=30)) == (401, "token_revoked")
    again = requests.post(server.url + "/auth/login", json={"username": "mallory", "password": "mallory-password-1"},
                          timeout=30)
    assert again.status_code == 200
    fresh = {"Authorization": f"Bearer {again.json()['access_token']}"}
    assert requests.post(server.url + "/api/v2/predict", headers=fresh, files={"file": ("d.png", image, "image/png")},
                         timeout=30).status_code == 200
    listed = server.cli("users", "list").stdout.split("\n")
    assert any(line.split()[1:4] == ["mallory", "user", "active"] for line in listed if line.strip())
