"""The lab's VM screens (lab/screens.py) take only VNC authentication with the lab's VNC password:
another local process that connects to a screen's loopback VNC port gets no screen without it. The
Guacamole stand-in's relay logs in with the connection's `password` parameter, as guacd does, and
offers the browser security type None, so the browser never has the password (lab/rfb.py).

Needs Debian's xvfb, x11vnc and xterm (scripts/ensure-debian-packages.sh test installs them)."""
from __future__ import annotations

import datetime as dt
import secrets
import socket
import stat
import struct
import time
from dataclasses import dataclass, field

import pytest
import requests

from tests.loop import LoopThread, run_apart

pytestmark = pytest.mark.timeout(120)
ADDRESS = "10.77.0.9"
TIMEOUT = 10


@dataclass
class Vm:
    vmid: int
    status: str = "running"
    template: bool = False
    agent: dict = field(default_factory=lambda: {"interfaces": [
        {"name": "eth0", "ip-addresses": [{"ip-address-type": "ipv4", "ip-address": ADDRESS}]}]})


def _read(sock: socket.socket, n: int) -> bytes:
    data = b""
    while len(data) < n:
        chunk = sock.recv(n - len(data))
        if not chunk:
            break
        data += chunk
    return data


def _greeted(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=1) as sock:
            return _read(sock, 12).startswith(b"RFB 003.")
    except OSError:
        return False


@pytest.fixture
def screen(tmp_path):
    """One lab screen (Xvfb + x11vnc) for a running VM, with a password of its own."""
    from controlplane.lab.screens import LabScreens, missing
    lacks = [p for p in missing() if p != "novnc"]
    if lacks:
        pytest.fail(f"the lab's screens need {', '.join(lacks)}: `make test` installs them "
                    "(scripts/ensure-debian-packages.sh); Debian: apt-get install xvfb x11vnc xterm", pytrace=False)
    password = secrets.token_urlsafe(6)
    screens = LabScreens(tmp_path / "screens", password)
    try:
        screens.tick([Vm(vmid=4101)])
        made = screens.screens[4101]
        deadline = time.monotonic() + 20
        while not _greeted(made.port):
            assert time.monotonic() < deadline, "the screen's VNC server did not answer"
            time.sleep(0.1)
        yield screens, made, password
    finally:
        screens.stop()


def _security_types(sock: socket.socket) -> list[int]:
    assert _read(sock, 12) == b"RFB 003.008\n"
    sock.sendall(b"RFB 003.008\n")
    (count,) = _read(sock, 1)
    return list(_read(sock, count))


def _vnc_auth(port: int, password: str) -> tuple[list[int], int, socket.socket]:
    """(types offered, security result, socket) of an RFB 3.8 login with VNC authentication."""
    from controlplane.lab.rfb import challenge_response
    sock = socket.create_connection(("127.0.0.1", port), timeout=TIMEOUT)
    types = _security_types(sock)
    sock.sendall(bytes([2]))
    challenge = _read(sock, 16)
    sock.sendall(challenge_response(password, challenge))
    result = _read(sock, 4)
    return types, (struct.unpack(">I", result)[0] if len(result) == 4 else -1), sock


def test_a_local_process_without_the_vnc_password_gets_no_screen(screen):
    screens, made, password = screen
    # Offered VNC authentication only (no "None"), and a wrong answer to its challenge fails.
    types, result, sock = _vnc_auth(made.port, "not-" + password)
    sock.close()
    assert types == [2]
    assert result != 0
    # Choosing "None" anyway gets no screen either.
    with socket.create_connection(("127.0.0.1", made.port), timeout=TIMEOUT) as sock:
        assert _security_types(sock) == [2]
        sock.sendall(bytes([1]))
        answer = _read(sock, 4)  # the server hangs up (or says it failed)
        assert len(answer) < 4 or struct.unpack(">I", answer)[0] != 0
    # The right password opens it: what refused the others was the password.
    types, result, sock = _vnc_auth(made.port, password)
    with sock:
        assert result == 0
        sock.sendall(b"\x01")
        assert struct.unpack(">HH", _read(sock, 4)) == (1024, 768)
    # The password is stored VNC's way in a file only the lab's user reads, never on a command line
    # or in the screen's log.
    password_file = screens.log_dir / "vnc-password"
    assert stat.S_IMODE(password_file.stat().st_mode) == 0o600
    assert stat.S_IMODE(screens.log_dir.stat().st_mode) == 0o700
    assert password.encode() not in password_file.read_bytes()
    for proc in made.procs:
        with open(f"/proc/{proc.pid}/cmdline", "rb") as cmdline:
            assert password.encode() not in cmdline.read()
    assert password.encode() not in (screens.log_dir / "screen-4101.log").read_bytes()


async def _relay_session(url: str) -> tuple[bytes, bytes, bytes, tuple[int, int]]:
    """An RFB 3.8 session through the relay, as noVNC has it: (version, security types, security
    result, the screen's size from ServerInit). aiohttp's client: simple_websocket's loses a
    message that comes in the same packet as the handshake's answer, as the relay's greeting does."""
    import aiohttp
    async with aiohttp.ClientSession() as session:
        async with session.ws_connect(url, protocols=("binary",)) as ws:
            buffer = b""

            async def read(n: int) -> bytes:
                nonlocal buffer
                while len(buffer) < n:
                    message = await ws.receive(timeout=TIMEOUT)
                    assert message.type == aiohttp.WSMsgType.BINARY, message
                    buffer += message.data
                data, buffer = buffer[:n], buffer[n:]
                return data
            version = await read(12)
            await ws.send_bytes(b"RFB 003.008\n")
            types = await read(2)
            await ws.send_bytes(bytes([1]))
            result = await read(4)
            await ws.send_bytes(b"\x01")  # ClientInit
            return version, types, result, struct.unpack(">HH", await read(4))


def _relay_refuses(url: str) -> int:
    """The HTTP status the relay refuses the WebSocket with."""
    import aiohttp

    async def connect() -> int:
        async with aiohttp.ClientSession() as session:
            try:
                async with session.ws_connect(url, protocols=("binary",)):
                    return 101
            except aiohttp.WSServerHandshakeError as exc:
                return exc.status
    return run_apart(connect())


@pytest.fixture
def relay(screen):
    """The Guacamole stand-in with the screen, and a function making an auth-json session's relay URL
    for a connection to the screen's VM with the given `password` parameter (None: none)."""
    from controlplane.lab.guacamole import GuacamoleStandIn
    from controlplane.services import guacamole_json
    screens, _, password = screen
    secret = secrets.token_hex(16)
    loop = LoopThread()
    guac = GuacamoleStandIn(port=0, password="admin-" + secrets.token_hex(4), json_secret=secret)
    guac.screens = screens
    loop.run(guac.start())

    def url_for(connection_password: str | None) -> str:
        parameters = {"hostname": ADDRESS, "port": 5900}
        if connection_password is not None:
            parameters["password"] = connection_password
        link = guacamole_json.link(guac.url, secret, username="screen-tester", connection="cds-desktop-4101",
                                   protocol="vnc", parameters=parameters,
                                   expires_at=dt.datetime.now(dt.timezone.utc) + dt.timedelta(minutes=5))
        data = requests.utils.unquote(link.split("?data=")[1].split("#")[0])
        answer = requests.post(f"{guac.url}/api/tokens", data={"data": data}, timeout=TIMEOUT)
        assert answer.status_code == 200, answer.text
        return (guac.url.replace("http://", "ws://") + "/_lab/vnc/" + guacamole_json.client_id("cds-desktop-4101")
                + "?token=" + answer.json()["authToken"])
    try:
        yield url_for, password
    finally:
        loop.run(guac.stop())
        loop.close()


def test_the_relay_logs_in_with_the_connections_password_and_offers_the_browser_none(relay):
    url_for, password = relay
    version, types, result, size = run_apart(_relay_session(url_for(password)))
    assert version == b"RFB 003.008\n"
    assert types == bytes([1, 1])  # one type: None (the relay has logged in already)
    assert result == b"\0\0\0\0"
    assert size == (1024, 768)  # the screen's ServerInit
    # A connection without the password, or with a wrong one, gets no screen.
    for wrong in (None, "not-" + password):
        assert _relay_refuses(url_for(wrong)) == 502


def test_vnc_passwords_are_stored_as_vnc_stores_them(tmp_path):
    """VNC's DES (each key byte's bits reversed, as VNC's d3des takes them) against a known answer:
    `vncpasswd` stores "password" as dbd83cfd727a1458, the DES of it under VNC's fixed key."""
    from controlplane.lab.rfb import write_password_file
    write_password_file(tmp_path / "passwd", "password")
    assert (tmp_path / "passwd").read_bytes().hex() == "dbd83cfd727a1458"
    assert stat.S_IMODE((tmp_path / "passwd").stat().st_mode) == 0o600
