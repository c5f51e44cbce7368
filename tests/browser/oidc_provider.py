"""A small OpenID Connect provider shaped like Keycloak's realm endpoints, for the portal's sign-in
test: discovery, an authorization endpoint with a login form, a token endpoint (authorization code
with PKCE S256, and refresh), JWKS, and logout. RS256 access tokens as Keycloak issues them
(typ Bearer, realm_access roles). It checks what a real provider checks: the client, the redirect
URI, the code's single use and the PKCE verifier."""
from __future__ import annotations

import base64
import hashlib
import secrets
import time
import uuid

import jwt
from cryptography.hazmat.primitives.asymmetric import rsa
from flask import Flask, abort, jsonify, redirect, request
from markupsafe import escape

REALM = "/realms/cds"


class Provider:
    def __init__(self, client_id: str, redirect_uri: str, token_ttl: int = 300):
        self.client_id, self.redirect_uri, self.token_ttl = client_id, redirect_uri, token_ttl
        self.key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        self.kid = uuid.uuid4().hex[:8]
        self.codes: dict[str, dict] = {}
        self.refresh_tokens: dict[str, str] = {}
        self.calls: list[str] = []  # "authorize", "login", "token:authorization_code", "token:refresh_token", "logout"
        self.issuer = ""  # set when served
        self.app = self._app()

    def _token(self, user: str) -> str:
        now = int(time.time())
        claims = {"iss": self.issuer, "sub": user, "preferred_username": user, "typ": "Bearer", "azp": self.client_id,
                  "email": f"{user}@sso.example", "name": user.title(), "iat": now, "exp": now + self.token_ttl,
                  "jti": uuid.uuid4().hex, "realm_access": {"roles": ["admin"] if user.startswith("admin") else []}}
        return jwt.encode(claims, self.key, algorithm="RS256", headers={"kid": self.kid})

    def _tokens(self, user: str) -> dict:
        refresh = secrets.token_urlsafe(24)
        self.refresh_tokens[refresh] = user
        return {"access_token": self._token(user), "token_type": "Bearer", "expires_in": self.token_ttl,
                "refresh_token": refresh, "id_token": self._token(user), "scope": "openid profile email"}

    def _app(self) -> Flask:
        app = Flask("oidc-standin")
        base = REALM + "/protocol/openid-connect"

        @app.after_request
        def cors(response):  # the portal calls the token endpoint from its own origin
            response.headers["Access-Control-Allow-Origin"] = request.headers.get("Origin", "*")
            return response

        @app.get(REALM + "/.well-known/openid-configuration")
        def discovery():
            return jsonify({"issuer": self.issuer, "authorization_endpoint": self.issuer + "/protocol/openid-connect/auth",
                            "token_endpoint": self.issuer + "/protocol/openid-connect/token",
                            "jwks_uri": self.issuer + "/protocol/openid-connect/certs",
                            "end_session_endpoint": self.issuer + "/protocol/openid-connect/logout",
                            "code_challenge_methods_supported": ["S256"]})

        @app.get(base + "/certs")
        def certs():
            numbers = self.key.public_key().public_numbers()

            def b64(n: int) -> str:
                return base64.urlsafe_b64encode(n.to_bytes((n.bit_length() + 7) // 8, "big")).rstrip(b"=").decode()
            return jsonify({"keys": [{"kty": "RSA", "kid": self.kid, "use": "sig", "alg": "RS256",
                                      "n": b64(numbers.n), "e": b64(numbers.e)}]})

        @app.get(base + "/auth")
        def authorize():
            args = request.args
            if (args.get("client_id") != self.client_id or args.get("redirect_uri") != self.redirect_uri
                    or args.get("response_type") != "code" or args.get("code_challenge_method") != "S256"
                    or not args.get("code_challenge") or "openid" not in args.get("scope", "").split()):
                abort(400)
            self.calls.append("authorize")
            hidden = "".join(f'<input type="hidden" name="{escape(k)}" value="{escape(v)}">' for k, v in args.items())
            return (f'<!doctype html><title>Sign in to cds</title><form method="post">{hidden}'
                    '<label for="username">Username</label><input id="username" name="username">'
                    '<button type="submit">Sign In</button></form>')

        @app.post(base + "/auth")
        def login():
            form = request.form
            code = secrets.token_urlsafe(16)
            self.codes[code] = {"user": form["username"], "challenge": form["code_challenge"],
                                "redirect_uri": form["redirect_uri"]}
            self.calls.append("login")
            return redirect(f"{form['redirect_uri']}?code={code}&state={form['state']}&session_state=x")

        @app.post(base + "/token")
        def token():
            form = request.form
            grant = form.get("grant_type")
            self.calls.append(f"token:{grant}")
            if form.get("client_id") != self.client_id:
                return jsonify({"error": "invalid_client"}), 401
            if grant == "authorization_code":
                pending = self.codes.pop(form.get("code", ""), None)  # single use
                verifier = form.get("code_verifier", "")
                digest = base64.urlsafe_b64encode(hashlib.sha256(verifier.encode()).digest()).rstrip(b"=").decode()
                if not pending or pending["redirect_uri"] != form.get("redirect_uri") or digest != pending["challenge"]:
                    return jsonify({"error": "invalid_grant", "error_description": "Code not valid"}), 400
                return jsonify(self._tokens(pending["user"]))
            if grant == "refresh_token":
                user = self.refresh_tokens.pop(form.get("refresh_token", ""), None)
                if not user:
                    return jsonify({"error": "invalid_grant", "error_description": "Token is not active"}), 400
                return jsonify(self._tokens(user))
            return jsonify({"error": "unsupported_grant_type"}), 400

        @app.get(base + "/logout")
        def logout():
            self.calls.append("logout")
            return redirect(request.args.get("post_logout_redirect_uri") or "/")

        return app
