"""The WebSocket `/ws` of the projects contract (flask-sock).

Protocol: the client's first message is {"type": "auth", "token": "<access token>"} (within
AUTH_TIMEOUT seconds, or the socket is closed with a reason); then {"type": "join", "project_id"}
for each project room (members only, by the same permission table as REST) and
{"type": "leave", "project_id"}; {"type": "ping"} is answered with {"type": "pong"}.

Events come from Redis pub/sub, so every API process delivers what any process or worker
published: `chat_message`, `project_status` and `collaborator_activity` for joined projects, and
`desktop_status` for the user's own desktops. Errors are sent as
{"type": "error", "error": {"code", "message", "details"?}} (the projects API's envelope).
"""
from __future__ import annotations

import json
import logging
import time

from flask import current_app
from simple_websocket import ConnectionClosed

from ..errors import ApiError, Unauthorized
from ..extensions import db, sock
from ..services import projects
from ..services.desktops import Identity
from ..services.queue import get_redis, project_channel, user_channel
from .common import settings
from .errors import project_error_body

log = logging.getLogger(__name__)

AUTH_TIMEOUT = 5.0
POLL = 0.1
MAX_MESSAGE = 16 * 1024
# Close codes (4000-4999 are the application's): 4401 unauthenticated, 4400 protocol error.
CLOSE_UNAUTHORIZED = 4401
CLOSE_PROTOCOL = 4400


def _identity(token: str) -> Identity:
    from ..auth import identity_from_token
    return identity_from_token(settings(), token)


def _send(ws, payload: dict) -> None:
    ws.send(json.dumps(payload, default=str))


def _error(ws, exc: ApiError) -> None:
    _send(ws, {"type": "error", **project_error_body(exc)})


class Session:
    """One connected client: who it is, the rooms it joined, its Redis subscription."""

    def __init__(self, ws, identity: Identity):
        self.ws = ws
        self.identity = identity
        self.rooms: set[str] = set()
        self.pubsub = get_redis(settings().redis_url).pubsub(ignore_subscribe_messages=True)
        self.pubsub.subscribe(user_channel(identity.user_id))
        # Wait for Redis to confirm the subscription (the confirmation is read and dropped here):
        # an event published once the client has its auth_ok must reach it.
        self.pubsub.get_message(timeout=5)

    def close(self) -> None:
        try:
            self.pubsub.close()
        except Exception:
            pass

    def handle(self, message: dict) -> None:
        kind = message.get("type")
        if kind == "ping":
            _send(self.ws, {"type": "pong"})
        elif kind in ("join", "leave"):
            project_id = message.get("project_id")
            if not isinstance(project_id, str) or not project_id:
                raise _invalid("project_id is required", {"project_id": "required"})
            if kind == "join":
                self.join(project_id)
            else:
                self.leave(project_id)
        elif kind == "auth":
            raise _invalid("Already authenticated")
        else:
            raise _invalid(f"Unknown message type {kind!r}", {"type": "Must be join, leave or ping"})

    def join(self, project_id: str) -> None:
        with db.connection_context():
            project, role = projects.access(self.identity, project_id, projects.Action.READ)
        if project_id not in self.rooms:
            self.pubsub.subscribe(project_channel(project_id))
            self.rooms.add(project_id)
        _send(self.ws, {"type": "joined", "project_id": project_id, "role": role.value if role else None,
                        "status": project.status, "vm_ip": project.vm_ip})
        projects.lifecycle_notify(settings(), project, {
            "type": "collaborator_activity", "project_id": project_id,
            "user": {"id": self.identity.user_id, "name": self.identity.name}, "activity": "joined_chat"})

    def leave(self, project_id: str) -> None:
        if project_id in self.rooms:
            self.pubsub.unsubscribe(project_channel(project_id))
            self.rooms.discard(project_id)
        _send(self.ws, {"type": "left", "project_id": project_id})

    def forward(self, raw: bytes | str) -> None:
        payload = raw.decode() if isinstance(raw, bytes) else raw
        event = json.loads(payload)
        project_id = event.get("project_id")
        if (event.get("type") == "collaborator_activity" and project_id in self.rooms
                and event.get("activity") in ("removed", "left_project")
                and (event.get("user") or {}).get("id") == self.identity.user_id):
            # Removed from the project: forward the news, then stop listening to its room.
            self.ws.send(payload)
            self.pubsub.unsubscribe(project_channel(project_id))
            self.rooms.discard(project_id)
            return
        if (event.get("type") == "collaborator_activity"
                and (event.get("user") or {}).get("id") == self.identity.user_id):
            return  # one's own activity is no news to oneself
        self.ws.send(payload)


def _invalid(message: str, details: dict | None = None) -> ApiError:
    from ..errors import ValidationFailed
    return ValidationFailed(message, details)


def _receive_json(ws, timeout: float) -> dict | None:
    raw = ws.receive(timeout=timeout)
    if raw is None:
        return None
    if len(raw) > MAX_MESSAGE:
        raise _invalid("Message too large")
    try:
        message = json.loads(raw)
    except (TypeError, ValueError):
        raise _invalid("Messages must be JSON objects") from None
    if not isinstance(message, dict):
        raise _invalid("Messages must be JSON objects")
    return message


def init_ws(app) -> None:
    sock.init_app(app)

    @sock.route("/ws")
    def websocket(ws):
        if not db.is_closed():
            db.close()  # a session lasts long: it takes a database connection only when it needs one
        deadline = time.monotonic() + AUTH_TIMEOUT
        identity = None
        while identity is None:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                _error(ws, Unauthorized("No auth message within %g seconds" % AUTH_TIMEOUT))
                ws.close(CLOSE_UNAUTHORIZED, "authentication timeout")
                return
            try:
                message = _receive_json(ws, remaining)
            except ApiError as exc:
                _error(ws, exc)
                ws.close(CLOSE_PROTOCOL, "protocol error")
                return
            if message is None:
                continue
            if message.get("type") != "auth" or not isinstance(message.get("token"), str):
                _error(ws, Unauthorized("The first message must be {\"type\": \"auth\", \"token\": ...}"))
                ws.close(CLOSE_UNAUTHORIZED, "authentication required")
                return
            try:
                identity = _identity(message["token"])
            except ApiError as exc:
                _error(ws, exc)
                ws.close(CLOSE_UNAUTHORIZED, "invalid token")
                return
        session = Session(ws, identity)  # subscribed before the client hears it is signed in
        _send(ws, {"type": "auth_ok", "user_id": identity.user_id})
        try:
            while True:
                try:
                    message = _receive_json(ws, POLL)
                    if message is not None:
                        session.handle(message)
                except ApiError as exc:
                    _error(ws, exc)
                event = session.pubsub.get_message(timeout=POLL)
                while event is not None:
                    if event.get("type") == "message":
                        session.forward(event["data"])
                    event = session.pubsub.get_message(timeout=0)
        except ConnectionClosed:
            pass
        except Exception:
            current_app.logger.exception("websocket session of %s failed", identity.user_id)
        finally:
            session.close()
