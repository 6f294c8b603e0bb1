"""Accounts: registration, credentials, tokens and their revocation."""

from datetime import datetime, timezone
from functools import cache

from flask import current_app
from flask_jwt_extended import create_access_token, create_refresh_token, decode_token
from sqlalchemy.exc import IntegrityError

from app.entities import RevokedToken, User, utcnow
from app.errors import Conflict, NotFound, Unauthorized
from app.extensions import bcrypt, db

ROLES = ("user", "admin")


def create_user(username, password, *, email=None, role="user"):
    """Create an account; 409 when the username is taken (checked by the unique index)."""
    if role not in ROLES:
        raise ValueError(f"unknown role {role!r}")
    user = User(
        username=username,
        email=email,
        role=role,
        password_hash=bcrypt.generate_password_hash(password).decode("utf-8"),
    )
    db.session.add(user)
    try:
        db.session.commit()
    except IntegrityError:
        db.session.rollback()
        raise Conflict(f"username {username!r} is already taken", code="username_taken") from None
    return user


def authenticate(username, password):
    """Return the active user with these credentials, else a 401 that does not say which part was wrong."""
    user = db.session.execute(db.select(User).filter_by(username=username)).scalar_one_or_none()
    # Hash even when the user is unknown, so response time does not reveal which usernames exist.
    stored = user.password_hash if user else _dummy_hash(current_app.config["BCRYPT_LOG_ROUNDS"])
    valid = _check_password(stored, password)
    if not user or not valid or not user.active:
        raise Unauthorized("invalid username or password", code="invalid_credentials")
    return user


def _check_password(stored_hash, password):
    try:
        return bcrypt.check_password_hash(stored_hash, password)
    except ValueError:  # bcrypt 5 refuses passwords over 72 bytes: they can never match
        return False


@cache
def _dummy_hash(rounds):
    """A real hash to compare against for unknown users, at the configured cost (keyed on
    it: a hash cached at another cost would make unknown users answer faster or slower)."""
    return bcrypt.generate_password_hash("not-a-real-password", rounds).decode("utf-8")


def _access_token(user):
    """The role rides in a claim so role checks need no lookup."""
    return create_access_token(identity=str(user.id), additional_claims={"role": user.role})


def issue_tokens(user):
    return {"access_token": _access_token(user), "refresh_token": create_refresh_token(identity=str(user.id))}


def refresh_access_token(user_id):
    """A new access token with the role re-read from the database (a demoted admin loses it)."""
    user = db.session.get(User, int(user_id))
    if user is None or not user.active:
        raise Unauthorized("account is no longer active", code="account_inactive")
    return _access_token(user)


# Expired blocklist rows removed by each revocation.
REVOCATION_SWEEP = 100


def revoke_token(jwt_payload):
    """Put a token on the blocklist until it expires (idempotent)."""
    exists = db.session.execute(db.select(RevokedToken.id).filter_by(jti=jwt_payload["jti"])).first()
    if exists:
        return
    db.session.add(
        RevokedToken(
            jti=jwt_payload["jti"],
            token_type=jwt_payload.get("type", "access"),
            user_id=int(jwt_payload["sub"]),
            expires_at=datetime.fromtimestamp(jwt_payload["exp"], timezone.utc).replace(tzinfo=None)
            if "exp" in jwt_payload else None,
        )
    )
    try:
        db.session.commit()
    except IntegrityError:  # revoked concurrently by another request: same outcome
        db.session.rollback()
    # Only revocations add rows, so each one sweeping a bounded batch of expired rows keeps
    # the blocklist from growing without bound, with no scheduler to run.
    purge_expired_revocations(limit=REVOCATION_SWEEP)


def revoke_encoded_token(encoded, owner_id):
    """Revoke a token given as a string, if it is valid and belongs to ``owner_id``."""
    try:
        payload = decode_token(encoded, allow_expired=True)
    except Exception:  # any invalid token: nothing to revoke
        return False
    if payload.get("sub") != str(owner_id):
        return False
    revoke_token(payload)
    return True


def get_user(user_id):
    user = db.session.get(User, int(user_id))
    if user is None:
        raise NotFound("user not found", code="user_not_found")
    return user


def purge_expired_revocations(limit=None):
    """Drop blocklist rows for tokens that have expired anyway (at most ``limit``); returns how many."""
    expired = db.select(RevokedToken.id).where(RevokedToken.expires_at < utcnow())
    if limit is not None:
        expired = expired.limit(limit)
    result = db.session.execute(db.delete(RevokedToken).where(RevokedToken.id.in_(expired)))
    db.session.commit()
    return result.rowcount
