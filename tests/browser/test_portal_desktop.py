"""A person's whole desktop lifecycle in the portal, by clicking only, on the lab: sign in, pick a
plan, watch the progress fed by the WebSocket, open the desktop, stop it (and see the force
warning), start it, delete it. Every answer on screen is checked against the API and the lab."""
from __future__ import annotations

import json
import re

import pytest
from playwright.sync_api import expect

from tests.browser.conftest import sign_in

pytestmark = pytest.mark.timeout(420)


def desktop_events(page) -> list[dict]:
    """desktop_status events the page's WebSocket received, recorded from the wire."""
    return [e for e in page.ws_events if e.get("type") == "desktop_status"]


def record_traffic(page):
    page.ws_events, page.api_calls = [], []

    def on_ws(ws):
        def received(payload):
            try:
                page.ws_events.append(json.loads(payload))
            except (TypeError, ValueError):
                pass
        ws.on("framereceived", received)

    page.on("websocket", on_ws)
    page.on("request", lambda r: page.api_calls.append((r.method, r.url)) if "/api/" in r.url else None)


def test_a_new_user_goes_from_sign_in_to_an_open_desktop_by_clicking(lab, new_page, shots, fresh_user):
    page = new_page()
    record_traffic(page)
    sign_in(page, lab.url, fresh_user)
    expect(page.get_by_role("heading", name="Create your desktop")).to_be_visible()
    expect(page.locator("#live")).to_have_text(re.compile("live updates on"))
    shots(page, "create-form")

    page.get_by_label("Name").fill("Browser workspace")
    page.get_by_label(re.compile("^STANDARD")).check()
    calls_before = len(page.api_calls)
    page.get_by_role("button", name="Create desktop").click()
    progress = page.get_by_role("progressbar", name="Desktop progress")
    expect(progress).to_be_visible()
    shots(page, "provisioning")
    expect(page.get_by_role("button", name="Open")).to_be_visible(timeout=180_000)
    shots(page, "running")

    # The progression came over the WebSocket, in the contract's order, and the page did not poll.
    seen = [e["status"] for e in desktop_events(page)]
    assert seen and seen[-1] == "RUNNING", seen
    order = ["PENDING", "PROVISIONING", "STARTING", "WAITING_FOR_IP", "CONFIGURING", "RUNNING"]
    assert [s for s in order if s in seen] == [s for s in seen if s in order], seen
    assert {"PROVISIONING", "STARTING", "CONFIGURING"} <= set(seen), seen
    during = page.api_calls[calls_before:]
    gets = [url for method, url in during if method == "GET"]
    assert len(gets) <= 2, f"the page polled while provisioning: {gets}"  # one refetch once RUNNING

    desktop = lab_desktop(lab, fresh_user)
    assert (desktop["name"], desktop["plan"], desktop["status"]) == ("Browser workspace", "STANDARD", "RUNNING")
    card = page.get_by_role("article")
    expect(card.get_by_role("heading", name="Browser workspace")).to_be_visible()
    expect(card).to_contain_text(desktop["ipAddress"])
    expect(card).to_contain_text("STANDARD · 4 vCPU · 4 GB")

    expect(card.locator(".last-opened")).to_have_text("—")

    # Open: /connect's one-time link (auth-json) in a frame, where the Guacamole stand-in logs in with it.
    page.get_by_role("button", name="Open").click()
    frame = page.frame_locator("iframe[title='Desktop Browser workspace']")
    expect(frame.get_by_text(f"Connection found: cds-desktop-{desktop['id']}")).to_be_visible()
    src = page.locator("iframe").get_attribute("src")
    assert src.startswith(lab.settings.guacamole_url.rstrip("/") + "/?data=")
    assert f"cds-desktop-{desktop['id']}" in {c["name"] for c in lab.connections().values()}
    expect(page.get_by_role("region", name="Desktop viewer")).to_contain_text("one-time link")
    # The card shows when it was last opened: the time /connect recorded, not the "—" of before.
    opened_at = lab_desktop(lab, fresh_user)["lastAccessedAt"]
    assert opened_at, "connect did not record lastAccessedAt"
    expect(card.locator(".last-opened")).not_to_have_text("—")
    shots(page, "open")
    # A new tab gets a link of its own (the frame's is used up).
    with page.context.expect_page() as opened:
        page.get_by_role("button", name="Open in a new tab").click()
    tab = opened.value
    expect(tab.get_by_text(f"Connection found: cds-desktop-{desktop['id']}")).to_be_visible()
    shots(tab, "new-tab")
    tab.close()
    # The frame's link, opened again, is refused: it was for one use.
    stale = page.context.new_page()
    stale.goto(src)
    expect(stale.get_by_text("This link is no longer valid")).to_be_visible()
    stale.close()
    page.get_by_role("button", name="Close viewer").click()

    # Stop: the dialog explains the graceful shutdown and warns about force; cancel first, then stop.
    page.get_by_role("button", name="Stop…").click()
    dialog = page.get_by_role("dialog", name="Stop the desktop?")
    expect(dialog).to_contain_text("may result in data loss or file system corruption")
    expect(dialog.get_by_role("button", name="Cancel")).to_be_focused()
    shots(page, "stop-dialog")
    page.keyboard.press("Escape")
    expect(dialog).to_be_hidden()
    assert lab_desktop(lab, fresh_user)["status"] == "RUNNING"
    page.get_by_role("button", name="Stop…").click()
    dialog.get_by_role("button", name="Stop desktop").click()
    expect(page.get_by_role("button", name="Start")).to_be_visible(timeout=120_000)
    expect(card.locator(".badge")).to_have_text("Stopped")  # words people use; the API's name in the tooltip
    expect(card.locator(".badge")).to_have_attribute("title", "STOPPED")
    assert lab.vm(desktop["vmid"]).status == "stopped"
    shots(page, "stopped")

    page.get_by_role("button", name="Start").click()
    expect(page.get_by_role("button", name="Open")).to_be_visible(timeout=120_000)
    assert lab.vm(desktop["vmid"]).status == "running"

    # Delete: confirmation first; afterwards the VM and the connection are gone and the form is back.
    page.get_by_role("button", name="Delete…").click()
    confirm = page.get_by_role("dialog", name="Delete Browser workspace?")
    expect(confirm).to_contain_text("cannot be undone")
    confirm.get_by_role("button", name="Delete desktop").click()
    expect(page.get_by_role("heading", name="Create your desktop")).to_be_visible(timeout=120_000)
    shots(page, "deleted")
    assert desktop["vmid"] not in lab.vms()
    assert f"cds-desktop-{desktop['id']}" not in {c["name"] for c in lab.connections().values()}
    assert not page.errors, page.errors


def lab_desktop(lab, user: str) -> dict:
    """The user's desktop as the API reports it, with its VM id from the database."""
    import requests

    from controlplane.extensions import db
    from controlplane.models import Desktop
    token = lab.token(user)
    found = requests.get(f"{lab.url}/api/v1/desktops", params={"userId": user},
                         headers={"Authorization": f"Bearer {token}"}, timeout=10).json()["data"]["desktops"]
    live = [d for d in found if d["status"] != "DELETED"]
    assert len(live) == 1, found
    with db.connection_context():
        live[0]["vmid"] = Desktop.get_by_id(live[0]["id"]).vmid
    return live[0]


def test_the_force_stop_is_sent_only_when_ticked(lab, new_page, fresh_user):
    """The stop dialog's checkbox is the API's `force`; the request body says so."""
    page = new_page()
    sign_in(page, lab.url, fresh_user)
    page.get_by_role("button", name="Create desktop").click()
    expect(page.get_by_role("button", name="Open")).to_be_visible(timeout=180_000)
    bodies = []
    page.on("request", lambda r: bodies.append(r.post_data) if r.url.endswith("/stop") else None)
    page.get_by_role("button", name="Stop…").click()
    page.get_by_label("Force power off").check()
    page.get_by_role("button", name="Stop desktop").click()
    expect(page.get_by_role("button", name="Start")).to_be_visible(timeout=120_000)
    assert [json.loads(b) for b in bodies] == [{"force": True}]
    desktop = lab_desktop(lab, fresh_user)
    from tests.e2e.helpers import events
    assert ("STOPPING", "Forcing VM power-off", "api") in events(desktop["id"]), events(desktop["id"])
    page.get_by_role("button", name="Delete…").click()
    page.get_by_role("button", name="Delete desktop").click()
    expect(page.get_by_role("heading", name="Create your desktop")).to_be_visible(timeout=120_000)


def test_errors_are_shown_from_the_api_envelope(lab, new_page, shots):
    """A bad user name at sign-in: the API's message and field details, on the field too."""
    page = new_page()
    page.goto(lab.url + "/")
    page.get_by_label("User ID").fill("not a user!")
    page.get_by_role("button", name="Sign in").click()
    alert = page.get_by_role("alert")
    expect(alert).to_contain_text("Invalid request parameters")
    expect(alert).to_contain_text("userId: User ID must be 1 to 64 letters")
    expect(page.get_by_label("User ID")).to_have_attribute("aria-invalid", "true")
    shots(page, "sign-in-error")


def test_sign_in_and_create_with_the_keyboard_only(lab, new_page, fresh_user):
    page = new_page()
    page.goto(lab.url + "/")
    expect(page.get_by_label("User ID")).to_be_focused()  # autofocus
    page.keyboard.type(fresh_user)
    page.keyboard.press("Enter")
    expect(page.get_by_role("heading", name="Create your desktop")).to_be_visible()
    page.get_by_label("Name").focus()
    page.keyboard.press("Tab")  # into the plan radio group, on the default plan
    expect(page.get_by_label(re.compile("^BASIC"))).to_be_focused()
    page.keyboard.press("ArrowRight")
    expect(page.get_by_label(re.compile("^STANDARD"))).to_be_checked()
    page.keyboard.press("Tab")
    expect(page.get_by_role("button", name="Create desktop")).to_be_focused()
    page.keyboard.press("Enter")
    expect(page.get_by_role("progressbar", name="Desktop progress")).to_be_visible()
    expect(page.get_by_role("button", name="Open")).to_be_visible(timeout=180_000)
    assert lab_desktop(lab, fresh_user)["plan"] == "STANDARD"
    page.get_by_role("button", name="Delete…").focus()
    page.keyboard.press("Enter")
    expect(page.get_by_role("dialog")).to_be_visible()
    page.keyboard.press("Tab")
    page.keyboard.press("Enter")  # Delete desktop
    expect(page.get_by_role("heading", name="Create your desktop")).to_be_visible(timeout=120_000)


def test_a_catch_up_read_answered_after_a_create_does_not_undo_it(lab, new_page, fresh_user):
    """The live socket's catch-up read (on "open", late on a slow link) can leave before a create and
    answer after it with the list as it was: the page keeps the desktop the create answered and follows
    it to RUNNING (it used to put the empty form back and ignore the desktop's events)."""
    import requests

    page = new_page()
    sockets = []

    def through(ws):  # the page's /ws, passed through both ways; the test can cut it
        sockets.append(ws)
        ws.connect_to_server()

    page.route_web_socket(re.compile(r"/ws$"), through)
    sign_in(page, lab.url, fresh_user)
    expect(page.get_by_role("heading", name="Create your desktop")).to_be_visible()
    expect(page.locator("#live")).to_have_text(re.compile("live updates on"))
    headers = {"Authorization": f"Bearer {lab.token(fresh_user)}"}
    before = requests.get(f"{lab.url}/api/v1/desktops", params={"userId": fresh_user}, headers=headers, timeout=10)
    assert before.json()["data"]["desktops"] == []

    held = []
    listing = re.compile(r"/api/v1/desktops\?userId=")
    page.route(listing, lambda route: held.append(route))
    with page.expect_request(listing, timeout=30_000):
        sockets[-1].close()  # the page reconnects, and its "open" reads the list again: held
    expect(page.locator("#live")).to_have_text(re.compile("live updates on"))
    page.get_by_role("button", name="Create desktop").click()
    expect(page.get_by_role("progressbar", name="Desktop progress")).to_be_visible()
    assert len(held) == 1, held
    with page.expect_event("requestfinished", lambda r: listing.search(r.url)):
        held[0].fulfill(status=200, content_type="application/json", body=before.text)  # "no desktop"
    page.unroute(listing)
    expect(page.get_by_role("button", name="Open")).to_be_visible(timeout=180_000)
    expect(page.get_by_role("heading", name="Create your desktop")).to_have_count(0)
    desktop = lab_desktop(lab, fresh_user)
    assert desktop["status"] == "RUNNING"
    requests.delete(f"{lab.url}/api/v1/desktops/{desktop['id']}", headers=headers, timeout=10).raise_for_status()
    assert not page.errors, page.errors


def test_the_page_fits_a_phone(lab, new_page, shots, fresh_user):
    page = new_page(viewport={"width": 390, "height": 844})
    sign_in(page, lab.url, fresh_user)
    expect(page.get_by_role("heading", name="Create your desktop")).to_be_visible()
    expect(page.get_by_role("navigation", name="Main")).to_be_visible()
    overflow = page.evaluate("document.documentElement.scrollWidth - window.innerWidth")
    assert overflow <= 0, f"{overflow}px wider than the phone"
    shots(page, "phone")


def test_signing_out_forgets_the_token(lab, new_page, fresh_user):
    page = new_page()
    sign_in(page, lab.url, fresh_user)
    page.get_by_role("button", name="Sign out").click()
    expect(page.get_by_label("User ID")).to_be_visible()
    assert page.evaluate("sessionStorage.getItem('cds.token')") is None
    page.reload()
    expect(page.get_by_label("User ID")).to_be_visible()


def test_a_create_is_cancelled_from_the_portal(lab, new_page, shots, fresh_user):
    """While the desktop is being made, its card offers Cancel… (not Delete…); confirming stops the
    create and removes what it made, and the create form is back."""
    page = new_page()
    sign_in(page, lab.url, fresh_user)
    lab.services.call(lambda: lab.pve.slow_network(0.2 / lab.services.config.time_scale))  # a create to catch
    try:
        page.get_by_role("button", name="Create desktop").click()
        card = page.get_by_role("article")
        expect(card).to_have_attribute("data-status", "PROVISIONING", timeout=60_000)
        expect(page.get_by_role("button", name="Delete…")).to_have_count(0)
        page.get_by_role("button", name="Cancel…").click()
        dialog = page.get_by_role("dialog")
        expect(dialog).to_contain_text("stopped where it is and removed")
        shots(page, "cancel-dialog")
        dialog.get_by_role("button", name="Cancel and remove").click()
        expect(page.get_by_role("heading", name="Create your desktop")).to_be_visible(timeout=120_000)
    finally:
        lab.services.call(lambda: lab.pve.slow_network(0))
    from tests.e2e.helpers import events
    from tests.e2e.test_failures import assert_nothing_left
    from controlplane.extensions import db
    from controlplane.models import Desktop
    with db.connection_context():
        row = Desktop.get(Desktop.user_id == fresh_user)
        desktop = {"id": row.id, "vmid": row.vmid}
    history = events(desktop["id"])
    assert ("DELETING", "Create cancelled; removing desktop", "api") in history, history
    assert history[-1][0] == "DELETED" and "RUNNING" not in {e[0] for e in history}, history
    assert_nothing_left(lab, desktop["id"], desktop["vmid"])
