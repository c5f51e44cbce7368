"""The WebSocket `/ws` of the projects contract (over simple-websocket: api/wsserver.py).

Protocol: the client's first message is {"type": "auth", "token": "<access token>"} (within
`ws_auth_timeout` seconds, or the socket is closed with a reason); then {"type": "join", "project_id"}
for each project room (members only, by the same permission table as REST) and
{"type": "leave", "project_id"}; {"type": "ping"} is answered with {"type": "pong"}.

Events come from Redis pub/sub, so every API process delivers what any process or worker
published: `chat_message`, `project_status` and `collaborator_activity` for joined projects, and
`desktop_status` for the user's own desktops. Errors are sent as
{"type": "error", "error": {"code", "message", "details"?}} (the projects API's envelope).

Limits (settings ws_*): a message is at most `ws_max_message` bytes, refused from its frame headers
before anything is buffered (close 1009); before the auth message is verified a socket may send
only a few frames (close 1008 beyond); once signed in, `ws_message_rate` messages per socket
(RATE_LIMIT_EXCEEDED errors beyond, the message dropped) and `ws_max_sockets_per_user` sockets per
user across API processes (the next one gets RATE_LIMIT_EXCEEDED and close 1008).
"""
from __future__ import annotations

import hashlib
import json
import logging
import time
import uuid

from flask import current_app, request
from simple_websocket import ConnectionClosed

from ..config import parse_rate
from ..auth import identity_from_token
from ..errors import DomainError, RateLimited, Unauthorized, ValidationFailed
from ..extensions import db
from ..services import projects
from ..services.identity import Identity
from ..services.queue import get_redis, project_channel, user_channel
from . import jsonbody
from .common import settings
from .errors import project_error_body
from .wsserver import FrameGuard, serve

log = logging.getLogger(__name__)

POLL = 0.1
# Close codes (4000-4999 are the application's): 4401 unauthenticated, 4400 protocol error; 1008 (policy
# violation) for a user over their number of sockets; wsserver closes with 1009 and 1008 for its limits.
CLOSE_UNAUTHORIZED = 4401
CLOSE_PROTOCOL = 4400
CLOSE_POLICY = 1008


def _identity(token: str) -> Identity:
    return identity_from_token(settings(), token)


def _send(ws, payload: dict) -> None:
    ws.send(json.dumps(payload, default=str))


def _error(ws, exc: DomainError) -> None:
    _send(ws, {"type": "error", **project_error_body(exc)})


class Session:
    """One connected client: who it is, the rooms it joined, its Redis subscription."""

    def __init__(self, ws, identity: Identity):
        self.ws = ws
        self.identity = identity
        self.rooms: dict[str, str] = {}  # project id -> its Redis channel (digested once, on join)
        self.pubsub = get_redis(settings().redis_url).pubsub(ignore_subscribe_messages=True)
        self.user_channel = user_channel(identity.user_id)
        self.pubsub.subscribe(self.user_channel)
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
            if "\x00" in project_id:  # PostgreSQL text cannot hold it
                raise _invalid("project_id must not contain NUL (0x00) characters",
                               {"project_id": "Must not contain NUL (0x00) characters"})
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
            channel = project_channel(project_id)
            self.pubsub.subscribe(channel)
            self.rooms[project_id] = channel
        _send(self.ws, {"type": "joined", "project_id": project_id, "role": role.value if role else None,
                        "status": project.status, "vm_ip": project.vm_ip})
        projects.lifecycle_notify(settings(), project, {
            "type": "collaborator_activity", "project_id": project_id,
            "user": {"id": self.identity.user_id, "name": self.identity.name}, "activity": "joined_chat"})

    def leave(self, project_id: str) -> None:
        if project_id in self.rooms:
            self.pubsub.unsubscribe(self.rooms.pop(project_id))
        _send(self.ws, {"type": "left", "project_id": project_id})

    def forward(self, raw: bytes | str, channel: bytes | str | None = None) -> None:
        """One event from Redis, from `channel`. Unsubscribing takes effect only once Redis has it:
        an event of a room this session has left (or was removed from) may still arrive, and is
        dropped (a removed member must not see what the room said after the removal)."""
        if channel is not None:
            name = channel.decode() if isinstance(channel, bytes) else channel
            if name != self.user_channel and name not in self.rooms.values():
                return
        payload = raw.decode() if isinstance(raw, bytes) else raw
        event = json.loads(payload)
        project_id = event.get("project_id")
        if (event.get("type") == "collaborator_activity" and project_id in self.rooms
                and event.get("activity") in ("removed", "left_project")
                and (event.get("user") or {}).get("id") == self.identity.user_id):
            # Removed from the project: forward the news, then stop listening to its room.
            self.ws.send(payload)
            self.pubsub.unsubscribe(self.rooms.pop(project_id))
            return
        if (event.get("type") == "collaborator_activity"
                and (event.get("user") or {}).get("id") == self.identity.user_id):
            return  # one's own activity is no news to oneself
        self.ws.send(payload)


def _invalid(message: str, details: dict | None = None) -> DomainError:
    return ValidationFailed(message, details)


def _receive_json(ws, timeout: float) -> dict | None:
    raw = ws.receive(timeout=timeout)
    if raw is None:
        return None
    try:
        message = jsonbody.loads(raw)  # the APIs' one parse: no deep nesting, huge integers or lone surrogates
    except jsonbody.InvalidJson as exc:
        if exc.message == jsonbody.NOT_JSON:
            raise _invalid("Messages must be JSON objects") from None
        raise _invalid(exc.message, {exc.field or "message": exc.message}) from None
    if not isinstance(message, dict):
        raise _invalid("Messages must be JSON objects")
    return message


def init_ws(app) -> None:
    def websocket():
        config = settings()
        guard = FrameGuard(config.ws_max_message)
        return serve(request.environ, guard, config.ws_send_timeout, lambda ws: _converse(ws, guard, config))

    app.add_url_rule("/ws", "websocket", websocket, websocket=True)


# Complexity above 15 (C901): the socket's whole conversation: auth, its slot, messages and events in one loop.
def _converse(ws, guard: FrameGuard, config) -> None:  # noqa: C901
    if not db.is_closed():
        db.close()  # a session lasts long: it takes a database connection only when it needs one
    deadline = time.monotonic() + config.ws_auth_timeout
    identity = None
    while identity is None:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            _error(ws, Unauthorized("No auth message within %g seconds" % config.ws_auth_timeout))
            ws.close(CLOSE_UNAUTHORIZED, "authentication timeout")
            return
        try:
            message = _receive_json(ws, remaining)
        except DomainError as exc:
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
        except DomainError as exc:
            _error(ws, exc)
            ws.close(CLOSE_UNAUTHORIZED, "invalid token")
            return
    guard.signed_in = True
    slot = session = None
    try:
        slot = SocketSlot.claim(config, identity.user_id)
        if slot is None:
            _error(ws, RateLimited(f"Too many open WebSockets: at most {config.ws_max_sockets_per_user} per user",
                                   {"limit": str(config.ws_max_sockets_per_user)}))
            ws.close(CLOSE_POLICY, "too many sockets")
            return
        session = Session(ws, identity)  # subscribed before the client hears it is signed in
        _send(ws, {"type": "auth_ok", "user_id": identity.user_id})
        allowance = Allowance(config.ws_message_rate)
        while True:
            message = None
            try:
                message = _receive_json(ws, POLL)
                if message is not None:
                    if not allowance.take():
                        raise RateLimited(f"Too many messages: at most {config.ws_message_rate} per socket",
                                          {"limit": config.ws_message_rate})
                    session.handle(message)
            except DomainError as exc:
                _error(ws, exc)
            # After a message, the next one (if queued) is read at once; else this waits for events.
            event = session.pubsub.get_message(timeout=0 if message is not None else POLL)
            while event is not None:
                if event.get("type") == "message":
                    session.forward(event["data"], event.get("channel"))
                event = session.pubsub.get_message(timeout=0)
            slot.renew()
    except ConnectionClosed:
        pass
    except Exception:
        current_app.logger.exception("websocket session of %s failed", identity.user_id)
    finally:
        if session is not None:
            session.close()
        if slot is not None:
            slot.release()


class Allowance:
    """The messages a signed-in socket may send, as a token bucket: `rate` ("120/minute") at once,
    refilled evenly over its period."""

    def __init__(self, rate: str):
        item = parse_rate(rate)
        self.capacity = float(item.amount)
        self.per_second = item.amount / item.seconds
        self.tokens, self.at = self.capacity, time.monotonic()

    def take(self) -> bool:
        now = time.monotonic()
        self.tokens = min(self.capacity, self.tokens + (now - self.at) * self.per_second)
        self.at = now
        if self.tokens < 1:
            return False
        self.tokens -= 1
        return True


# Open sockets per user, across API processes: a sorted set per user (its id as a digest) of socket ids
# scored by when their lease ends. A socket renews its lease every LEASE / 3 seconds and removes itself
# when it ends; a process that died leaves leases that simply run out.
SOCKETS_KEY = "controlplane:ws:sockets:"
LEASE = 60.0
_CLAIM = """
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', ARGV[1])
if redis.call('ZCARD', KEYS[1]) >= tonumber(ARGV[4]) then return 0 end
redis.call('ZADD', KEYS[1], ARGV[2], ARGV[3])
redis.call('EXPIRE', KEYS[1], ARGV[5])
return 1
"""


class SocketSlot:
    def __init__(self, redis, key: str, member: str):
        self.redis, self.key, self.member = redis, key, member
        self.renew_at = time.monotonic() + LEASE / 3

    @classmethod
    def claim(cls, config, user_id: str) -> "SocketSlot | _NoSlot | None":
        """A slot for one more socket of this user, or None when the user has all theirs open."""
        if config.ws_max_sockets_per_user <= 0:
            return _NoSlot()
        redis = get_redis(config.redis_url)
        key = SOCKETS_KEY + hashlib.sha256(user_id.encode("utf-8", "surrogatepass")).hexdigest()
        member, now = uuid.uuid4().hex, time.time()
        if not redis.eval(_CLAIM, 1, key, now, now + LEASE, member, config.ws_max_sockets_per_user, int(LEASE * 2)):
            return None
        return cls(redis, key, member)

    def renew(self) -> None:
        if time.monotonic() >= self.renew_at:
            self.redis.zadd(self.key, {self.member: time.time() + LEASE}, xx=True)
            self.redis.expire(self.key, int(LEASE * 2))
            self.renew_at = time.monotonic() + LEASE / 3

    def release(self) -> None:
        try:
            self.redis.zrem(self.key, self.member)
        except Exception:  # the lease runs out on its own
            log.warning("could not release a websocket slot", exc_info=True)


class _NoSlot:
    """No cap configured: nothing to claim, renew or release."""

    def renew(self) -> None:
        pass

    def release(self) -> None:
        pass
