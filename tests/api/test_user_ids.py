"""Which user ids the API takes (issue 17, item 10). Every id an identity provider can issue is
either mapped to names Guacamole and Proxmox accept (controlplane/user_ids.py; the lab run is
tests/e2e/test_user_ids.py) or refused at the API, in each API's envelope: in a token, 401 (the
token is unusable); as the `userId` of a create, 400 VALIDATION_ERROR."""
from __future__ import annotations

import pytest

from tests.api.test_desktops_api import BASE

REFUSED = {
    "newline": "a\nb",
    "tab": "a\tb",
    "escape": "\x1b[31mred",
    "delete": "a\x7fb",
    "c1-control": "a\x85b",
    "bidi-override": "admin\u202etxt.exe",
    "256-characters": "x" * 256,
    "blank": "   ",
}
ACCEPTED = ["a/b", "with space", "Zoë", "z" * 200, "x" * 255, "日本語", "user@example.com", "💻"]


@pytest.mark.parametrize("user", REFUSED.values(), ids=REFUSED.keys())
def test_a_token_whose_user_id_cannot_be_mapped_is_refused_in_each_apis_envelope(client, token, user):
    headers = {"Authorization": f"Bearer {token(user)}"}
    desktops = client.get(BASE, headers=headers)
    assert desktops.status_code == 401, desktops.get_json()
    body = desktops.get_json()
    assert (body["success"], body["error"]) == (False, "UNAUTHORIZED")
    assert "not a usable user id" in body["message"] and body["details"]["userId"]
    projects = client.get("/api/projects", headers=headers)
    assert projects.status_code == 401, projects.get_json()
    assert projects.get_json()["error"]["code"] == "UNAUTHORIZED"
    assert "not a usable user id" in projects.get_json()["error"]["message"]


@pytest.mark.parametrize("user", REFUSED.values(), ids=REFUSED.keys())
def test_an_admin_cannot_create_a_desktop_for_a_user_id_that_cannot_be_mapped(client, auth, user):
    answer = client.post(BASE, json={"userId": user, "plan": "BASIC"}, headers=auth("ops-admin", admin=True))
    assert answer.status_code == 400, answer.get_json()
    body = answer.get_json()
    assert body["error"] == "VALIDATION_ERROR" and set(body["details"]) == {"userId"}


@pytest.mark.parametrize("user", ACCEPTED)
def test_user_ids_guacamole_or_proxmox_would_refuse_are_accepted_and_mapped(client, auth, user):
    answer = client.post(BASE, json={"userId": user, "plan": "BASIC"}, headers=auth(user))
    assert answer.status_code == 201, answer.get_json()
    data = answer.get_json()["data"]
    assert data["userId"] == user
    assert data["name"] == f"Desktop-{user}"[:100]  # the default name fits its 100 characters
    mine = client.get(BASE, headers=auth(user)).get_json()["data"]
    assert [d["id"] for d in mine["desktops"]] == [data["id"]]
