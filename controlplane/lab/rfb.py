"""VNC authentication for the lab's screens (lab/screens.py) and the Guacamole stand-in's relay.

Each lab VM's VNC server (x11vnc) takes only VNC authentication (RFB security type 2: a DES
challenge-response) with the deployment's VNC password, the one the control plane puts in the
connection's `password` parameter (CONTROLPLANE_GUACAMOLE_VNC_PASSWORD), as a production guest's
VNC server does. The stand-in's relay plays guacd: it logs in to the VNC server with the
connection's password (`authenticate`), then offers the browser's noVNC security type None
(`offer_none`), so the password never reaches the browser. DES is `cryptography`'s TripleDES with
one key three times, which is DES.
"""
from __future__ import annotations

import asyncio
import os
import re
import struct
from pathlib import Path

from cryptography.hazmat.primitives.ciphers import Cipher, modes

try:  # cryptography >= 43 keeps the old ciphers here
    from cryptography.hazmat.decrepit.ciphers.algorithms import TripleDES
except ImportError:  # pragma: no cover - older cryptography
    from cryptography.hazmat.primitives.ciphers.algorithms import TripleDES

NONE, VNC_AUTH = 1, 2  # RFB security types
RFB_38 = b"RFB 003.008\n"
HANDSHAKE_TIMEOUT = 10.0
MAX_REASON = 1024  # bytes of a failure reason read from a VNC server
_VERSION = re.compile(rb"RFB (\d{3})\.(\d{3})\n")
# The fixed key VNC stores a password with (vncpasswd's file, x11vnc -rfbauth): obscured, not secret.
_STORE_KEY = bytes([23, 82, 107, 6, 35, 78, 88, 7])


class RfbError(Exception):
    """The RFB handshake failed (refused, not VNC, or no security type in common)."""


def _des(key: bytes, data: bytes) -> bytes:
    # VNC's DES (d3des) takes each key byte's bits lowest first: reverse them for a standard DES.
    key = bytes(int(f"{b:08b}"[::-1], 2) for b in key)
    encryptor = Cipher(TripleDES(key * 3), modes.ECB()).encryptor()
    return encryptor.update(data) + encryptor.finalize()


def _key(password: str) -> bytes:
    """The DES key of a VNC password: its first 8 bytes, zero-padded (VNC uses no more)."""
    return password.encode("utf-8")[:8].ljust(8, b"\0")


def challenge_response(password: str, challenge: bytes) -> bytes:
    """The answer to a VNC server's 16-byte challenge."""
    return _des(_key(password), challenge)


def write_password_file(path: Path, password: str) -> None:
    """Store `password` as VNC stores it (x11vnc -rfbauth), in a file only its owner can read."""
    if not password:
        raise ValueError("a VNC password must not be empty")
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | getattr(os, "O_NOFOLLOW", 0), 0o600)
    try:
        os.fchmod(fd, 0o600)
        os.write(fd, _des(_STORE_KEY, _key(password)))
    finally:
        os.close(fd)


async def _reason(read) -> str:
    (length,) = struct.unpack(">I", await read(4))
    if length > MAX_REASON:
        return "(a reason too long to read)"
    return (await read(length)).decode("utf-8", "replace")


def _minor(version: bytes) -> int:
    """The RFB 3.x minor version both sides speak: 8, 7 or 3."""
    match = _VERSION.fullmatch(version)
    if match is None or int(match.group(1)) != 3:
        raise RfbError("not an RFB 3.x peer")
    minor = int(match.group(2))
    return 8 if minor >= 8 else 7 if minor >= 7 else 3


async def authenticate(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, password: str | None,
                       timeout: float = HANDSHAKE_TIMEOUT) -> None:
    """The client's part of the RFB handshake with a VNC server (guacd's), up to a successful
    security result: the server then waits for ClientInit. VNC authentication with `password`
    when the server asks for it; RfbError when it refuses or no type is in common."""
    async def handshake() -> None:
        minor = _minor(await reader.readexactly(12))
        writer.write(b"RFB 003.%03d\n" % minor)
        await writer.drain()
        if minor == 3:
            (offered,) = struct.unpack(">I", await reader.readexactly(4))
            if offered == 0:
                raise RfbError(f"the VNC server refused the connection: {await _reason(reader.readexactly)}")
            types = [offered]
        else:
            (count,) = await reader.readexactly(1)
            if count == 0:
                raise RfbError(f"the VNC server refused the connection: {await _reason(reader.readexactly)}")
            types = list(await reader.readexactly(count))
        usable = [t for t in types if t == NONE or (t == VNC_AUTH and password)]
        if not usable:
            raise RfbError("the VNC server wants a password and the connection has none" if VNC_AUTH in types
                           else f"no RFB security type in common (the server offers {types})")
        chosen = usable[0]
        if minor >= 7:
            writer.write(bytes([chosen]))
        if chosen == VNC_AUTH:
            writer.write(challenge_response(password, await reader.readexactly(16)))
        await writer.drain()
        if chosen == VNC_AUTH or minor == 8:
            (result,) = struct.unpack(">I", await reader.readexactly(4))
            if result != 0:
                reason = await _reason(reader.readexactly) if minor == 8 else ""
                raise RfbError("VNC authentication failed" + (f": {reason}" if reason else ""))
    try:
        await asyncio.wait_for(handshake(), timeout)
    except (asyncio.IncompleteReadError, ConnectionError) as exc:
        raise RfbError(f"the VNC server closed the connection during the handshake ({type(exc).__name__})") from None
    except asyncio.TimeoutError:
        raise RfbError("the VNC server's handshake timed out") from None


async def offer_none(read, send, timeout: float = HANDSHAKE_TIMEOUT) -> None:
    """The server's part of the RFB handshake with the browser: security type None, as the relay
    has authenticated already. `read(n)` returns n bytes from the browser; `send(data)` sends."""
    async def handshake() -> None:
        await send(RFB_38)
        minor = _minor(await read(12))
        if minor == 3:
            await send(struct.pack(">I", NONE))
            return
        await send(bytes([1, NONE]))
        if (await read(1)) != bytes([NONE]):
            raise RfbError("the browser chose a security type that was not offered")
        if minor == 8:
            await send(struct.pack(">I", 0))
    try:
        await asyncio.wait_for(handshake(), timeout)
    except asyncio.TimeoutError:
        raise RfbError("the browser's handshake timed out") from None


class MessageBytes:
    """The byte stream of a WebSocket's messages (noVNC sends RFB in binary messages of any size)."""

    def __init__(self, ws):
        self.ws = ws
        self.buffer = bytearray()

    async def read(self, n: int) -> bytes:
        from aiohttp import WSMsgType
        while len(self.buffer) < n:
            message = await self.ws.receive()
            if message.type == WSMsgType.BINARY:
                self.buffer += message.data
            elif message.type == WSMsgType.TEXT:
                self.buffer += message.data.encode("utf-8")
            else:
                raise RfbError("the browser closed the connection during the handshake")
        data = bytes(self.buffer[:n])
        del self.buffer[:n]
        return data

    def rest(self) -> bytes:
        """What the browser sent beyond the handshake (for the VNC server)."""
        data, self.buffer = bytes(self.buffer), bytearray()
        return data


class ReadOnly:
    """A browser's RFB messages to the VNC server with its input taken out (key and pointer events,
    clipboard text): a connection whose `read-only` parameter is true, as guacd keeps one. The
    messages that only ask for pictures pass; a message of a type it does not know ends the relay.
    It starts where the relay hands over, after the security handshake: with the browser's
    ClientInit (one byte, the shared flag), which passes as it is."""

    INPUT = frozenset({4, 5, 6, 255})  # KeyEvent, PointerEvent, ClientCutText, QEMU's extended key event
    FIXED = {0: 20, 3: 10, 4: 8, 5: 6, 150: 10, 250: 4, 255: 12}  # SetPixelFormat ... xvp, QEMU key

    def __init__(self):
        self.buffer = bytearray()
        self.client_init = True  # the first byte: ClientInit

    def _length(self) -> int | None:
        """The length of the message at the buffer's head, or None until enough of it is there."""
        kind, have = self.buffer[0], len(self.buffer)
        if kind in self.FIXED:
            return self.FIXED[kind]
        if kind == 2:  # SetEncodings: 4 bytes, then 4 per encoding
            return None if have < 4 else 4 + 4 * struct.unpack(">H", self.buffer[2:4])[0]
        if kind == 6:  # ClientCutText: 8 bytes, then the text (a negative length: extended clipboard's)
            return None if have < 8 else 8 + abs(struct.unpack(">i", self.buffer[4:8])[0])
        if kind == 248:  # Fence: 9 bytes, then its payload
            return None if have < 9 else 9 + self.buffer[8]
        if kind == 251:  # SetDesktopSize: 8 bytes, then 16 per screen
            return None if have < 8 else 8 + 16 * self.buffer[6]
        raise RfbError(f"unknown RFB client message type {kind}")

    MAX_MESSAGE = 4 * 1024 * 1024  # bytes: as the relay's WebSocket messages

    def feed(self, data: bytes) -> bytes:
        """What of `data` (and what came before it) may go to the VNC server now."""
        self.buffer += data
        out = bytearray()
        if self.client_init and self.buffer:
            out.append(self.buffer.pop(0))
            self.client_init = False
        while self.buffer:
            length = self._length()
            if length is not None and length > self.MAX_MESSAGE:
                raise RfbError(f"an RFB client message too large (type {self.buffer[0]}, {length} bytes)")
            if length is None or len(self.buffer) < length:
                break
            if self.buffer[0] not in self.INPUT:
                out += self.buffer[:length]
            del self.buffer[:length]
        return bytes(out)
