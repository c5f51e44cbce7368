"""The socket under `/ws`: simple-websocket's server, with the endpoint's limits enforced where the
bytes arrive, before anything is buffered or anyone is signed in.

simple-websocket reads the socket on a thread of its own and assembles each message before the view
sees it; with no limit, one frame announced as 1 GB was buffered whole. Here wsproto hands every
frame's header to `FrameGuard` before any of the frame's payload is read, and the guard refuses:

- a message whose frames announce more than `max_message` bytes in all: closed with 1009 (message
  too big) on the header that goes over, whatever the frame then carries;
- more than PREAUTH_FRAMES frames (messages, their fragments and pings alike) before the view
  signed the socket in (`guard.signed_in`): closed with 1008 (policy violation);
- a message while MAX_UNREAD messages already wait for the view (a client sending faster than it
  is served): closed with 1008.

permessage-deflate is not offered: a compressed frame's header says nothing of the size it inflates
to. Sends give up after `send_timeout` seconds without progress (a client that stops reading would
otherwise hold the view's thread in send() forever), and once the view is done the client has
CLOSE_GRACE seconds to answer the close, then the connection is shut down (a client that never
answers would otherwise hold the reading thread and the connection).
"""
from __future__ import annotations

import contextlib
import socket
import struct
import threading

import simple_websocket
from flask import Response
from simple_websocket import ConnectionClosed
from wsproto.events import AcceptConnection, Message, Request, TextMessage
from wsproto.extensions import Extension
from wsproto.frame_protocol import CloseReason, Opcode, ParseFailed, RsvBits

PREAUTH_FRAMES = 8  # an auth message (in a fragment or a few) and a ping or two; clients wait for auth_ok
MAX_UNREAD = 32  # messages received and not yet read by the view
CLOSE_GRACE = 1.0  # seconds a close the server starts waits for the client's own close frame


class FrameGuard(Extension):
    """A wsproto extension that is never negotiated (no client offers it, so the handshake does not
    mention it) but is always on: wsproto calls `frame_inbound_header` with each frame's announced
    length as soon as the header is parsed, before reading the payload. Raising ParseFailed there
    makes wsproto report a close with that code, which simple-websocket sends and then ends the
    connection."""

    name = "x-controlplane-frame-guard"

    def __init__(self, max_message: int, preauth_frames: int = PREAUTH_FRAMES, max_unread: int = MAX_UNREAD):
        self.max_message = max_message
        self.preauth_frames = preauth_frames
        self.max_unread = max_unread
        self.signed_in = False  # set by the view once the auth message is verified
        self.frames = 0  # frames received before signed_in
        self.announced = 0  # bytes announced so far by the frames of the message being received
        self.unread = lambda: 0  # messages waiting for the view (bound by GuardedServer)

    def enabled(self) -> bool:
        return True

    def offer(self) -> bool:  # a server offers nothing (required by the abstract class)
        return False

    def accept(self, offer: str) -> None:  # never agreed to, never named in the handshake
        return None

    def frame_inbound_header(self, proto, opcode: Opcode, rsv: RsvBits, payload_length: int) -> RsvBits:
        if not self.signed_in:
            self.frames += 1
            if self.frames > self.preauth_frames:
                raise ParseFailed(f"More than {self.preauth_frames} frames before auth", CloseReason.POLICY_VIOLATION)
        if not opcode.iscontrol():  # control frames are at most 125 bytes (wsproto checks)
            if opcode is not Opcode.CONTINUATION:
                self.announced = 0
            self.announced += payload_length
            if self.announced > self.max_message:
                raise ParseFailed(f"Message too big: at most {self.max_message} bytes", CloseReason.MESSAGE_TOO_BIG)
            if self.unread() >= self.max_unread:
                raise ParseFailed(f"More than {self.max_unread} unread messages", CloseReason.POLICY_VIOLATION)
        return RsvBits(False, False, False)


class GuardedServer(simple_websocket.Server):
    """simple_websocket.Server with a FrameGuard, no compression, bounded sends and bounded closes."""

    def __init__(self, environ, guard: FrameGuard, send_timeout: float):
        self.guard = guard
        self.send_timeout = send_timeout
        guard.unread = lambda: len(self.input_buffer)
        # max_message_size: simple-websocket's own check of what it assembled (a second line, never reached
        # while the guard refuses on the headers)
        super().__init__(environ, max_message_size=guard.max_message)

    def handshake(self):
        # As simple_websocket.Server.handshake (the upgrade request rebuilt from the WSGI environ), but the
        # connection is accepted with the guard as its one extension instead of permessage-deflate.
        in_data = b"GET / HTTP/1.1\r\n"
        for key, value in self.environ.items():
            if key.startswith("HTTP_"):
                header = "-".join(p.capitalize() for p in key[5:].split("_"))
                in_data += f"{header}: {value}\r\n".encode()
        in_data += b"\r\n"
        self.ws.receive_data(in_data)
        for event in self.ws.events():
            if isinstance(event, Request):
                self.sock.sendall(self.ws.send(AcceptConnection(extensions=[self.guard])))
                self.connected = True
        # A blocking send() returns what it sent once send_timeout passes without room in the buffers.
        seconds = max(self.send_timeout, 0.001)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDTIMEO,
                             struct.pack("ll", int(seconds), int(seconds % 1 * 1_000_000)))

    def send(self, data):
        if not self.connected:
            raise ConnectionClosed(self.close_reason, self.close_message)
        out = self.ws.send(Message(data=data) if isinstance(data, bytes) else TextMessage(data=str(data)))
        try:
            sent = self.sock.send(out)
        except OSError:  # nothing sent within send_timeout, or the connection is gone
            sent = -1
        if sent != len(out):  # the stream is cut mid-frame: the connection cannot go on
            self._abort(CloseReason.ABNORMAL_CLOSURE, "client not reading")
            raise ConnectionClosed(self.close_reason, self.close_message)

    def close(self, reason=None, message=None):
        try:
            super().close(reason, message)
        except OSError:  # the close frame could not be sent: end it all the same
            self._abort(reason or CloseReason.NORMAL_CLOSURE, message)

    def finish(self) -> None:
        """Once the view is done: lets the reading thread end (it does when the client answers the close,
        or goes), for CLOSE_GRACE seconds at most, then shuts the connection down. No byte follows the
        close frame (werkzeug's server would write an HTTP response there), and no connection outlives
        its socket's view."""
        if threading.current_thread() is not self.thread:
            self.thread.join(CLOSE_GRACE)
        self._abort(self.close_reason, self.close_message)

    def _abort(self, code, message) -> None:
        """Ends the connection without the closing handshake; the reading thread sees the end and exits."""
        self.connected = False
        self.close_reason, self.close_message = code, message
        with contextlib.suppress(OSError):
            self.sock.shutdown(socket.SHUT_RDWR)
        self.event.set()


class _Finished(Response):
    """What the WSGI server gets back once the socket is over (as flask-sock answers it): gunicorn
    is told to close the connection, werkzeug's server writes nothing more on it."""

    def __init__(self, mode: str):
        super().__init__()
        self.mode = mode

    def __call__(self, environ, start_response):
        if self.mode == "gunicorn":
            raise StopIteration()
        if self.mode == "werkzeug":
            return super().__call__(environ, start_response)
        return []


def serve(environ, guard: FrameGuard, send_timeout: float, handler) -> Response:
    """Upgrades the request to a GuardedServer and runs handler(ws) until the socket is over."""
    ws = GuardedServer(environ, guard, send_timeout)
    try:
        handler(ws)
    except ConnectionClosed:
        pass
    with contextlib.suppress(Exception):
        ws.close()
    ws.finish()
    return _Finished(ws.mode)

