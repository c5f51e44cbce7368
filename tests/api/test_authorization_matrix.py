"""Who may do what, as one table per API: every endpoint × every kind of caller (the resource's
owner, project collaborators by role, another user, an admin, no token, a bad token), with the
status each gets and, for refusals, the error code in that API's own envelope.

The projects API's role × action table for members is also in test_projects_api.py; this file adds
the callers without a token, and the Desktop and admin APIs."""
from __future__ import annotations

import pytest

from controlplane.extensions import db
from controlplane.models import Desktop, Project

D = "/api/v1/desktops"
CALLERS = ("owner", "other", "admin", "anonymous", "bad_token")


@pytest.fixture
def callers(token):
    return {"owner": {"Authorization": "Bearer " + token("user_owner")},
            "other": {"Authorization": "Bearer " + token("user_other")},
            "admin": {"Authorization": "Bearer " + token("user_admin", admin=True)},
            "anonymous": {},
            "bad_token": {"Authorization": "Bearer not.a.token"}}


def owned_desktop(client, callers, status: str) -> int:
    created = client.post(D, json={"userId": "user_owner"}, headers=callers["owner"])
    assert created.status_code == 201, created.get_json()
    desktop_id = created.get_json()["data"]["id"]
    with db.connection_context():
        Desktop.update(status=status, ip_address="10.66.0.9", guacamole_connection_id="7", protocol="vnc") \
            .where(Desktop.id == desktop_id).execute()
    return desktop_id


# (method, path with {id}, status the desktop is in, body) → expected status per caller.
DESKTOP_TABLE = {
    "create": (("POST", D, None, {"userId": "user_owner"}),
               {"owner": 201, "other": 403, "admin": 201, "anonymous": 401, "bad_token": 401}),
    "list own": (("GET", D + "?userId=user_owner", "RUNNING", None),
                 {"owner": 200, "other": 403, "admin": 200, "anonymous": 401, "bad_token": 401}),
    "get": (("GET", D + "/{id}", "RUNNING", None),
            {"owner": 200, "other": 404, "admin": 200, "anonymous": 401, "bad_token": 401}),
    "get by user": (("GET", D + "/user/user_owner", "RUNNING", None),
                    {"owner": 200, "other": 403, "admin": 200, "anonymous": 401, "bad_token": 401}),
    "status": (("GET", D + "/{id}/status", "RUNNING", None),
               {"owner": 200, "other": 404, "admin": 200, "anonymous": 401, "bad_token": 401}),
    "connect": (("GET", D + "/{id}/connect", "RUNNING", None),
                {"owner": 200, "other": 404, "admin": 200, "anonymous": 401, "bad_token": 401}),
    "events": (("GET", D + "/{id}/events", "RUNNING", None),
               {"owner": 200, "other": 404, "admin": 200, "anonymous": 401, "bad_token": 401}),
    "start": (("POST", D + "/{id}/start", "STOPPED", None),
              {"owner": 200, "other": 404, "admin": 200, "anonymous": 401, "bad_token": 401}),
    "stop": (("POST", D + "/{id}/stop", "RUNNING", None),
             {"owner": 200, "other": 404, "admin": 200, "anonymous": 401, "bad_token": 401}),
    "delete": (("DELETE", D + "/{id}", "RUNNING", None),
               {"owner": 200, "other": 404, "admin": 200, "anonymous": 401, "bad_token": 401}),
    "admin: run a policy": (("POST", "/api/v1/admin/policies/cleanup", None, {"dryRun": True}),
                            {"owner": 403, "other": 403, "admin": 200, "anonymous": 401, "bad_token": 401}),
    "admin: policy runs": (("GET", "/api/v1/admin/policies/runs", None, None),
                           {"owner": 403, "other": 403, "admin": 200, "anonymous": 401, "bad_token": 401}),
    "admin: audit": (("GET", "/api/v1/admin/audit", None, None),
                     {"owner": 403, "other": 403, "admin": 200, "anonymous": 401, "bad_token": 401}),
    "admin: node": (("GET", "/api/v1/admin/nodes/pve1", None, None),
                    {"owner": 403, "other": 403, "admin": 200, "anonymous": 401, "bad_token": 401}),
    "admin: drain": (("POST", "/api/v1/admin/nodes/pve9/drain", None, {"dryRun": True}),
                     {"owner": 403, "other": 403, "admin": 200, "anonymous": 401, "bad_token": 401}),
}
DESKTOP_CODES = {401: "UNAUTHORIZED", 403: "FORBIDDEN", 404: "DESKTOP_NOT_FOUND"}


@pytest.mark.parametrize("caller", CALLERS)
@pytest.mark.parametrize("endpoint", list(DESKTOP_TABLE))
def test_desktop_and_admin_api(client, callers, endpoint, caller):
    (method, path, status, body), expected = DESKTOP_TABLE[endpoint]
    if status is not None:
        path = path.format(id=owned_desktop(client, callers, status))
    response = client.open(path, method=method, json=body, headers=callers[caller])
    want = expected[caller]
    assert response.status_code == want, (endpoint, caller, response.get_json())
    if want >= 400:
        error = response.get_json()
        assert error["success"] is False and error["path"] == path.split("?")[0], error
        assert error["error"] == DESKTOP_CODES[want], error


# ---- the projects API ----------------------------------------------------------------------------------------

PROJECT_CALLERS = ("owner", "editor", "viewer", "outsider", "admin", "anonymous", "bad_token")


@pytest.fixture
def members(token):
    def bearer(user, admin=False):
        return {"Authorization": "Bearer " + token(user, admin, email=f"{user}@example.com", name=user)}
    return {"owner": bearer("user_owner"), "editor": bearer("user_editor"), "viewer": bearer("user_viewer"),
            "outsider": bearer("user_outsider"), "admin": bearer("user_admin", admin=True), "anonymous": {},
            "bad_token": {"Authorization": "Bearer not.a.token"}}


def team_project(client, members) -> str:
    created = client.post("/api/projects", json={"name": "Team"}, headers=members["owner"])
    assert created.status_code == 201, created.get_json()
    project_id = created.get_json()["project_id"]
    for role in ("editor", "viewer"):
        invited = client.post(f"/api/projects/{project_id}/collaborators", headers=members["owner"],
                              json={"email": f"user_{role}@example.com", "role": role}).get_json()
        assert client.post(f"/api/invitations/{invited['invitation_id']}/accept",
                           headers=members[role]).status_code == 200
    with db.connection_context():
        Project.update(status="running").where(Project.public_id == project_id).execute()
    return project_id


P = "/api/projects/{p}"
ALL_READ = {"owner": 200, "editor": 200, "viewer": 200, "outsider": 404, "admin": 200, "anonymous": 401,
            "bad_token": 401}
PROJECT_TABLE = {
    "list": (("GET", "/api/projects", None), {**ALL_READ, "outsider": 200}),
    "create": (("POST", "/api/projects", {"name": "Mine"}), {**ALL_READ, "outsider": 201, "owner": 201,
                                                              "editor": 201, "viewer": 201, "admin": 201}),
    "read": (("GET", P, None), ALL_READ),
    "collaborators": (("GET", P + "/collaborators", None), ALL_READ),
    "chat history": (("GET", "/api/chat/{p}/history", None), ALL_READ),
    "invite": (("POST", P + "/collaborators", {"email": "new@example.com", "role": "viewer"}),
               {**ALL_READ, "owner": 201, "editor": 403, "viewer": 403, "admin": 201}),
    "remove a collaborator": (("DELETE", P + "/collaborators/user_editor", None),
                              {**ALL_READ, "editor": 200, "viewer": 403}),  # the editor leaves
    "stop": (("POST", P + "/stop", None), {**ALL_READ, "viewer": 403}),
    "delete": (("DELETE", P, None), {**ALL_READ, "editor": 403, "viewer": 403}),
}
PROJECT_CODES = {401: "UNAUTHORIZED", 403: "FORBIDDEN", 404: "NOT_FOUND"}


@pytest.mark.parametrize("caller", PROJECT_CALLERS)
@pytest.mark.parametrize("endpoint", list(PROJECT_TABLE))
def test_projects_api(client, members, endpoint, caller):
    (method, path, body), expected = PROJECT_TABLE[endpoint]
    project_id = team_project(client, members)
    path = path.format(p=project_id)
    response = client.open(path, method=method, json=body, headers=members[caller])
    want = expected[caller]
    assert response.status_code == want, (endpoint, caller, response.get_json())
    if want >= 400:
        body = response.get_json()
        assert list(body) == ["error"] and body["error"]["code"] == PROJECT_CODES[want], body


@pytest.mark.parametrize("caller", PROJECT_CALLERS)
def test_projects_api_screen(base_settings, database, client, members, caller):
    """POST /api/projects/{id}/connect (auth-json links configured): every member, view only for viewers."""
    import dataclasses

    from controlplane import create_app
    screens = create_app(dataclasses.replace(base_settings, guacamole_json_secret="0123456789abcdef" * 2)).test_client()
    project_id = team_project(client, members)
    with db.connection_context():
        Project.update(vm_ip="172.30.1.2", guacamole_connection_id="3").where(Project.public_id == project_id).execute()
    response = screens.post(f"/api/projects/{project_id}/connect", headers=members[caller])
    want = {**ALL_READ}[caller]
    assert response.status_code == want, (caller, response.get_json())
    if want >= 400:
        body = response.get_json()
        assert list(body) == ["error"] and body["error"]["code"] == PROJECT_CODES[want], body
    else:
        assert response.get_json()["read_only"] is (caller == "viewer")


# ---- the WebSocket ---------------------------------------------------------------------------------------------

from tests.api.test_chat_api import llm  # noqa: E402,F401  (fixture of the server)
from tests.api.test_ws import Socket, server  # noqa: E402,F401

WS_JOIN = {"owner": "owner", "editor": "editor", "viewer": "viewer", "admin": None, "outsider": "NOT_FOUND"}


@pytest.mark.parametrize("caller", list(WS_JOIN))
def test_websocket_join(server, members, caller):  # noqa: F811
    import requests

    def call(method, path, headers, body=None):
        response = requests.request(method, server.url + path, json=body, headers=headers, timeout=10)
        assert response.status_code < 300, response.text
        return response.json()

    project_id = call("POST", "/api/projects", members["owner"], {"name": "Live"})["project_id"]
    for role in ("editor", "viewer"):
        invited = call("POST", f"/api/projects/{project_id}/collaborators", members["owner"],
                       {"email": f"user_{role}@example.com", "role": role})
        call("POST", f"/api/invitations/{invited['invitation_id']}/accept", members[role])
    sock = Socket(server.url)
    try:
        assert sock.auth(members[caller])["type"] == "auth_ok"
        sock.send({"type": "join", "project_id": project_id})
        answer = sock.next()
        if WS_JOIN[caller] == "NOT_FOUND":
            assert answer["type"] == "error" and answer["error"]["code"] == "NOT_FOUND", answer
        else:
            assert answer["type"] == "joined" and answer["role"] == WS_JOIN[caller], answer
    finally:
        sock.close()
