"""Bearer token checks (controlplane/auth.py): HS256 on the shared test app, RS256 with a PEM public key
and with a JWKS URL on apps of their own."""
from __future__ import annotations

import base64
import datetime as dt
import hashlib
import hmac
import json
import logging
import re
import socket
import threading
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import jwt as pyjwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from controlplane.auth import LAB_ISSUER, mint_lab_token, roles_of

LIST = "/api/v1/desktops"
ENVELOPE_KEYS = ["success", "error", "message", "path", "timestamp"]


def now() -> dt.datetime:
    return dt.datetime.now(dt.timezone.utc)


def claims(user: str = "user_12345", **extra) -> dict:
    base = {"sub": user, "iat": now(), "nbf": now(), "exp": now() + dt.timedelta(minutes=5),
            "jti": uuid.uuid4().hex, "typ": "Bearer"}
    base.update(extra)
    return {k: v for k, v in base.items() if v is not None}


def bearer(token: str) -> dict:
    return {"Authorization": f"Bearer {token}"}


def b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def unsigned_token(payload: dict, alg: str = "none") -> str:
    def enc(obj):
        return b64(json.dumps(obj, default=lambda d: int(d.timestamp())).encode())
    return f"{enc({'alg': alg, 'typ': 'JWT'})}.{enc(payload)}."


def hs256_with_raw_key(payload: dict, key: bytes, headers: dict | None = None) -> str:
    """HS256 by hand: PyJWT refuses to use a PEM key as an HMAC secret, an attacker does not."""
    def enc(obj):
        return b64(json.dumps(obj, default=lambda d: int(d.timestamp())).encode())
    signing_input = f"{enc({'alg': 'HS256', 'typ': 'JWT', **(headers or {})})}.{enc(payload)}"
    signature = hmac.new(key, signing_input.encode(), hashlib.sha256).digest()
    return f"{signing_input}.{b64(signature)}"


def assert_unauthorized(response, message: str | None = None, path: str = LIST):
    assert response.status_code == 401, response.get_json()
    body = response.get_json()
    assert list(body) == ENVELOPE_KEYS
    assert body["success"] is False
    assert body["error"] == "UNAUTHORIZED"
    assert body["path"] == path
    dt.datetime.fromisoformat(body["timestamp"])
    if message is not None:
        assert body["message"] == message
    return body


class _AnyDatetime(type):
    def __instancecheck__(cls, obj):  # PyJWT's isinstance(claim, datetime) still sees real datetimes
        return isinstance(obj, dt.datetime)


@pytest.fixture
def clock(monkeypatch):
    """The wall clock the token checks read (PyJWT's expiry check, the verified tokens cache), which a
    test moves on with clock.advance(seconds) instead of waiting for it."""
    import time as real_time

    import jwt.api_jwt

    import controlplane.auth

    class Clock:
        offset = 0.0

        def advance(self, seconds: float) -> None:
            self.offset += seconds

        def __getattr__(self, name):  # time.monotonic and the rest: the real ones
            return getattr(real_time, name)

        def time(self) -> float:
            return real_time.time() + self.offset

    moved = Clock()

    class MovedDatetime(dt.datetime, metaclass=_AnyDatetime):
        @classmethod
        def now(cls, tz=None):
            return dt.datetime.now(tz) + dt.timedelta(seconds=moved.offset)

    monkeypatch.setattr(controlplane.auth, "time", moved)
    monkeypatch.setattr(jwt.api_jwt, "datetime", MovedDatetime)
    return moved


def create_desktop_for(client, headers, user_id: str) -> int:
    response = client.post(LIST, json={"userId": user_id, "plan": "BASIC"}, headers=headers)
    assert response.status_code == 201, response.get_json()
    return response.get_json()["data"]["id"]


# ---- HS256 (the lab's tokens) on the shared app ----------------------------------------------------------

def test_a_valid_lab_token_is_accepted(client, auth):
    response = client.get(LIST, headers=auth())
    assert response.status_code == 200
    assert response.get_json()["data"] == {"desktops": [], "total": 0}


def test_missing_header(client):
    assert_unauthorized(client.get(LIST), "Missing bearer token")


@pytest.mark.parametrize("header", ["Basic dXNlcjpwYXNz", "Bearer", "Token abc", "bearer"])
def test_a_header_without_a_bearer_token(client, header):
    assert_unauthorized(client.get(LIST, headers={"Authorization": header}))


@pytest.mark.parametrize("raw", ["not-a-jwt", "a.b.c", "Zm9v.YmFy.YmF6"])
def test_garbage_tokens(client, raw):
    assert_unauthorized(client.get(LIST, headers=bearer(raw)), "Invalid token")


def test_expired_token(client, token):
    expired = token(ttl=-dt.timedelta(seconds=60))
    assert_unauthorized(client.get(LIST, headers=bearer(expired)), "Token has expired")


def test_token_not_yet_valid(client, base_settings):
    future = now() + dt.timedelta(minutes=10)
    tok = pyjwt.encode(claims(nbf=future, iat=future), base_settings.jwt_secret, algorithm="HS256")
    assert_unauthorized(client.get(LIST, headers=bearer(tok)))


def test_bad_signature(client):
    tok = pyjwt.encode(claims(), "another-secret-of-at-least-32-chars!", algorithm="HS256")
    assert_unauthorized(client.get(LIST, headers=bearer(tok)), "Invalid token")


def test_tampered_payload(client, token):
    header, _payload, signature = token("user_12345").split(".")
    forged = b64(json.dumps(claims("user_admin", realm_access={"roles": ["admin"]}),
                            default=lambda d: int(d.timestamp())).encode())
    assert_unauthorized(client.get(LIST, headers=bearer(f"{header}.{forged}.{signature}")), "Invalid token")


def test_alg_none_is_refused(client):
    tok = unsigned_token(claims(realm_access={"roles": ["admin"]}))
    assert_unauthorized(client.get(LIST, headers=bearer(tok)), "Invalid token")
    assert_unauthorized(client.get(LIST, headers=bearer(unsigned_token(claims(), alg="None"))), "Invalid token")


@pytest.mark.parametrize("typ", ["Refresh", "ID", "Offline", "bearer"])
def test_only_access_tokens_are_accepted(client, base_settings, typ):
    tok = pyjwt.encode(claims(typ=typ), base_settings.jwt_secret, algorithm="HS256")
    assert_unauthorized(client.get(LIST, headers=bearer(tok)), "Not an access token")


def test_a_token_without_typ_counts_as_an_access_token(client, base_settings):
    tok = pyjwt.encode(claims(typ=None), base_settings.jwt_secret, algorithm="HS256")
    assert client.get(LIST, headers=bearer(tok)).status_code == 200


@pytest.mark.parametrize("sub", [None, ""])
def test_a_token_without_a_user(client, base_settings, sub):
    payload = claims()
    if sub is None:
        del payload["sub"]
    else:
        payload["sub"] = sub
    tok = pyjwt.encode(payload, base_settings.jwt_secret, algorithm="HS256")
    assert_unauthorized(client.get(LIST, headers=bearer(tok)))


def test_401_on_every_desktop_endpoint(client):
    for method, path in [("get", "/api/v1/desktops/1"), ("delete", "/api/v1/desktops/1"),
                         ("get", "/api/v1/desktops/1/status"), ("get", "/api/v1/desktops/1/connect"),
                         ("post", "/api/v1/desktops/1/start"), ("post", "/api/v1/desktops/1/stop"),
                         ("get", "/api/v1/desktops/user/user_1"), ("post", LIST)]:
        assert_unauthorized(getattr(client, method)(path), "Missing bearer token", path=path)


def test_an_rs256_token_is_refused_by_the_hs256_app(client, rsa_keys):
    tok = pyjwt.encode(claims(), rsa_keys.private_pem, algorithm="RS256")
    assert_unauthorized(client.get(LIST, headers=bearer(tok)), "Invalid token")


# ---- who may see what ---------------------------------------------------------------------------------------

def test_admins_list_anyones_desktops_users_only_their_own(client, auth):
    other = "user_other"
    desktop_id = create_desktop_for(client, auth(other), other)

    forbidden = client.get(LIST, query_string={"userId": other}, headers=auth("user_12345"))
    assert forbidden.status_code == 403
    body = forbidden.get_json()
    assert list(body) == ENVELOPE_KEYS and body["success"] is False and body["error"] == "FORBIDDEN"

    own = client.get(LIST, headers=auth("user_12345")).get_json()["data"]
    assert own["total"] == 0

    as_admin = client.get(LIST, query_string={"userId": other}, headers=auth("user_admin", admin=True))
    assert as_admin.status_code == 200
    assert [d["id"] for d in as_admin.get_json()["data"]["desktops"]] == [desktop_id]
    everything = client.get(LIST, headers=auth("user_admin", admin=True)).get_json()["data"]
    assert [d["userId"] for d in everything["desktops"]] == [other]

    # the owner sees it too
    mine = client.get(LIST, query_string={"userId": other}, headers=auth(other)).get_json()["data"]
    assert mine["total"] == 1


def test_a_top_level_roles_claim_makes_an_admin(client, auth, base_settings):
    create_desktop_for(client, auth("user_other"), "user_other")
    tok = pyjwt.encode(claims("user_admin", roles=[base_settings.jwt_admin_role]), base_settings.jwt_secret,
                       algorithm="HS256")
    assert client.get(LIST, query_string={"userId": "user_other"}, headers=bearer(tok)).status_code == 200
    tok = pyjwt.encode(claims("user_admin", roles=["viewer"], realm_access={"roles": ["offline_access"]}),
                       base_settings.jwt_secret, algorithm="HS256")
    assert client.get(LIST, query_string={"userId": "user_other"}, headers=bearer(tok)).status_code == 403


def test_roles_of():
    token_claims = {"roles": ["a"], "realm_access": {"roles": ["b"]},
                    "resource_access": {"portal": {"roles": ["c"]}, "other": {"roles": ["d"]}}}
    assert roles_of(token_claims) == {"a", "b"}
    assert roles_of(token_claims, "portal") == {"a", "b", "c"}
    assert roles_of(token_claims, "missing") == {"a", "b"}
    assert roles_of({}) == set()
    assert roles_of({"roles": None, "realm_access": None, "resource_access": None}, "portal") == set()


def test_mint_lab_token_shape(base_settings):
    tok = mint_lab_token(base_settings, "user_7", admin=True, ttl=dt.timedelta(minutes=1))
    decoded = pyjwt.decode(tok, base_settings.jwt_secret, algorithms=["HS256"])
    assert decoded["sub"] == "user_7" and decoded["typ"] == "Bearer" and decoded["iss"] == LAB_ISSUER
    assert decoded["realm_access"] == {"roles": [base_settings.jwt_admin_role]}
    assert 0 < decoded["exp"] - decoded["iat"] <= 60
    with pytest.raises(RuntimeError, match="CONTROLPLANE_JWT_SECRET"):
        mint_lab_token(base_settings.replace(jwt_secret="", jwt_public_key="pem"), "user_7")


# ---- RS256 -----------------------------------------------------------------------------------------------------

class RsaKeys:
    def __init__(self, kid: str):
        self.kid = kid
        self.key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        self.private_pem = self.key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                                  serialization.NoEncryption()).decode()
        self.public_pem = self.key.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo).decode()

    def jwk(self) -> dict:
        jwk = json.loads(pyjwt.algorithms.RSAAlgorithm.to_jwk(self.key.public_key()))
        return {**jwk, "kid": self.kid, "use": "sig", "alg": "RS256"}

    def sign(self, payload: dict, kid: str | None = "same", algorithm: str = "RS256") -> str:
        headers = {"kid": self.kid if kid == "same" else kid} if kid else None
        return pyjwt.encode(payload, self.private_pem, algorithm=algorithm, headers=headers)


@pytest.fixture(scope="module")
def rsa_keys():
    return RsaKeys("key-1")


@pytest.fixture(scope="module")
def other_keys():
    return RsaKeys("key-1")  # same kid, another key: what a forger would try


@pytest.fixture(scope="module")
def jwks_server(rsa_keys):
    state = {"keys": [rsa_keys.jwk()], "hits": 0}

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self):
            state["hits"] += 1
            if self.path != "/realms/desk/protocol/openid-connect/certs":
                self.send_error(404)
                return
            body = json.dumps({"keys": state["keys"]}).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args):
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    state["url"] = f"http://127.0.0.1:{server.server_port}/realms/desk/protocol/openid-connect/certs"
    yield state
    server.shutdown()
    server.server_close()


@pytest.fixture(scope="module")
def restore_logging(base_settings):
    """create_app() reconfigures the process's log redaction for its settings; put the shared app's back."""
    yield
    from controlplane.logs import configure_logging
    configure_logging(base_settings)


ISSUER = "https://sso.example/realms/desk"
AUDIENCE = "desktop-api"
CLIENT = "desktop-portal"
ADMIN_ROLE = "desktop-admin"


@pytest.fixture(scope="module")
def pem_app(base_settings, database, rsa_keys, restore_logging):
    """RS256 with a PEM public key; issuer, audience, a Keycloak client and its own admin role."""
    from controlplane import create_app
    settings = base_settings.replace(jwt_secret="", jwt_public_key=rsa_keys.public_pem, jwt_issuer=ISSUER,
                                     jwt_audience=AUDIENCE, jwt_client_id=CLIENT, jwt_admin_role=ADMIN_ROLE)
    app = create_app(settings)
    app.config["TESTING"] = True
    return app


@pytest.fixture(scope="module")
def jwks_app(base_settings, database, jwks_server, restore_logging):
    """RS256 with keys from a JWKS URL; users named by preferred_username; no issuer/audience check."""
    from controlplane import create_app
    settings = base_settings.replace(jwt_secret="", jwt_jwks_url=jwks_server["url"],
                                     jwt_user_claim="preferred_username")
    app = create_app(settings)
    app.config["TESTING"] = True
    return app


@pytest.fixture
def pem(pem_app, client):  # `client` empties the database and the queue
    return pem_app.test_client()


@pytest.fixture
def jwks(jwks_app, client):
    return jwks_app.test_client()


def kc_claims(user: str = "user_12345", **extra) -> dict:
    """A Keycloak-shaped access token for the PEM app."""
    return claims(user, **{"iss": ISSUER, "aud": [AUDIENCE, "account"], "azp": CLIENT, **extra})


def test_pem_valid_token_is_accepted(pem, rsa_keys):
    response = pem.get(LIST, headers=bearer(rsa_keys.sign(kc_claims(), kid=None)))
    assert response.status_code == 200, response.get_json()
    assert response.get_json()["data"]["total"] == 0
    # aud may be a string too
    assert pem.get(LIST, headers=bearer(rsa_keys.sign(kc_claims(aud=AUDIENCE)))).status_code == 200


def test_pem_wrong_key(pem, other_keys):
    assert_unauthorized(pem.get(LIST, headers=bearer(other_keys.sign(kc_claims()))), "Invalid token")


def test_pem_alg_confusion_hs256_signed_with_the_public_key(pem, rsa_keys):
    for key in (rsa_keys.public_pem.encode(), rsa_keys.public_pem.strip().encode()):
        tok = hs256_with_raw_key(kc_claims(), key)
        assert_unauthorized(pem.get(LIST, headers=bearer(tok)), "Invalid token")


def test_pem_alg_none_and_other_algorithms(pem, rsa_keys):
    assert_unauthorized(pem.get(LIST, headers=bearer(unsigned_token(kc_claims()))), "Invalid token")
    assert_unauthorized(pem.get(LIST, headers=bearer(rsa_keys.sign(kc_claims(), algorithm="PS256"))),
                        "Invalid token")


def test_pem_lab_token_is_refused(pem, token):
    assert_unauthorized(pem.get(LIST, headers=bearer(token())), "Invalid token")


@pytest.mark.parametrize("changes", [
    {"iss": "https://evil.example/realms/desk"},
    {"iss": None},
    {"aud": "another-api"},
    {"aud": ["account"]},
    {"aud": None},
])
def test_pem_wrong_issuer_or_audience(pem, rsa_keys, changes):
    payload = kc_claims()
    for key, value in changes.items():
        if value is None:
            payload.pop(key)
        else:
            payload[key] = value
    assert_unauthorized(pem.get(LIST, headers=bearer(rsa_keys.sign(payload))), "Invalid token")


def test_pem_expired(pem, rsa_keys):
    tok = rsa_keys.sign(kc_claims(exp=now() - dt.timedelta(seconds=60), iat=now() - dt.timedelta(minutes=5)))
    assert_unauthorized(pem.get(LIST, headers=bearer(tok)), "Token has expired")


def test_pem_id_token_is_refused(pem, rsa_keys):
    assert_unauthorized(pem.get(LIST, headers=bearer(rsa_keys.sign(kc_claims(typ="ID")))), "Not an access token")


@pytest.mark.parametrize("extra,admin", [
    ({"resource_access": {CLIENT: {"roles": [ADMIN_ROLE]}}}, True),
    ({"realm_access": {"roles": [ADMIN_ROLE]}}, True),
    ({"roles": [ADMIN_ROLE]}, True),
    ({"resource_access": {"another-client": {"roles": [ADMIN_ROLE]}}}, False),
    ({"resource_access": {CLIENT: {"roles": ["admin"]}}, "realm_access": {"roles": ["admin"]}}, False),
    ({}, False),
])
def test_pem_admin_roles(pem, rsa_keys, extra, admin):
    owner = bearer(rsa_keys.sign(kc_claims("user_other")))
    create_desktop_for(pem, owner, "user_other")
    caller = bearer(rsa_keys.sign(kc_claims("user_caller", **extra)))
    response = pem.get(LIST, query_string={"userId": "user_other"}, headers=caller)
    assert response.status_code == (200 if admin else 403), response.get_json()
    if admin:
        assert response.get_json()["data"]["total"] == 1


def test_jwks_valid_token_is_accepted(jwks, rsa_keys):
    tok = rsa_keys.sign(claims("kc-uuid-1", preferred_username="alice"))
    response = jwks.get(LIST, headers=bearer(tok))
    assert response.status_code == 200, response.get_json()
    # the identity is the configured claim, not sub
    assert jwks.get(LIST, query_string={"userId": "alice"}, headers=bearer(tok)).status_code == 200
    assert jwks.get(LIST, query_string={"userId": "kc-uuid-1"}, headers=bearer(tok)).status_code == 403


def test_jwks_token_without_the_user_claim(jwks, rsa_keys):
    assert_unauthorized(jwks.get(LIST, headers=bearer(rsa_keys.sign(claims("kc-uuid-1")))))


def test_jwks_wrong_key_with_a_known_kid(jwks, other_keys):
    tok = other_keys.sign(claims("kc-uuid-1", preferred_username="alice"))
    assert_unauthorized(jwks.get(LIST, headers=bearer(tok)), "Invalid token")


@pytest.mark.parametrize("kid", ["unknown-kid", None])
def test_jwks_unknown_or_missing_kid(jwks, rsa_keys, kid):
    tok = rsa_keys.sign(claims("kc-uuid-1", preferred_username="alice"), kid=kid)
    assert_unauthorized(jwks.get(LIST, headers=bearer(tok)), "Invalid token")


def test_jwks_alg_confusion(jwks, rsa_keys):
    tok = hs256_with_raw_key(claims("kc-uuid-1", preferred_username="alice"), rsa_keys.public_pem.encode(),
                             headers={"kid": rsa_keys.kid})
    assert_unauthorized(jwks.get(LIST, headers=bearer(tok)), "Invalid token")


def test_jwks_unreachable_is_a_401_not_a_500(base_settings, database, rsa_keys, restore_logging, client):
    from controlplane import create_app
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    app = create_app(base_settings.replace(jwt_secret="", jwt_jwks_url=f"http://127.0.0.1:{port}/certs"))
    tok = rsa_keys.sign(claims())
    assert_unauthorized(app.test_client().get(LIST, headers=bearer(tok)), "Invalid token")


# ---- several apps in one process --------------------------------------------------------------------------------

def test_apps_with_different_key_setups_do_not_disturb_each_other(client, auth, pem, jwks, rsa_keys):
    """flask-jwt-extended's manager is shared by every app: the JWKS app's key lookup must not leak
    into the HS256 or PEM apps."""
    assert client.get(LIST, headers=auth()).status_code == 200
    assert pem.get(LIST, headers=bearer(rsa_keys.sign(kc_claims(), kid=None))).status_code == 200
    assert jwks.get(LIST, headers=bearer(rsa_keys.sign(claims("u", preferred_username="alice")))).status_code == 200
    # and each still refuses the others' tokens
    assert client.get(LIST, headers=bearer(rsa_keys.sign(kc_claims()))).status_code == 401
    assert pem.get(LIST, headers=auth()).status_code == 401
    assert jwks.get(LIST, headers=auth()).status_code == 401


def test_small_clock_skew_is_tolerated(pem, rsa_keys):
    """An IdP whose clock runs a few seconds ahead or behind must not lock users out (30 s leeway)."""
    ahead = rsa_keys.sign(kc_claims(iat=now() + dt.timedelta(seconds=10), nbf=now() + dt.timedelta(seconds=10)))
    assert pem.get(LIST, headers=bearer(ahead)).status_code == 200
    just_expired = rsa_keys.sign(kc_claims(exp=now() - dt.timedelta(seconds=5), iat=now() - dt.timedelta(minutes=5)))
    assert pem.get(LIST, headers=bearer(just_expired)).status_code == 200


def test_a_verified_token_is_not_trusted_past_its_expiry(client, token, clock):
    """Tokens verified lately are kept by their exact text (auth._VerifiedTokens); expiry is
    checked again on each use, and a token that differs by a byte is verified afresh."""
    # Expired 27 s ago: accepted for 3 s more (JWT_DECODE_LEEWAY is 30 s), then refused.
    short = token("user_12345", ttl=-dt.timedelta(seconds=27))
    assert client.get(LIST, headers=bearer(short)).status_code == 200
    assert client.get(LIST, headers=bearer(short)).status_code == 200
    header, payload, signature = short.split(".")
    forged = b64(json.dumps(claims("user_admin", realm_access={"roles": ["admin"]}),
                            default=lambda d: int(d.timestamp())).encode())
    assert_unauthorized(client.get(LIST, headers=bearer(f"{header}.{forged}.{signature}")), "Invalid token")
    clock.advance(4)
    assert_unauthorized(client.get(LIST, headers=bearer(short)), "Token has expired")


def test_the_verified_tokens_cache_is_bounded_and_expires(clock):
    import time

    from controlplane.auth import _VerifiedTokens
    cache = _VerifiedTokens(size=10, ttl=0.2)
    for i in range(25):
        cache.put(f"t{i}", {"sub": str(i), "exp": time.time() + 100})
    assert len(cache._items) <= 10 and cache.get("t24") == {"sub": "24", "exp": cache.get("t24")["exp"]}
    cache.put("old", {"sub": "x", "exp": time.time() - 1})  # already expired: not kept
    assert cache.get("old") is None
    clock.advance(0.25)
    assert cache.get("t24") is None


# ---- tokens that never expire (issue 17, item 11) --------------------------------------------------------------

def shares_path() -> str:
    return "/shares/proj_0123abcd/"  # a well-formed project id: the token is checked before the project


@pytest.mark.parametrize("exp", [None, "9999999999", [1], {"at": 1}], ids=["absent", "string", "list", "object"])
def test_a_token_without_a_numeric_exp_is_refused(client, base_settings, exp):
    """PyJWT checks exp only when it is present (and takes "9999999999" as a number): a correctly signed
    token without one was accepted forever, on every path that verifies tokens."""
    from controlplane.auth import identity_from_token
    from controlplane.errors import Unauthorized
    tok = pyjwt.encode(claims(exp=exp), base_settings.jwt_secret, algorithm="HS256")
    if exp in ([1], {"at": 1}):  # PyJWT refuses these itself
        assert_unauthorized(client.get(LIST, headers=bearer(tok)), "Invalid token")
    else:
        assert_unauthorized(client.get(LIST, headers=bearer(tok)), "Token has no expiry")
        body = client.get("/api/projects", headers=bearer(tok)).get_json()
        assert body == {"error": {"code": "UNAUTHORIZED", "message": "Token has no expiry"}}
    with client.application.app_context(), pytest.raises(Unauthorized):  # the WebSocket's and WebDAV's check
        identity_from_token(base_settings, tok)
    assert client.open(shares_path(), method="PROPFIND", headers={**bearer(tok), "Depth": "0"}).status_code == 401


def test_a_token_without_exp_is_refused_by_the_rs256_app_too(pem, rsa_keys):
    assert_unauthorized(pem.get(LIST, headers=bearer(rsa_keys.sign(kc_claims(exp=None)))), "Token has no expiry")


def test_the_verified_tokens_cache_keeps_no_token_without_exp():
    from controlplane.auth import _VerifiedTokens
    cache = _VerifiedTokens()
    cache.put("t", {"sub": "x", "typ": "Bearer"})
    cache.put("u", {"sub": "x", "exp": "9999999999"})
    assert cache.get("t") is None and cache.get("u") is None


def test_an_exp_too_large_for_a_float_is_not_a_500(client, base_settings):
    """The cache computed float(exp): OverflowError for an exp of 400 digits."""
    payload = json.dumps({"sub": "user_12345", "typ": "Bearer", "exp": int("9" * 400)})
    header = b64(json.dumps({"alg": "HS256", "typ": "JWT"}).encode())
    signing_input = f"{header}.{b64(payload.encode())}"
    signature = hmac.new(base_settings.jwt_secret.encode(), signing_input.encode(), hashlib.sha256).digest()
    assert client.get(LIST, headers=bearer(f"{signing_input}.{b64(signature)}")).status_code == 200


def test_lab_and_cli_tokens_always_expire(base_settings):
    import subprocess
    import sys
    tok = mint_lab_token(base_settings, "user_7")
    assert isinstance(pyjwt.decode(tok, base_settings.jwt_secret, algorithms=["HS256"])["exp"], int)
    # `controlplane token --ttl-hours` takes a positive, finite number of hours of at most a year.
    env = {"PATH": "/usr/bin:/bin", "CONTROLPLANE_JWT_SECRET": base_settings.jwt_secret,
           "CONTROLPLANE_VAR_DIR": str(base_settings.var_dir)}
    for bad in ("0", "-1", "inf", "nan", "8761"):
        done = subprocess.run([sys.executable, "-m", "controlplane.cli", "token", "ops", "--admin", "--ttl-hours", bad],
                              env=env, capture_output=True, text=True, timeout=60)
        assert done.returncode == 2 and "--ttl-hours" in done.stderr, (bad, done.stdout, done.stderr)
    done = subprocess.run([sys.executable, "-m", "controlplane.cli", "token", "ops", "--admin", "--ttl-hours", "8760"],
                          env=env, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    decoded = pyjwt.decode(done.stdout.strip(), base_settings.jwt_secret, algorithms=["HS256"])
    assert decoded["exp"] - decoded["iat"] == 8760 * 3600


# ---- claims of the wrong shape are a 401, never a 500 (issue 17, item 8) ----------------------------------------

WRONG_SHAPES = [
    ({"roles": 5}, "Token claim roles must be a list of strings"),
    ({"roles": "admin"}, "Token claim roles must be a list of strings"),
    ({"roles": [["admin"]]}, "Token claim roles must be a list of strings"),
    ({"roles": {"admin": True}}, "Token claim roles must be a list of strings"),
    ({"realm_access": ["admin"]}, "Token claim realm_access must be an object"),
    ({"realm_access": "admin"}, "Token claim realm_access must be an object"),
    ({"realm_access": {"roles": 5}}, "Token claim realm_access.roles must be a list of strings"),
    ({"realm_access": {"roles": [None]}}, "Token claim realm_access.roles must be a list of strings"),
    ({"email": 5}, "Token claim email must be a string"),
    ({"email": ["a@example.com"]}, "Token claim email must be a string"),
    ({"name": {"first": "A"}}, "Token claim name must be a string"),
    ({"sub": "user_\ud800"}, "Token claim sub holds unusable characters"),
    ({"sub": "user_\x00"}, "Token claim sub holds unusable characters"),
    ({"email": "\udfff@example.com"}, "Token claim email holds unusable characters"),
    ({"name": "A\x00"}, "Token claim name holds unusable characters"),
]


def raw_hs256(payload: dict, secret: str) -> str:
    """HS256 over json.dumps' own text: lone surrogates go out as \\ud800 escapes, as an IdP could send."""
    def enc(obj):
        return b64(json.dumps(obj, default=lambda d: int(d.timestamp())).encode())
    signing_input = f"{enc({'alg': 'HS256', 'typ': 'JWT'})}.{enc(payload)}"
    return f"{signing_input}.{b64(hmac.new(secret.encode(), signing_input.encode(), hashlib.sha256).digest())}"


@pytest.mark.parametrize("extra,message", WRONG_SHAPES, ids=[str(extra) for extra, _ in WRONG_SHAPES])
def test_a_signed_token_with_a_claim_of_the_wrong_shape_is_a_401_not_a_500(client, base_settings, extra, message):
    """`roles: 5` or `realm_access: [...]` raised TypeError (500) in roles_of; a non-string email
    or name, or a user id the database cannot hold, failed further on."""
    from controlplane.auth import identity_from_token
    from controlplane.errors import Unauthorized
    tok = raw_hs256(claims(**extra), base_settings.jwt_secret)
    assert_unauthorized(client.get(LIST, headers=bearer(tok)), message)
    for path in ("/api/projects", "/api/user/settings", "/api/invitations"):
        response = client.get(path, headers=bearer(tok))
        assert response.status_code == 401 and response.get_json() == {
            "error": {"code": "UNAUTHORIZED", "message": message}}, (path, response.get_data(as_text=True))
    with client.application.app_context(), pytest.raises(Unauthorized, match=re.escape(message)):
        identity_from_token(base_settings, tok)  # the WebSocket's auth message and WebDAV's bearer tokens
    assert client.open(shares_path(), method="PROPFIND", headers={**bearer(tok), "Depth": "0"}).status_code == 401


@pytest.mark.parametrize("extra,message", [
    ({"resource_access": [CLIENT]}, "Token claim resource_access must be an object"),
    ({"resource_access": {CLIENT: ["desktop-admin"]}}, f"Token claim resource_access.{CLIENT} must be an object"),
    ({"resource_access": {CLIENT: {"roles": ADMIN_ROLE}}},
     f"Token claim resource_access.{CLIENT}.roles must be a list of strings"),
], ids=["list", "client-list", "roles-string"])
def test_resource_access_of_the_wrong_shape_is_a_401_not_a_500(pem, rsa_keys, extra, message):
    assert_unauthorized(pem.get(LIST, headers=bearer(rsa_keys.sign(kc_claims(**extra)))), message)


def test_roles_of_refuses_what_keycloak_never_sends():
    from controlplane.errors import Unauthorized
    for token_claims in ({"roles": 5}, {"realm_access": []}, {"realm_access": {"roles": "admin"}},
                         {"resource_access": {"portal": {"roles": [1]}}}):
        with pytest.raises(Unauthorized):
            roles_of(token_claims, "portal")
    # Another client's entry is not read, whatever its shape.
    assert roles_of({"resource_access": {"other": 5, "portal": {"roles": ["c"]}}}, "portal") == {"c"}


# ---- unchecked issuer and audience are said loudly at start (issue 17, item 11) ---------------------------------

@pytest.mark.parametrize("changes,unset", [
    ({}, ["CONTROLPLANE_JWT_ISSUER", "CONTROLPLANE_JWT_AUDIENCE"]),
    ({"jwt_issuer": ISSUER}, ["CONTROLPLANE_JWT_AUDIENCE"]),
    ({"jwt_audience": AUDIENCE}, ["CONTROLPLANE_JWT_ISSUER"]),
    ({"jwt_issuer": ISSUER, "jwt_audience": AUDIENCE}, []),
])
def test_an_unchecked_issuer_or_audience_is_a_warning_at_start_outside_the_lab(base_settings, database, caplog,
                                                                                restore_logging, changes, unset):
    from controlplane import create_app
    caplog.set_level(logging.WARNING, logger="controlplane.auth")
    create_app(base_settings.replace(lab=False, **changes))
    warnings = [r for r in caplog.records if r.name == "controlplane.auth" and r.levelno == logging.WARNING]
    if not unset:
        assert warnings == []
        return
    assert len(warnings) == 1
    text = warnings[0].getMessage()
    assert text.startswith("SECURITY: ") and all(name in text for name in unset)
    assert ("issuer (iss)" in text) == ("CONTROLPLANE_JWT_ISSUER" in unset)
    assert ("audience (aud)" in text) == ("CONTROLPLANE_JWT_AUDIENCE" in unset)


def test_the_lab_says_nothing_about_issuer_and_audience(base_settings, database, caplog, restore_logging):
    from controlplane import create_app
    caplog.set_level(logging.WARNING, logger="controlplane.auth")
    create_app(base_settings)  # lab=True, no issuer, no audience
    assert not [r for r in caplog.records if r.name == "controlplane.auth"]
