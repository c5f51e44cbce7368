"""Bearer JWTs with flask-jwt-extended.

Production: Keycloak-style RS256 tokens, keys from a JWKS URL (by `kid`) or a PEM public key,
issuer and audience checked when configured. The lab: HS256 tokens signed with a generated
secret (`controlplane token`). Admins carry the configured role in `realm_access.roles`,
`resource_access[client].roles` or a top-level `roles` claim.
"""
from __future__ import annotations

import datetime as dt
import logging
import re
import threading
import time
import uuid

import jwt as pyjwt
from flask import Flask, current_app
from flask_jwt_extended import get_jwt, verify_jwt_in_request
from flask_jwt_extended.default_callbacks import default_decode_key_callback

from . import user_ids
from .config import Settings
from .errors import Unauthorized
from .extensions import jwt
from .services.identity import Identity

LAB_ISSUER = "controlplane-lab"
JWKS_KEY = "controlplane.jwks"
# Text no column, Redis key or log line can hold: NUL, and UTF-16 surrogates (a JSON "\ud800"
# decodes to a str that cannot be encoded as UTF-8).
UNUSABLE_TEXT = re.compile("[\x00\ud800-\udfff]")

log = logging.getLogger(__name__)


def init_auth(app: Flask, settings: Settings, render_error) -> None:
    """Token checks for the app; `render_error` (api/errors.py) answers a refused token in the
    envelope of the API that was called."""
    settings.require_auth()
    warn_unchecked_claims(settings)
    app.extensions["controlplane.verified_tokens"] = _VerifiedTokens()
    app.config["JWT_TOKEN_LOCATION"] = ["headers"]
    app.config["JWT_IDENTITY_CLAIM"] = settings.jwt_user_claim
    app.config["JWT_ERROR_MESSAGE_KEY"] = "message"
    app.config["JWT_DECODE_LEEWAY"] = 30  # seconds of clock skew tolerated between the IdP and us
    if settings.jwt_secret:
        app.config["JWT_SECRET_KEY"] = settings.jwt_secret
        app.config["JWT_ALGORITHM"] = "HS256"
        app.config["JWT_DECODE_ALGORITHMS"] = ["HS256"]
    else:
        app.config["JWT_ALGORITHM"] = "RS256"
        app.config["JWT_DECODE_ALGORITHMS"] = ["RS256"]
        if settings.jwt_public_key:
            app.config["JWT_PUBLIC_KEY"] = settings.jwt_public_key
    if settings.jwt_issuer:
        app.config["JWT_DECODE_ISSUER"] = settings.jwt_issuer
    if settings.jwt_audience:
        app.config["JWT_DECODE_AUDIENCE"] = settings.jwt_audience
    jwt.init_app(app)
    # `jwt` is one manager shared by every app in the process, so its loaders must not capture this
    # app's settings: the JWKS client lives in the app, the loader looks it up per request.
    app.extensions[JWKS_KEY] = (pyjwt.PyJWKClient(settings.jwt_jwks_url, cache_jwk_set=True, lifespan=300, timeout=5)
                                if settings.jwt_jwks_url else None)

    @jwt.decode_key_loader
    def _key_for(header, payload):
        jwks = current_app.extensions.get(JWKS_KEY)
        if jwks is None:
            return default_decode_key_callback(header, payload)  # JWT_SECRET_KEY or JWT_PUBLIC_KEY
        try:
            return jwks.get_signing_key(header.get("kid")).key
        except Exception as exc:  # unknown kid or JWKS unreachable: a bad token, not a 500
            raise pyjwt.InvalidTokenError(f"no signing key: {exc}") from None

    @jwt.token_verification_loader
    def _is_usable(header, payload):
        return refusal(payload) is None

    def _reject(message):
        return render_error(Unauthorized(message))

    jwt.unauthorized_loader(lambda reason: _reject("Missing bearer token"))
    jwt.invalid_token_loader(lambda reason: _reject("Invalid token"))
    jwt.expired_token_loader(lambda header, payload: _reject("Token has expired"))
    jwt.token_verification_failed_loader(lambda header, payload: _reject(refusal(payload) or "Not an access token"))


def warn_unchecked_claims(settings: Settings) -> None:
    """Outside the lab, say loudly at start that tokens' issuer or audience go unchecked: then any
    token the configured key verifies is accepted, whichever client of the identity provider (or,
    with a shared key, whichever realm) it was issued to."""
    if settings.lab:
        return
    unset = [name for name, value in (("CONTROLPLANE_JWT_ISSUER", settings.jwt_issuer),
                                      ("CONTROLPLANE_JWT_AUDIENCE", settings.jwt_audience)) if not value]
    if unset:
        log.warning("SECURITY: %s not set: bearer tokens are accepted without checking their %s; any token "
                    "signed by the configured key is honoured, including tokens the identity provider issued "
                    "to other clients. Set %s to the identity provider's values.", " and ".join(unset),
                    " and ".join({"CONTROLPLANE_JWT_ISSUER": "issuer (iss)",
                                  "CONTROLPLANE_JWT_AUDIENCE": "audience (aud)"}[name] for name in unset),
                    " and ".join(unset))


def refusal(claims: dict) -> str | None:
    """Why a token whose signature, expiry, issuer and audience checked out is still refused, or None.
    Keycloak marks ID and refresh tokens with another typ: only access tokens are accepted. A token
    without a numeric `exp` would be valid forever (PyJWT checks exp only when it is present)."""
    if claims.get("typ", "Bearer") != "Bearer":
        return "Not an access token"
    exp = claims.get("exp")
    if isinstance(exp, bool) or not isinstance(exp, (int, float)):
        return "Token has no expiry"
    return None


class _VerifiedTokens:
    """Claims of bearer tokens verified lately, by the token's exact text: the same bytes verify the
    same way, so a token seen again within VERIFIED_TTL seconds is not parsed and checked again (the
    parse is most of a request's cost in PyJWT). Expiry is checked again on every use; only fully
    verified tokens get in; bounded, oldest out first; per process."""

    def __init__(self, size: int = 20000, ttl: float = 60.0):
        self.size, self.ttl = size, ttl
        self._items: dict[str, tuple[float, dict]] = {}
        self._lock = threading.Lock()

    def get(self, token: str) -> dict | None:
        found = self._items.get(token)
        if found is None:
            return None
        until, claims = found
        if time.time() >= until:
            with self._lock:
                self._items.pop(token, None)
            return None
        return claims

    def put(self, token: str, claims: dict) -> None:
        now = time.time()
        exp = claims.get("exp")
        if refusal(claims) is not None:  # only usable tokens, which all expire
            return
        until = min(now + self.ttl, exp)  # no float(exp): an exp of 400 digits does not fit in one
        if until <= now:
            return
        with self._lock:
            if len(self._items) >= self.size:
                for key in list(self._items)[: self.size // 10 or 1]:
                    del self._items[key]
            self._items[token] = (until, claims)

    def clear(self) -> None:
        with self._lock:
            self._items.clear()



def _bearer_token() -> str | None:
    from flask import request
    header = request.headers.get("Authorization", "")
    scheme, _, token = header.partition(" ")
    return token.strip() if scheme.lower() == "bearer" and token.strip() else None


def verified_claims() -> dict:
    """The request's verified token claims (flask-jwt-extended's checks, or the cache of tokens it
    verified lately); raises as verify_jwt_in_request does."""
    token = _bearer_token()
    cache = current_app.extensions.get("controlplane.verified_tokens")
    if token and cache is not None:
        claims = cache.get(token)
        if claims is not None:
            return claims
    try:
        verify_jwt_in_request()
    except (OverflowError, TypeError, RecursionError) as exc:
        # PyJWT lets these out for claims of absurd shapes (exp: 1e999 is OverflowError in int()).
        raise Unauthorized("Invalid token") from exc
    claims = get_jwt()
    if token and cache is not None and claims:
        cache.put(token, claims)
    return claims


def current_identity(settings: Settings) -> Identity:
    """Verify the request's bearer token and return who it is for. The claims are kept in
    `g.verified_claims` (one verification per request)."""
    from flask import g
    claims = g.get("verified_claims")
    if not claims:
        claims = g.verified_claims = verified_claims()
    return identity_of(settings, claims)


def identity_from_token(settings: Settings, token: str) -> Identity:
    """Verify a bearer token given outside a request's Authorization header (the WebSocket's auth
    message, the shares' WebDAV requests) the way the API does. Needs an app context."""
    from flask_jwt_extended import decode_token
    try:
        claims = decode_token(token)
    except Exception:  # expired, bad signature, wrong audience, not a JWT
        raise Unauthorized("Invalid or expired token") from None
    problem = refusal(claims)
    if problem:
        raise Unauthorized(problem)
    return identity_of(settings, claims)


def identity_of(settings: Settings, claims: dict) -> Identity:
    """Who verified claims are for. A claim the control plane reads that has the wrong shape makes
    the token unusable (401), whatever signed it: never a 500 further on."""
    user_id = claims.get(settings.jwt_user_claim)
    if not isinstance(user_id, str) or not user_id:
        raise Unauthorized("Token has no user identity")
    if UNUSABLE_TEXT.search(user_id):
        raise Unauthorized(f"Token claim {settings.jwt_user_claim} holds unusable characters")
    why = user_ids.problem(user_id)  # too long, control characters...: no name outside could be made of it
    if why:
        raise Unauthorized(f"Token claim {settings.jwt_user_claim} is not a usable user id: {why}",
                           details={"userId": why})
    for claim in ("email", "name"):
        value = claims.get(claim)
        if value is not None and not isinstance(value, str):
            raise Unauthorized(f"Token claim {claim} must be a string")
        if value and UNUSABLE_TEXT.search(value):
            raise Unauthorized(f"Token claim {claim} holds unusable characters")
    return Identity(user_id=user_id, is_admin=settings.jwt_admin_role in roles_of(claims, settings.jwt_client_id),
                    name=claims.get("name"), **_email_of(claims))


def _email_of(claims: dict) -> dict:
    """The email proves who the caller is (invitations are answered by it) only when the identity
    provider says it verified it: `email_verified` is JSON true. Keycloak always sends the claim;
    a token without it, or with anything else in it, carries an unverified email, which is never used."""
    email = claims.get("email")
    unverified = bool(email) and claims.get("email_verified") is not True
    return {"email": None if unverified else email, "email_unverified": unverified}


def roles_of(claims: dict, client_id: str = "") -> set[str]:
    """The token's roles, from Keycloak's shapes: `roles` [str], `realm_access` {"roles": [str]},
    and with a client id `resource_access` {client: {"roles": [str]}}. A claim that is absent or null
    holds none; any other shape raises Unauthorized."""
    def role_list(value, where: str) -> list:
        if value is None:
            return []
        if not isinstance(value, list) or not all(isinstance(role, str) for role in value):
            raise Unauthorized(f"Token claim {where} must be a list of strings")
        return value

    def mapping(value, where: str) -> dict:
        if value is None:
            return {}
        if not isinstance(value, dict):
            raise Unauthorized(f"Token claim {where} must be an object")
        return value

    roles = set(role_list(claims.get("roles"), "roles"))
    roles.update(role_list(mapping(claims.get("realm_access"), "realm_access").get("roles"), "realm_access.roles"))
    if client_id:
        client = mapping(mapping(claims.get("resource_access"), "resource_access").get(client_id),
                         f"resource_access.{client_id}")
        roles.update(role_list(client.get("roles"), f"resource_access.{client_id}.roles"))
    return roles


def mint_lab_token(settings: Settings, user_id: str, admin: bool = False, email: str | None = None,
                   name: str | None = None, ttl: dt.timedelta = dt.timedelta(hours=12),
                   email_verified: bool = True) -> str:
    """An HS256 access token shaped like Keycloak's, signed with the lab's secret. The lab is its own
    identity provider: its emails are verified (`email_verified`, as Keycloak sends it) unless asked."""
    if not settings.jwt_secret:
        raise RuntimeError("No CONTROLPLANE_JWT_SECRET: lab tokens can only be minted for an HS256 setup")
    now = dt.datetime.now(dt.timezone.utc)
    claims = {
        "jti": uuid.uuid4().hex, "iat": now, "nbf": now, "exp": now + ttl,
        "iss": settings.jwt_issuer or LAB_ISSUER, "typ": "Bearer",
        settings.jwt_user_claim: user_id, "preferred_username": user_id,
        "email": email or f"{user_id}@lab.invalid", "email_verified": email_verified, "name": name or user_id,
        "realm_access": {"roles": [settings.jwt_admin_role] if admin else []},
    }
    if settings.jwt_user_claim != "sub":
        claims["sub"] = user_id
    if settings.jwt_audience:
        claims["aud"] = settings.jwt_audience
    return pyjwt.encode(claims, settings.jwt_secret, algorithm="HS256")
