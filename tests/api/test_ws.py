"""The WebSocket /ws with real clients over HTTP: auth first, rooms for members only, and events
published through Redis (chat messages, project status, collaborator activity, desktop status)."""
from __future__ import annotations

import json
import time

import pytest
import simple_websocket

from controlplane.extensions import db
from controlplane.models import Project
from tests.api.test_chat_api import LAB_KEY, USER_KEYS_SECRET, llm  # noqa: F401  (fixture)
from tests.conftest import ServerThread


@pytest.fixture
def server(base_settings, database, llm, client, model_library):  # noqa: F811
    from controlplane import create_app
    llm.clear_faults()
    app = create_app(base_settings.replace(llm_openai_api_key=LAB_KEY, llm_openai_base_url=llm.url,
                                           llm_timeout=3.0, llm_user_keys_secret=USER_KEYS_SECRET))
    running = ServerThread(app).start()
    yield running
    running.stop()


@pytest.fixture
def people(token):
    def headers(user):
        return {"Authorization": "Bearer " + token(user, email=f"{user}@example.com", name=user.title())}
    return {who: headers(f"user_{who}") for who in ("owner", "editor", "outsider")}


class Socket:
    def __init__(self, url: str):
        self.ws = simple_websocket.Client.connect(url.replace("http://", "ws://") + "/ws")

    def send(self, payload: dict) -> None:
        self.ws.send(json.dumps(payload))

    def next(self, timeout: float = 5.0, type_: str | None = None) -> dict:
        deadline = time.monotonic() + timeout
        while True:
            raw = self.ws.receive(timeout=max(deadline - time.monotonic(), 0.01))
            if raw is None:
                raise AssertionError(f"no {type_ or 'message'} within {timeout}s")
            message = json.loads(raw)
            if type_ is None or message.get("type") == type_:
                return message

    def auth(self, headers: dict) -> dict:
        self.send({"type": "auth", "token": headers["Authorization"].split(" ", 1)[1]})
        return self.next()

    def close(self):
        self.ws.close()


def make_team(session_post, people) -> str:
    project_id = session_post("/api/projects", people["owner"], {"name": "Live"})["project_id"]
    inv = session_post(f"/api/projects/{project_id}/collaborators", people["owner"],
                       {"email": "user_editor@example.com", "role": "editor"})["invitation_id"]
    session_post(f"/api/invitations/{inv}/accept", people["editor"], {})
    with db.connection_context():
        Project.update(status="running").where(Project.public_id == project_id).execute()
    return project_id


@pytest.fixture
def post(server):
    import requests

    def call(path, headers, body):
        # 30 s: a chat may wait for the model library's import (seconds; more on a loaded machine)
        response = requests.post(server.url + path, json=body, headers=headers, timeout=30)
        assert response.status_code < 300, response.text
        return response.json()
    return call


def test_two_members_see_each_others_chat_and_status(server, people, post):
    project_id = make_team(post, people)
    owner, editor = Socket(server.url), Socket(server.url)
    try:
        assert owner.auth(people["owner"]) == {"type": "auth_ok", "user_id": "user_owner"}
        assert editor.auth(people["editor"])["type"] == "auth_ok"
        owner.send({"type": "join", "project_id": project_id})
        assert owner.next(type_="joined")["role"] == "owner"
        editor.send({"type": "join", "project_id": project_id})
        assert editor.next(type_="joined")["role"] == "editor"
        activity = owner.next(type_="collaborator_activity")
        assert activity == {"type": "collaborator_activity", "project_id": project_id,
                            "user": {"id": "user_editor", "name": "User_Editor"}, "activity": "joined_chat"}

        answer = post("/api/chat", people["editor"], {"project_id": project_id, "message": "hi team"})
        first = owner.next(type_="chat_message")
        assert first["project_id"] == project_id and first["message"]["role"] == "user"
        assert first["message"]["content"] == "hi team" and first["message"]["user_id"] == "user_editor"
        second = owner.next(type_="chat_message")
        assert second["message"] == {"id": answer["message_id"], "role": "assistant", "content": answer["response"],
                                     "timestamp": second["message"]["timestamp"], "model": "openai/gpt-4",
                                     "tokens": answer["tokens_used"]}
        assert editor.next(type_="chat_message")["message"]["content"] == "hi team"

        # A status change (the API accepting a stop) reaches both.
        post(f"/api/projects/{project_id}/stop", people["editor"], {})
        for sock in (owner, editor):
            status = sock.next(type_="project_status")
            assert status["project_id"] == project_id and status["status"] == "stopping"
    finally:
        owner.close()
        editor.close()


def test_outsiders_cannot_join(server, people, post):
    project_id = make_team(post, people)
    outsider = Socket(server.url)
    try:
        outsider.auth(people["outsider"])
        outsider.send({"type": "join", "project_id": project_id})
        error = outsider.next()
        assert error["type"] == "error" and error["error"]["code"] == "NOT_FOUND"
        outsider.send({"type": "ping"})
        assert outsider.next() == {"type": "pong"}  # still connected, just not in the room
    finally:
        outsider.close()


@pytest.mark.parametrize("first", [{"type": "join", "project_id": "proj_x"}, {"type": "auth", "token": "garbage"},
                                   {"type": "auth"}])
def test_bad_or_missing_auth_closes_the_socket(server, first):
    sock = Socket(server.url)
    sock.send(first)
    error = sock.next()
    assert error["type"] == "error" and error["error"]["code"] == "UNAUTHORIZED"
    with pytest.raises(simple_websocket.ConnectionClosed):
        for _ in range(10):
            sock.ws.receive(timeout=1)
    assert sock.ws.close_reason == 4401


def test_desktop_status_events_reach_their_owner(server, people, token):
    import requests
    sock = Socket(server.url)
    try:
        headers = {"Authorization": "Bearer " + token("user_owner")}
        sock.auth(headers)
        created = requests.post(server.url + "/api/v1/desktops", json={"userId": "user_owner"}, headers=headers,
                                timeout=10).json()["data"]
        event = sock.next(type_="desktop_status")
        assert event["desktop_id"] == created["id"] and event["status"] == "PENDING"
    finally:
        sock.close()


def test_malformed_messages_get_an_error_and_keep_the_session(server, people):
    sock = Socket(server.url)
    try:
        sock.auth(people["owner"])
        sock.ws.send("not json")
        assert sock.next()["error"]["code"] == "INVALID_REQUEST"
        sock.send({"type": "dance"})
        assert sock.next()["error"]["code"] == "INVALID_REQUEST"
        sock.send({"type": "ping"})
        assert sock.next() == {"type": "pong"}
    finally:
        sock.close()


def test_a_removed_member_stops_receiving_the_rooms_events(server, people, post):
    import requests
    project_id = make_team(post, people)
    owner, editor = Socket(server.url), Socket(server.url)
    try:
        owner.auth(people["owner"])
        editor.auth(people["editor"])
        for sock in (owner, editor):
            sock.send({"type": "join", "project_id": project_id})
            sock.next(type_="joined")
        removed = requests.delete(f"{server.url}/api/projects/{project_id}/collaborators/user_editor",
                                  headers=people["owner"], timeout=30)
        assert removed.status_code == 200
        news = editor.next(type_="collaborator_activity")
        while news["activity"] == "joined_chat":  # the owner's own join may arrive first
            news = editor.next(type_="collaborator_activity")
        assert news["activity"] == "removed" and news["user"]["id"] == "user_editor"
        post("/api/chat", people["owner"], {"project_id": project_id, "message": "secret plans"})
        assert owner.next(type_="chat_message")["message"]["content"] == "secret plans"
        editor.send({"type": "ping"})
        assert editor.next() == {"type": "pong"}  # nothing from the room came before the pong
        editor.send({"type": "join", "project_id": project_id})
        assert editor.next()["error"]["code"] == "NOT_FOUND"
    finally:
        owner.close()
        editor.close()
