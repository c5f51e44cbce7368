"""The WebSocket session's forwarding of Redis events: Redis applies an unsubscribe only when it gets
it, so an event of a room the session has left (or was removed from) can still arrive after the
news of the removal; it must not reach the client (CI once saw a removed member get the room's
'joined_chat' after 'removed')."""
from __future__ import annotations

import json

from controlplane.api.ws import Session
from controlplane.services.identity import Identity
from controlplane.services.queue import project_channel, user_channel


class Captured:
    def __init__(self):
        self.sent: list[dict] = []

    def send(self, payload):
        self.sent.append(json.loads(payload))


class Unsubscribing:
    def __init__(self):
        self.unsubscribed: list[str] = []

    def unsubscribe(self, channel):
        self.unsubscribed.append(channel)


def session(rooms: set[str]) -> Session:
    made = Session.__new__(Session)  # no Redis connection: forward() is what is tested
    made.ws = Captured()
    made.identity = Identity(user_id="user_editor", name="Editor")
    made.user_channel = user_channel("user_editor")
    made.rooms = {room: project_channel(room) for room in rooms}
    made.pubsub = Unsubscribing()
    return made


def activity(project: str, user: str, what: str) -> bytes:
    return json.dumps({"type": "collaborator_activity", "project_id": project,
                       "user": {"id": user, "name": user}, "activity": what}).encode()


def test_an_event_of_a_room_left_is_dropped_even_when_redis_still_delivers_it():
    s = session({"proj_a"})
    room = project_channel("proj_a").encode()
    s.forward(activity("proj_a", "user_owner", "joined_chat"), room)
    assert [e["activity"] for e in s.ws.sent] == ["joined_chat"]
    s.forward(activity("proj_a", "user_editor", "removed"), room)  # the news, then no more of the room
    assert [e["activity"] for e in s.ws.sent] == ["joined_chat", "removed"]
    assert s.pubsub.unsubscribed == [project_channel("proj_a")] and s.rooms == {}
    s.forward(activity("proj_a", "user_owner", "joined_chat"), room)  # published before Redis had the unsubscribe
    s.forward(json.dumps({"type": "chat_message", "project_id": "proj_a", "message": {"content": "x"}}).encode(), room)
    assert [e["activity"] for e in s.ws.sent] == ["joined_chat", "removed"]


def test_the_users_own_channel_and_rooms_joined_still_reach_the_client():
    s = session({"proj_b"})
    s.forward(json.dumps({"type": "desktop_status", "desktop_id": 7, "status": "RUNNING"}).encode(),
              user_channel("user_editor").encode())
    s.forward(activity("proj_b", "user_owner", "joined_chat"), project_channel("proj_b").encode())
    s.forward(activity("proj_c", "user_owner", "joined_chat"), project_channel("proj_c").encode())  # never joined
    assert [e["type"] for e in s.ws.sent] == ["desktop_status", "collaborator_activity"]
    assert s.ws.sent[1]["project_id"] == "proj_b"
