"""The Guacamole stand-in's authentication: sessions and their tokens (POST/DELETE /api/tokens), logins
with a password or with guacamole-auth-json data, and the permission checks every request makes.

A mixin of GuacamoleStandIn (lab/guacamole.py), whose state it reads: `users`, `permissions`,
`_credentials`, `data_source`, `case_sensitive_usernames`, `json_secret`, `tokens`, `token_timeout`.
"""
from __future__ import annotations

import copy
import hashlib
import logging
import secrets
import time
from typing import Any

from aiohttp import web

from . import guacamole_auth_json
from .guacamole_model import (
    JDBC_DATA_SOURCES,
    SKELETON_PREFIX,
    USERNAME_PASSWORD_FIELDS,
    GuacamoleError,
    check_password,
    not_found,
)

log = logging.getLogger("controlplane.lab.guacamole")


def json_response(data: Any, status: int = 200) -> web.Response:
    return web.json_response(data, status=status, headers={"Cache-Control": "no-store"})


def no_content() -> web.Response:
    return web.Response(status=204, headers={"Cache-Control": "no-store"})


def now_ms() -> int:
    return int(time.time() * 1000)


class SessionsMixin:
    """Who a request is and what they may do (Guacamole's AuthenticationService and permission sets)."""

    def _token_user(self, token: str | None) -> str | None:
        """The user of a live session (refreshing its idle timer), or None."""
        session = self.tokens.get(token) if token else None
        if session is None:
            return None
        now = time.monotonic()
        if "json" in session:  # an auth-json session ends when its data expires, checked on every read
            if now_ms() > session["json"]["expires"]:  # UserData.isExpired
                del self.tokens[token]
                return None
            session["last_access"] = now
            # In the database's data source it is the database user of that name, with all that user's
            # permissions, or a skeleton user with none (see _json_login).
            return session["db_user"] or SKELETON_PREFIX + session["username"]
        if now - session["last_access"] > self.token_timeout or session["username"] not in self.users:
            del self.tokens[token]
            return None
        session["last_access"] = now
        return session["username"]

    def _session_user(self, request: web.Request) -> str:
        # Guacamole-Token header (1.4.0+) wins over the older ?token= query parameter.
        token = request.headers.get("Guacamole-Token") or request.query.get("token")
        user = self._token_user(token)
        if user is None:
            raise GuacamoleError(403, "PERMISSION_DENIED", "Permission Denied.")
        return user

    def _user_and_ds(self, request: web.Request) -> str:
        user = self._session_user(request)
        ds = request.match_info["ds"]
        if ds != self.data_source:
            raise not_found(f"Session not associated with authentication provider \"{ds}\".")
        return user

    def _is_admin(self, username: str) -> bool:
        return "ADMINISTER" in self.permissions.get(username, {}).get("systemPermissions", [])

    def _has(self, username: str, key: str, identifier: str, perm: str) -> bool:
        if self._is_admin(username):
            return True
        return perm in self.permissions.get(username, {}).get(key, {}).get(identifier, [])

    async def _login(self, request: web.Request) -> web.Response:
        form = await request.post()
        username = form.get("username")
        password = form.get("password")
        token = form.get("token") or request.headers.get("Guacamole-Token")

        # Re-authentication with an existing session keeps the token.
        if token and not username:
            user = self._token_user(token)
            if user is not None:
                return json_response(self._auth_response(token, user))

        data = form.get("data")
        if isinstance(data, str) and data and self.json_secret:
            return self._json_login(data)

        if isinstance(username, str) and not self.case_sensitive_usernames:
            username = self._database_user(username) or username  # the account's own spelling
        ok = (isinstance(username, str) and username in self.users
              and isinstance(password, str)
              and check_password(password, self._credentials.get(username))
              and self.users[username]["attributes"].get("disabled") != "true")
        if not ok:
            # JDBCAuthenticationProviderService: "Invalid login" (no full stop); the
            # other bundled providers say "Invalid login.".
            message = "Invalid login" if self.data_source in JDBC_DATA_SOURCES else "Invalid login."
            log.info("Guacamole stand-in: login failed for user %r", username)
            raise GuacamoleError(403, "INVALID_CREDENTIALS", message,
                                 expected=copy.deepcopy(USERNAME_PASSWORD_FIELDS))
        token = secrets.token_hex(32).upper()
        self.tokens[token] = {"username": username, "last_access": time.monotonic()}
        self.users[username]["lastActive"] = now_ms()
        self._save_state()
        log.info("Guacamole stand-in: user %r logged in", username)
        return json_response(self._auth_response(token, username))

    @staticmethod
    def _json_refused(reason: str) -> GuacamoleError:
        log.info("Guacamole stand-in: auth-json data refused (%s)", reason)
        return GuacamoleError(403, "INVALID_CREDENTIALS", "Invalid login.", expected=copy.deepcopy(USERNAME_PASSWORD_FIELDS))

    def _json_login(self, data: str) -> web.Response:
        """guacamole-auth-json: decrypt, check the signature, refuse expired or reused data. A refusal
        is the same 403 as a bad password (the json provider declines; no other provider accepts)."""
        try:
            payload = guacamole_auth_json.decrypt(self.json_secret, data)
        except guacamole_auth_json.InvalidData as exc:
            raise self._json_refused(str(exc)) from None
        expires = payload.get("expires")
        now = now_ms()
        reason = None
        if not isinstance(payload.get("username"), str) or not isinstance(payload.get("connections"), dict):
            reason = "no username or connections"
        elif expires is not None and (not isinstance(expires, int) or now > expires):
            reason = "expired"
        elif payload.get("singleUse") and expires is None:
            reason = "singleUse without expires"
        digest = hashlib.sha256(data.encode()).hexdigest()
        self._json_used = {k: v for k, v in self._json_used.items() if v * 1000 > now}
        if reason is None and payload.get("singleUse"):
            if digest in self._json_used:
                reason = "already used"
            else:
                self._json_used[digest] = expires / 1000
        if reason is not None:
            raise self._json_refused(reason)
        token = secrets.token_hex(32).upper()
        # As auth-jdbc's JDBCAuthenticationProviderService.getUserContext does for a user another
        # extension authenticated: the database user of the same name (compared as the database
        # compares names), unless disabled, gives the session its permissions in the database's data
        # source; without one, the session has a skeleton user there, with no permissions.
        db_user = self._database_user(payload["username"])
        self.tokens[token] = {"username": payload["username"], "last_access": time.monotonic(), "db_user": db_user,
                              "json": {"expires": expires if expires is not None else 2**62,
                                       "connections": payload["connections"]}}
        log.info("Guacamole stand-in: auth-json user %r logged in%s", payload["username"],
                 f" as database user {db_user!r}" if db_user else "")
        return json_response({"authToken": token, "username": payload["username"], "dataSource": "json",
                      "availableDataSources": ["json", *self.available_data_sources]})

    def _database_user(self, username: str) -> str | None:
        """The enabled database user a name from another extension is (UserService.retrieveUser)."""
        if self.case_sensitive_usernames:
            found = username if username in self.users else None
        else:
            found = next((name for name in self.users if name.lower() == username.lower()), None)
        if found is None or self.users[found]["attributes"].get("disabled") == "true":
            return None
        return found

    def _auth_response(self, token: str, username: str) -> dict:
        return {"authToken": token, "username": username, "dataSource": self.data_source,
                "availableDataSources": self.available_data_sources}

    async def _logout(self, request: web.Request) -> web.Response:
        token = request.match_info["token"]
        if self.tokens.pop(token, None) is None:
            raise not_found("No such token.")
        return no_content()

    def _json_connection(self, token: str | None, identifier: str) -> tuple[str, dict | None] | None:
        """(user, connection or None) of a live auth-json session's token; None: no such session."""
        user = self._token_user(token)
        session = self.tokens.get(token) if user else None
        if session is None or "json" not in session:
            return None
        return session["username"], session["json"]["connections"].get(identifier)
