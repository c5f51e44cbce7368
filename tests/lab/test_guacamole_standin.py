"""Tests for the lab's Guacamole stand-in, over real HTTP."""

from __future__ import annotations

import base64
import json
import re

import pytest
import requests

from controlplane.lab.guacamole import GuacamoleStandIn, client_identifier, parse_client_identifier
from tests.loop import LoopThread

ADMIN = "guacadmin"
ADMIN_PASSWORD = "s3cret-admin"
TIMEOUT = 10




@pytest.fixture
def loop_thread():
    lt = LoopThread()
    yield lt
    lt.close()


@pytest.fixture
def make_standin(loop_thread):
    started = []

    def make(**kwargs):
        kwargs.setdefault("port", 0)
        kwargs.setdefault("password", ADMIN_PASSWORD)
        g = GuacamoleStandIn(**kwargs)
        loop_thread.run(g.start())
        started.append(g)
        return g

    yield make
    for g in started:
        loop_thread.run(g.stop())


@pytest.fixture
def guac(make_standin):
    return make_standin()


def api(g: GuacamoleStandIn) -> str:
    return f"{g.url}/api"


def login(g, username=ADMIN, password=ADMIN_PASSWORD) -> str:
    r = requests.post(f"{api(g)}/tokens", data={"username": username, "password": password}, timeout=TIMEOUT)
    assert r.status_code == 200, r.text
    return r.json()["authToken"]


def data_url(g, path: str) -> str:
    return f"{api(g)}/session/data/{g.data_source}/{path}"


class Client:
    def __init__(self, g, token):
        self.g = g
        self.headers = {"Guacamole-Token": token}

    def request(self, method, path, **kw):
        headers = {**self.headers, **kw.pop("headers", {})}
        return requests.request(method, data_url(self.g, path), headers=headers, timeout=TIMEOUT, **kw)

    def get(self, path, **kw):
        return self.request("GET", path, **kw)

    def post(self, path, body):
        return self.request("POST", path, json=body)

    def put(self, path, body):
        return self.request("PUT", path, json=body)

    def patch(self, path, body):
        return self.request("PATCH", path, json=body)

    def delete(self, path):
        return self.request("DELETE", path)


@pytest.fixture
def client(guac):
    return Client(guac, login(guac))


def vnc(name="desk-1", hostname="10.0.0.5", port=5901, password="vncpass"):
    return {
        "parentIdentifier": "ROOT",
        "name": name,
        "protocol": "vnc",
        "parameters": {"hostname": hostname, "port": port, "password": password},
        "attributes": {"max-connections": "2", "max-connections-per-user": 1},
    }


def assert_error(r, status, type_, message=None):
    assert r.status_code == status, (r.status_code, r.text)
    body = r.json()
    assert set(body) == {"message", "translatableMessage", "statusCode", "expected", "patches", "type"}
    assert body["type"] == type_
    assert body["statusCode"] is None
    if message is not None:
        assert body["message"] == message
    return body


# ----------------------------------------------------------------- login


def test_login_ok(guac):
    r = requests.post(f"{api(guac)}/tokens", data={"username": ADMIN, "password": ADMIN_PASSWORD},
                      timeout=TIMEOUT)
    assert r.status_code == 200
    body = r.json()
    assert re.fullmatch(r"[0-9A-F]{64}", body["authToken"])
    assert body["username"] == ADMIN
    assert body["dataSource"] == "postgresql"
    assert body["availableDataSources"][0] == "postgresql"
    assert body["authToken"] in guac.tokens


def test_login_tokens_are_distinct(guac):
    assert login(guac) != login(guac)


@pytest.mark.parametrize("username,password", [(ADMIN, "wrong"), ("nobody", ADMIN_PASSWORD), ("", "")])
def test_login_bad(guac, username, password):
    r = requests.post(f"{api(guac)}/tokens", data={"username": username, "password": password},
                      timeout=TIMEOUT)
    body = assert_error(r, 403, "INVALID_CREDENTIALS", "Invalid login")
    assert body["translatableMessage"] == {"key": "APP.TEXT_UNTRANSLATED",
                                           "variables": {"MESSAGE": "Invalid login"}}
    assert [f["name"] for f in body["expected"]] == ["username", "password"]
    assert [f["type"] for f in body["expected"]] == ["USERNAME", "PASSWORD"]
    assert guac.tokens == {}


def test_logout(guac):
    token = login(guac)
    r = requests.delete(f"{api(guac)}/tokens/{token}", timeout=TIMEOUT)
    assert r.status_code == 204
    assert token not in guac.tokens
    r = requests.get(data_url(guac, "connections"), headers={"Guacamole-Token": token}, timeout=TIMEOUT)
    assert_error(r, 403, "PERMISSION_DENIED", "Permission Denied.")
    r = requests.delete(f"{api(guac)}/tokens/{token}", timeout=TIMEOUT)
    assert_error(r, 404, "NOT_FOUND")


def test_token_via_header_and_query(guac):
    token = login(guac)
    r = requests.get(data_url(guac, "connections"), headers={"Guacamole-Token": token}, timeout=TIMEOUT)
    assert r.status_code == 200 and r.json() == {}
    r = requests.get(data_url(guac, "connections"), params={"token": token}, timeout=TIMEOUT)
    assert r.status_code == 200 and r.json() == {}
    # The header wins over the query parameter.
    r = requests.get(data_url(guac, "connections"), params={"token": token},
                     headers={"Guacamole-Token": "0" * 64}, timeout=TIMEOUT)
    assert_error(r, 403, "PERMISSION_DENIED")
    r = requests.get(data_url(guac, "connections"), params={"token": "0" * 64},
                     headers={"Guacamole-Token": token}, timeout=TIMEOUT)
    assert r.status_code == 200


def test_missing_or_bad_token(guac):
    r = requests.get(data_url(guac, "connections"), timeout=TIMEOUT)
    body = assert_error(r, 403, "PERMISSION_DENIED", "Permission Denied.")
    assert body["expected"] is None
    r = requests.get(data_url(guac, "connections"), headers={"Guacamole-Token": "ABC"}, timeout=TIMEOUT)
    assert_error(r, 403, "PERMISSION_DENIED", "Permission Denied.")


def test_token_expires_after_idle(guac):
    token = login(guac)
    guac.tokens[token]["last_access"] -= 61 * 60
    r = requests.get(data_url(guac, "connections"), headers={"Guacamole-Token": token}, timeout=TIMEOUT)
    assert_error(r, 403, "PERMISSION_DENIED")
    assert token not in guac.tokens


def test_unknown_data_source(guac):
    token = login(guac)
    r = requests.get(f"{api(guac)}/session/data/mysql/connections", headers={"Guacamole-Token": token},
                     timeout=TIMEOUT)
    assert_error(r, 404, "NOT_FOUND")


# ----------------------------------------------------------- connections


def test_connection_crud(guac, client):
    r = client.post("connections", vnc())
    assert r.status_code == 200, r.text
    created = r.json()
    assert created["identifier"] == "1"
    assert created["name"] == "desk-1"
    assert created["protocol"] == "vnc"
    assert created["parentIdentifier"] == "ROOT"
    # Every value is stored as a string.
    stored = guac.connections["1"]
    assert stored["parameters"] == {"hostname": "10.0.0.5", "port": "5901", "password": "vncpass"}
    assert stored["attributes"]["max-connections"] == "2"
    assert stored["attributes"]["max-connections-per-user"] == "1"

    r = client.post("connections", vnc(name="desk-2", hostname="10.0.0.6"))
    assert r.json()["identifier"] == "2"

    # List: map by identifier, without parameters.
    r = client.get("connections")
    assert r.status_code == 200
    listing = r.json()
    assert sorted(listing) == ["1", "2"]
    one = listing["1"]
    assert "parameters" not in one
    assert one["name"] == "desk-1"
    assert one["identifier"] == "1"
    assert one["parentIdentifier"] == "ROOT"
    assert one["protocol"] == "vnc"
    assert one["activeConnections"] == 0
    assert one["attributes"]["max-connections"] == "2"
    assert one["attributes"]["guacd-hostname"] is None  # JDBC reads unset attributes back as null
    assert "lastActive" not in one

    # Get one: no parameters either.
    r = client.get("connections/1")
    assert r.status_code == 200
    assert r.json() == one

    # Parameters only from /parameters.
    r = client.get("connections/1/parameters")
    assert r.status_code == 200
    assert r.json() == {"hostname": "10.0.0.5", "port": "5901", "password": "vncpass"}

    # PUT replaces name, protocol, parameters and attributes.
    r = client.put("connections/1", {"identifier": "1", "parentIdentifier": "ROOT", "name": "desk-1b",
                                     "protocol": "rdp",
                                     "parameters": {"hostname": "10.0.0.9", "port": "3389", "domain": ""},
                                     "attributes": {}})
    assert r.status_code == 204, r.text
    assert r.content == b""
    got = client.get("connections/1").json()
    assert got["name"] == "desk-1b"
    assert got["protocol"] == "rdp"
    assert got["attributes"]["max-connections"] is None
    assert client.get("connections/1/parameters").json() == {"hostname": "10.0.0.9", "port": "3389"}

    # DELETE.
    r = client.delete("connections/1")
    assert r.status_code == 204
    assert "1" not in guac.connections
    assert_error(client.get("connections/1"), 404, "NOT_FOUND", 'Not found: "1"')
    assert_error(client.delete("connections/1"), 404, "NOT_FOUND")
    assert_error(client.put("connections/1", vnc()), 404, "NOT_FOUND")
    assert_error(client.get("connections/1/parameters"), 404, "NOT_FOUND")
    assert sorted(client.get("connections").json()) == ["2"]

    # Identifiers are never reused.
    assert client.post("connections", vnc(name="desk-3")).json()["identifier"] == "3"


def test_duplicate_name(client):
    assert client.post("connections", vnc(name="dup")).status_code == 200
    body = assert_error(client.post("connections", vnc(name="dup")), 400, "BAD_REQUEST",
                        'The connection "dup" already exists.')
    assert body["translatableMessage"]["variables"]["MESSAGE"] == 'The connection "dup" already exists.'
    # Renaming another connection onto an existing name is refused too ...
    assert client.post("connections", vnc(name="other")).status_code == 200
    assert_error(client.put("connections/2", vnc(name="dup")), 400, "BAD_REQUEST",
                 'The connection "dup" already exists.')
    # ... but keeping one's own name is fine.
    assert client.put("connections/1", vnc(name="dup", hostname="10.1.1.1")).status_code == 204


@pytest.mark.parametrize("change,message", [
    ({"protocol": "spice"}, None),
    ({"protocol": None}, None),
    ({"name": "  "}, "Connection names must not be blank."),
    ({"parameters": {"hostname": {"nested": 1}}}, None),
    ({"parameters": {"hostname": "x" * 4097}},
     'The value provided for connection parameter "hostname" exceeds the maximum allowed length.'),
])
def test_create_connection_rejected(guac, client, change, message):
    body = vnc()
    body.update(change)
    assert_error(client.post("connections", body), 400, "BAD_REQUEST", message)
    assert guac.connections == {}


def test_malformed_json(client):
    r = client.request("POST", "connections", data=b"{not json", headers={"Content-Type": "application/json"})
    assert_error(r, 400, "BAD_REQUEST")


def test_tree(guac, client):
    r = client.get("connectionGroups/ROOT/tree")
    assert r.status_code == 200
    assert r.json() == {"name": "ROOT", "identifier": "ROOT", "type": "ORGANIZATIONAL",
                        "activeConnections": 0, "attributes": {}}
    client.post("connections", vnc(name="a"))
    client.post("connections", vnc(name="b", hostname="10.0.0.7"))
    tree = client.get("connectionGroups/ROOT/tree").json()
    assert tree["identifier"] == "ROOT"
    assert tree["type"] == "ORGANIZATIONAL"
    assert [c["name"] for c in tree["childConnections"]] == ["a", "b"]
    assert [c["identifier"] for c in tree["childConnections"]] == ["1", "2"]
    assert all("parameters" not in c for c in tree["childConnections"])
    assert_error(client.get("connectionGroups/7/tree"), 404, "NOT_FOUND")


# ------------------------------------------------------ users, permissions


def test_users_and_permissions(guac, client):
    users = client.get("users").json()
    assert list(users) == [ADMIN]
    assert users[ADMIN]["username"] == ADMIN
    assert "password" not in users[ADMIN]

    r = client.post("users", {"username": "alice", "password": "alice-pw",
                              "attributes": {"guac-full-name": "Alice", "disabled": ""}})
    assert r.status_code == 200, r.text
    assert r.json()["username"] == "alice"
    assert "password" not in r.json()
    assert "alice" in guac.users
    assert "alice-pw" not in json.dumps(guac.users)
    assert_error(client.post("users", {"username": "alice", "password": "x"}), 400, "BAD_REQUEST",
                 'User "alice" already exists.')

    got = client.get("users/alice").json()
    assert got["username"] == "alice"
    assert got["attributes"]["guac-full-name"] == "Alice"
    assert got["attributes"]["disabled"] is None
    assert_error(client.get("users/bob"), 404, "NOT_FOUND")

    perms = client.get("users/alice/permissions").json()
    assert perms == {"connectionPermissions": {}, "connectionGroupPermissions": {},
                     "sharingProfilePermissions": {}, "activeConnectionPermissions": {},
                     "userPermissions": {"alice": ["READ"]}, "userGroupPermissions": {},
                     "systemPermissions": []}

    cid = client.post("connections", vnc()).json()["identifier"]
    r = client.patch("users/alice/permissions", [
        {"op": "add", "path": f"/connectionPermissions/{cid}", "value": "READ"},
        {"op": "add", "path": "/systemPermissions", "value": "CREATE_CONNECTION"},
    ])
    assert r.status_code == 204, r.text
    perms = client.get("users/alice/permissions").json()
    assert perms["connectionPermissions"] == {cid: ["READ"]}
    assert perms["systemPermissions"] == ["CREATE_CONNECTION"]
    assert guac.permissions["alice"]["connectionPermissions"] == {cid: ["READ"]}

    # Adding twice is harmless.
    assert client.patch("users/alice/permissions", [
        {"op": "add", "path": f"/connectionPermissions/{cid}", "value": "READ"}]).status_code == 204
    assert client.get("users/alice/permissions").json()["connectionPermissions"] == {cid: ["READ"]}

    # Alice can log in and sees exactly that connection, without its parameters.
    alice = Client(guac, login(guac, "alice", "alice-pw"))
    assert list(alice.get("connections").json()) == [cid]
    assert alice.get("connections/1/parameters").json() == {}
    assert alice.get("self").json()["username"] == "alice"
    assert_error(alice.get("users/guacadmin"), 404, "NOT_FOUND")

    r = client.patch("users/alice/permissions", [
        {"op": "remove", "path": f"/connectionPermissions/{cid}", "value": "READ"}])
    assert r.status_code == 204
    assert client.get("users/alice/permissions").json()["connectionPermissions"] == {}
    assert alice.get("connections").json() == {}


@pytest.mark.parametrize("patch", [
    [{"op": "replace", "path": "/connectionPermissions/1", "value": "READ"}],
    [{"op": "add", "path": "/nonsense/1", "value": "READ"}],
    [{"op": "add", "path": "/connectionPermissions/1", "value": "FLY"}],
    {"op": "add", "path": "/connectionPermissions/1", "value": "READ"},
])
def test_permission_patch_rejected(guac, client, patch):
    client.post("connections", vnc())
    client.post("users", {"username": "bob", "password": "pw"})
    before = json.loads(json.dumps(guac.permissions["bob"]))
    assert_error(client.patch("users/bob/permissions", patch), 400, "BAD_REQUEST")
    assert guac.permissions["bob"] == before


def test_permission_patch_is_all_or_nothing(guac, client):
    client.post("connections", vnc())
    client.post("users", {"username": "bob", "password": "pw"})
    r = client.patch("users/bob/permissions", [
        {"op": "add", "path": "/connectionPermissions/1", "value": "READ"},
        {"op": "add", "path": "/bogus", "value": "READ"}])
    assert_error(r, 400, "BAD_REQUEST", 'Unsupported patch path: "/bogus"')
    assert guac.permissions["bob"]["connectionPermissions"] == {}


def test_delete_connection_clears_permissions(guac, client):
    client.post("users", {"username": "alice", "password": "pw"})
    cid = client.post("connections", vnc()).json()["identifier"]
    client.patch("users/alice/permissions", [
        {"op": "add", "path": f"/connectionPermissions/{cid}", "value": "READ"}])
    assert guac.permissions["alice"]["connectionPermissions"] == {cid: ["READ"]}
    assert cid in guac.permissions[ADMIN]["connectionPermissions"]  # creator's implicit grant
    assert client.delete(f"connections/{cid}").status_code == 204
    assert guac.permissions["alice"]["connectionPermissions"] == {}
    assert cid not in guac.permissions[ADMIN]["connectionPermissions"]
    assert client.get("users/alice/permissions").json()["connectionPermissions"] == {}


def test_delete_user(guac, client):
    client.post("users", {"username": "carol", "password": "pw"})
    carol_token = login(guac, "carol", "pw")
    assert client.delete("users/carol").status_code == 204
    assert "carol" not in guac.users and "carol" not in guac.permissions
    assert "carol" not in guac.permissions[ADMIN]["userPermissions"]
    assert_error(client.get("users/carol"), 404, "NOT_FOUND")
    assert_error(Client(guac, carol_token).get("self"), 403, "PERMISSION_DENIED")
    assert_error(client.delete(f"users/{ADMIN}"), 403, "PERMISSION_DENIED")


def test_self_and_active_connections(guac, client):
    me = client.get("self").json()
    assert me["username"] == ADMIN
    assert isinstance(me["lastActive"], int)
    assert client.get("activeConnections").json() == {}
    perms = client.get("self/permissions").json()
    assert "ADMINISTER" in perms["systemPermissions"]


# --------------------------------------------------------------- persistence


def test_persistence_across_restart(make_standin, loop_thread, tmp_path):
    state = tmp_path / "guac-state.json"
    g = make_standin(state_file=state)
    c = Client(g, login(g))
    cid = c.post("connections", vnc(name="kept", password="do-not-store-plain")).json()["identifier"]
    c.post("users", {"username": "dave", "password": "dave-pw"})
    c.patch("users/dave/permissions", [{"op": "add", "path": f"/connectionPermissions/{cid}",
                                        "value": "READ"}])
    text = state.read_text()
    assert "dave-pw" not in text and ADMIN_PASSWORD not in text
    assert not [p for p in tmp_path.iterdir() if p.name != state.name]  # no temp files left
    loop_thread.run(g.stop())

    g2 = make_standin(state_file=state)
    assert g2.connections[cid]["name"] == "kept"
    assert g2.connections[cid]["parameters"]["hostname"] == "10.0.0.5"
    c2 = Client(g2, login(g2))
    assert list(c2.get("connections").json()) == [cid]
    assert c2.get(f"connections/{cid}/parameters").json()["port"] == "5901"
    assert c2.get("users/dave/permissions").json()["connectionPermissions"] == {cid: ["READ"]}
    login(g2, "dave", "dave-pw")
    # Old tokens died with the old process; identifiers keep counting.
    assert c2.post("connections", vnc(name="new")).json()["identifier"] == str(int(cid) + 1)


def test_restart_same_object_keeps_state(make_standin, loop_thread, tmp_path):
    g = make_standin(state_file=tmp_path / "s.json")
    c = Client(g, login(g))
    c.post("connections", vnc())
    loop_thread.run(g.stop())
    assert g.tokens == {}
    loop_thread.run(g.start())
    c = Client(g, login(g))
    assert list(c.get("connections").json()) == ["1"]


# -------------------------------------------------------------------- faults


def test_down(guac):
    token = login(guac)
    guac.down = True
    r = requests.post(f"{api(guac)}/tokens", data={"username": ADMIN, "password": ADMIN_PASSWORD},
                      timeout=TIMEOUT)
    assert_error(r, 503, "INTERNAL_ERROR")
    r = requests.get(data_url(guac, "connections"), headers={"Guacamole-Token": token}, timeout=TIMEOUT)
    assert_error(r, 503, "INTERNAL_ERROR")
    assert requests.get(f"{guac.url}/", timeout=TIMEOUT).status_code == 503
    guac.down = False
    r = requests.get(data_url(guac, "connections"), headers={"Guacamole-Token": token}, timeout=TIMEOUT)
    assert r.status_code == 200


def test_fail_times(guac, client):
    guac.fail("POST", r"/connections$", status=500, times=2)
    assert_error(client.post("connections", vnc()), 500, "INTERNAL_ERROR")
    assert_error(client.post("connections", vnc()), 500, "INTERNAL_ERROR")
    assert guac.connections == {}
    # Other methods and paths are unaffected.
    assert client.get("connections").status_code == 200
    r = client.post("connections", vnc())
    assert r.status_code == 200 and r.json()["identifier"] == "1"


def test_drop_resets_the_next_connections_then_answers(guac):
    guac.drop(times=2)
    for _ in range(2):
        with pytest.raises(requests.ConnectionError):
            requests.post(f"{api(guac)}/tokens", data={"username": ADMIN, "password": ADMIN_PASSWORD},
                          timeout=TIMEOUT)
    assert login(guac)


def test_latency_delays_every_answer_until_cleared(guac):
    import time
    guac.latency = 0.4
    started = time.monotonic()
    login(guac)
    assert time.monotonic() - started >= 0.4
    guac.drop(times=5)
    guac.clear_faults()
    assert guac.latency == 0.0
    started = time.monotonic()
    login(guac)
    assert time.monotonic() - started < 0.4


def test_fail_always_and_clear(guac):
    guac.fail("post", r"^/api/tokens$", status=502)
    for _ in range(3):
        r = requests.post(f"{api(guac)}/tokens", data={"username": ADMIN, "password": ADMIN_PASSWORD},
                          timeout=TIMEOUT)
        assert_error(r, 502, "INTERNAL_ERROR")
    guac.fail("GET", r"/users", status=404)
    guac.clear_faults()
    token = login(guac)
    assert requests.get(data_url(guac, "users"), headers={"Guacamole-Token": token},
                        timeout=TIMEOUT).status_code == 200


def test_fail_status_types(guac, client):
    guac.fail("GET", r"/connections", status=404, times=1)
    assert_error(client.get("connections"), 404, "NOT_FOUND")
    guac.fail("GET", r"/connections", status=400, times=1)
    assert_error(client.get("connections"), 400, "BAD_REQUEST")
    guac.fail("*", r"/connections", status=403, times=1)
    assert_error(client.get("connections"), 403, "PERMISSION_DENIED")
    assert client.get("connections").status_code == 200


# ------------------------------------------------------- client URL and page


def test_client_identifier_example():
    assert client_identifier("1", "postgresql") == "MQBjAHBvc3RncmVzcWw"
    assert parse_client_identifier("MQBjAHBvc3RncmVzcWw") == ("1", "c", "postgresql")
    assert parse_client_identifier("MQBjAHBvc3RncmVzcWw=") == ("1", "c", "postgresql")
    assert parse_client_identifier("!!!") is None
    assert parse_client_identifier(base64.urlsafe_b64encode(b"just-text").decode()) is None


def test_connection_url(guac):
    assert guac.url == f"http://127.0.0.1:{guac.port}/guacamole"
    assert guac.connection_url("1") == f"{guac.url}/#/client/MQBjAHBvc3RncmVzcWw"
    fragment = guac.connection_url("12").split("#/client/")[1]
    assert "=" not in fragment
    assert parse_client_identifier(fragment) == ("12", "c", "postgresql")


def test_lab_client_endpoint(guac, client):
    cid = client.post("connections", vnc(name="desk-x", hostname="10.9.8.7", port=5905,
                                         password="top-secret")).json()["identifier"]
    link = guac.connection_url(cid).split("#/client/")[1]
    r = requests.get(f"{guac.url}/_lab/client/{link}", timeout=TIMEOUT)  # no token needed
    assert r.status_code == 200
    assert r.json() == {"identifier": cid, "dataSource": "postgresql", "name": "desk-x",
                        "protocol": "vnc", "hostname": "10.9.8.7", "port": "5905"}
    assert "top-secret" not in r.text

    missing = client_identifier("999", "postgresql")
    r = requests.get(f"{guac.url}/_lab/client/{missing}", timeout=TIMEOUT)
    assert r.status_code == 404
    assert r.json() == {"message": "Connection not found"}
    other_ds = client_identifier(cid, "mysql")
    assert requests.get(f"{guac.url}/_lab/client/{other_ds}", timeout=TIMEOUT).status_code == 404
    r = requests.get(f"{guac.url}/_lab/client/not-a-link", timeout=TIMEOUT)
    assert r.status_code == 400
    assert r.json() == {"message": "Invalid connection link"}


def test_client_page(guac):
    r = requests.get(f"{guac.url}/", timeout=TIMEOUT)
    assert r.status_code == 200
    assert r.headers["Content-Type"].startswith("text/html")
    page = r.text
    assert "Guacamole (lab stand-in)" in page
    for element_id in ("connection-name", "connection-protocol", "connection-host", "status"):
        assert f'id="{element_id}"' in page
    assert "Connection not found" in page and "Invalid connection link" in page
    assert "/_lab/client/" in page
    assert 'data-base="/guacamole"' in page
    assert not re.search(r"""(src|href)=["']https?://""", page)  # no external resources
    # Without the trailing slash, the page redirects like Tomcat does.
    r = requests.get(guac.url, allow_redirects=False, timeout=TIMEOUT)
    assert r.status_code == 302 and r.headers["Location"] == "/guacamole/"


def test_custom_base_path_and_data_source(make_standin):
    g = make_standin(base_path="/remote/", data_source="mysql")
    assert g.url.endswith("/remote")
    token = login(g)
    body = requests.post(f"{api(g)}/tokens", data={"username": ADMIN, "password": ADMIN_PASSWORD},
                         timeout=TIMEOUT).json()
    assert body["dataSource"] == "mysql"
    r = requests.get(f"{api(g)}/session/data/mysql/connections", headers={"Guacamole-Token": token},
                     timeout=TIMEOUT)
    assert r.status_code == 200
    assert g.connection_url("1").endswith("/remote/#/client/" + client_identifier("1", "mysql"))


def test_no_passwords_in_logs(guac, client, caplog):
    caplog.set_level("DEBUG")
    requests.post(f"{api(guac)}/tokens", data={"username": ADMIN, "password": "wrong-pw-123"}, timeout=TIMEOUT)
    client.post("connections", vnc(password="vnc-secret-456"))
    client.put("connections/1", vnc(password="vnc-secret-789"))
    client.post("users", {"username": "erin", "password": "user-secret-000"})
    client.put("users/erin", {"username": "erin", "password": "user-secret-111", "attributes": {}})
    login(guac, "erin", "user-secret-111")
    assert "created connection 1" in caplog.text  # the stand-in does log
    for secret in ("wrong-pw-123", "vnc-secret-456", "vnc-secret-789", "user-secret-000",
                   "user-secret-111", ADMIN_PASSWORD):
        assert secret not in caplog.text


NODE_SHIM = r"""
// Runs the page's inline script with a minimal DOM and prints what it shows.
const fs = require('fs');
const [,, pageFile, base, hash] = process.argv;
const page = fs.readFileSync(pageFile, 'utf8');
const script = page.split('<script>')[1].split('</script>')[0];
const els = {};
function el(id) { return els[id] || (els[id] = { textContent: '', hidden: false, attrs: {},
  setAttribute(k, v) { this.attrs[k] = v; }, getAttribute(k) { return this.attrs[k]; } }); }
global.document = { body: { getAttribute: () => base }, getElementById: el };
global.window = { location: { hash }, addEventListener() {} };
new Function(script)();
const started = Date.now();
const timer = setInterval(() => {
  const state = el('status').attrs['data-state'];
  if (state === 'loading' && Date.now() - started < 5000) return;
  clearInterval(timer);
  const out = { state, hidden: el('connection').hidden };
  for (const id of ['status', 'connection-name', 'connection-protocol', 'connection-host'])
    out[id] = el(id).textContent;
  console.log(JSON.stringify(out));
  process.exit(0);  // the page keeps saying it is open (its own interval)
}, 10);
"""


def test_client_page_script_with_node(guac, client, tmp_path):
    """Runs the page's JavaScript (decoding the fragment, fetching _lab/client) under node."""
    import shutil
    import subprocess

    node = shutil.which("node")
    if node is None or int(subprocess.run([node, "-e", "console.log(process.versions.node.split('.')[0])"],
                                          capture_output=True, text=True).stdout.strip() or 0) < 18:
        pytest.skip("needs node >= 18 (fetch, atob, TextDecoder)")
    client.post("connections", vnc(name="desk <b>1</b>", hostname="10.0.0.5", port=5901))
    (tmp_path / "page.html").write_text(requests.get(f"{guac.url}/", timeout=TIMEOUT).text)
    (tmp_path / "shim.js").write_text(NODE_SHIM)

    def show(fragment):
        # The shim has no document URL to resolve against, so the base is made absolute.
        out = subprocess.run([node, str(tmp_path / "shim.js"), str(tmp_path / "page.html"), guac.url, fragment],
                             capture_output=True, text=True, timeout=TIMEOUT)
        assert out.returncode == 0, out.stderr
        return json.loads(out.stdout)

    found = show("#/client/MQBjAHBvc3RncmVzcWw")
    assert found["state"] == "found" and found["hidden"] is False
    assert found["connection-name"] == "desk <b>1</b>"
    assert found["connection-protocol"] == "vnc"
    assert found["connection-host"] == "10.0.0.5:5901"
    assert show("#/client/MQBjAHBvc3RncmVzcWw=")["state"] == "found"
    missing = show("#/client/" + client_identifier("42", "postgresql"))
    assert (missing["state"], missing["status"], missing["hidden"]) == ("not-found", "Connection not found", True)
    for bad in ("#/client/zzz", "#/client/!!", "#/client/" + base64.urlsafe_b64encode(b"1\0g\0postgresql").decode()):
        invalid = show(bad)
        assert (invalid["state"], invalid["status"]) == ("invalid", "Invalid connection link")
    assert show("")["state"] == "none"


def test_unknown_api_paths(client):
    assert_error(client.get("nonsense"), 404, "NOT_FOUND")
    r = client.request("POST", "connections/1", json={})
    assert r.status_code == 405 and r.json()["type"] == "BAD_REQUEST"
