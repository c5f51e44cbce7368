"""Expiring Guacamole links (controlplane/services/guacamole_json.py): the encoder against the
guacamole-auth-json reference implementation on the documentation's example, and the lab's
stand-in refusing what Guacamole refuses (expired, reused, forged data)."""
from __future__ import annotations

import base64
import datetime as dt
import json
import subprocess
import urllib.parse

import pytest
import requests

from controlplane.lab.guacamole import GuacamoleStandIn
from controlplane.services import guacamole_json
from controlplane.lab import guacamole_auth_json
from tests.loop import LoopThread

# The documentation's example (Guacamole manual, "Encrypted JSON authentication"): its key is
# `echo -n "ThisIsATest" | md5sum`, and its JSON a user "test" with two RDP connections.
DOC_KEY = "4c0b569e4c96df157eee1b65dd0e4d41"
DOC_JSON = b"""{
    "username" : "test",
    "expires" : 1446323765000,
    "connections" : {
        "My Connection" : {
            "protocol" : "rdp",
            "parameters" : {
                "hostname" : "10.10.209.63",
                "port" : "3389"
            }
        },
        "My OTHER Connection" : {
            "protocol" : "rdp",
            "parameters" : {
                "hostname" : "10.10.209.64",
                "port" : "3389"
            }
        }
    }
}
"""


def reference(key: str, document: bytes, tmp_path) -> str:
    """The reference implementation's two steps (encrypt-json.sh in guacamole-client): the HMAC-SHA256
    of the file, then the file, through `openssl enc -aes-128-cbc` with a null IV, in base64."""
    path = tmp_path / "auth.json"
    path.write_bytes(document)
    signature = subprocess.run(["openssl", "dgst", "-sha256", "-mac", "HMAC", "-macopt", f"hexkey:{key}",
                                "-binary", str(path)], check=True, capture_output=True).stdout
    encrypted = subprocess.run(["openssl", "enc", "-aes-128-cbc", "-K", key, "-iv", "0" * 32, "-nosalt", "-a", "-A"],
                               input=signature + document, check=True, capture_output=True).stdout
    return encrypted.decode().strip()


def test_the_encoder_matches_the_reference_implementation_on_the_documented_example(tmp_path):
    ours = guacamole_json.sign_and_encrypt(DOC_KEY, DOC_JSON)
    assert ours == reference(DOC_KEY, DOC_JSON, tmp_path)
    assert guacamole_auth_json.decrypt(DOC_KEY, ours)["connections"]["My OTHER Connection"]["parameters"]["hostname"] \
        == "10.10.209.64"


@pytest.mark.parametrize("length", [0, 1, 15, 16, 17, 200])
def test_the_encoder_matches_the_reference_for_every_padding(tmp_path, length):
    document = json.dumps({"username": "u", "pad": "x" * length}).encode()
    assert guacamole_json.sign_and_encrypt(DOC_KEY, document) == reference(DOC_KEY, document, tmp_path)


def test_forged_or_foreign_data_is_refused():
    data = guacamole_json.sign_and_encrypt(DOC_KEY, DOC_JSON)
    with pytest.raises(guacamole_auth_json.InvalidData):
        guacamole_auth_json.decrypt("00112233445566778899aabbccddeeff", data)  # another key
    raw = bytearray(base64.b64decode(data))
    raw[20] ^= 1  # one bit of the signature's block
    with pytest.raises(guacamole_auth_json.InvalidData):
        guacamole_auth_json.decrypt(DOC_KEY, base64.b64encode(bytes(raw)).decode())
    for junk in ("", "not base64!", base64.b64encode(b"short").decode()):
        with pytest.raises(guacamole_auth_json.InvalidData):
            guacamole_auth_json.decrypt(DOC_KEY, junk)
    with pytest.raises(ValueError):
        guacamole_json.sign_and_encrypt("too-short", DOC_JSON)


def test_a_link_carries_one_connection_its_expiry_and_single_use():
    expires = dt.datetime(2030, 1, 2, 3, 4, 5, tzinfo=dt.timezone.utc)
    url = guacamole_json.link("https://guac.example/guacamole/", DOC_KEY, "user_1", "cds-desktop-7", "vnc",
                              {"hostname": "10.0.0.7", "port": 5900}, expires)
    base, _, fragment = url.partition("#")
    assert fragment == "/client/" + base64.urlsafe_b64encode(b"cds-desktop-7\0c\0json").decode().rstrip("=")
    assert base.startswith("https://guac.example/guacamole/?data=")
    data = urllib.parse.unquote(base.split("?data=", 1)[1])
    payload = guacamole_auth_json.decrypt(DOC_KEY, data)
    assert len(payload["connections"]["cds-desktop-7"].pop("id")) == 32  # unique per link
    assert payload == {
        "username": "user_1", "expires": 1893553445000, "singleUse": True,
        "connections": {"cds-desktop-7": {"protocol": "vnc", "parameters": {"hostname": "10.0.0.7", "port": "5900"}}}}
    naive = guacamole_json.link("https://g", DOC_KEY, "u", "c", "vnc", {}, expires.replace(tzinfo=None), single_use=False)
    payload = guacamole_auth_json.decrypt(DOC_KEY, urllib.parse.unquote(naive.split("?data=")[1].split("#")[0]))
    assert payload["expires"] == 1893553445000 and "singleUse" not in payload  # naive means UTC


# ---- the lab's stand-in, as Guacamole's json provider ------------------------------------------------

@pytest.fixture
def standin():
    loop = LoopThread()
    guac = GuacamoleStandIn(port=0, password="admin-pw", json_secret=DOC_KEY)
    loop.run(guac.start())
    yield guac
    loop.run(guac.stop())
    loop.close()


def _data(expires_in: float, single_use: bool = True) -> str:
    url = guacamole_json.link("http://x", DOC_KEY, "user_9", "cds-desktop-9", "vnc", {"hostname": "10.0.0.9", "port": 5900},
                              dt.datetime.now(dt.timezone.utc) + dt.timedelta(seconds=expires_in), single_use)
    return urllib.parse.unquote(url.split("?data=")[1].split("#")[0])


def _login(guac, data):
    return requests.post(f"{guac.url}/api/tokens", data={"data": data}, timeout=10)


def test_the_standin_logs_valid_data_in_once(standin):
    data = _data(60)
    first = _login(standin, data)
    assert first.status_code == 200
    body = first.json()
    assert (body["username"], body["dataSource"]) == ("user_9", "json")
    client = guacamole_json.client_id("cds-desktop-9")
    found = requests.get(f"{standin.url}/_lab/client/{client}", headers={"Guacamole-Token": body["authToken"]}, timeout=10)
    assert found.status_code == 200 and found.json()["hostname"] == "10.0.0.9"
    assert requests.get(f"{standin.url}/_lab/client/{client}", timeout=10).status_code == 403  # no session
    again = _login(standin, data)
    assert again.status_code == 403 and again.json()["type"] == "INVALID_CREDENTIALS"


def test_the_standin_refuses_expired_and_forged_data(standin):
    assert _login(standin, _data(-1)).status_code == 403
    forged = guacamole_json.sign_and_encrypt("00112233445566778899aabbccddeeff", b'{"username": "x", "connections": {}}')
    assert _login(standin, forged).status_code == 403
    reusable = _data(60, single_use=False)
    assert _login(standin, reusable).status_code == 200 and _login(standin, reusable).status_code == 200


def test_an_auth_json_session_ends_when_its_data_expires(standin, monkeypatch):
    from controlplane.lab import guacamole_sessions
    token = _login(standin, _data(60)).json()["authToken"]
    client = guacamole_json.client_id("cds-desktop-9")
    assert requests.get(f"{standin.url}/_lab/client/{client}", headers={"Guacamole-Token": token}, timeout=10).ok
    real_now_ms = guacamole_sessions.now_ms  # the stand-in's wall clock, moved on past the data's expiry
    monkeypatch.setattr(guacamole_sessions, "now_ms", lambda: real_now_ms() + 60_100)
    assert requests.get(f"{standin.url}/_lab/client/{client}", headers={"Guacamole-Token": token},
                        timeout=10).status_code == 403
