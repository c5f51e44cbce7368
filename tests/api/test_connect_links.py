"""/connect with CONTROLPLANE_GUACAMOLE_JSON_SECRET: an expiring, single-use auth-json link, fresh on
every call, `expiresAt` in the answer; the mode is configuration (tests/api/test_desktops_api.py has
the plain connection URL)."""
from __future__ import annotations

import base64
import dataclasses
import datetime as dt
import urllib.parse

import pytest

from controlplane.config import ConfigError, Settings
from controlplane.lab import guacamole_auth_json
from tests.api.test_desktops_api import BASE, running

SECRET = "0123456789abcdef0123456789ABCDEF"


@pytest.fixture
def json_client(base_settings, database, client):
    from controlplane import create_app
    app = create_app(dataclasses.replace(base_settings, guacamole_json_secret=SECRET, connect_ttl=120,
                                         guacamole_vnc_password="vncpw"))
    return app.test_client()


def _payload(url: str) -> dict:
    data = urllib.parse.unquote(url.split("?data=", 1)[1].split("#", 1)[0])
    return guacamole_auth_json.decrypt(SECRET, data)


def test_connect_answers_an_expiring_single_use_link(json_client, auth, base_settings):
    desktop_id = running(json_client, auth)
    before = dt.datetime.now(dt.timezone.utc)
    data = json_client.get(f"{BASE}/{desktop_id}/connect", headers=auth()).get_json()["data"]
    url = data["connectionUrl"]
    assert url.startswith(base_settings.guacamole_url + "/?data=")
    assert url.endswith("#/client/" + base64.urlsafe_b64encode(f"cds-desktop-{desktop_id}\0c\0json".encode())
                        .decode().rstrip("="))
    expires_at = dt.datetime.fromisoformat(data["expiresAt"])
    assert dt.timedelta(seconds=118) <= expires_at - before <= dt.timedelta(seconds=122)
    payload = _payload(url)
    # The user's Guacamole name, in the control plane's namespace (tests/api/test_guacamole_identity.py)
    assert payload["username"] == "cds-u-user_12345" and payload["singleUse"] is True
    assert abs(payload["expires"] / 1000 - expires_at.timestamp()) < 1
    assert payload["connections"][f"cds-desktop-{desktop_id}"].pop("id")
    assert payload["connections"] == {f"cds-desktop-{desktop_id}": {
        "protocol": "vnc", "parameters": {"hostname": "10.66.0.7", "port": "5900", "password": "vncpw"}}}
    # The secret and the VNC password are inside the encrypted data only.
    assert SECRET.lower() not in url.lower() and "vncpw" not in url

    again = json_client.get(f"{BASE}/{desktop_id}/connect", headers=auth()).get_json()["data"]
    assert again["connectionUrl"] != url  # a fresh link every time


def test_the_desktop_object_keeps_the_plain_connection_url(json_client, auth):
    desktop_id = running(json_client, auth)
    got = json_client.get(f"{BASE}/{desktop_id}", headers=auth()).get_json()["data"]
    assert "?data=" not in got["connectionUrl"] and "#/client/" in got["connectionUrl"]


def test_the_mode_can_be_the_plain_url_even_with_a_secret(base_settings, database, client, auth):
    from controlplane import create_app
    plain = create_app(dataclasses.replace(base_settings, guacamole_json_secret=SECRET,
                                           connect_mode="connection")).test_client()
    desktop_id = running(plain, auth)
    data = plain.get(f"{BASE}/{desktop_id}/connect", headers=auth()).get_json()["data"]
    assert data["expiresAt"] is None and "?data=" not in data["connectionUrl"]


@pytest.mark.parametrize("env, message", [
    ({"CONTROLPLANE_GUACAMOLE_JSON_SECRET": "abc"}, "must be 32 hexadecimal digits"),
    ({"CONTROLPLANE_CONNECT_MODE": "json"}, "needs CONTROLPLANE_GUACAMOLE_JSON_SECRET"),
    ({"CONTROLPLANE_CONNECT_MODE": "magic"}, "must be auto, json or connection"),
    ({"CONTROLPLANE_CONNECT_TTL": "5"}, "between 10 and 86400"),
])
def test_bad_connect_settings_stop_the_process(env, message):
    with pytest.raises(ConfigError, match=message):
        Settings.from_env(env)


def test_the_secret_is_never_shown(base_settings):
    settings = dataclasses.replace(base_settings, guacamole_json_secret=SECRET)
    assert SECRET not in repr(settings) and "guacamole_json_secret=***" in repr(settings)
    assert SECRET in settings.secrets()  # redacted from logs like the other secrets
