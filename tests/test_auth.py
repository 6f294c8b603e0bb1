"""Accounts and tokens through the Flask test client (the full WSGI stack)."""

from datetime import datetime, timedelta, timezone

import pytest

from app.entities import RevokedToken, User
from app.extensions import db
from app.services import accounts


def test_register_login_me_refresh_logout(client, auth):
    created = auth.register(email="alice@example.com")
    assert created.status_code == 201
    assert created.get_json() == {"id": created.get_json()["id"], "username": "alice", "role": "user"}

    tokens = auth.login().get_json()
    assert set(tokens) == {"access_token", "refresh_token"}
    access = {"Authorization": f"Bearer {tokens['access_token']}"}
    refresh = {"Authorization": f"Bearer {tokens['refresh_token']}"}

    me = client.get("/auth/me", headers=access)
    assert me.status_code == 200 and me.get_json()["username"] == "alice"

    refreshed = client.post("/auth/refresh", headers=refresh)
    assert refreshed.status_code == 200
    new_access = {"Authorization": f"Bearer {refreshed.get_json()['access_token']}"}
    assert client.get("/auth/me", headers=new_access).status_code == 200

    # An access token cannot refresh, a refresh token cannot call the API.
    assert client.post("/auth/refresh", headers=access).status_code == 401
    assert client.get("/auth/me", headers=refresh).status_code == 401

    out = client.post("/auth/logout", headers=access)
    assert out.status_code == 200
    refused = client.get("/auth/me", headers=access)
    assert refused.status_code == 401
    assert refused.get_json()["error"]["code"] == "token_revoked"
    # Other tokens stay valid until they are revoked too.
    assert client.get("/auth/me", headers=new_access).status_code == 200


def test_logout_can_revoke_the_refresh_token_too(client, auth):
    auth.register()
    tokens = auth.login().get_json()
    access = {"Authorization": f"Bearer {tokens['access_token']}"}
    assert client.post("/auth/logout", headers=access, json={"refresh_token": tokens["refresh_token"]}).status_code == 200
    again = client.post("/auth/refresh", headers={"Authorization": f"Bearer {tokens['refresh_token']}"})
    assert again.status_code == 401


def test_legacy_login_path(client, auth):
    auth.register()
    response = client.post("/login", json={"username": "alice", "password": "correct-horse-1"})
    assert response.status_code == 200 and "access_token" in response.get_json()


def test_wrong_password_and_unknown_user_get_the_same_401(client, auth):
    auth.register()
    wrong = auth.login(password="not-the-password")
    unknown = auth.login(username="nobody")
    assert wrong.status_code == unknown.status_code == 401
    assert wrong.get_json() == unknown.get_json()
    assert wrong.get_json()["error"]["code"] == "invalid_credentials"


def test_duplicate_username_is_409(auth):
    assert auth.register().status_code == 201
    again = auth.register(password="another-password")
    assert again.status_code == 409
    assert again.get_json()["error"]["code"] == "username_taken"


def test_malformed_json_is_400(client):
    response = client.post("/auth/register", data="{not json", content_type="application/json")
    assert response.status_code == 400
    assert "error" in response.get_json()


@pytest.mark.parametrize("path", ["/auth/register", "/auth/login", "/login"])
def test_a_body_that_is_not_json_is_415_not_missing_fields(client, app, path):
    response = client.post(path, data={"username": "eve", "password": "long-enough-1"})  # a form
    assert response.status_code == 415 and response.get_json()["error"]["code"] == "unsupported_media_type"
    with app.app_context():
        assert db.session.scalar(db.select(db.func.count(User.id))) == 0


@pytest.mark.parametrize(
    "body, field",
    [
        ({"password": "long-enough-1"}, "username"),
        ({"username": "bob"}, "password"),
        ({"username": "bob", "password": "short"}, "password"),
        ({"username": "b", "password": "long-enough-1"}, "username"),
        ({"username": "bad name!", "password": "long-enough-1"}, "username"),
        ({"username": "bob\n", "password": "long-enough-1"}, "username"),  # `$` alone lets this through
        ({"username": "bob", "password": "é" * 40}, "password"),  # 40 characters, 80 bytes
        ({"username": "bob", "password": "x" * 73}, "password"),
        ({"username": "bob", "password": "long-enough-1", "email": "not-an-email"}, "email"),
    ],
)
def test_invalid_registration_is_422_with_field_details(client, app, body, field):
    response = client.post("/auth/register", json=body)
    assert response.status_code == 422
    error = response.get_json()["error"]
    assert error["code"] == "validation_error"
    assert field in error["details"]
    with app.app_context():
        assert db.session.scalar(db.select(db.func.count(User.id))) == 0


def test_password_is_stored_as_bcrypt_hash(app, auth):
    auth.register(password="correct-horse-1")
    with app.app_context():
        user = db.session.execute(db.select(User)).scalar_one()
        assert user.password_hash.startswith("$2b$")
        assert "correct-horse-1" not in user.password_hash
        from app.extensions import bcrypt

        assert bcrypt.check_password_hash(user.password_hash, "correct-horse-1")


def test_missing_and_garbage_tokens_are_401_json(client):
    missing = client.get("/auth/me")
    assert missing.status_code == 401 and missing.get_json()["error"]["code"] == "authorization_required"
    garbage = client.get("/auth/me", headers={"Authorization": "Bearer not.a.token"})
    assert garbage.status_code in (401, 422) and "error" in garbage.get_json()


def test_non_admin_gets_403_on_admin_endpoints(client, auth):
    headers = auth.headers()
    for method, path in [("get", "/admin/models"), ("get", "/admin/feedback/stats"), ("post", "/admin/retrain")]:
        response = getattr(client, method)(path, headers=headers, json={})
        assert response.status_code == 403, path
        assert response.get_json()["error"]["code"] == "forbidden"


def test_refresh_rereads_the_role(client, app, auth):
    auth.register()
    tokens = auth.login().get_json()
    with app.app_context():
        user = db.session.execute(db.select(User)).scalar_one()
        user.role = "admin"
        db.session.commit()
    refreshed = client.post("/auth/refresh", headers={"Authorization": f"Bearer {tokens['refresh_token']}"})
    admin = {"Authorization": f"Bearer {refreshed.get_json()['access_token']}"}
    assert client.get("/admin/models", headers=admin).status_code == 200


def test_deactivated_user_cannot_log_in_or_refresh(client, app, auth):
    auth.register()
    tokens = auth.login().get_json()
    with app.app_context():
        db.session.execute(db.update(User).values(active=False))
        db.session.commit()
    assert auth.login().status_code == 401
    assert client.post("/auth/refresh", headers={"Authorization": f"Bearer {tokens['refresh_token']}"}).status_code == 401


def test_logout_writes_the_blocklist(client, app, auth):
    headers = auth.headers()
    client.post("/auth/logout", headers=headers)
    client.post("/auth/logout", headers=headers)  # already revoked: 401, no second row
    with app.app_context():
        assert db.session.scalar(db.select(db.func.count(RevokedToken.id))) == 1


def test_login_is_rate_limited_with_retry_after(make_app):
    app = make_app(RATELIMIT_ENABLED=True, RATELIMIT_LOGIN="3 per minute")
    client = app.test_client()
    statuses = [client.post("/auth/login", json={"username": "x", "password": "wrong-password"}).status_code for _ in range(4)]
    assert statuses == [401, 401, 401, 429]
    limited = client.post("/auth/login", json={"username": "x", "password": "wrong-password"})
    assert limited.status_code == 429
    assert int(limited.headers["Retry-After"]) > 0
    assert limited.get_json()["error"]["code"] == "rate_limited"


def _blocklist_rows(app, *expiries):
    """Blocklist rows for other users' old tokens, expiring at the given times."""
    with app.app_context():
        owner = accounts.create_user("old-timer", "old-timer-password")
        for i, expires_at in enumerate(expiries):
            db.session.add(RevokedToken(jti=f"old-{i}", token_type="access", user_id=owner.id, expires_at=expires_at))
        db.session.commit()


def test_each_logout_sweeps_expired_revocations(client, app, auth):
    now = datetime.now(timezone.utc).replace(tzinfo=None)
    _blocklist_rows(app, now - timedelta(days=2), now - timedelta(minutes=1), now + timedelta(days=1))
    client.post("/auth/logout", headers=auth.headers())
    with app.app_context():
        remaining = sorted(db.session.scalars(db.select(RevokedToken.jti)))
    assert len(remaining) == 2 and "old-2" in remaining  # the unexpired row and the new revocation


def test_purge_revocations_command_deletes_only_expired_rows(app, runner):
    now = datetime.now(timezone.utc).replace(tzinfo=None)
    _blocklist_rows(app, now - timedelta(hours=1), now - timedelta(hours=2), now + timedelta(hours=1), None)
    result = runner.invoke(args=["purge-revocations"])
    assert result.exit_code == 0, result.output
    assert "2 expired revocations deleted" in result.output
    with app.app_context():
        assert sorted(db.session.scalars(db.select(RevokedToken.jti))) == ["old-2", "old-3"]


def test_two_trusted_proxies_take_the_client_from_the_second_hop_from_the_right(make_app):
    app = make_app(RATELIMIT_ENABLED=True, RATELIMIT_LOGIN="1 per minute", PROXY_FIX_HOPS=2)
    client = app.test_client()

    def attempt(forwarded_for):
        return client.post("/auth/login", json={"username": "x", "password": "wrong-password"},
                           headers={"X-Forwarded-For": forwarded_for}).status_code

    # client 198.51.100.7, then the two proxies' addresses; what the client forged before them is ignored
    assert attempt("203.0.113.1, 198.51.100.7, 10.0.0.1") == 401
    assert attempt("203.0.113.2, 198.51.100.7, 10.0.0.2") == 429
    assert attempt("198.51.100.8, 10.0.0.1") == 401
