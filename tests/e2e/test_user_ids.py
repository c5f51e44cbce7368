"""User ids Guacamole or Proxmox would refuse as they are (issue 17, item 10): a `/`, spaces, letters
beyond ASCII, 200 characters. Each gets a working desktop end to end on the lab (create → RUNNING →
/connect → the Guacamole stand-in's login with the link), through the names controlplane/user_ids.py
maps it to, and its delete leaves no Guacamole user behind."""
from __future__ import annotations

import re
import uuid

import pytest
import requests

from .helpers import Api, desktop_row

pytestmark = pytest.mark.timeout(300)

PVE_TAG = re.compile(r"[a-z0-9_][a-z0-9_\-+.]*")  # Proxmox's pve-tag format (lower case, as it stores them)


def test_user_ids_guacamole_or_proxmox_would_refuse_get_working_desktops(lab):
    run = uuid.uuid4().hex[:8]
    users = [f"a/b {run}", f"with space {run}", f"Zoë {run}", ("z" * 191 + "-" + run)]
    assert len(users[-1]) == 200
    apis = {user: Api(lab.url, lab.token(user)) for user in users}

    created = {user: api.create(user, plan="BASIC") for user, api in apis.items()}  # all queued at once
    assert all(r.status_code == 201 for r in created.values()), {u: r.text for u, r in created.items()}
    ids = {user: r.json()["data"]["id"] for user, r in created.items()}
    settled = {user: apis[user].wait_settled(ids[user], timeout=150) for user in users}
    assert {u: s["status"] for u, s in settled.items()} == {u: "RUNNING" for u in users}, settled

    for user in users:
        link = apis[user].connect(ids[user])
        assert link.status_code == 200, link.text
        url = link.json()["data"]["connectionUrl"]
        data = requests.utils.unquote(url.split("?data=", 1)[1].split("#", 1)[0])
        login = requests.post(f"{lab.guacamole.url}/api/tokens", data={"data": data}, timeout=10)
        assert login.status_code == 200, login.text
        token = login.json()["authToken"]
        opened = requests.get(f"{lab.guacamole.url}/_lab/client/{url.split('#/client/', 1)[1]}",
                              headers={"Guacamole-Token": token}, timeout=10)
        row = desktop_row(ids[user])
        assert opened.status_code == 200 and opened.json()["hostname"] == row.ip_address, opened.text
        # The same session is the Guacamole user the playbook granted the desktop's connection to.
        mine = requests.get(f"{lab.guacamole.url}/api/session/data/postgresql/connections",
                            headers={"Guacamole-Token": token}, timeout=10)
        assert sorted(mine.json()) == [row.guacamole_connection_id], mine.text

        from controlplane.user_ids import guacamole_username, proxmox_owner_tag
        assert login.json()["username"] == guacamole_username(user)
        tags = set(re.split(r"[;, ]+", lab.vm(row.vmid).config.get("tags", "")))
        assert proxmox_owner_tag(user) in tags and all(PVE_TAG.fullmatch(tag) for tag in tags), tags

    names = {guacamole_username(user) for user in users}
    assert names <= set(lab.services.call(lambda: list(lab.guacamole.users)))

    for user in users:
        assert apis[user].delete(ids[user]).status_code == 200
    gone = {user: apis[user].wait_settled(ids[user], timeout=120)["status"] for user in users}
    assert gone == {user: "DELETED" for user in users}
    left = lab.services.call(lambda: list(lab.guacamole.users))
    assert not names & set(left), left  # the delete removed the Guacamole users the create made
