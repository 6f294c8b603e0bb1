"""Accounts and tokens: register, login, refresh, logout, me."""

from flask import request
from flask_jwt_extended import get_jwt, get_jwt_identity, jwt_required

from app.api import BEARER, Blueprint, limit_from_setting
from app.schemas import (
    AccessTokenSchema,
    LoginSchema,
    MessageSchema,
    RegisterSchema,
    TokenPairSchema,
    UserSchema,
    link_to,
)
from app.services import accounts

bp = Blueprint("auth", __name__, url_prefix="/auth", description="Accounts and tokens")
# The original service logged in at /login; old clients still do.
legacy_bp = Blueprint("legacy", __name__, description="Routes kept for old clients")

REFRESH = [{"refreshToken": []}]


@bp.post("/register")
@limit_from_setting("RATELIMIT_REGISTER")
@bp.arguments(RegisterSchema)
@bp.response(201, UserSchema)
@bp.alt_response(409, description="username taken")
@bp.doc(responses={"201": {"links": {"login": link_to(
    "/auth/login", requestBody={"username": "$response.body#/username", "password": "$request.body#/password"},
    description="log in with the new account")}}})
def register(data):
    """Create an account (role ``user``)."""
    return accounts.create_user(data["username"], data["password"], email=data.get("email"))


def _login(data):
    user = accounts.authenticate(data["username"], data["password"])
    return accounts.issue_tokens(user)


@bp.post("/login")
@limit_from_setting("RATELIMIT_LOGIN")
@bp.arguments(LoginSchema)
@bp.response(200, TokenPairSchema)
@bp.alt_response(401, description="wrong username or password")
@bp.doc(responses={"200": {"links": {
    "me": link_to("/auth/me", "get", parameters={"header.Authorization": "Bearer {$response.body#/access_token}"}),
    "predict": link_to("/api/v2/predict", parameters={"header.Authorization": "Bearer {$response.body#/access_token}"}),
    "refresh": link_to("/auth/refresh", parameters={"header.Authorization": "Bearer {$response.body#/refresh_token}"}),
}}})
def login(data):
    """Exchange credentials for an access token and a refresh token."""
    return _login(data)


@legacy_bp.post("/login")
@limit_from_setting("RATELIMIT_LOGIN")
@legacy_bp.arguments(LoginSchema)
@legacy_bp.response(200, TokenPairSchema)
def legacy_login(data):
    """Same as ``POST /auth/login`` (kept for clients of the original service)."""
    return _login(data)


@bp.post("/refresh")
@jwt_required(refresh=True)
@bp.response(200, AccessTokenSchema)
@bp.doc(security=REFRESH)
def refresh():
    """A new access token from a refresh token (send the refresh token as the bearer)."""
    return {"access_token": accounts.refresh_access_token(get_jwt_identity())}


@bp.post("/logout")
@jwt_required(verify_type=False)
@bp.response(200, MessageSchema)
@bp.doc(security=BEARER + REFRESH)
def logout():
    """Revoke the bearer token; a JSON ``{"refresh_token": ...}`` body revokes that one too."""
    accounts.revoke_token(get_jwt())
    body = request.get_json(silent=True) or {}
    if isinstance(body, dict) and isinstance(body.get("refresh_token"), str):
        accounts.revoke_encoded_token(body["refresh_token"], get_jwt_identity())
    return {"message": "token revoked"}


@bp.get("/me")
@jwt_required()
@bp.response(200, UserSchema)
@bp.doc(security=BEARER)
def me():
    """The caller's account."""
    return accounts.get_user(get_jwt_identity())
