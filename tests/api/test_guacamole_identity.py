"""The Guacamole identity of a desktop user (issue 17, item 1): `/connect` signs auth-json data for a
name in the control plane's reserved namespace, never the user id itself. Guacamole's database
extension gives an auth-json session the permissions of the database user of the same name, so a
user id `guacadmin` (or any other account's name) would otherwise administer Guacamole.

Against the lab's stand-in, which gives an auth-json login the database user of its name as
Guacamole does (a positive control below shows it), compared with and without regard to case."""
from __future__ import annotations

import dataclasses
import urllib.parse

import pytest
import requests

from controlplane.lab.guacamole import GuacamoleStandIn
from tests.api.test_desktops_api import BASE, running
from tests.loop import LoopThread

SECRET = "00112233445566778899aabbccddeeff"
ADMIN, ADMIN_PASSWORD = "guacadmin", "admin-pw"
VICTIM = "bob"  # a desktop user whose Guacamole user (cds-u-bob) holds READ on their connection


@pytest.fixture
def json_client(base_settings, database, client):
    from controlplane import create_app
    return create_app(dataclasses.replace(base_settings, guacamole_json_secret=SECRET)).test_client()


@pytest.fixture(params=[True, False], ids=["names-case-sensitive", "names-ignoring-case"])
def guacamole(request):
    """A stand-in with the admin account and, as the desktop playbooks leave it, the victim's user
    holding READ on their desktop's connection."""
    loop = LoopThread()
    ignoring_case = {} if request.param else {"case_sensitive_usernames": False}
    guac = GuacamoleStandIn(port=0, password=ADMIN_PASSWORD, json_secret=SECRET, **ignoring_case)
    loop.run(guac.start())
    admin = requests.post(f"{guac.url}/api/tokens", data={"username": ADMIN, "password": ADMIN_PASSWORD},
                          timeout=10).json()["authToken"]
    api, headers = f"{guac.url}/api/session/data/postgresql", {"Guacamole-Token": admin}
    made = requests.post(f"{api}/connections", headers=headers, timeout=10, json={
        "name": "cds-desktop-900", "parentIdentifier": "ROOT", "protocol": "vnc",
        "parameters": {"hostname": "10.66.0.90", "port": "5900"}}).json()
    guac.victim_connection = made["identifier"]
    assert requests.post(f"{api}/users", headers=headers, timeout=10,
                         json={"username": "cds-u-" + VICTIM, "password": "x" * 32, "attributes": {}}).ok
    assert requests.patch(f"{api}/users/cds-u-{VICTIM}/permissions", headers=headers, timeout=10, json=[
        {"op": "add", "path": f"/connectionPermissions/{made['identifier']}", "value": "READ"}]).ok
    yield guac
    loop.run(guac.stop())
    loop.close()


def browser_login(guac: GuacamoleStandIn, link: str) -> str:
    """What the client page does with /connect's link: its `data` to /api/tokens. The session's token."""
    data = urllib.parse.unquote(link.split("?data=", 1)[1].split("#", 1)[0])
    answer = requests.post(f"{guac.url}/api/tokens", data={"data": data}, timeout=10)
    assert answer.status_code == 200, answer.text
    return answer.json()["authToken"]


def session_reach(guac: GuacamoleStandIn, token: str) -> dict:
    """What a session can do in the database's data source, as an attacker would try it."""
    api, headers = f"{guac.url}/api/session/data/postgresql", {"Guacamole-Token": token}
    users = requests.get(f"{api}/users", headers=headers, timeout=10)
    created = requests.post(f"{api}/users", headers=headers, timeout=10,
                            json={"username": "mallory", "password": "x" * 16, "attributes": {}})
    connections = requests.get(f"{api}/connections", headers=headers, timeout=10)
    system = requests.get(f"{api}/self/permissions", headers=headers, timeout=10)
    return {"users": sorted(users.json()) if users.ok else users.status_code,
            "create_user": created.status_code,
            "connections": sorted(connections.json()) if connections.ok else connections.status_code,
            "system": system.json().get("systemPermissions") if system.ok else system.status_code}


def connect(client, auth, user: str) -> str:
    desktop_id = running(client, auth, user=user)
    answer = client.get(f"{BASE}/{desktop_id}/connect", headers=auth(user))
    assert answer.status_code == 200, answer.get_json()
    return answer.get_json()["data"]["connectionUrl"]


def test_the_standin_gives_an_auth_json_session_its_database_users_permissions(json_client, auth, guacamole):
    """The positive control: the stand-in does what makes item 1 an attack, so the test below is real."""
    token = browser_login(guacamole, connect(json_client, auth, VICTIM))
    reach = session_reach(guacamole, token)
    assert reach["connections"] == [guacamole.victim_connection]  # bob's own desktop, through his database user
    assert reach["create_user"] == 403 and reach["system"] == []


@pytest.mark.parametrize("user", ["guacadmin", "GuacAdmin", "GUACADMIN", "cds-u-bob", "cds-u-guacadmin", "Cds-U-Bob"])
def test_a_user_id_naming_a_guacamole_account_never_gets_its_session(json_client, auth, guacamole, user):
    """A user picks, at the identity provider, the name of Guacamole's administrator (in any case) or
    another user's Guacamole name. /connect's link still logs in, and the session can use its own
    desktop, but it is nobody else: it cannot list or create Guacamole users, holds no system
    permission, and sees no other user's connection."""
    link = connect(json_client, auth, user)
    token = browser_login(guacamole, link)
    assert session_reach(guacamole, token) == {"users": [], "create_user": 403, "connections": [], "system": []}
    # The link's own connection (auth-json's data source) still opens.
    client_id = link.split("#/client/", 1)[1]
    own = requests.get(f"{guacamole.url}/_lab/client/{client_id}", headers={"Guacamole-Token": token}, timeout=10)
    assert own.status_code == 200 and own.json()["hostname"] == "10.66.0.7"
    assert guacamole.users.keys() == {ADMIN, "cds-u-" + VICTIM}  # nothing was made meanwhile


def test_guacamole_names_are_a_reserved_injective_namespace():
    """The mapping itself: every name is `cds-u-` and lower-case ASCII of bounded length, plain ids
    stay readable, and no two ids of a corpus full of look-alikes share a name, even ignoring case."""
    from controlplane.user_ids import guacamole_username, handle, problem
    ids = ["user_12345", "guacadmin", "GuacAdmin", "GUACADMIN", "guacadmin ", " guacadmin", "cds-u-bob", "bob",
           "Bob", "BOB", "a/b", "a-b", "a_b", "a.b", "a b", "a--b", "with space", "Zoë", "Zoe", "zoe", "ZOË",
           "Zoe\u0308", "z" * 200, "z" * 199, "z" * 48, "z" * 49, "-", "--", ".", "日本語", "bob--" + "0" * 32,
           "user@example.com", "USER@example.com", "💻", "x" * 255, "ß", "ss", "İ", "i"]
    names = {user: guacamole_username(user) for user in ids}
    assert all(problem(user) is None for user in ids)
    assert len({name.lower() for name in names.values()}) == len(ids)  # injective, even ignoring case
    for user, name in names.items():
        assert name.startswith("cds-u-") and name.isascii() and name == name.lower() and len(name) <= 64, name
        assert name[len("cds-u-"):] == handle(user)
    assert (names["user_12345"], names["guacadmin"], names["cds-u-bob"]) == \
        ("cds-u-user_12345", "cds-u-guacadmin", "cds-u-cds-u-bob")
    assert names["Zoë"].startswith("cds-u-zoe--") and names["a/b"].startswith("cds-u-a-b--")
