"""Token rules: what goes in a token, how revocation is checked, who may call what."""

import math
from datetime import timezone
from functools import wraps

from flask import g
from flask_jwt_extended import get_jwt, get_jwt_identity, verify_jwt_in_request
from sqlalchemy import bindparam, exists, select

from app.entities import RevokedToken, User
from app.errors import Forbidden, error_response
from app.extensions import db, jwt

# Run on every authenticated request, so built once, on the tables: building the Select and
# its ORM compile state each time cost more than the lookup. One statement, two indexed
# probes (the caller's row by primary key, the token's jti): no row means the account was
# deleted. Never cached: a token revoked, or an account deactivated, on one worker is
# refused by all of them at once. The row's cut-off and role (for ``role_required``) come
# along in the same statement.
_USERS, _REVOKED = User.__table__, RevokedToken.__table__
TOKEN_STANDING = select(
    _USERS.c.active,
    _USERS.c.role,
    _USERS.c.tokens_valid_after,
    exists().where(_REVOKED.c.jti == bindparam("jti")).label("revoked"),
).where(_USERS.c.id == bindparam("user_id"))


def cutoff_second(cutoff):
    """The whole second (Unix time) in which an account's token cut-off falls."""
    if cutoff.tzinfo is None:  # SQLite hands the timestamp back without its zone: it is UTC
        cutoff = cutoff.replace(tzinfo=timezone.utc)
    return math.floor(cutoff.timestamp())


def issued_before_cutoff(iat, cutoff):
    """Whether a token issued at ``iat`` may predate the account's cut-off (None: none).

    ``iat`` is whole seconds, rounded down, while the cut-off has microseconds: a token of the
    cut-off's own second may come from before it or after it, so it is refused too. None can
    be issued in that second after the cut-off that should work: login and refresh are
    refused while the account is inactive, and activating it again waits for the next second
    (``account_admin.set_active``).
    """
    return cutoff is not None and iat <= cutoff_second(cutoff)


def caller_id():
    """The verified caller's user id (a token's ``sub`` is a string, as JWT requires)."""
    return int(get_jwt_identity())


def role_required(role):
    """Allow only a token whose ``role`` claim is ``role``, of an active account that still
    has that role.

    The claim alone would let a demoted admin in until the access token expires, so the
    role the account has now counts too: the token check in ``init_app`` read it in the
    statement that refuses a deactivated or deleted account. ``required_role`` on the view
    lets tests find every endpoint that needs a role.
    """

    def decorator(view):
        @wraps(view)
        def wrapper(*args, **kwargs):
            verify_jwt_in_request()
            if get_jwt().get("role") != role or g.account_role != role:
                raise Forbidden(f"this endpoint requires the {role} role")
            return view(*args, **kwargs)

        wrapper.required_role = role
        return wrapper

    return decorator


def init_app(app):
    """Register the JWT callbacks: revocation check and JSON errors for token failures."""

    @jwt.token_in_blocklist_loader
    def _is_refused(_header, payload):
        g.user_id = payload.get("sub")  # every verified token passes here: log lines name the caller
        row = db.session.execute(TOKEN_STANDING, {"user_id": int(payload["sub"]), "jti": payload["jti"]}).first()
        g.account_role = row.role if row is not None else None
        # The library only lets this say "revoked": _revoked below tells the client which.
        if row is None or not row.active:
            g.token_refusal = "account_inactive"
        elif row.revoked or issued_before_cutoff(payload.get("iat", 0), row.tokens_valid_after):
            g.token_refusal = "token_revoked"  # logged out, or issued before a deactivation
        else:
            g.token_refusal = None
        return g.token_refusal is not None

    @jwt.unauthorized_loader
    def _missing(reason):
        return error_response(401, reason, code="authorization_required")

    @jwt.invalid_token_loader
    def _invalid(reason):
        return error_response(401, f"invalid token: {reason}", code="invalid_token")

    @jwt.expired_token_loader
    def _expired(_header, _payload):
        return error_response(401, "token has expired", code="token_expired")

    @jwt.revoked_token_loader
    def _revoked(_header, _payload):
        if g.get("token_refusal") == "account_inactive":
            return error_response(401, "account is no longer active", code="account_inactive")
        return error_response(401, "token has been revoked", code="token_revoked")
