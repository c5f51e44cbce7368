"""Reading Guacamole's REST API from the control plane (what the Ansible role does not do):
the active connections (idle policy) and the connections that exist (reconciliation).

Writes (registering and removing connections) stay in roles/guacamole_connection. The admin
password is only ever sent in the login request's body; it is never logged or raised.
"""
from __future__ import annotations

import contextlib
from collections.abc import Iterator

import requests

from ..config import Settings

TIMEOUT = 10


class GuacamoleError(Exception):
    pass


@contextlib.contextmanager
def session(settings: Settings) -> Iterator[tuple[requests.Session, str, str]]:
    """A logged-in session: (http session, API base of the data source, token); logs out after."""
    base = settings.guacamole_url.rstrip("/") + "/api"
    http = requests.Session()
    try:
        response = http.post(f"{base}/tokens", data={"username": settings.guacamole_username,
                                                     "password": settings.guacamole_password}, timeout=TIMEOUT)
    except requests.RequestException as exc:
        raise GuacamoleError(f"Guacamole is unreachable at {settings.guacamole_url}: {type(exc).__name__}") from None
    if response.status_code != 200:
        raise GuacamoleError(f"Guacamole refused the login as {settings.guacamole_username} "
                             f"(HTTP {response.status_code})")
    try:
        token = response.json()["authToken"]
    except (ValueError, KeyError):
        raise GuacamoleError("Guacamole's login answer has no authToken") from None
    http.headers["Guacamole-Token"] = token
    try:
        yield http, f"{base}/session/data/{settings.guacamole_data_source}", token
    finally:
        with contextlib.suppress(requests.RequestException):
            http.delete(f"{base}/tokens/{token}", timeout=TIMEOUT)
        http.close()


def _get(http: requests.Session, url: str) -> dict:
    try:
        response = http.get(url, timeout=TIMEOUT)
    except requests.RequestException as exc:
        raise GuacamoleError(f"Guacamole did not answer {url.rsplit('/', 1)[-1]}: {type(exc).__name__}") from None
    if response.status_code != 200:
        raise GuacamoleError(f"Guacamole answered HTTP {response.status_code} to {url.rsplit('/', 1)[-1]}")
    try:
        body = response.json()
    except ValueError:
        raise GuacamoleError(f"Guacamole's answer to {url.rsplit('/', 1)[-1]} is not JSON") from None
    if not isinstance(body, dict):
        raise GuacamoleError(f"Guacamole's answer to {url.rsplit('/', 1)[-1]} is not a map")
    return body


def active_connection_ids(settings: Settings) -> set[str]:
    """Identifiers of the connections someone is connected to right now."""
    with session(settings) as (http, data, _):
        active = _get(http, f"{data}/activeConnections")
    return {str(entry.get("connectionIdentifier")) for entry in active.values()
            if isinstance(entry, dict) and entry.get("connectionIdentifier") is not None}


def connections(settings: Settings) -> dict[str, str]:
    """Every connection the admin user can see: identifier → name."""
    with session(settings) as (http, data, _):
        found = _get(http, f"{data}/connections")
    return {str(key): str(entry.get("name", "")) for key, entry in found.items() if isinstance(entry, dict)}
