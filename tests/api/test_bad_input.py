"""Regressions of what the OpenAPI fuzzing (tests/fuzz/test_openapi_fuzz.py, schemathesis) found: bad
input answered with a 500 or the wrong shape, and an OpenAPI document that contradicted the app or the
contracts. Real app, database (both kinds, with `make test`) and Redis, as the other API tests."""
from __future__ import annotations

import re

import pytest

from controlplane.extensions import db
from controlplane.models import Desktop, Project

D = "/api/v1/desktops"
NUL = "Must not contain NUL (0x00) characters"


@pytest.fixture
def user(token):
    return {"Authorization": "Bearer " + token("user_bad", email="user_bad@example.com")}


@pytest.fixture
def admin(token):
    return {"Authorization": "Bearer " + token("user_ops", admin=True)}


def desktop_error(response, status: int, code: str) -> dict:
    assert response.status_code == status, response.get_data(as_text=True)
    body = response.get_json()
    assert body["success"] is False and body["error"] == code and body["path"] == response.request.path
    assert set(body) <= {"success", "error", "message", "details", "path", "timestamp"}
    return body


def project_error(response, status: int, code: str) -> dict:
    assert response.status_code == status, response.get_data(as_text=True)
    body = response.get_json()
    assert list(body) == ["error"] and body["error"]["code"] == code
    return body["error"]


def running_desktop(client, headers) -> int:
    desktop_id = client.post(D, json={"userId": "user_bad"}, headers=headers).get_json()["data"]["id"]
    with db.connection_context():
        Desktop.update(status="RUNNING", ip_address="10.66.0.7", guacamole_connection_id="42",
                       protocol="vnc").where(Desktop.id == desktop_id).execute()
    return desktop_id


def running_project(client, headers) -> str:
    project_id = client.post("/api/projects", json={"name": "Bad input"}, headers=headers).get_json()["project_id"]
    with db.connection_context():
        Project.update(status="running").where(Project.public_id == project_id).execute()
    return project_id


# ---- 500s ------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("path", ["/api/v1/desktops", "/api/v1/desktops/1", "/api/v1/desktops/1/status",
                                  "/api/v1/admin/policies/runs", "/api/projects", "/api/projects/proj_x",
                                  "/api/chat/proj_x/history", "/api/user/settings"])
def test_options_is_answered_not_a_500(client, user, path):
    """OPTIONS (a CORS preflight, say) was a 500 everywhere: flask-jwt-extended does not verify a token
    for OPTIONS, and the views' authentication then asked it for the claims. Flask answers it now,
    without a token, with the methods of the resource."""
    for headers in ({}, user):
        response = client.options(path, headers=headers)
        assert response.status_code == 200, response.get_data(as_text=True)
        assert "GET" in response.headers["Allow"] and "OPTIONS" in response.headers["Allow"]


@pytest.mark.parametrize("raw", ["²", "١", "1²", "٣٤"])
def test_desktop_ids_in_other_scripts_digits(client, user, raw):
    """"²" passed str.isdigit() and int() raised (500); "١" (Arabic-Indic one) was read as desktop 1."""
    desktop_error(client.get(f"{D}/{raw}", headers=user), 400, "VALIDATION_ERROR")
    desktop_error(client.get(f"{D}/{raw}/status?refresh=true", headers=user), 400, "VALIDATION_ERROR")


def test_nul_characters_are_refused_in_both_envelopes(client, user, admin):
    """PostgreSQL text cannot hold NUL: psycopg2 raised ValueError (a 500) for a project named "a\\x00",
    an audit query, a path or a filter with one. Refused on every database, in each API's envelope."""
    body = desktop_error(client.post(D, json={"userId": "user_bad", "name": "a\x00"}, headers=user), 400,
                         "VALIDATION_ERROR")
    assert body["details"] == {"name": NUL}
    assert desktop_error(client.get(f"{D}?userId=a%00b", headers=user), 400,
                         "VALIDATION_ERROR")["details"] == {"userId": NUL}
    assert desktop_error(client.get(f"{D}/user/a%00", headers=user), 400,
                         "VALIDATION_ERROR")["details"] == {"user_id": NUL}
    assert desktop_error(client.get("/api/v1/admin/audit?requestId=x%00", headers=admin), 400,
                         "VALIDATION_ERROR")["details"] == {"requestId": NUL}
    error = project_error(client.post("/api/projects", json={"name": "\x1e\x00"}, headers=user), 400,
                          "INVALID_REQUEST")
    assert error["details"] == {"name": NUL}
    assert project_error(client.get("/api/projects/proj_%00", headers=user), 400,
                         "INVALID_REQUEST")["details"] == {"project_id": NUL}
    assert project_error(client.put("/api/user/settings", json={"custom_models": ["m\x00"]}, headers=user), 400,
                         "INVALID_REQUEST")["details"] == {"custom_models": NUL}
    with db.connection_context():
        assert not Project.select().exists() and not Desktop.select().exists()


# ---- the answers' shape -----------------------------------------------------------------------------------

def test_405_says_what_is_allowed(client, user, admin):
    """RFC 9110: a 405 carries Allow. It was dropped when the error was rendered in the envelopes."""
    response = client.patch(f"{D}/1", headers=user)
    desktop_error(response, 405, "METHOD_NOT_ALLOWED")
    assert set(response.headers["Allow"].split(", ")) == {"DELETE", "GET", "HEAD", "OPTIONS"}
    response = client.put("/api/projects", headers=user)
    project_error(response, 405, "INVALID_REQUEST")
    assert set(response.headers["Allow"].split(", ")) == {"GET", "HEAD", "OPTIONS", "POST"}
    # /policies/runs is not a policy: POST there was routed to /policies/<name> (and Allow said POST).
    response = client.post("/api/v1/admin/policies/runs", headers=admin)
    desktop_error(response, 405, "METHOD_NOT_ALLOWED")
    assert set(response.headers["Allow"].split(", ")) == {"GET", "HEAD", "OPTIONS"}
    desktop_error(client.post("/api/v1/admin/policies/nope", headers=admin), 404, "NOT_FOUND")


@pytest.mark.parametrize("value", [0, 1, "true", "yes"])
def test_json_booleans_are_true_or_false(client, user, admin, value):
    """`force` and `dryRun` are booleans: marshmallow's Boolean also took 0, 1, "true", "yes"."""
    desktop_id = running_desktop(client, user)
    body = desktop_error(client.post(f"{D}/{desktop_id}/stop", json={"force": value}, headers=user), 400,
                         "VALIDATION_ERROR")
    assert body["details"] == {"force": "Force must be true or false"}
    project_id = running_project(client, user)
    error = project_error(client.post(f"/api/projects/{project_id}/stop", json={"force": value}, headers=user),
                          400, "INVALID_REQUEST")
    assert error["details"] == {"force": "Must be true or false"}
    assert desktop_error(client.post("/api/v1/admin/policies/expire", json={"dryRun": value}, headers=admin), 400,
                         "VALIDATION_ERROR")["details"] == {"dryRun": "dryRun must be true or false"}
    assert desktop_error(client.post("/api/v1/admin/nodes/pve1/drain", json={"force": value}, headers=admin), 400,
                         "VALIDATION_ERROR")["details"] == {"force": "force must be true or false"}
    # Nothing was stopped or drained.
    with db.connection_context():
        assert Desktop.get_by_id(desktop_id).status == "RUNNING"
        assert Project.get(Project.public_id == project_id).status == "running"
    assert client.post(f"{D}/{desktop_id}/stop", json={"force": False}, headers=user).status_code == 200


# ---- the OpenAPI document -----------------------------------------------------------------------------------

@pytest.fixture
def spec(client):
    return client.get("/api/v1/openapi.json").get_json()


def test_the_document_describes_the_errors_the_apis_answer(spec):
    """Every operation's `default` error was flask-smorest's {code, status, message, errors}, and
    request validation was documented as a 422: neither is ever answered."""
    default = spec["components"]["responses"]["DEFAULT_ERROR"]["content"]["application/json"]["schema"]
    assert default == {"oneOf": [{"$ref": "#/components/schemas/DesktopError"},
                                 {"$ref": "#/components/schemas/ProjectError"}]}
    assert "Error" not in spec["components"]["schemas"]
    for path, operations in spec["paths"].items():
        for method, operation in operations.items():
            if method != "parameters":
                assert "422" not in operation["responses"], (method, path)
    # A malformed desktop id is a 400 on every desktop operation, the details included.
    assert "400" in spec["paths"]["/api/v1/desktops/{desktop_id}"]["get"]["responses"]
    assert "400" in spec["paths"]["/api/v1/admin/policies/{name}"]["post"]["responses"]


def test_the_document_describes_the_inputs_as_the_app_checks_them(spec):
    def parameter(path, name):
        return next(p for p in spec["paths"][path]["parameters"] if p["name"] == name)["schema"]

    # The contract's desktop id is a Long (it was documented as any string).
    for path in ("/api/v1/desktops/{desktop_id}", "/api/v1/desktops/{desktop_id}/status",
                 "/api/v1/desktops/{desktop_id}/connect", "/api/v1/desktops/{desktop_id}/start",
                 "/api/v1/desktops/{desktop_id}/stop", "/api/v1/desktops/{desktop_id}/events"):
        assert parameter(path, "desktop_id") == {"type": "integer", "format": "int64", "minimum": 1}
    assert parameter("/api/v1/admin/nodes/{node}", "node")["pattern"]
    assert parameter("/api/v1/admin/policies/{name}", "name")["enum"] == ["expire", "idle", "cleanup", "reconcile"]
    # Health is for monitors: no token (the document's default is bearerAuth).
    assert spec["paths"]["/api/v1/health"]["get"]["security"] == []
    # Every field of the settings is optional, and so is the body.
    assert spec["paths"]["/api/user/settings"]["put"]["requestBody"]["required"] is False
    schemas = spec["components"]["schemas"]
    create = schemas["DesktopCreate"]["properties"]
    assert create["userId"]["maxLength"] == 255 and create["userId"]["pattern"]
    assert create["name"]["maxLength"] == 100 and create["name"]["pattern"]
    assert schemas["ProjectCreate"]["properties"]["name"]["pattern"]
    assert schemas["ChatSend"]["properties"]["message"]["pattern"]
    assert schemas["Invite"]["properties"]["email"]["pattern"]
    for name in ("StopBody", "ProjectStopBody", "PolicyRunBody", "DrainBody"):
        assert all(p["type"] == "boolean" for p in schemas[name]["properties"].values())


def test_the_documented_not_blank_is_pythons():
    """The "not blank" pattern agrees with value.strip() (a schema with \\S let "\\x1c\\x1c" through,
    which the API calls blank)."""
    from controlplane.api.common import NOT_BLANK
    pattern = re.compile(NOT_BLANK)
    for code in range(0x3100):
        char = chr(code)
        assert char.isspace() == (pattern.search(char) is None), hex(code)
