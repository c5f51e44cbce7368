"""Input the contracts cannot hold is a 4xx in the API's own envelope, never a 500 (issue 17, item 8).

Every JSON body goes through one parse (controlplane/api/jsonbody.py): nesting deeper than
MAX_DEPTH, integers longer than MAX_INT_DIGITS, NaN/Infinity and unpaired UTF-16 surrogates
("\\ud800", which no database, Redis key or log line can encode) are refused as 400s naming the
member. Were 500s: RecursionError and Python's 4300-digit int limit escaped json's own errors, and
a lone surrogate failed where the text was stored. Also the WebSocket's messages (same parse),
and path parameters and query values too large for what they name. Token claims of odd shapes
are in tests/unit/test_auth.py."""
from __future__ import annotations

import json

import pytest
import simple_websocket

from controlplane.extensions import db
from controlplane.models import Desktop, Project
from tests.api.test_chat_api import chat_client, llm  # noqa: F401  (fixtures: an app whose model answers)
from tests.conftest import ServerThread

DEEP = "[" * 5000 + "]" * 5000
HUGE = "1" * 5000
MAX_DEPTH, MAX_INT_DIGITS = 32, 40  # jsonbody's bounds, as the README states them
SURROGATE = "Must not contain unpaired surrogates (\\ud800 to \\udfff)"

# Every operation that takes a JSON body, with who may call it (the admin API checks the role
# before it reads a body). test_the_list_is_every_operation_with_a_body keeps it complete. The
# body is refused before the view looks the path's object up: the ids need not exist.
OPERATIONS = [
    ("POST", "/api/v1/desktops", "user"),
    ("POST", "/api/v1/desktops/{desktop_id}/start", "user"),
    ("POST", "/api/v1/desktops/{desktop_id}/stop", "user"),
    ("POST", "/api/v1/admin/policies/{name}", "admin"),
    ("POST", "/api/v1/admin/nodes/{node}/drain", "admin"),
    ("PUT", "/api/v1/admin/pools/{plan}", "admin"),
    ("POST", "/api/projects", "user"),
    ("POST", "/api/projects/{project_id}/start", "user"),
    ("POST", "/api/projects/{project_id}/stop", "user"),
    ("POST", "/api/projects/{project_id}/connect", "user"),
    ("POST", "/api/projects/{project_id}/collaborators", "user"),
    ("POST", "/api/invitations/{invitation_id}/accept", "user"),
    ("POST", "/api/invitations/{invitation_id}/decline", "user"),
    ("POST", "/api/chat", "user"),
    ("PUT", "/api/user/settings", "user"),
]
PATH_VALUES = {"desktop_id": 1, "name": "expire", "node": "pve1", "plan": "BASIC", "project_id": "proj_0123abcd",
               "invitation_id": "inv_0123abcd"}
BODY_ENDPOINTS = [(method, template.format(**PATH_VALUES), who) for method, template, who in OPERATIONS]
IDS = [f"{method} {template}" for method, template, _ in OPERATIONS]


@pytest.fixture
def callers(token):
    return {"user": {"Authorization": "Bearer " + token("user_input", email="user_input@example.com")},
            "admin": {"Authorization": "Bearer " + token("user_ops", admin=True)}}


def send(client, method: str, path: str, headers: dict, raw: str):
    return client.open(path, method=method, data=raw.encode("utf-8"), content_type="application/json",
                       headers=headers)


def refused(response, path: str) -> dict:
    """A 400 in the envelope of the API `path` belongs to; its details."""
    assert response.status_code == 400, response.get_data(as_text=True)[:500]
    body = response.get_json()
    if path.startswith("/api/v1/"):
        assert body["success"] is False and body["error"] == "VALIDATION_ERROR" and body["path"] == path
        assert set(body) <= {"success", "error", "message", "details", "path", "timestamp"}
        return body["details"]
    assert list(body) == ["error"] and body["error"]["code"] == "INVALID_REQUEST"
    return body["error"]["details"]


def nothing_was_made():
    with db.connection_context():
        assert not Desktop.select().exists() and not Project.select().exists()


def test_the_list_is_every_operation_with_a_body(client):
    spec = client.get("/api/v1/openapi.json").get_json()
    documented = {(method.upper(), path) for path, operations in spec["paths"].items()
                  for method, operation in operations.items()
                  if isinstance(operation, dict) and "requestBody" in operation}
    assert documented == {(method, template) for method, template, _ in OPERATIONS}, "update OPERATIONS"


# ---- one parse for every body --------------------------------------------------------------------------

@pytest.mark.parametrize("method,path,who", BODY_ENDPOINTS, ids=IDS)
@pytest.mark.parametrize("raw", [DEEP, '{"x": ' + DEEP + "}", '{"x": ' + "[" * 100 + "]" * 100 + "}"],
                         ids=["5000-deep", "5000-deep-member", "100-deep-member"])
def test_json_nested_too_deep_is_a_400_not_a_500(client, callers, method, path, who, raw):
    details = refused(send(client, method, path, callers[who], raw), path)
    assert list(details.values()) == [f"JSON must not be nested more than {MAX_DEPTH} levels deep"]
    nothing_was_made()


@pytest.mark.parametrize("method,path,who", BODY_ENDPOINTS, ids=IDS)
def test_a_5000_digit_integer_in_an_ignored_field_is_a_400_not_a_500(client, callers, method, path, who):
    details = refused(send(client, method, path, callers[who], '{"ignored": ' + HUGE + "}"), path)
    assert details == {"body": f"Integers must have at most {MAX_INT_DIGITS} digits"}
    nothing_was_made()


@pytest.mark.parametrize("method,path,who", BODY_ENDPOINTS, ids=IDS)
@pytest.mark.parametrize("raw,field", [('{"ignored": "a\\ud800"}', "ignored"), ('{"x\\udfff": 1}', "body"),
                                       ('{"ignored": {"deeper": ["\\udc80"]}}', "ignored")],
                         ids=["value", "key", "nested"])
def test_unpaired_surrogates_anywhere_in_a_body_are_a_400(client, callers, method, path, who, raw, field):
    details = refused(send(client, method, path, callers[who], raw), path)
    assert details == {field: SURROGATE}


@pytest.mark.parametrize("method,path,raw,field", [
    ("POST", "/api/v1/desktops", '{"userId": "user_input", "name": "\\ud800"}', "name"),
    ("POST", "/api/projects", '{"name": "Lab \\ud800"}', "name"),
    ("POST", "/api/projects", '{"name": "Lab", "description": "\\udbff"}', "description"),
], ids=["desktop-name", "project-name", "project-description"])
def test_a_lone_surrogate_in_a_text_field_is_a_400_not_a_500(client, callers, method, path, raw, field):
    """"\\ud800" is valid JSON syntax but no UTF-8 text: the database (and the logs) raised."""
    assert refused(send(client, method, path, callers["user"], raw), path) == {field: SURROGATE}
    nothing_was_made()


def test_a_lone_surrogate_in_a_chat_message_is_a_400_not_a_500(chat_client, callers):
    """On a project the caller may chat in, with a model that answers: the message was stored (500)."""
    from controlplane.models import ChatMessage
    created = chat_client.post("/api/projects", json={"name": "Chatty"}, headers=callers["user"])
    project_id = created.get_json()["project_id"]
    with db.connection_context():
        Project.update(status="running").where(Project.public_id == project_id).execute()
    raw = '{"project_id": "%s", "message": "hi \\ud800"}' % project_id
    assert refused(send(chat_client, "POST", "/api/chat", callers["user"], raw), "/api/chat") == {"message": SURROGATE}
    with db.connection_context():
        assert not ChatMessage.select().exists()
    answered = chat_client.post("/api/chat", json={"project_id": project_id, "message": "hi \U0001F600"},
                                headers=callers["user"])
    assert answered.status_code == 200, answered.get_data(as_text=True)


def test_paired_surrogates_are_an_ordinary_character(client, callers):
    """An escaped pair ("\\ud83d\\ude00") is one character (U+1F600), as JSON has it."""
    response = send(client, "POST", "/api/projects", callers["user"], '{"name": "Lab \\ud83d\\ude00"}')
    assert response.status_code == 201, response.get_data(as_text=True)
    project = client.get(f"/api/projects/{response.get_json()['project_id']}", headers=callers["user"]).get_json()
    assert project["name"] == "Lab \U0001F600"


@pytest.mark.parametrize("raw", ['{"name": "x", "n": NaN}', '{"name": "x", "n": Infinity}',
                                 '{"name": "x", "n": -Infinity}', '{"name": "x", "n": 1e999}'])
def test_nan_and_infinity_are_not_json(client, callers, raw):
    details = refused(send(client, "POST", "/api/projects", callers["user"], raw), "/api/projects")
    assert list(details) == ["body"]
    nothing_was_made()


def test_integers_up_to_the_bound_are_read(client, callers):
    response = send(client, "POST", "/api/projects", callers["user"],
                    '{"name": "x", "ignored": ' + "9" * MAX_INT_DIGITS + "}")
    assert response.status_code == 201, response.get_data(as_text=True)


def test_a_body_that_is_not_utf8_is_not_json(client, callers):
    response = client.post("/api/projects", data=b'{"name": "\xff"}', content_type="application/json",
                           headers=callers["user"])
    assert refused(response, "/api/projects") == {"body": "Request body is not valid JSON"}


def test_the_portals_lab_sign_in_reads_the_same_way(client):
    """The portal's lab sign-in reads its body with request.get_json() too: a deep body was a 500."""
    response = client.post("/portal/lab-token", data=DEEP, content_type="application/json")
    assert response.status_code == 400, response.get_data(as_text=True)[:300]
    assert response.get_json()["error"] == "VALIDATION_ERROR"


# ---- path and query ------------------------------------------------------------------------------------

@pytest.mark.parametrize("method,suffix", [("GET", ""), ("DELETE", ""), ("GET", "/status"), ("GET", "/connect"),
                                           ("POST", "/start"), ("POST", "/stop"), ("GET", "/events")])
def test_a_5000_digit_desktop_id_is_not_found_not_a_500(client, callers, method, suffix):
    path = f"/api/v1/desktops/{'9' * 5000}{suffix}"
    response = client.open(path, method=method, headers=callers["user"])
    assert response.status_code == 404, response.get_data(as_text=True)[:300]
    assert response.get_json()["error"] == "DESKTOP_NOT_FOUND"


@pytest.mark.parametrize("path,who", [("/api/v1/admin/audit?limit=" + "9" * 5000, "admin"),
                                      ("/api/v1/admin/policies/runs?limit=" + "9" * 5000, "admin"),
                                      ("/api/chat/proj_0123abcd/history?limit=" + "9" * 5000, "user"),
                                      ("/api/v1/desktops?userId=" + "u" * 5000, "user")])
def test_huge_query_values_are_a_4xx_not_a_500(client, callers, path, who):
    response = client.get(path, headers=callers[who])
    assert 400 <= response.status_code < 500, response.get_data(as_text=True)[:300]


def test_surrogates_cannot_come_through_the_url(client, callers):
    """Werkzeug decodes the path and query as UTF-8 with replacement: %ED%A0%80 (a surrogate's
    UTF-8 form, invalid UTF-8) arrives as U+FFFD, which every layer can hold."""
    response = client.get("/api/projects/proj_%ED%A0%80", headers=callers["user"])
    assert response.status_code == 404 and "\ufffd" in response.get_json()["error"]["details"]["project_id"]


# ---- the WebSocket -----------------------------------------------------------------------------------

@pytest.fixture
def ws_url(app, client):
    server = ServerThread(app).start()
    try:
        yield server.url.replace("http://", "ws://") + "/ws"
    finally:
        server.stop()


def receive(ws) -> dict:
    raw = ws.receive(timeout=5)
    assert raw is not None, "no answer within 5 s"
    return json.loads(raw)


@pytest.mark.parametrize("raw,details", [
    ("[" * 1500 + "]" * 1500, {"message": f"JSON must not be nested more than {MAX_DEPTH} levels deep"}),
    ('{"type": "auth", "token": "\\ud800"}', {"token": SURROGATE}),
    ('{"type": "auth", "token": ' + "7" * 1000 + "}",
     {"message": f"Integers must have at most {MAX_INT_DIGITS} digits"}),
], ids=["1500-deep", "surrogate-token", "1000-digit-token"])
def test_a_websocket_auth_message_that_cannot_be_read_is_refused_with_an_error(ws_url, raw, details):
    """Before: the deep message raised RecursionError out of the handler (no answer, a logged crash).
    Kept small: the socket bounds what an unauthenticated client may send."""
    ws = simple_websocket.Client.connect(ws_url)
    try:
        ws.send(raw)
        error = receive(ws)
        assert error["type"] == "error" and error["error"]["code"] == "INVALID_REQUEST", error
        assert error["error"]["details"] == details
        with pytest.raises(simple_websocket.ConnectionClosed):
            for _ in range(10):
                ws.receive(timeout=1)
        assert ws.close_reason == 4400
    finally:
        if ws.connected:
            ws.close()


def test_a_websocket_session_survives_messages_that_cannot_be_read(ws_url, token):
    """Before: a 5000-deep message ended the signed-in session (RecursionError, logged as a crash);
    a project_id with an unpaired surrogate or a NUL reached the database."""
    ws = simple_websocket.Client.connect(ws_url)
    try:
        ws.send(json.dumps({"type": "auth", "token": token("user_input")}))
        assert receive(ws)["type"] == "auth_ok"
        for raw, details in [(DEEP, {"message": f"JSON must not be nested more than {MAX_DEPTH} levels deep"}),
                             ('{"type": "join", "project_id": "proj_\\ud800"}', {"project_id": SURROGATE}),
                             ('{"type": "join", "project_id": "proj_\\u0000"}',
                              {"project_id": "Must not contain NUL (0x00) characters"}),
                             ('{"type": "ping", "n": ' + HUGE[:4000] + "}", {"message": "Integers must have at most "
                                                                             f"{MAX_INT_DIGITS} digits"})]:
            ws.send(raw)
            error = receive(ws)
            assert error["type"] == "error" and error["error"]["code"] == "INVALID_REQUEST", error
            assert error["error"]["details"] == details
        ws.send(json.dumps({"type": "ping"}))
        assert receive(ws) == {"type": "pong"}
    finally:
        ws.close()
