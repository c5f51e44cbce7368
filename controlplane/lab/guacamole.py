"""The lab's stand-in for Apache Guacamole (REST API and a small client page).

It answers the parts of Guacamole's REST API that the control plane and its
Ansible role use, in the shapes a real Guacamole 1.4-1.6 with the PostgreSQL
(JDBC) authentication extension gives (see /work/shared/notes/guacamole.md and
guacamole-client's ``rest`` and ``auth-jdbc`` sources):

* ``POST /api/tokens`` (form ``username``/``password``) and
  ``DELETE /api/tokens/{token}``; the token goes in the ``Guacamole-Token``
  header or the ``token`` query parameter (the header wins); bad login and bad
  token are **403**.
* ``/api/session/data/{dataSource}/connections`` (map by identifier, no
  parameters), ``connections/{id}`` (GET/PUT/DELETE), ``connections/{id}/
  parameters``, ``connectionGroups/ROOT/tree``, ``users``, ``users/{u}``,
  ``users/{u}/permissions`` (GET, JSON-Patch PATCH), ``self``,
  ``activeConnections``.
* Errors carry Guacamole's body: ``{"message", "translatableMessage",
  "statusCode", "expected", "patches", "type"}``.
* guacamole-auth-json logins (``data``, with ``json_secret``): as with the
  JDBC extension beside it, the session is also the enabled database user of
  the same name in the database's data source, with all its permissions (a
  ``guacadmin`` there administers Guacamole), or a skeleton user with none.
  Names compare case-sensitively (PostgreSQL's default), or ignoring case
  with ``case_sensitive_usernames=False`` (MySQL's). A user name over 128
  characters cannot be stored (500), and an encoded ``/`` in a path is
  refused with 400, as Tomcat does.

Lab-only extras, not in a real Guacamole:

* ``GET {base_path}/`` serves a small page that reads ``#/client/{id}`` and
  shows which connection the link points at (a real Guacamole would show the
  remote desktop there).
* ``GET {base_path}/_lab/client/{id}``: JSON about the connection a client
  link points at (no token; never the password). The page asks it again every
  20 s while it is open, and ``activeConnections`` lists the connection as
  active until ACTIVE_TIMEOUT after the last time: the lab's stand-in for a
  user connected through Guacamole (what the idle policy reads).
* ``open_session()`` / ``close_session()``: an active connection for tests.
* Fault switches (``down``, ``fail()``) for tests.

It runs inside whatever asyncio loop calls :meth:`GuacamoleStandIn.start`. Its parts: this module
(the REST API's resources, the lab's client routes, state and fault switches),
guacamole_sessions.py (its authentication: tokens, password and auth-json logins, permission
checks), guacamole_auth_json.py (reading auth-json data), guacamole_model.py (Guacamole's objects:
errors, identifiers, attributes, permissions, password hashes) and static/guacamole-client.html
(the client page).
"""

from __future__ import annotations

import argparse
import asyncio
import copy
import html
import json
import logging
import os
import re
import tempfile
import threading
import time
import uuid
from pathlib import Path
from typing import Any

from aiohttp import web

from .guacamole_model import (
    ACTIVE_TIMEOUT,
    ADMIN_SYSTEM_PERMISSIONS,
    CONNECTION_ATTRIBUTES,
    JDBC_DATA_SOURCES,
    OBJECT_PERMISSION_KEYS,
    OBJECT_PERMISSIONS,
    PARAMETER_VALUE_LIMIT,
    PROTOCOLS,
    SKELETON_PREFIX,
    STATE_VERSION,
    SYSTEM_PERMISSIONS,
    TOKEN_TIMEOUT,
    USER_ATTRIBUTES,
    USERNAME_LIMIT,
    GuacamoleError,
    bad_request,
    check_password,
    client_identifier,
    coerce_map,
    coerce_value,
    empty_permissions,
    error_body,
    error_type_for_status,
    hash_password,
    internal_error,
    normalize_connection_attributes,
    normalize_user_attributes,
    not_found,
    parse_client_identifier,
    permission_denied,
)
from .guacamole_sessions import SessionsMixin, json_response, no_content
from .http import base_url, run_in_foreground, serve, take_fault

log = logging.getLogger("controlplane.lab.guacamole")

# --------------------------------------------------------------------------
# The stand-in


class GuacamoleStandIn(SessionsMixin):
    """An in-process Guacamole REST API stand-in served by aiohttp."""

    def __init__(self, host: str = "127.0.0.1", port: int = 8090, username: str = "guacadmin",
                 password: str = "guacadmin", data_source: str = "postgresql",
                 state_file: str | os.PathLike | None = None, base_path: str = "/guacamole",
                 json_secret: str = "", case_sensitive_usernames: bool = True):
        self.host = host
        # postgresql-case-sensitive-usernames (true by default; MySQL's default compares ignoring case).
        self.case_sensitive_usernames = case_sensitive_usernames
        # guacamole-auth-json (data source "json"): data signed and encrypted with this key logs in.
        self.json_secret = json_secret
        # The lab's VM screens (lab/screens.py), when the machine has them: the page shows them by noVNC.
        self.screens = None
        self._json_used: dict[str, float] = {}  # single-use data seen: its digest -> when it expires (epoch s)
        self.port = port
        self.username = username
        self._admin_password = password
        self.data_source = data_source
        self.state_file = os.fspath(state_file) if state_file is not None else None
        base_path = "/" + base_path.strip("/") if base_path.strip("/") else ""
        self.base_path = base_path

        # State, inspectable by tests.
        self.connections: dict[str, dict] = {}
        self.users: dict[str, dict] = {}
        self.permissions: dict[str, dict] = {}
        self.next_identifier = 1
        self._credentials: dict[str, dict | None] = {}

        # Sessions: token -> {"username", "last_access" (monotonic)}; lost on restart as in Guacamole.
        self.tokens: dict[str, dict] = {}
        self.token_timeout = TOKEN_TIMEOUT

        # Active connections: uuid -> {"connectionIdentifier", "username", "remoteHost",
        # "startDate" (ms), "seen" (monotonic; None: until close_session)}.
        self.active: dict[str, dict] = {}
        self.active_timeout = ACTIVE_TIMEOUT

        # Fault switches: down (503 to everything), fail() (an error status to matching requests),
        # latency (seconds added before every answer), drop() (reset the next connections unanswered).
        self.down = False
        self.latency = 0.0
        self._drops = 0
        self._faults: list[dict] = []
        self._faults_lock = threading.Lock()

        self._runner: web.AppRunner | None = None
        self._loaded = False

    # ------------------------------------------------------------------ API

    @property
    def url(self) -> str:
        return base_url(self.host, self.port) + self.base_path

    def connection_url(self, identifier: str) -> str:
        return f"{self.url}/#/client/{client_identifier(str(identifier), self.data_source)}"

    @property
    def available_data_sources(self) -> list[str]:
        if self.data_source in JDBC_DATA_SOURCES:
            return [self.data_source, f"{self.data_source}-shared"]
        return [self.data_source]

    def open_session(self, identifier: str, username: str = "lab-user", remote_host: str = "127.0.0.1") -> str:
        """Someone is connected to connection `identifier` until close_session (a test switch)."""
        key = str(uuid.uuid4())
        self.active[key] = {"connectionIdentifier": str(identifier), "username": username, "remoteHost": remote_host,
                            "startDate": int(time.time() * 1000), "seen": None}
        return key

    def close_session(self, key: str) -> None:
        self.active.pop(key, None)

    def _touch_page_session(self, identifier: str) -> None:
        """The client page of `identifier` is open: active for active_timeout more seconds."""
        now = time.monotonic()
        for entry in self.active.values():
            if entry["connectionIdentifier"] == identifier and entry["seen"] is not None:
                entry["seen"] = now
                return
        self.active[str(uuid.uuid4())] = {"connectionIdentifier": identifier, "username": "lab-page",
                                          "remoteHost": "127.0.0.1", "startDate": int(time.time() * 1000),
                                          "seen": now}

    def _active_view(self) -> dict:
        now = time.monotonic()
        for key in [k for k, e in self.active.items()
                    if (e["seen"] is not None and now - e["seen"] > self.active_timeout)
                    or e["connectionIdentifier"] not in self.connections]:
            del self.active[key]
        return {key: {"identifier": key, "connectionIdentifier": e["connectionIdentifier"],
                      "startDate": e["startDate"], "remoteHost": e["remoteHost"], "username": e["username"],
                      "connectable": True}
                for key, e in self.active.items()}

    def fail(self, method: str, path_regex: str, status: int = 500, times: int | None = None) -> None:
        """Answer `status` to the next `times` (None: all) matching requests.

        `method` is matched case-insensitively ("*" matches any); `path_regex`
        is searched in the request path after base_path (e.g. "/api/tokens").
        """
        if times is not None and times <= 0:
            return
        with self._faults_lock:
            self._faults.append({"method": method.upper(), "regex": re.compile(path_regex),
                                 "status": int(status), "times": times})

    def drop(self, times: int = 1) -> None:
        """Reset the next `times` connections without an answer (a proxy or network dropping them)."""
        with self._faults_lock:
            self._drops += times

    def clear_faults(self) -> None:
        with self._faults_lock:
            self._faults.clear()
            self._drops = 0
        self.latency = 0.0

    async def start(self) -> None:
        if self._runner is not None:
            return
        if not self._loaded:
            self._load_state()
            self._loaded = True
        self._ensure_admin()
        app = web.Application(middlewares=[self._middleware], client_max_size=4 * 1024 * 1024)
        self._add_routes(app)
        self._runner, self.port = await serve(app, self.host, self.port)
        log.info("Guacamole stand-in listening on %s (data source %s)", self.url, self.data_source)

    async def stop(self) -> None:
        runner, self._runner = self._runner, None
        if runner is not None:
            await runner.cleanup()
            log.info("Guacamole stand-in on %s stopped", self.url)
        # A restarted Guacamole has forgotten every session.
        self.tokens.clear()

    # ------------------------------------------------------------ state file

    def _load_state(self) -> None:
        if not self.state_file or not os.path.exists(self.state_file):
            return
        with open(self.state_file, encoding="utf-8") as fh:
            data = json.load(fh)
        if data.get("version") != STATE_VERSION:
            raise ValueError(f"{self.state_file}: unsupported state version {data.get('version')!r}")
        if data.get("dataSource", self.data_source) != self.data_source:
            raise ValueError(f"{self.state_file}: holds data source {data.get('dataSource')!r}, "
                             f"not {self.data_source!r}")
        self.connections = data.get("connections", {})
        self.users = data.get("users", {})
        self.permissions = data.get("permissions", {})
        self._credentials = data.get("credentials", {})
        self.next_identifier = int(data.get("nextIdentifier", 1))
        if self.connections:
            self.next_identifier = max(self.next_identifier,
                                       max(int(i) for i in self.connections) + 1)
        log.info("Guacamole stand-in loaded %d connection(s), %d user(s) from %s",
                 len(self.connections), len(self.users), self.state_file)

    def _save_state(self) -> None:
        if not self.state_file:
            return
        data = {
            "version": STATE_VERSION,
            "dataSource": self.data_source,
            "nextIdentifier": self.next_identifier,
            "connections": self.connections,
            "users": self.users,
            "permissions": self.permissions,
            "credentials": self._credentials,
        }
        directory = os.path.dirname(os.path.abspath(self.state_file))
        os.makedirs(directory, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=".guacamole-state.", suffix=".tmp", dir=directory)
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as fh:
                json.dump(data, fh, indent=1, sort_keys=True)
                fh.flush()
                os.fsync(fh.fileno())
            os.chmod(tmp, 0o600)
            os.replace(tmp, self.state_file)
        except BaseException:
            try:
                os.unlink(tmp)
            except FileNotFoundError:
                pass
            raise

    def _ensure_admin(self) -> None:
        """The constructor's admin always exists and always has the constructor's password."""
        name = self.username
        if name not in self.users:
            self.users[name] = {"username": name, "attributes": normalize_user_attributes({})}
        perms = self.permissions.setdefault(name, empty_permissions())
        for key in OBJECT_PERMISSION_KEYS:
            perms.setdefault(key, {})
        perms.setdefault("systemPermissions", [])
        for perm in ADMIN_SYSTEM_PERMISSIONS:
            if perm not in perms["systemPermissions"]:
                perms["systemPermissions"].append(perm)
        own = perms["userPermissions"].setdefault(name, [])
        for perm in ("READ", "UPDATE", "ADMINISTER"):
            if perm not in own:
                own.append(perm)
        if not check_password(self._admin_password, self._credentials.get(name)):
            self._credentials[name] = hash_password(self._admin_password)
        self._save_state()

    # ------------------------------------------------------------ middleware

    def _take_fault(self, method: str, path: str) -> dict | None:
        with self._faults_lock:
            return take_fault(self._faults, lambda f: f["method"] in ("*", method) and f["regex"].search(path))

    @web.middleware
    async def _middleware(self, request: web.Request, handler):
        path = request.path
        rel = path[len(self.base_path):] if path.startswith(self.base_path) else path
        if self.latency:
            await asyncio.sleep(self.latency)
        with self._faults_lock:
            dropped = self._drops > 0
            if dropped:
                self._drops -= 1
        if dropped:
            log.debug("%s %s -> connection reset (injected)", request.method, path)
            if request.transport is not None:
                request.transport.close()
            raise ConnectionResetError("Guacamole stand-in: connection dropped")
        if self.down:
            log.debug("%s %s -> 503 (down)", request.method, path)
            return json_response(error_body("INTERNAL_ERROR", "Service unavailable (lab stand-in is down)."),
                         status=503)
        if "%2f" in request.raw_path.split("?", 1)[0].lower():
            # Tomcat (encodedSolidusHandling="reject", its default) refuses an encoded "/" in the path
            # before Guacamole sees the request: e.g. /users/a%2Fb for a user named "a/b".
            return web.Response(status=400, text="HTTP Status 400 - Bad Request", content_type="text/plain")
        fault = self._take_fault(request.method.upper(), rel)
        if fault is not None:
            status = fault["status"]
            log.debug("%s %s -> %d (injected fault)", request.method, path, status)
            return json_response(error_body(error_type_for_status(status),
                                    f"Injected failure (HTTP {status})."), status=status)
        try:
            response = await handler(request)
        except GuacamoleError as exc:
            log.debug("%s %s -> %d %s: %s", request.method, path, exc.status, exc.type, exc.message)
            return json_response(exc.body(), status=exc.status)
        except web.HTTPException as exc:
            if exc.status >= 400 and rel.startswith("/api/"):
                message = {404: "Not found.", 405: "Method not allowed."}.get(exc.status, exc.reason)
                return json_response(error_body(error_type_for_status(exc.status), message),
                             status=exc.status)
            raise
        except Exception:  # pragma: no cover - a bug in the stand-in
            log.exception("%s %s failed", request.method, path)
            return json_response(error_body("INTERNAL_ERROR", "Unexpected internal error."), status=500)
        log.debug("%s %s -> %d", request.method, path, response.status)
        return response

    # ---------------------------------------------------------------- routes

    def _add_routes(self, app: web.Application) -> None:
        p = self.base_path
        d = p + "/api/session/data/{ds}"
        r = app.router
        if p:
            r.add_get(p, self._redirect_to_page)
        r.add_get(p + "/", self._page)
        r.add_get(p + "/_lab/client/{client_id}", self._lab_client)
        r.add_get(p + "/_lab/vnc/{client_id}", self._vnc_relay)
        r.add_get(p + "/_lab/novnc/{path:.+}", self._novnc_file)
        r.add_post(p + "/api/tokens", self._login)
        r.add_delete(p + "/api/tokens/{token}", self._logout)

        r.add_get(d + "/connections", self._list_connections)
        r.add_post(d + "/connections", self._create_connection)
        r.add_patch(d + "/connections", self._patch_connections)
        r.add_get(d + "/connections/{id}", self._get_connection)
        r.add_put(d + "/connections/{id}", self._update_connection)
        r.add_delete(d + "/connections/{id}", self._delete_connection)
        r.add_get(d + "/connections/{id}/parameters", self._connection_parameters)
        r.add_get(d + "/connections/{id}/history", self._connection_history)
        r.add_get(d + "/connections/{id}/sharingProfiles", self._connection_sharing_profiles)

        r.add_get(d + "/connectionGroups", self._list_groups)
        r.add_get(d + "/connectionGroups/{gid}", self._get_group)
        r.add_get(d + "/connectionGroups/{gid}/tree", self._group_tree)

        r.add_get(d + "/users", self._list_users)
        r.add_post(d + "/users", self._create_user)
        r.add_get(d + "/users/{user}", self._get_user)
        r.add_put(d + "/users/{user}", self._update_user)
        r.add_delete(d + "/users/{user}", self._delete_user)
        r.add_get(d + "/users/{user}/permissions", self._get_permissions)
        r.add_get(d + "/users/{user}/effectivePermissions", self._get_permissions)
        r.add_patch(d + "/users/{user}/permissions", self._patch_permissions)
        r.add_get(d + "/users/{user}/userGroups", self._empty_list)

        r.add_get(d + "/self", self._get_self)
        r.add_get(d + "/self/permissions", self._get_self_permissions)
        r.add_get(d + "/self/effectivePermissions", self._get_self_permissions)

        r.add_get(d + "/activeConnections", self._active_connections)
        r.add_get(d + "/userGroups", self._empty_map)
        r.add_get(d + "/sharingProfiles", self._empty_map)


    # ---------------------------------------------------------- connections

    def _connection_view(self, conn: dict) -> dict:
        """APIConnection as listed: without parameters."""
        return {key: copy.deepcopy(value) for key, value in conn.items() if key != "parameters"}

    def _find_connection(self, user: str, identifier: str) -> dict:
        conn = self.connections.get(identifier)
        if conn is None or not self._has(user, "connectionPermissions", identifier, "READ"):
            raise not_found(f"Not found: \"{identifier}\"")
        return conn

    def _check_connection_body(self, body: Any, *, creating: bool, identifier: str | None = None) -> dict:
        if not isinstance(body, dict):
            verb = "creating" if creating else "updating"
            raise bad_request(f"Data must be submitted when {verb} objects.")
        name = body.get("name")
        if not isinstance(name, str) or not name.strip():
            raise bad_request("Connection names must not be blank.")
        parent = body.get("parentIdentifier")
        parent = "ROOT" if parent in (None, "") else str(parent)
        if parent != "ROOT":
            raise bad_request(f"No such connection group: \"{parent}\" "
                              "(the lab stand-in only has the ROOT group).")
        protocol = body.get("protocol")
        if protocol not in PROTOCOLS:
            raise bad_request(f"Unsupported protocol: \"{protocol}\" "
                              f"(the lab stand-in accepts {', '.join(PROTOCOLS)}).")
        parameters = coerce_map(body.get("parameters"), "parameters")
        for pname, value in parameters.items():
            if value is not None and len(value) > PARAMETER_VALUE_LIMIT:
                raise bad_request(
                    f"The value provided for connection parameter \"{pname}\" exceeds the maximum "
                    "allowed length.",
                    translatable={"key": "CONNECTION_PARAMETERS.DATABASE_PARAMETER_VALUE_TOO_LONG",
                                  "variables": {"MAX_SIZE": PARAMETER_VALUE_LIMIT,
                                                "PARAMETER_NAME": pname}})
        attributes = coerce_map(body.get("attributes"), "attributes")
        for other_id, other in self.connections.items():
            if other_id != identifier and other["parentIdentifier"] == parent and other["name"] == name:
                raise bad_request(f"The connection \"{name}\" already exists.")
        return {"name": name, "parentIdentifier": parent, "protocol": protocol,
                "parameters": parameters, "attributes": attributes}

    async def _read_json(self, request: web.Request) -> Any:
        raw = await request.read()
        if not raw:
            return None
        try:
            return json.loads(raw)
        except (ValueError, UnicodeDecodeError):
            raise bad_request("Malformed JSON in request body.") from None

    async def _list_connections(self, request: web.Request) -> web.Response:
        user = self._user_and_ds(request)
        wanted = request.query.getall("permission", [])
        out = {}
        for identifier, conn in self.connections.items():
            if not self._has(user, "connectionPermissions", identifier, "READ"):
                continue
            if wanted and not self._is_admin(user) and not any(
                    self._has(user, "connectionPermissions", identifier, p) for p in wanted):
                continue
            out[identifier] = self._connection_view(conn)
        return json_response(out)

    async def _create_connection(self, request: web.Request) -> web.Response:
        user = self._user_and_ds(request)
        body = await self._read_json(request)
        if not self._is_admin(user) and "CREATE_CONNECTION" not in \
                self.permissions.get(user, {}).get("systemPermissions", []):
            raise permission_denied()
        fields = self._check_connection_body(body, creating=True)
        identifier = str(self.next_identifier)
        self.next_identifier += 1
        stored = {
            "name": fields["name"],
            "identifier": identifier,
            "parentIdentifier": fields["parentIdentifier"],
            "protocol": fields["protocol"],
            "parameters": {k: v for k, v in fields["parameters"].items() if v},
            "attributes": normalize_connection_attributes(fields["attributes"]),
            "activeConnections": 0,
        }
        self.connections[identifier] = stored
        # The creator is granted READ, UPDATE, DELETE and ADMINISTER on what it creates.
        perms = self.permissions.setdefault(user, empty_permissions())
        perms["connectionPermissions"][identifier] = list(OBJECT_PERMISSIONS)
        self._save_state()
        log.info("Guacamole stand-in: created connection %s %r (%s)", identifier, stored["name"],
                 stored["protocol"])
        # DirectoryResource.createObject answers the submitted object with its identifier set.
        echo = {
            "name": fields["name"],
            "identifier": identifier,
            "parentIdentifier": fields["parentIdentifier"],
            "protocol": fields["protocol"],
            "parameters": fields["parameters"],
            "attributes": {k: v for k, v in fields["attributes"].items() if k in CONNECTION_ATTRIBUTES},
            "activeConnections": 0,
        }
        return json_response(echo)

    async def _get_connection(self, request: web.Request) -> web.Response:
        user = self._user_and_ds(request)
        conn = self._find_connection(user, request.match_info["id"])
        return json_response(self._connection_view(conn))

    async def _update_connection(self, request: web.Request) -> web.Response:
        user = self._user_and_ds(request)
        identifier = request.match_info["id"]
        conn = self._find_connection(user, identifier)
        body = await self._read_json(request)
        if not self._has(user, "connectionPermissions", identifier, "UPDATE"):
            raise permission_denied()
        fields = self._check_connection_body(body, creating=False, identifier=identifier)
        conn.update({
            "name": fields["name"],
            "parentIdentifier": fields["parentIdentifier"],
            "protocol": fields["protocol"],
            "parameters": {k: v for k, v in fields["parameters"].items() if v},
            "attributes": normalize_connection_attributes(fields["attributes"]),
        })
        self._save_state()
        log.info("Guacamole stand-in: updated connection %s %r (%s)", identifier, conn["name"],
                 conn["protocol"])
        return no_content()

    def _remove_connection(self, identifier: str) -> None:
        del self.connections[identifier]
        for perms in self.permissions.values():
            perms.get("connectionPermissions", {}).pop(identifier, None)

    async def _delete_connection(self, request: web.Request) -> web.Response:
        user = self._user_and_ds(request)
        identifier = request.match_info["id"]
        self._find_connection(user, identifier)
        if not self._has(user, "connectionPermissions", identifier, "DELETE"):
            raise permission_denied()
        self._remove_connection(identifier)
        self._save_state()
        log.info("Guacamole stand-in: deleted connection %s", identifier)
        return no_content()

    async def _patch_connections(self, request: web.Request) -> web.Response:
        """DirectoryResource.patchObjects: only "remove" of "/{identifier}"."""
        user = self._user_and_ds(request)
        patches = await self._read_json(request)
        if not isinstance(patches, list):
            raise bad_request("A JSON Patch list must be submitted.")
        for patch in patches:
            if not isinstance(patch, dict) or patch.get("op") != "remove":
                raise GuacamoleError(501, "INTERNAL_ERROR", "Only the \"remove\" operation is supported.")
            path = patch.get("path")
            if not isinstance(path, str) or not path.startswith("/"):
                raise bad_request("Patch paths must start with \"/\".")
            identifier = path[1:]
            if identifier in self.connections:
                if not self._has(user, "connectionPermissions", identifier, "DELETE"):
                    raise permission_denied()
                self._remove_connection(identifier)
                log.info("Guacamole stand-in: deleted connection %s", identifier)
        self._save_state()
        return no_content()

    async def _connection_parameters(self, request: web.Request) -> web.Response:
        user = self._user_and_ds(request)
        identifier = request.match_info["id"]
        conn = self._find_connection(user, identifier)
        if not self._has(user, "connectionPermissions", identifier, "UPDATE"):
            return json_response({})
        return json_response(dict(conn["parameters"]))

    async def _connection_history(self, request: web.Request) -> web.Response:
        user = self._user_and_ds(request)
        self._find_connection(user, request.match_info["id"])
        return json_response([])

    async def _connection_sharing_profiles(self, request: web.Request) -> web.Response:
        user = self._user_and_ds(request)
        self._find_connection(user, request.match_info["id"])
        return json_response({})

    # ---------------------------------------------------- connection groups

    def _root_group(self) -> dict:
        return {"name": "ROOT", "identifier": "ROOT", "type": "ORGANIZATIONAL",
                "activeConnections": 0, "attributes": {}}

    async def _list_groups(self, request: web.Request) -> web.Response:
        self._user_and_ds(request)
        return json_response({})

    async def _get_group(self, request: web.Request) -> web.Response:
        self._user_and_ds(request)
        gid = request.match_info["gid"]
        if gid != "ROOT":
            raise not_found(f"Not found: \"{gid}\"")
        return json_response(self._root_group())

    async def _group_tree(self, request: web.Request) -> web.Response:
        user = self._user_and_ds(request)
        gid = request.match_info["gid"]
        if gid != "ROOT":
            raise not_found(f"Not found: \"{gid}\"")
        tree = self._root_group()
        children = [self._connection_view(conn)
                    for identifier, conn in sorted(self.connections.items(), key=lambda kv: int(kv[0]))
                    if self._has(user, "connectionPermissions", identifier, "READ")]
        if children:  # Guacamole leaves childConnections out when there are none
            tree["childConnections"] = children
        return json_response(tree)

    # ---------------------------------------------------------------- users

    def _user_view(self, username: str) -> dict:
        if username.startswith(SKELETON_PREFIX):  # an auth-json session's skeleton user: nothing stored
            return {"username": username[len(SKELETON_PREFIX):], "attributes": normalize_user_attributes({})}
        return copy.deepcopy(self.users[username])

    def _find_user(self, user: str, username: str) -> str:
        if username not in self.users or not (
                username == user or self._has(user, "userPermissions", username, "READ")):
            raise not_found(f"Not found: \"{username}\"")
        return username

    async def _list_users(self, request: web.Request) -> web.Response:
        user = self._user_and_ds(request)
        return json_response({name: self._user_view(name) for name in self.users
                      if name == user or self._has(user, "userPermissions", name, "READ")})

    async def _create_user(self, request: web.Request) -> web.Response:
        user = self._user_and_ds(request)
        body = await self._read_json(request)
        if not self._is_admin(user) and "CREATE_USER" not in \
                self.permissions.get(user, {}).get("systemPermissions", []):
            raise permission_denied()
        if not isinstance(body, dict):
            raise bad_request("Data must be submitted when creating objects.")
        username = body.get("username")
        if not isinstance(username, str) or not username.strip():
            raise bad_request("The username must not be blank.")
        if username in self.users or (not self.case_sensitive_usernames
                                      and any(name.lower() == username.lower() for name in self.users)):
            raise bad_request(f"User \"{username}\" already exists.")
        if len(username) > USERNAME_LIMIT:
            log.warning("Guacamole stand-in: user name of %d characters refused (the database holds %d)",
                        len(username), USERNAME_LIMIT)
            raise internal_error()
        password = coerce_value(body.get("password"), "password")
        attributes = coerce_map(body.get("attributes"), "attributes")
        self.users[username] = {"username": username,
                                "attributes": normalize_user_attributes(attributes)}
        self._credentials[username] = hash_password(password) if password is not None else None
        perms = self.permissions.setdefault(username, empty_permissions())
        perms["userPermissions"][username] = ["READ"]  # users may read themselves
        self.permissions.setdefault(user, empty_permissions())["userPermissions"][username] = \
            list(OBJECT_PERMISSIONS)
        self._save_state()
        log.info("Guacamole stand-in: created user %r", username)
        echo = {"username": username,
                "attributes": {k: v for k, v in attributes.items() if k in USER_ATTRIBUTES}}
        return json_response(echo)

    async def _get_user(self, request: web.Request) -> web.Response:
        user = self._user_and_ds(request)
        return json_response(self._user_view(self._find_user(user, request.match_info["user"])))

    async def _update_user(self, request: web.Request) -> web.Response:
        user = self._user_and_ds(request)
        username = self._find_user(user, request.match_info["user"])
        body = await self._read_json(request)
        if not self._has(user, "userPermissions", username, "UPDATE"):
            raise permission_denied()
        if not isinstance(body, dict):
            raise bad_request("Data must be submitted when updating objects.")
        password = coerce_value(body.get("password"), "password")
        attributes = coerce_map(body.get("attributes"), "attributes")
        if password is not None:
            self._credentials[username] = hash_password(password)
        self.users[username]["attributes"] = normalize_user_attributes(attributes)
        self._save_state()
        log.info("Guacamole stand-in: updated user %r", username)
        return no_content()

    async def _delete_user(self, request: web.Request) -> web.Response:
        user = self._user_and_ds(request)
        username = self._find_user(user, request.match_info["user"])
        if username == user:
            raise permission_denied("Deleting your own user is not allowed.")
        if not self._has(user, "userPermissions", username, "DELETE"):
            raise permission_denied()
        del self.users[username]
        self._credentials.pop(username, None)
        self.permissions.pop(username, None)
        for perms in self.permissions.values():
            perms.get("userPermissions", {}).pop(username, None)
        for token, session in list(self.tokens.items()):
            if session["username"] == username:
                del self.tokens[token]
        self._save_state()
        log.info("Guacamole stand-in: deleted user %r", username)
        return no_content()

    # ---------------------------------------------------------- permissions

    def _permission_view(self, username: str) -> dict:
        perms = self.permissions.get(username) or empty_permissions()
        out = {key: copy.deepcopy(perms.get(key, {})) for key in OBJECT_PERMISSION_KEYS}
        out["systemPermissions"] = list(perms.get("systemPermissions", []))
        return out

    async def _get_permissions(self, request: web.Request) -> web.Response:
        user = self._user_and_ds(request)
        username = self._find_user(user, request.match_info["user"])
        return json_response(self._permission_view(username))

    # Complexity above 15 (C901): Guacamole's JSON Patch rules for permissions, as the real one applies them.
    async def _patch_permissions(self, request: web.Request) -> web.Response:  # noqa: C901
        user = self._user_and_ds(request)
        username = self._find_user(user, request.match_info["user"])
        patches = await self._read_json(request)
        if not isinstance(patches, list):
            raise bad_request("A JSON Patch list must be submitted.")
        # Validate the whole patch first: Guacamole applies it all or not at all.
        ops: list[tuple[str, str, str | None, str]] = []
        for patch in patches:
            if not isinstance(patch, dict):
                raise bad_request("Each patch operation must be a JSON object.")
            op, path, value = patch.get("op"), patch.get("path"), patch.get("value")
            if op not in ("add", "remove"):
                raise bad_request(f"Unsupported patch operation: \"{op}\"")
            if not isinstance(path, str):
                raise bad_request(f"Unsupported patch path: \"{path}\"")
            if path == "/systemPermissions":
                if value not in SYSTEM_PERMISSIONS:
                    raise bad_request(f"Unknown system permission: \"{value}\"")
                ops.append((op, "systemPermissions", None, value))
                continue
            for key in OBJECT_PERMISSION_KEYS:
                prefix = f"/{key}/"
                if path.startswith(prefix):
                    if value not in OBJECT_PERMISSIONS:
                        raise bad_request(f"Unknown object permission: \"{value}\"")
                    ops.append((op, key, path[len(prefix):], value))
                    break
            else:
                raise bad_request(f"Unsupported patch path: \"{path}\"")
        if not self._is_admin(user):
            for _, key, identifier, _ in ops:
                if key == "systemPermissions" or not self._has(user, key, identifier, "ADMINISTER"):
                    raise permission_denied()
        for op, key, identifier, _value in ops:
            if op == "add" and key == "connectionPermissions" and identifier not in self.connections:
                # The database refuses a permission on a connection that does not exist.
                log.warning("Guacamole stand-in: permission on unknown connection %r refused", identifier)
                raise internal_error()
            if op == "add" and key == "userPermissions" and identifier not in self.users:
                log.warning("Guacamole stand-in: permission on unknown user %r refused", identifier)
                raise internal_error()
        perms = self.permissions.setdefault(username, empty_permissions())
        for op, key, identifier, value in ops:
            if key == "systemPermissions":
                current = perms.setdefault("systemPermissions", [])
            else:
                current = perms.setdefault(key, {}).setdefault(identifier, [])
            if op == "add" and value not in current:
                current.append(value)
            elif op == "remove" and value in current:
                current.remove(value)
            if key != "systemPermissions" and not current:
                del perms[key][identifier]
        self._save_state()
        log.info("Guacamole stand-in: patched permissions of %r (%d operation(s))", username, len(ops))
        return no_content()

    # ------------------------------------------------------------- self etc.

    async def _get_self(self, request: web.Request) -> web.Response:
        user = self._user_and_ds(request)
        return json_response(self._user_view(user))

    async def _get_self_permissions(self, request: web.Request) -> web.Response:
        user = self._user_and_ds(request)
        return json_response(self._permission_view(user))

    async def _active_connections(self, request: web.Request) -> web.Response:
        self._user_and_ds(request)
        return json_response(self._active_view())

    async def _empty_map(self, request: web.Request) -> web.Response:
        self._user_and_ds(request)
        return json_response({})

    async def _empty_list(self, request: web.Request) -> web.Response:
        user = self._user_and_ds(request)
        self._find_user(user, request.match_info["user"])
        return json_response([])

    # ------------------------------------------------------ the client page

    async def _redirect_to_page(self, request: web.Request) -> web.Response:
        target = self.base_path + "/"
        if request.query_string:
            target += "?" + request.query_string
        raise web.HTTPFound(target)

    async def _page(self, request: web.Request) -> web.Response:
        page = CLIENT_PAGE.replace("{{BASE_PATH}}", html.escape(self.base_path, quote=True))
        return web.Response(text=page, content_type="text/html", charset="utf-8",
                            headers={"Cache-Control": "no-store"})

    def _screen_port(self, hostname: str) -> int | None:
        return self.screens.port_for(hostname) if self.screens is not None and hostname else None

    async def _novnc_file(self, request: web.Request) -> web.StreamResponse:
        """Debian's noVNC (its ES modules), for the client page."""
        from .screens import novnc_dir
        root = novnc_dir()
        if root is None:
            raise web.HTTPNotFound()
        path = (root / request.match_info["path"]).resolve()
        if not path.is_file() or root.resolve() not in path.parents:
            raise web.HTTPNotFound()
        return web.FileResponse(path, headers={"Cache-Control": "max-age=3600"})

    async def _vnc_relay(self, request: web.Request) -> web.StreamResponse:
        """The WebSocket noVNC speaks RFB over, relayed to the VM's loopback VNC server. Only for a
        live auth-json session (`?token=`, checked for expiry now) that holds the connection. As
        guacd, it logs in to the VNC server with the connection's `password` parameter (VNC
        authentication, lab/rfb.py) and offers noVNC security type None: the browser never has it."""
        parsed = parse_client_identifier(request.match_info["client_id"])
        found = self._json_connection(request.query.get("token"), parsed[0]) if parsed and parsed[2] == "json" else None
        if found is None:
            return json_response({"message": "Permission Denied."}, status=403)
        user, conn = found
        hostname = ((conn or {}).get("parameters") or {}).get("hostname", "")
        port = self._screen_port(hostname)
        if conn is None or port is None:
            return json_response({"message": "No screen for this connection"}, status=404)
        from . import rfb
        try:
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
        except OSError:
            return json_response({"message": "The desktop's screen does not answer"}, status=502)
        try:  # guacd's part: log in to the VNC server with the connection's `password` parameter
            await rfb.authenticate(reader, writer, (conn.get("parameters") or {}).get("password"))
        except (rfb.RfbError, OSError) as exc:
            writer.close()
            log.warning("Guacamole stand-in: the VNC server of %s refused the relay: %s", parsed[0], exc)
            return json_response({"message": "The desktop's screen refused the connection"}, status=502)
        # A read-only connection (its `read-only` parameter, as Guacamole's): the browser's input
        # never reaches the VNC server, only its requests for pictures.
        guard = rfb.ReadOnly() if str((conn.get("parameters") or {}).get("read-only", "")).lower() == "true" else None
        # noVNC's messages are key and pointer events, and clipboard text: 4 MiB is plenty
        ws = web.WebSocketResponse(protocols=("binary",), max_msg_size=4 * 1024 * 1024)
        await ws.prepare(request)
        browser = rfb.MessageBytes(ws)
        try:  # the browser is past the VNC server's security already: it is offered None
            await rfb.offer_none(browser.read, ws.send_bytes)
            rest = browser.rest()
            writer.write(guard.feed(rest) if guard else rest)
        except (rfb.RfbError, ConnectionError) as exc:
            writer.close()
            log.info("Guacamole stand-in: the browser's RFB handshake for %s failed: %s", parsed[0], exc)
            await ws.close()
            return ws
        log.info("Guacamole stand-in: %s watches %s's screen (VNC 127.0.0.1:%s%s)", user, parsed[0], port,
                 ", read-only" if guard else "")

        async def browser_to_vnc():
            try:
                async for message in ws:
                    if message.type == web.WSMsgType.BINARY:
                        data = message.data
                    elif message.type == web.WSMsgType.TEXT:
                        data = message.data.encode("latin-1")
                    else:
                        continue
                    writer.write(guard.feed(data) if guard else data)
                    await writer.drain()
            except rfb.RfbError as exc:
                log.info("Guacamole stand-in: ended the read-only relay of %s: %s", parsed[0], exc)
                await ws.close()
            writer.close()

        async def vnc_to_browser():
            while True:
                chunk = await reader.read(65536)
                if not chunk:
                    break
                await ws.send_bytes(chunk)
            await ws.close()

        await asyncio.gather(browser_to_vnc(), vnc_to_browser(), return_exceptions=True)
        return ws

    async def _lab_client(self, request: web.Request) -> web.Response:
        parsed = parse_client_identifier(request.match_info["client_id"])
        if parsed is None or parsed[1] != "c":
            return json_response({"message": "Invalid connection link"}, status=400)
        identifier, _, data_source = parsed
        if data_source == "json":  # a connection of an auth-json session: the page's token says whose
            found = self._json_connection(request.headers.get("Guacamole-Token") or request.query.get("token"),
                                          identifier)
            if found is None:
                return json_response({"message": "Permission Denied."}, status=403)
            user, conn = found
            if conn is None:
                return json_response({"message": "Connection not found"}, status=404)
            params = conn.get("parameters") or {}
            return json_response({"identifier": identifier, "dataSource": "json", "name": identifier,
                          "protocol": conn.get("protocol", ""), "hostname": params.get("hostname", ""),
                          "port": params.get("port", ""), "username": user,
                          "readOnly": str(params.get("read-only", "")).lower() == "true",
                          "screen": self._screen_port(params.get("hostname", "")) is not None})
        conn = self.connections.get(identifier) if data_source == self.data_source else None
        if conn is None:
            return json_response({"message": "Connection not found"}, status=404)
        params = conn.get("parameters", {})
        self._touch_page_session(identifier)
        return json_response({
            "identifier": identifier,
            "dataSource": data_source,
            "name": conn["name"],
            "protocol": conn["protocol"],
            "hostname": params.get("hostname", ""),
            "port": params.get("port", ""),
        })


# The client page (static/guacamole-client.html): reads #/client/<id>, shows the connection and, with a
# screen, the VM's display through noVNC; {{BASE_PATH}} is the stand-in's base path.
CLIENT_PAGE = (Path(__file__).parent / "static" / "guacamole-client.html").read_text(encoding="utf-8")


# --------------------------------------------------------------------------
# CLI


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m controlplane.lab.guacamole",
                                     description="Run the lab's Guacamole stand-in in the foreground.")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8090, help="0 picks a free port")
    parser.add_argument("--username", default="guacadmin")
    parser.add_argument("--password", default=os.environ.get("GUACAMOLE_STANDIN_PASSWORD", "guacadmin"),
                        help="admin password (default: $GUACAMOLE_STANDIN_PASSWORD or guacadmin)")
    parser.add_argument("--data-source", default="postgresql")
    parser.add_argument("--state-file", default=None, help="JSON file to keep state in across restarts")
    parser.add_argument("--base-path", default="/guacamole")
    parser.add_argument("--log-level", default="INFO")
    args = parser.parse_args(argv)
    run_in_foreground(
        lambda: GuacamoleStandIn(host=args.host, port=args.port, username=args.username, password=args.password,
                                 data_source=args.data_source, state_file=args.state_file,
                                 base_path=args.base_path),
        lambda s: (f"Guacamole stand-in: {s.url}/  (API {s.url}/api/, user {s.username!r}, "
                   f"data source {s.data_source!r})"),
        args.log_level)


if __name__ == "__main__":
    main()
