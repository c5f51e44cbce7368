"""A real desktop in the lab's browser page: a desktop created on the lab gets an X display with a
VNC server while its VM runs (lab/screens.py); /connect's link opens the Guacamole stand-in's page,
which shows it with noVNC through a relay that takes only a live session's token; typing changes
the pixels. An expired or used link is refused."""
from __future__ import annotations

import hashlib
import time

import pytest
import requests
from playwright.sync_api import expect

from tests.browser.conftest import sign_in

pytestmark = pytest.mark.timeout(300)


def canvas_digest(frame) -> str:
    data = frame.evaluate("() => document.querySelector('#screen canvas').toDataURL('image/png')")
    return hashlib.sha256(data.encode()).hexdigest()


def wait_for_first_frame(frame, timeout: float = 15) -> str:
    """The canvas's digest once the VNC server's first frame is drawn: not blank (more than one
    colour), and the same on two reads in a row (no rectangle of it still coming in)."""
    drawn = """() => {
        const canvas = document.querySelector('#screen canvas');
        if (!canvas.width || !canvas.height) return false;
        const d = canvas.getContext('2d').getImageData(0, 0, canvas.width, canvas.height).data;
        for (let i = 4; i < d.length; i += 4)
            if (d[i] !== d[0] || d[i + 1] !== d[1] || d[i + 2] !== d[2] || d[i + 3] !== d[3]) return true;
        return false;
    }"""
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        if frame.evaluate(drawn):
            now = canvas_digest(frame)
            if now == last:
                return now
            last = now
        time.sleep(0.1)
    raise AssertionError("the screen's first frame was not drawn")


def wait_for_change(frame, before: str, timeout: float = 15) -> str:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        now = canvas_digest(frame)
        if now != before:
            return now
        time.sleep(0.25)
    raise AssertionError("the screen did not change")


def test_a_person_sees_and_types_into_the_desktop(lab, screens, new_page, shots, fresh_user):
    page = new_page()
    sign_in(page, lab.url, fresh_user)
    page.get_by_role("button", name="Create desktop").click()
    expect(page.get_by_role("button", name="Open")).to_be_visible(timeout=180_000)
    page.get_by_role("button", name="Open").click()
    viewer = page.frame_locator("iframe")
    expect(viewer.get_by_text("Connected to the screen of cds-desktop-")).to_be_visible(timeout=30_000)
    frame = next(f for f in page.frames if "/guacamole/" in f.url)
    assert "?data=" not in frame.url  # the page traded the link for a session and dropped it
    expect(viewer.locator("#screen canvas")).to_be_visible()
    before = wait_for_first_frame(frame)
    shots(page, "screen")

    viewer.locator("#screen canvas").click()
    page.keyboard.type("hello from the browser test")
    page.keyboard.press("Enter")
    wait_for_change(frame, before)
    shots(page, "typed")

    # The VM's screen lives and dies with the VM: stopped, its X display and VNC server are gone.
    from controlplane.extensions import db
    from controlplane.models import Desktop
    with db.connection_context():
        row = Desktop.get(Desktop.user_id == fresh_user, Desktop.status == "RUNNING")
    desktop_id = row.id
    assert row.vmid in screens.screens and screens.screens[row.vmid].alive()
    page.get_by_role("button", name="Close viewer").click()
    page.get_by_role("button", name="Stop…").click()
    page.get_by_role("button", name="Stop desktop").click()
    expect(page.get_by_role("button", name="Start")).to_be_visible(timeout=120_000)
    deadline = time.monotonic() + 10
    while row.vmid in screens.screens and time.monotonic() < deadline:
        time.sleep(0.2)
    assert row.vmid not in screens.screens
    requests.delete(f"{lab.url}/api/v1/desktops/{desktop_id}", timeout=10,
                    headers={"Authorization": f"Bearer {lab.token(fresh_user)}"})


def first_message(url: str) -> bytes:
    """The relay's first WebSocket message (aiohttp's client: simple_websocket's loses a message that
    comes in the same packet as the handshake's answer, as the relay's RFB greeting does), on a loop
    of its own (Playwright's runs on this thread)."""
    import aiohttp

    from tests.loop import LoopThread

    async def read() -> bytes:
        async with aiohttp.ClientSession() as session:
            async with session.ws_connect(url, protocols=("binary",)) as ws:
                return (await ws.receive(timeout=10)).data
    loop = LoopThread()
    try:
        return loop.run(read(), timeout=20)
    finally:
        loop.close()


def test_the_relay_wants_a_live_session(lab, screens, fresh_user):
    """No token, a made-up token, or a session of a link that expired: no VNC."""
    import simple_websocket

    from controlplane.services import guacamole_json
    headers = {"Authorization": f"Bearer {lab.token(fresh_user)}"}
    created = requests.post(f"{lab.url}/api/v1/desktops", json={"userId": fresh_user, "plan": "BASIC"},
                            headers=headers, timeout=10).json()["data"]
    deadline = time.monotonic() + 120
    while requests.get(f"{lab.url}/api/v1/desktops/{created['id']}", headers=headers,
                       timeout=10).json()["data"]["status"] != "RUNNING":
        assert time.monotonic() < deadline
        time.sleep(0.5)
    client = guacamole_json.client_id(f"cds-desktop-{created['id']}")
    base = lab.guacamole.url.replace("http://", "ws://") + f"/_lab/vnc/{client}"
    for url in (base, base + "?token=" + "A" * 64):
        with pytest.raises(simple_websocket.ConnectionError):
            simple_websocket.Client.connect(url)
    # A live session's token gets the VNC server's greeting; the same token after its link expired, nothing.
    link = requests.get(f"{lab.url}/api/v1/desktops/{created['id']}/connect", headers=headers, timeout=10).json()
    data = requests.utils.unquote(link["data"]["connectionUrl"].split("?data=")[1].split("#")[0])
    token = requests.post(f"{lab.guacamole.url}/api/tokens", data={"data": data}, timeout=10).json()["authToken"]
    assert first_message(base + "?token=" + token).startswith(b"RFB 003.")
    session = lab.guacamole.tokens[token]["json"]
    session["expires"] = int(time.time() * 1000) - 1  # as if its lifetime had passed
    with pytest.raises(simple_websocket.ConnectionError):
        simple_websocket.Client.connect(base + "?token=" + token)
    requests.delete(f"{lab.url}/api/v1/desktops/{created['id']}", headers=headers, timeout=10)
