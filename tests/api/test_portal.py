"""The portal's own endpoints (controlplane/portal): the page, its configuration, lab sign-in. The page
itself is tested in a browser (tests/browser)."""
from __future__ import annotations

import dataclasses
from pathlib import Path

import jwt
import pytest

from tests.conftest import JWT_SECRET


def test_the_page_and_its_files_are_served_with_a_strict_policy(client):
    page = client.get("/")
    assert page.status_code == 200 and b'<script type="module" src="/portal/static/app.js">' in page.data
    policy = page.headers["Content-Security-Policy"]
    assert "default-src 'self'" in policy and "script-src 'self'" in policy and "unsafe-inline" not in policy
    assert page.headers["X-Content-Type-Options"] == "nosniff"
    for name, kind in (("app.js", "javascript"), ("app.css", "text/css")):
        asset = client.get(f"/portal/static/{name}")
        assert asset.status_code == 200 and kind in asset.headers["Content-Type"]
    assert client.get("/portal/static/nothing.js").status_code == 404


def test_every_module_the_page_imports_is_served_from_here_as_javascript(client):
    """The portal is ES modules by page (app.js imports the rest): each import is a local file that is
    served, none comes from elsewhere (the machines are offline), and every module is reachable."""
    import re
    seen, todo = set(), ["app.js"]
    while todo:
        name = todo.pop()
        if name in seen:
            continue
        seen.add(name)
        asset = client.get(f"/portal/static/{name}")
        assert asset.status_code == 200 and "javascript" in asset.headers["Content-Type"], name
        for spec in re.findall(r'^import [^;]* from "([^"]+)";$', asset.get_data(as_text=True), re.M):
            assert re.fullmatch(r"\./[a-z]+\.js", spec), (name, spec)  # a file beside it, nothing remote
            todo.append(spec[2:])
    on_disk = {p.name for p in (Path(__file__).parents[2] / "controlplane/portal/static").glob("*.js")}
    assert seen == on_disk, on_disk - seen  # no module left out of the page


def test_the_configuration_names_the_plans_and_the_lab_sign_in(client):
    config = client.get("/portal/config.json").get_json()
    assert config["signIn"] == "lab" and "oidc" not in config
    assert [p["name"] for p in config["plans"]] == ["BASIC", "STANDARD", "PREMIUM"]
    assert config["plans"][1] == {"name": "STANDARD", "cpuCores": 4, "memoryMb": 4096,
                                  "description": "Development and office applications"}
    assert config["defaultPlan"] == "BASIC"
    assert config["projectOs"] == ["windows11", "debian12"] and config["defaultOs"] == "windows11"
    assert (config["userClaim"], config["adminRole"]) == ("sub", "admin")


def test_a_lab_token_is_a_working_access_token(client):
    answer = client.post("/portal/lab-token", json={"userId": "user_portal", "admin": True})
    assert answer.status_code == 200 and answer.headers["Cache-Control"] == "no-store"
    token = answer.get_json()["access_token"]
    claims = jwt.decode(token, JWT_SECRET, algorithms=["HS256"])
    assert claims["sub"] == "user_portal" and claims["realm_access"]["roles"] == ["admin"]
    listed = client.get("/api/v1/desktops", headers={"Authorization": f"Bearer {token}"})
    assert listed.status_code == 200  # admins may list everyone's


@pytest.mark.parametrize("body, field, message", [
    ({}, "userId", "User ID is required"),
    ({"userId": "  "}, "userId", "User ID is required"),
    ({"userId": "has space"}, "userId", "User ID must be 1 to 64 letters, digits or _ . @ -, starting with a letter or digit"),
    ({"userId": "x" * 65}, "userId", "User ID must be 1 to 64 letters, digits or _ . @ -, starting with a letter or digit"),
    ({"userId": "ok", "admin": "yes"}, "admin", "admin must be true or false"),
    ([], "body", "A JSON object with userId is required"),
])
def test_bad_lab_sign_ins_are_validation_errors(client, body, field, message):
    answer = client.post("/portal/lab-token", json=body)
    assert answer.status_code == 400
    error = answer.get_json()
    assert error["success"] is False and error["error"] == "VALIDATION_ERROR"
    assert error["details"] == {field: message} and error["path"] == "/portal/lab-token"


def _app(settings):
    from controlplane import create_app
    return create_app(settings).test_client()


def test_outside_the_lab_there_is_no_lab_sign_in(base_settings, database):
    production = _app(dataclasses.replace(base_settings, lab=False, jwt_issuer="https://sso.example/realms/cds",
                                          oidc_client_id="cds-portal"))
    answer = production.post("/portal/lab-token", json={"userId": "mallory", "admin": True})
    assert answer.status_code == 404 and answer.get_json()["error"] == "NOT_FOUND"
    config = production.get("/portal/config.json").get_json()
    assert config["signIn"] == "oidc"
    assert config["oidc"] == {"issuer": "https://sso.example/realms/cds", "clientId": "cds-portal",
                              "scope": "openid profile email"}
    # The page may talk to the identity provider (token endpoint) and send the sign-in form there.
    policy = production.get("/").headers["Content-Security-Policy"]
    assert "connect-src 'self' ws: wss: https://sso.example;" in policy


def test_without_an_identity_provider_the_page_says_it_cannot_sign_in(base_settings, database):
    bare = _app(dataclasses.replace(base_settings, lab=False))
    assert bare.get("/portal/config.json").get_json()["signIn"] == "none"


def test_the_portal_can_be_turned_off(base_settings, database):
    off = _app(dataclasses.replace(base_settings, portal=False))
    assert off.get("/").status_code == 404 and off.get("/portal/config.json").status_code == 404
