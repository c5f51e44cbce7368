"""The self-service web portal, served by the control plane at `/` (no build step: plain HTML, CSS
and ES modules in portal/static).

- `GET /` the page; `GET /portal/static/<file>` its script and style.
- `GET /portal/config.json` what the page needs before it signs in: how to sign in (`oidc`: Keycloak's
  authorization code flow with PKCE, done by the browser as a public client; `lab`: a form that mints a
  lab token), the plans for the plan picker and the projects' operating systems.
- `POST /portal/lab-token` (lab only, 404 elsewhere): {"userId", "admin"} → a lab access token. The lab
  has no identity provider: whoever reaches it may be anyone, as with `controlplane token`.

Everything else the page does goes through the two public APIs and the WebSocket `/ws`, with the
user's bearer token, exactly as any other client would.
"""
from __future__ import annotations

import datetime as dt
import re

from flask import Blueprint, Flask, jsonify, request, send_from_directory

from ..auth import mint_lab_token
from ..config import Settings
from ..errors import NotFound, ValidationFailed
from ..services.plans import load_plans, projects_config

STATIC = __path__[0] + "/static"
LAB_TOKEN_TTL = dt.timedelta(hours=8)
USER_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.@-]{0,63}$")
# The page loads nothing from elsewhere; the sign-in redirect and token calls go to the IdP, the
# desktop opens in a frame from Guacamole (any origin: its URL is configuration).
CSP = ("default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
       "connect-src 'self' ws: wss: {idp}; frame-src *; frame-ancestors 'self'; base-uri 'none'; "
       "form-action 'self' {idp}")


def oidc_issuer(settings: Settings) -> str:
    return (settings.oidc_issuer or settings.jwt_issuer).rstrip("/")


def sign_in_mode(settings: Settings) -> str:
    """lab: a lab token form (the lab's HS256 secret); oidc: Keycloak; none: the page cannot sign in."""
    if settings.lab and settings.jwt_secret:
        return "lab"
    if oidc_issuer(settings) and (settings.oidc_client_id or settings.jwt_client_id):
        return "oidc"
    return "none"


def init_portal(app: Flask, settings: Settings) -> None:
    if not settings.portal:
        return
    bp = Blueprint("portal", __name__, static_folder=STATIC, static_url_path="/portal/static")

    @bp.get("/")
    def index():
        response = send_from_directory(STATIC, "index.html", max_age=0)
        idp = oidc_issuer(settings) if sign_in_mode(settings) == "oidc" else ""
        idp_origin = "/".join(idp.split("/")[:3]) if idp else ""
        response.headers["Content-Security-Policy"] = CSP.format(idp=idp_origin).replace("  ", " ")
        response.headers["X-Content-Type-Options"] = "nosniff"
        response.headers["Referrer-Policy"] = "no-referrer"
        return response

    @bp.get("/portal/config.json")
    def config():
        mode = sign_in_mode(settings)
        plans = load_plans(settings.plans_file)
        projects = projects_config(settings)
        body = {
            "signIn": mode,
            "userClaim": settings.jwt_user_claim,
            "adminRole": settings.jwt_admin_role,
            "plans": [{"name": p.name, "cpuCores": p.cores, "memoryMb": p.memory_mb, "description": p.description}
                      for p in plans.values()],
            "defaultPlan": "BASIC" if "BASIC" in plans else next(iter(plans)),
            "projectOs": list(projects.os_templates),
            "defaultOs": projects.default_os,
        }
        if mode == "oidc":
            body["oidc"] = {"issuer": oidc_issuer(settings),
                            "clientId": settings.oidc_client_id or settings.jwt_client_id,
                            "scope": settings.oidc_scope}
        response = jsonify(body)
        response.headers["Cache-Control"] = "no-store"
        return response

    @bp.post("/portal/lab-token")
    def lab_token():
        if sign_in_mode(settings) != "lab":
            raise NotFound("Lab sign-in is only available in the lab")
        body = request.get_json(silent=True)
        if not isinstance(body, dict):
            raise ValidationFailed(details={"body": "A JSON object with userId is required"})
        user_id = body.get("userId")
        details = {}
        if not isinstance(user_id, str) or not user_id.strip():
            details["userId"] = "User ID is required"
        elif not USER_ID.match(user_id.strip()):
            details["userId"] = ("User ID must be 1 to 64 letters, digits or _ . @ -, "
                                 "starting with a letter or digit")
        admin = body.get("admin", False)
        if not isinstance(admin, bool):
            details["admin"] = "admin must be true or false"
        if details:
            raise ValidationFailed(details=details)
        token = mint_lab_token(settings, user_id.strip(), admin=admin, ttl=LAB_TOKEN_TTL)
        response = jsonify({"access_token": token, "token_type": "Bearer",
                            "expires_in": int(LAB_TOKEN_TTL.total_seconds())})
        response.headers["Cache-Control"] = "no-store"
        return response

    app.register_blueprint(bp)
