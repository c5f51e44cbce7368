#!/usr/bin/python
# -*- coding: utf-8 -*-
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""A Guacamole connection, its user and the user's READ permission, in one task.

The role used to make each REST call a task of its own (log in, list, read parameters, create or
update, look the user up, create it, read and grant permissions, log out: up to ten module runs,
about a second each). This module makes the same calls, in the same order, in one process. The
role's action plugin of the same name (action_plugins/guacamole_connection.py) runs this very code
in the Ansible process, with ansible.module_utils.urls.Request (open_url's), so no interpreter is started for
it; `run` is what both call.
"""
from __future__ import annotations

DOCUMENTATION = r"""
---
module: guacamole_connection
short_description: Manage an Apache Guacamole connection through Guacamole's REST API
description:
  - Logs in to Guacamole, makes sure a connection of that name exists under its parent group
    (created, or updated only when its protocol or parameters differ) or does not exist, optionally
    makes sure a user exists and holds READ on it, and always logs out.
  - Supports check mode and diff mode.
options:
  api_url: {description: Guacamole's base URL, without the trailing slash., type: str, required: true}
  api_username: {description: The admin account to log in with., type: str, required: true}
  api_password: {description: Its password., type: str, required: true, no_log: true}
  data_source: {description: The data source connections live in (postgresql, mysql...)., type: str, default: postgresql}
  validate_certs: {description: Check Guacamole's TLS certificate., type: bool, default: true}
  timeout: {description: Seconds for each REST call., type: int, default: 30}
  name: {description: The connection's name (unique within its parent group)., type: str, required: true}
  state: {description: present or absent., type: str, choices: [present, absent], default: present}
  parent: {description: The parent connection group's identifier., type: str, default: ROOT}
  protocol: {description: vnc, rdp or ssh., type: str, default: vnc}
  hostname: {description: The desktop's address (required when present)., type: str}
  port: {description: The desktop's port., type: str}
  password: {description: The VNC or RDP server's password (empty for none)., type: str, default: "", no_log: true}
  parameters: {description: Further connection parameters., type: dict, default: {}}
  user: {description: "The Guacamole user granted READ on the connection (empty for nobody); used as given, so never an
         end user's raw id (the desktop playbooks pass its reserved-namespace name, cds-u-...).", type: str, default: ""}
  manage_user: {description: "Create the user (random password, marked as made by this module) when missing; when absent,
                remove the user if this module made it and it holds no other connection.", type: bool, default: true}
"""

RETURN = r"""
identifier: {description: The connection's identifier (empty when absent)., type: str, returned: always}
ansible_facts:
  description: With state present, guacamole_connection_identifier (the identifier, for the role's callers).
  type: dict
  returned: success with state present
created: {description: Whether the connection was created., type: bool, returned: always}
updated: {description: Whether the connection was re-pointed., type: bool, returned: always}
deleted: {description: Whether the connection was deleted., type: bool, returned: always}
user_created: {description: Whether the user was created., type: bool, returned: always}
user_deleted: {description: Whether the user was removed (absent; only a user this module made)., type: bool, returned: always}
granted: {description: Whether READ was granted., type: bool, returned: always}
"""

import json
import secrets
import string
from urllib.parse import quote, urlencode

from ansible.module_utils.basic import AnsibleModule
from ansible.module_utils.urls import fetch_url


# The attribute a user this module creates carries: only such a user is ever removed by it. One of
# the attributes Guacamole's database extensions keep (auth-jdbc's ModeledUser), shown in its admin pages.
MANAGED_ATTRIBUTE = ("guac-organization", "Managed by the guacamole_connection role")


class GuacamoleError(Exception):
    pass


class Guacamole:
    def __init__(self, params, fetch):
        """`fetch(url, data, headers, method, timeout)` answers as fetch_url does: (response or
        None, info with status (-1: no answer), msg and, for an error status, body)."""
        self.params = params
        self.fetch = fetch
        self.base = params["api_url"].rstrip("/")
        self.token = ""
        self.api = ""

    def call(self, method, path, body=None, form=None, expect=(200,), base=None, what=None):
        """One REST call; returns (status, decoded JSON or None). Raises GuacamoleError when
        Guacamole did not answer, or answered a status not in `expect` (None: any answer will do),
        naming the call and quoting Guacamole's message."""
        headers = {}
        data = None
        if form is not None:
            data = urlencode(form)
            headers["Content-Type"] = "application/x-www-form-urlencoded"
        elif body is not None:
            data = json.dumps(body)
            headers["Content-Type"] = "application/json"
        if self.token:
            headers["Guacamole-Token"] = self.token
        url = (base if base is not None else self.api) + path
        resp, info = self.fetch(url, data, headers, method, self.params["timeout"])
        status = info.get("status", -1)
        # fetch_url answers an error status with the HTTPError (already read) as the response and
        # the body in info: Guacamole's message is there.
        raw = info["body"] if "body" in info else (resp.read() if resp else b"")
        payload = None
        if raw:
            try:
                payload = json.loads(raw)
            except ValueError:
                payload = None
        label = what or f"{method} {path}"
        if status == -1:
            raise GuacamoleError(f"Guacamole at {self.base} did not answer {label}: {info.get('msg', '')}")
        if expect is not None and status not in expect:
            message = payload.get("message") if isinstance(payload, dict) else info.get("msg", "")
            raise GuacamoleError(f"Guacamole refused {label} (HTTP {status}): {message}")
        return status, payload

    def login(self):
        p = self.params
        status, answer = self.call("POST", "/api/tokens", form={"username": p["api_username"],
                                                                 "password": p["api_password"]},
                                   expect=None, base=self.base, what="the login")
        if status != 200 or not isinstance(answer, dict) or "authToken" not in answer:
            message = answer.get("message") if isinstance(answer, dict) else "no answer"
            raise GuacamoleError(f"Guacamole login as {p['api_username']} at {self.base} failed "
                                 f"(HTTP {status}): {message}")
        self.token = answer["authToken"]
        if p["data_source"] not in (answer.get("availableDataSources") or []):
            raise GuacamoleError(f"Guacamole has no data source '{p['data_source']}' for {p['api_username']}; "
                                 f"available: {', '.join(answer.get('availableDataSources') or [])}")
        self.api = f"{self.base}/api/session/data/{quote(p['data_source'], safe='')}"

    def logout(self):
        """Never fails: an expired or unknown token is as good as logged out."""
        if not self.token:
            return
        token, self.token = self.token, ""
        try:
            self.fetch(f"{self.base}/api/tokens/{quote(token, safe='')}", None, {}, "DELETE",
                       self.params["timeout"])
        except Exception:  # noqa: BLE001 - best effort, as documented
            pass

    def find(self):
        p = self.params
        _, listing = self.call("GET", "/connections", what="the connection list")
        for conn in (listing or {}).values():
            if conn.get("name") == p["name"] and conn.get("parentIdentifier") == p["parent"]:
                return conn
        return None


def wanted_parameters(p):
    wanted = {k: str(v) for k, v in (p["parameters"] or {}).items()}
    wanted["hostname"] = str(p["hostname"])
    wanted["port"] = str(p["port"] if p["port"] not in (None, "") else (3389 if p["protocol"] == "rdp" else 5900))
    if p["password"]:
        wanted["password"] = p["password"]
    return wanted


def present(p, check_mode, guac, result):
    wanted = wanted_parameters(p)
    existing = guac.find()
    if existing is None:
        result["changed"] = result["created"] = True
        result["diff"] = {"before": {}, "after": {"name": p["name"], "protocol": p["protocol"],
                                                   "hostname": wanted["hostname"], "port": wanted["port"]}}
        if check_mode:
            return
        _, made = guac.call("POST", "/connections", body={
            "name": p["name"], "parentIdentifier": p["parent"], "protocol": p["protocol"],
            "parameters": wanted, "attributes": {}}, what=f"creating the connection {p['name']}")
        result["identifier"] = str((made or {}).get("identifier", ""))
        if not result["identifier"]:
            raise GuacamoleError(f"Guacamole created {p['name']} but answered no identifier")
    else:
        ident = str(existing["identifier"])
        result["identifier"] = ident
        _, current = guac.call("GET", f"/connections/{quote(ident, safe='')}/parameters",
                               what=f"reading the parameters of {p['name']}")
        current = current or {}
        merged = dict(current, **wanted)
        if existing.get("protocol") != p["protocol"] or merged != current:
            result["changed"] = result["updated"] = True
            result["diff"] = {"before": {"protocol": existing.get("protocol"), "hostname": current.get("hostname"),
                                         "port": current.get("port")},
                              "after": {"protocol": p["protocol"], "hostname": merged["hostname"],
                                        "port": merged["port"]}}
            if not check_mode:
                guac.call("PUT", f"/connections/{quote(ident, safe='')}", body={
                    "identifier": ident, "name": p["name"], "parentIdentifier": p["parent"],
                    "protocol": p["protocol"], "parameters": merged,
                    "attributes": existing.get("attributes") or {}},
                    expect=(200, 204), what=f"pointing {p['name']} at {wanted['hostname']}")
    if p["user"]:
        grant(p, check_mode, guac, result, fresh_connection=result["created"])


def grant(p, check_mode, guac, result, fresh_connection):
    user = quote(p["user"], safe="")
    status, _ = guac.call("GET", f"/users/{user}", expect=(200, 404), what=f"looking up the user {p['user']}")
    exists = status == 200
    if not exists:
        if not p["manage_user"]:
            raise GuacamoleError(
                f"Guacamole user {p['user']} does not exist and guacamole_connection_manage_user is false "
                "(with SSO the user appears at first login, or needs creating by the identity integration)")
        result["changed"] = result["user_created"] = True
        if not check_mode:
            alphabet = string.ascii_letters + string.digits
            guac.call("POST", "/users", body={"username": p["user"],
                                              "password": "".join(secrets.choice(alphabet) for _ in range(32)),
                                              "attributes": {MANAGED_ATTRIBUTE[0]: MANAGED_ATTRIBUTE[1]}},
                      what=f"creating the user {p['user']}")
    ident = result["identifier"]
    held = []
    # Nobody holds a permission on a connection or as a user made in this very run: grant at once.
    if exists and not fresh_connection:
        _, perms = guac.call("GET", f"/users/{user}/permissions", what=f"reading the permissions of {p['user']}")
        held = ((perms or {}).get("connectionPermissions") or {}).get(ident, [])
    if "READ" not in held:
        result["changed"] = result["granted"] = True
        if not check_mode:
            guac.call("PATCH", f"/users/{user}/permissions",
                      body=[{"op": "add", "path": f"/connectionPermissions/{ident}", "value": "READ"}],
                      expect=(200, 204), what=f"granting READ on {p['name']} to {p['user']}")


def absent(p, check_mode, guac, result):
    existing = guac.find()
    if existing is not None:
        result["changed"] = result["deleted"] = True
        result["diff"] = {"before": {"name": p["name"], "identifier": str(existing["identifier"])},
                          "after": {}}
        if not check_mode:
            guac.call("DELETE", f"/connections/{quote(str(existing['identifier']), safe='')}", expect=(200, 204),
                      what=f"deleting the connection {p['name']}")
    if p["user"] and p["manage_user"]:
        forget_user(p, check_mode, guac, result, str(existing["identifier"]) if existing is not None else None)


def forget_user(p, check_mode, guac, result, gone):
    """Remove the user once it holds no connection but `gone` (the one just deleted), and only when
    this module made it (MANAGED_ATTRIBUTE): a user made by anyone else is never touched."""
    user = quote(p["user"], safe="")
    status, found = guac.call("GET", f"/users/{user}", expect=(200, 404), what=f"looking up the user {p['user']}")
    if status != 200 or ((found or {}).get("attributes") or {}).get(MANAGED_ATTRIBUTE[0]) != MANAGED_ATTRIBUTE[1]:
        return
    _, perms = guac.call("GET", f"/users/{user}/permissions", what=f"reading the permissions of {p['user']}")
    held = {ident for ident, granted in ((perms or {}).get("connectionPermissions") or {}).items()
            if granted and ident != gone}
    if held:
        return
    result["changed"] = result["user_deleted"] = True
    if not check_mode:
        guac.call("DELETE", f"/users/{user}", expect=(200, 204, 404), what=f"removing the user {p['user']}")


ARGUMENT_SPEC = dict(
    api_url=dict(type="str", required=True),
    api_username=dict(type="str", required=True),
    api_password=dict(type="str", required=True, no_log=True),
    data_source=dict(type="str", default="postgresql"),
    validate_certs=dict(type="bool", default=True),
    timeout=dict(type="int", default=30),
    name=dict(type="str", required=True),
    state=dict(type="str", choices=["present", "absent"], default="present"),
    parent=dict(type="str", default="ROOT"),
    protocol=dict(type="str", default="vnc"),
    hostname=dict(type="str"),
    port=dict(type="str"),
    password=dict(type="str", default="", no_log=True),
    parameters=dict(type="dict", default={}),
    user=dict(type="str", default=""),
    manage_user=dict(type="bool", default=True),
)


def run(p, check_mode, fetch):
    """The task: (result, error message or None). `p`: the validated parameters."""
    result = dict(changed=False, identifier="", created=False, updated=False, deleted=False,
                  user_created=False, granted=False, user_deleted=False)
    if p["state"] == "present" and not p["hostname"]:
        return result, f"hostname (the desktop's address) is required to register {p['name']}"
    guac = Guacamole(p, fetch)
    error = None
    try:
        guac.login()
        (present if p["state"] == "present" else absent)(p, check_mode, guac, result)
    except GuacamoleError as exc:
        error = str(exc)
    finally:
        guac.logout()
    if error is None and p["state"] == "present":
        # The role's output (tasks/present.yml reads no register: the fact is set here).
        result["ansible_facts"] = {"guacamole_connection_identifier": result["identifier"]}
    return result, error


def main():
    module = AnsibleModule(argument_spec=ARGUMENT_SPEC, supports_check_mode=True)

    def fetch(url, data, headers, method, timeout):
        return fetch_url(module, url, data=data, headers=headers, method=method, timeout=timeout)

    result, error = run(module.params, module.check_mode, fetch)
    if error:
        module.fail_json(msg=error, **result)
    module.exit_json(**result)


if __name__ == "__main__":
    main()
