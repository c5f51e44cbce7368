"""Projects in the portal, two people in two browsers on the lab: the owner creates a project and
invites a colleague, who accepts; messages in the chat pane reach the other member live over the
WebSocket; the owner removes the colleague and deletes the project. Then the admin view."""
from __future__ import annotations

import re

import pytest
import requests
from playwright.sync_api import expect

from tests.browser.conftest import sign_in

pytestmark = pytest.mark.timeout(480)


def test_a_team_project_with_live_chat(lab, new_page, shots, fresh_user):
    owner_id, guest_id = fresh_user, fresh_user + "_guest"
    owner, guest = new_page(), new_page()
    sign_in(owner, lab.url, owner_id)
    owner.get_by_role("link", name="Projects").click()
    expect(owner.get_by_text("No projects yet")).to_be_visible()
    owner.get_by_label("Name", exact=True).fill("Browser team")
    owner.get_by_label("Description").fill("Made in a browser test")
    owner.get_by_label("Operating system").select_option("debian12")
    owner.get_by_role("button", name="Create project").click()
    expect(owner.get_by_role("heading", name="Browser team", level=1)).to_be_visible()
    project_id = owner.url.rsplit("/", 1)[-1]
    shots(owner, "project-provisioning")
    # The status follows the project over the WebSocket, to running, with the VM's address.
    card = owner.locator("[data-status]").first
    expect(card).to_have_attribute("data-status", "running", timeout=240_000)
    api = requests.get(f"{lab.url}/api/projects/{project_id}", timeout=10,
                       headers={"Authorization": f"Bearer {lab.token(owner_id)}"}).json()
    expect(card).to_contain_text(api["vm_ip"])
    expect(card).to_contain_text("owner")

    # A bad invitation: the projects API's envelope, on screen.
    owner.get_by_label("Email").fill("not-an-email")
    owner.get_by_role("button", name="Invite").click()
    expect(owner.get_by_role("alert")).to_contain_text(re.compile("email", re.I))
    owner.get_by_label("Email").fill(f"{guest_id}@lab.invalid")
    owner.get_by_label("Role").select_option("editor")
    owner.get_by_role("button", name="Invite").click()
    expect(owner.get_by_role("status")).to_contain_text(f"Invitation sent to {guest_id}@lab.invalid")

    sign_in(guest, lab.url, guest_id)
    guest.get_by_role("link", name="Projects").click()
    invitations = guest.get_by_role("region", name="Invitations")
    expect(invitations).to_contain_text(f"{owner_id} invited you to Browser team as editor")
    shots(guest, "invitation")
    invitations.get_by_role("button", name="Accept").click()
    expect(guest.get_by_role("heading", name="Browser team", level=1)).to_be_visible()
    expect(owner.get_by_role("list").filter(has_text=guest_id)).to_be_visible()  # live: the owner's list

    # The guest writes; the owner sees it and the assistant's answer without reloading.
    guest.get_by_label("Message", exact=True).fill("Hello from the guest")
    guest.get_by_role("button", name="Send").click()
    owner_log = owner.get_by_role("log", name="Chat messages")
    expect(owner_log).to_contain_text("Hello from the guest", timeout=30_000)
    expect(owner_log.locator(".msg.assistant")).to_have_count(1, timeout=30_000)
    guest_log = guest.get_by_role("log", name="Chat messages")
    expect(guest_log.locator(".msg.user").filter(has_text="Hello from the guest")).to_have_count(1)  # not twice
    shots(owner, "chat-owner")
    shots(guest, "chat-guest")

    # The owner removes the guest (confirming), then deletes the project.
    owner.get_by_role("button", name=f"Remove {guest_id}").click()
    owner.get_by_role("dialog").get_by_role("button", name="Remove").click()
    expect(owner.locator(".people")).not_to_contain_text(guest_id)
    members = requests.get(f"{lab.url}/api/projects/{project_id}/collaborators", timeout=10,
                           headers={"Authorization": f"Bearer {lab.token(owner_id)}"}).json()["collaborators"]
    assert [m["user_id"] for m in members] == [owner_id]
    owner.get_by_role("button", name="Delete…").click()
    owner.get_by_role("dialog").get_by_role("button", name="Delete project").click()
    expect(owner.get_by_role("heading", name="Projects", level=1)).to_be_visible()
    gone = None
    for _ in range(240):
        gone = requests.get(f"{lab.url}/api/projects/{project_id}", timeout=10,
                            headers={"Authorization": f"Bearer {lab.token(owner_id)}"})
        if gone.status_code == 404:
            break
        owner.wait_for_timeout(500)
    assert gone.status_code == 404, gone.text
    assert not owner.errors and not guest.errors, (owner.errors, guest.errors)


def test_the_admin_view(lab, new_page, shots, fresh_user):
    # Someone else's desktop to find.
    headers = {"Authorization": f"Bearer {lab.token(fresh_user)}"}
    created = requests.post(f"{lab.url}/api/v1/desktops", json={"userId": fresh_user, "plan": "BASIC"},
                            headers=headers, timeout=10).json()["data"]
    admin = new_page()
    sign_in(admin, lab.url, "ops_admin", admin=True)
    expect(admin.get_by_text("ops_admin (admin)")).to_be_visible()
    admin.get_by_role("link", name="Admin").click()
    desktops = admin.get_by_role("region", name="All desktops")
    desktops.get_by_label("User").fill(fresh_user)
    desktops.get_by_role("button", name="Filter").click()
    rows = desktops.locator("tbody tr")
    expect(rows).to_have_count(1)
    expect(rows.first).to_contain_text(str(created["id"]))
    expect(rows.first).to_contain_text("BASIC")
    desktops.get_by_label("Status").select_option("DELETED")
    desktops.get_by_role("button", name="Filter").click()
    expect(desktops.get_by_text("No desktops match.")).to_be_visible()

    # The sections are tabs: clicked, or moved through with the arrow keys.
    expect(admin.get_by_role("tab", name="Desktops")).to_have_attribute("aria-selected", "true")
    admin.get_by_role("tab", name="Warm pools").click()
    expect(desktops).to_be_hidden()
    pools = admin.get_by_role("region", name="Warm pool")
    expect(pools.locator("tbody tr")).to_have_count(3)  # one per plan of config/plans.yml
    expect(pools).to_contain_text("plans file")
    assert admin.url.endswith("#/admin/pools")

    admin.get_by_role("tab", name="Warm pools").focus()
    admin.keyboard.press("ArrowRight")
    expect(admin.get_by_role("tab", name="Audit log")).to_be_focused()
    expect(admin.get_by_role("tab", name="Audit log")).to_have_attribute("aria-selected", "true")
    audit = admin.get_by_role("region", name="Audit log")
    audit.get_by_label("User").fill(fresh_user)
    audit.get_by_role("button", name="Filter").click()
    expect(audit.locator("tbody tr").filter(has_text="POST /api/v1/desktops")).to_have_count(1)
    shots(admin, "admin")
    admin.reload()  # the tab shown stays shown
    expect(admin.get_by_role("tab", name="Audit log")).to_have_attribute("aria-selected", "true")

    # A user who is not an admin has no Admin link, and the page says so if they go there.
    user = new_page()
    sign_in(user, lab.url, fresh_user)
    expect(user.get_by_role("link", name="Admin")).to_be_hidden()
    user.goto(lab.url + "/#/admin")
    expect(user.get_by_role("alert")).to_contain_text("Only administrators")
    requests.delete(f"{lab.url}/api/v1/desktops/{created['id']}", headers=headers, timeout=10)
    assert not admin.errors, admin.errors


def test_members_open_the_project_vms_screen_viewers_only_watch(lab, screens, new_page, shots, fresh_user):
    """The owner presses Open screen and sees the project VM's real screen (the lab's X display over
    VNC); a viewer gets Watch screen, a view-only connection, and the owner's page says who watches."""
    from controlplane.auth import mint_lab_token
    owner_id, viewer_id = fresh_user, fresh_user + "_viewer"

    def call(user, method, path, **kwargs):
        token = mint_lab_token(lab.settings, user, email=f"{user}@example.com", name=user)
        response = requests.request(method, lab.url + path, timeout=10, headers={"Authorization": f"Bearer {token}"},
                                    **kwargs)
        assert response.ok, response.text
        return response.json()

    project_id = call(owner_id, "POST", "/api/projects", json={"name": "Screens", "os": "debian12"})["project_id"]
    invitation = call(owner_id, "POST", f"/api/projects/{project_id}/collaborators",
                      json={"email": f"{viewer_id}@example.com", "role": "viewer"})["invitation_id"]
    call(viewer_id, "POST", f"/api/invitations/{invitation}/accept")
    owner, viewer = new_page(), new_page()
    for page, user in ((owner, owner_id), (viewer, viewer_id)):
        sign_in(page, lab.url, user)
        page.goto(f"{lab.url}/#/projects/{project_id}")
        expect(page.locator("[data-status]").first).to_have_attribute("data-status", "running", timeout=240_000)

    owner.get_by_role("button", name="Open screen").click()
    screen = owner.frame_locator("iframe[title='Screen of Screens']")
    expect(screen.get_by_text(re.compile(r"^Connected to the screen of cds-project-\d+$"))).to_be_visible(
        timeout=30_000)
    expect(owner.get_by_role("region", name="Project screen")).to_contain_text("You are in control")
    shots(owner, "project-screen-owner")

    expect(viewer.get_by_role("button", name="Open screen")).to_have_count(0)
    viewer.get_by_role("button", name="Watch screen").focus()
    viewer.keyboard.press("Enter")  # with the keyboard alone
    watched = viewer.frame_locator("iframe[title='Screen of Screens']")
    expect(watched.get_by_text(re.compile(r"^Connected to the screen of cds-project-\d+ \(view only\)$"))).to_be_visible(
        timeout=30_000)
    expect(viewer.get_by_role("region", name="Project screen")).to_contain_text("View only")
    expect(owner.locator(".activity").filter(has_text=f"{viewer_id}: opened the VM's screen (view only)")).to_be_visible()
    shots(viewer, "project-screen-viewer")
    call(owner_id, "DELETE", f"/api/projects/{project_id}")
