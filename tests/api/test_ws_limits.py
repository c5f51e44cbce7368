"""What a client may send to /ws and for how long (api/wsserver.py, api/ws.py), and the size bound on
HTTP request bodies (api/bodies.py). The WebSocket tests speak the protocol over a raw socket where
the point is what the client sends on the wire: a frame header announcing 1 GB, pings before auth,
a client that stops reading."""
from __future__ import annotations

import contextlib
import json
import os
import socket
import struct
import time

import pytest
import requests
import simple_websocket
from wsproto import ConnectionType, WSConnection
from wsproto.events import AcceptConnection, CloseConnection, Request, TextMessage

from tests.conftest import ServerThread

GIGABYTE = 1 << 30
TEXT, CONTINUATION, CLOSE, PING = 0x1, 0x0, 0x8, 0x9


@pytest.fixture
def serve(base_settings, database, client):
    """serve(**settings) -> the app over HTTP with those settings changed."""
    from controlplane import create_app
    running = []

    def start(**changes):
        server = ServerThread(create_app(base_settings.replace(**changes) if changes else base_settings)).start()
        running.append(server)
        return server
    yield start
    for server in running:
        server.stop()


def frame(opcode: int, payload: bytes = b"", fin: bool = True, length: int | None = None) -> bytes:
    """A client frame (masked); `length` announces another length than the payload's."""
    length = len(payload) if length is None else length
    first = (0x80 if fin else 0) | opcode
    if length < 126:
        head = struct.pack("!BB", first, 0x80 | length)
    elif length < 1 << 16:
        head = struct.pack("!BBH", first, 0x80 | 126, length)
    else:
        head = struct.pack("!BBQ", first, 0x80 | 127, length)
    mask = os.urandom(4)
    return head + mask + bytes(b ^ mask[i % 4] for i, b in enumerate(payload))


class RawSocket:
    """A WebSocket client that sends exactly the bytes a test gives it."""

    def __init__(self, url: str, receive_buffer: int | None = None):
        host, port = url.split("//")[1].split(":")
        self.sock = socket.socket()
        if receive_buffer:
            self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, receive_buffer)
        self.sock.connect((host, int(port)))
        self.ws = WSConnection(ConnectionType.CLIENT)
        self.sock.sendall(self.ws.send(Request(host=host, target="/ws")))
        self.events: list = []
        self.partial = ""
        self.eof = False
        assert self._next(lambda e: isinstance(e, AcceptConnection), 5), "no handshake"

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def send_json(self, payload: dict) -> None:
        self.send(frame(TEXT, json.dumps(payload).encode()))

    def _next(self, wanted, timeout: float):
        deadline = time.monotonic() + timeout
        while True:
            for event in self.ws.events():
                if isinstance(event, TextMessage):  # its pieces, as they came in
                    self.partial += event.data
                    if not event.message_finished:
                        continue
                    event, self.partial = TextMessage(data=self.partial), ""
                self.events.append(event)
            for i, event in enumerate(self.events):
                if wanted(event):
                    return self.events.pop(i)
            remaining = deadline - time.monotonic()
            if remaining <= 0 or self.eof:
                return None
            self.sock.settimeout(remaining)
            try:
                data = self.sock.recv(65536)
            except socket.timeout:
                return None
            except ConnectionResetError:
                data = b""
            if not data:
                self.eof = True
            self.ws.receive_data(data or None)

    def close_frame(self, timeout: float = 5.0) -> CloseConnection | None:
        return self._next(lambda e: isinstance(e, CloseConnection), timeout)

    def message(self, timeout: float = 5.0) -> dict | None:
        event = self._next(lambda e: isinstance(e, TextMessage), timeout)
        return None if event is None else json.loads(event.data)

    def read_until_closed(self, timeout: float) -> bool:
        """Reads (and drops) everything until the server ends the connection; False if it did not."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            self.sock.settimeout(max(deadline - time.monotonic(), 0.01))
            try:
                if not self.sock.recv(1 << 20):
                    return True
            except socket.timeout:
                return False
            except ConnectionResetError:
                return True
        return False

    def close(self):
        self.sock.close()


# ---- size: refused from the frame header, before the payload is buffered -------------------------

def test_a_frame_announced_as_a_gigabyte_is_refused_from_its_header(serve):
    server = serve()
    raw = RawSocket(server.url)
    try:
        # The header says 1 GB; 64 bytes follow, and nothing more is ever sent. A server that waits for
        # (and buffers) the payload before judging its size never answers.
        raw.send(frame(TEXT, b"a" * 64, length=GIGABYTE))
        closed = raw.close_frame(timeout=5)
        assert closed is not None, "no close frame: the server is waiting for the rest of the gigabyte"
        assert closed.code == 1009 and "16384" in closed.reason
        assert raw.read_until_closed(5)
    finally:
        raw.close()


def test_a_message_sent_in_fragments_is_held_to_the_same_size(serve, token):
    server = serve()
    raw = RawSocket(server.url)
    try:
        raw.send_json({"type": "auth", "token": token("user_frag")})
        assert raw.message()["type"] == "auth_ok"
        raw.send(frame(TEXT, b"[" + b" " * 9999, fin=False))
        raw.send(frame(CONTINUATION, b" " * 4000, fin=False))
        raw.send(frame(CONTINUATION, b"", fin=False, length=10_000)[:8])  # 24 000 bytes announced in all
        closed = raw.close_frame()
        assert closed is not None and closed.code == 1009
    finally:
        raw.close()


def test_a_message_within_the_size_is_served(serve, token):
    server = serve()
    ws = simple_websocket.Client.connect(server.url.replace("http://", "ws://") + "/ws")
    try:
        ws.send(json.dumps({"type": "auth", "token": token("user_ok")}))
        assert json.loads(ws.receive(timeout=5))["type"] == "auth_ok"
        ws.send(json.dumps({"type": "ping", "padding": "x" * 16000}))  # just under 16 KB
        assert json.loads(ws.receive(timeout=5)) == {"type": "pong"}
    finally:
        ws.close()


def test_a_client_sending_faster_than_it_is_served_is_cut():
    """The guard as wsproto runs it: no more messages are taken while MAX_UNREAD wait for the view."""
    from wsproto.connection import Connection

    from controlplane.api.wsserver import MAX_UNREAD, FrameGuard
    guard, waiting = FrameGuard(16 * 1024), []
    guard.signed_in, guard.unread = True, lambda: len(waiting)
    connection = Connection(ConnectionType.SERVER, [guard])
    closed = None
    for _ in range(MAX_UNREAD + 5):
        connection.receive_data(frame(TEXT, b'{"type": "ping"}'))
        for event in connection.events():
            if isinstance(event, CloseConnection):
                closed = closed or event
            else:
                waiting.append(event)
    assert len(waiting) == MAX_UNREAD and closed is not None and closed.code == 1008


# ---- before auth: a deadline and a few frames -----------------------------------------------------

def test_an_unauthenticated_socket_is_closed_at_the_auth_deadline(serve):
    server = serve(ws_auth_timeout=0.5)
    raw = RawSocket(server.url)
    try:
        started = time.monotonic()
        error = raw.message(timeout=5)
        closed = raw.close_frame(timeout=5)
        assert error["error"]["code"] == "UNAUTHORIZED" and "0.5 seconds" in error["error"]["message"]
        assert closed is not None and closed.code == 4401
        assert time.monotonic() - started < 3
        # The raw client never answers the close: the server ends the connection all the same.
        assert raw.read_until_closed(5), "the server kept a connection whose client never answered its close"
    finally:
        raw.close()


def test_more_frames_than_allowed_before_auth_close_the_socket(serve):
    server = serve()
    raw = RawSocket(server.url)
    try:
        raw.send(b"".join(frame(PING, b"hi") for _ in range(12)))  # at once: nothing left unread at the close
        closed = raw.close_frame(timeout=4)  # well before the 5 s auth deadline
        assert closed is not None and closed.code == 1008 and "before auth" in closed.reason
    finally:
        raw.close()


# ---- signed in: message rate, sockets per user, a client that stops reading ------------------------

def test_a_signed_in_socket_is_held_to_its_message_rate(serve, token):
    server = serve(ws_message_rate="3/minute")
    ws = simple_websocket.Client.connect(server.url.replace("http://", "ws://") + "/ws")
    try:
        ws.send(json.dumps({"type": "auth", "token": token("user_chatty")}))
        assert json.loads(ws.receive(timeout=5))["type"] == "auth_ok"
        for _ in range(4):
            ws.send(json.dumps({"type": "ping"}))
        answers = [json.loads(ws.receive(timeout=5)) for _ in range(4)]
        assert answers[:3] == [{"type": "pong"}] * 3
        assert answers[3]["type"] == "error" and answers[3]["error"]["code"] == "RATE_LIMIT_EXCEEDED"
        assert ws.connected  # refused, not disconnected
    finally:
        ws.close()


def test_a_user_has_at_most_the_configured_number_of_sockets(serve, token):
    server = serve(ws_max_sockets_per_user=2)
    url = server.url.replace("http://", "ws://") + "/ws"

    def open_socket():
        ws = simple_websocket.Client.connect(url)
        ws.send(json.dumps({"type": "auth", "token": token("user_tabs")}))
        return ws, json.loads(ws.receive(timeout=5))

    first, second = open_socket(), open_socket()
    assert first[1]["type"] == second[1]["type"] == "auth_ok"
    third, answer = open_socket()
    assert answer["type"] == "error" and answer["error"]["code"] == "RATE_LIMIT_EXCEEDED"
    with pytest.raises(simple_websocket.ConnectionClosed):
        third.receive(timeout=5)
    assert third.close_reason == 1008
    first[0].close()  # its slot is given back when it ends
    deadline = time.monotonic() + 5
    while True:
        again, answer = open_socket()
        if answer["type"] == "auth_ok" or time.monotonic() > deadline:
            break
        with contextlib.suppress(simple_websocket.ConnectionClosed):
            again.close()
    assert answer["type"] == "auth_ok"
    for ws in (second[0], again):
        ws.close()


def test_a_client_that_stops_reading_is_cut_after_the_send_timeout(serve, token, base_settings):
    import hashlib

    from controlplane.api.ws import SOCKETS_KEY
    from controlplane.services.queue import get_redis, user_channel
    server = serve(ws_send_timeout=0.5)
    raw = RawSocket(server.url, receive_buffer=4096)
    redis = get_redis(base_settings.redis_url)
    sockets = SOCKETS_KEY + hashlib.sha256(b"user_slow").hexdigest()  # the user's open sockets
    try:
        raw.send_json({"type": "auth", "token": token("user_slow")})
        assert raw.message()["type"] == "auth_ok"
        assert redis.zcard(sockets) == 1
        # Events the server must forward while the client reads nothing: far more than the buffers hold.
        padding = "x" * 8000
        for seq in range(800):
            redis.publish(user_channel("user_slow"), json.dumps({"type": "desktop_status", "seq": seq,
                                                                  "padding": padding}))
        # Still reading nothing, until the server's session for this socket has ended.
        deadline = time.monotonic() + 10
        while redis.zcard(sockets) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert redis.zcard(sockets) == 0, "the server is still blocked sending to a client that reads nothing"
        # Reading now drains what was sent before the cut, then the connection ends.
        assert raw.read_until_closed(10), "the server kept the connection of a client that had stopped reading"
    finally:
        raw.close()


# ---- HTTP request bodies --------------------------------------------------------------------------

def test_a_chunked_body_over_the_limit_is_a_413_in_each_apis_envelope(serve, token):
    server = serve()
    headers = {"Authorization": "Bearer " + token("user_body"), "Content-Type": "application/json"}

    def chunked(body: bytes):
        return (body[i:i + 8192] for i in range(0, len(body), 8192))  # a generator: sent chunked

    big = json.dumps({"name": "n" * 100_000}).encode()
    response = requests.post(server.url + "/api/projects", data=chunked(big), headers=headers, timeout=10)
    assert response.status_code == 413
    assert response.json() == {"error": {"code": "INVALID_REQUEST", "message": "Request body is too large"}}
    response = requests.post(server.url + "/api/v1/desktops", data=chunked(big), headers=headers, timeout=10)
    assert response.status_code == 413
    body = response.json()
    assert body["success"] is False and body["error"] == "PAYLOAD_TOO_LARGE" and body["path"] == "/api/v1/desktops"
    # Valid JSON padded past the limit was accepted, cut at 64 KB (the padding was what went).
    padded = json.dumps({"name": "Padded"}).encode() + b" " * 100_000
    response = requests.post(server.url + "/api/projects", data=chunked(padded), headers=headers, timeout=10)
    assert response.status_code == 413
    # Within the limit, a chunked body is read whole.
    small = json.dumps({"name": "Chunked"}).encode()
    response = requests.post(server.url + "/api/projects", data=chunked(small), headers=headers, timeout=10)
    assert response.status_code == 201, response.text
