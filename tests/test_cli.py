"""CLI commands: create-admin and status."""

from app.entities import User
from app.extensions import db


def test_create_admin_from_stdin_then_call_an_admin_endpoint(app, client, runner):
    result = runner.invoke(args=["create-admin", "boss", "--password-stdin", "--email", "boss@example.com"],
                           input="a-strong-password\n")
    assert result.exit_code == 0, result.output
    with app.app_context():
        user = db.session.execute(db.select(User).filter_by(username="boss")).scalar_one()
        assert user.role == "admin" and user.email == "boss@example.com"
    token = client.post("/auth/login", json={"username": "boss", "password": "a-strong-password"}).get_json()["access_token"]
    response = client.get("/admin/models", headers={"Authorization": f"Bearer {token}"})
    assert response.status_code == 200


def test_create_admin_refuses_a_weak_password(app, runner):
    result = runner.invoke(args=["create-admin", "boss", "--password-stdin"], input="short\n")
    assert result.exit_code != 0
    assert "password" in result.output
    with app.app_context():
        assert db.session.scalar(db.select(db.func.count(User.id))) == 0


def test_create_admin_promotes_an_existing_user_with_their_password(app, auth, runner):
    auth.register("carol", "carol-password")
    wrong = runner.invoke(args=["create-admin", "carol", "--password-stdin"], input="not-her-password\n")
    assert wrong.exit_code != 0
    ok = runner.invoke(args=["create-admin", "carol", "--password-stdin"], input="carol-password\n")
    assert ok.exit_code == 0, ok.output
    with app.app_context():
        assert db.session.execute(db.select(User.role).filter_by(username="carol")).scalar_one() == "admin"


def test_status_tells_how_to_create_the_first_admin(runner):
    result = runner.invoke(args=["status"])
    assert result.exit_code == 0
    assert "create-admin" in result.output
