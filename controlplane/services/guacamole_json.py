"""Expiring, single-use Guacamole links: the guacamole-auth-json scheme (Guacamole 1.4.0+).

The JSON describing the user and their connection is signed with HMAC-SHA256 and encrypted with
AES-128-CBC (a zero IV, PKCS#7 padding) under the 128-bit secret shared with Guacamole
(`json-secret-key`); the result, base64, logs the browser in as `?data=` on the client URL:

    data = base64(AES-128-CBC(key, iv=0, HMAC-SHA256(key, json) || json))
    url  = {guacamole}/?data=<url-encoded data>#/client/<base64url(name NUL "c" NUL "json")>

Guacamole refuses the data once `expires` (epoch milliseconds) has passed, and a second time when
`singleUse` is set. The reading side, as Guacamole does it, is the lab's own
(lab/guacamole_auth_json.py).
"""
from __future__ import annotations

import base64
import datetime as dt
import hashlib
import hmac
import json
import re
import urllib.parse
import uuid

from cryptography.hazmat.primitives import padding
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

DATA_SOURCE = "json"
NULL_IV = bytes(16)
SECRET = re.compile(r"^[0-9a-fA-F]{32}$")


def key_of(secret_hex: str) -> bytes:
    if not SECRET.match(secret_hex or ""):
        raise ValueError("the auth-json secret must be 32 hexadecimal digits (128 bits)")
    return bytes.fromhex(secret_hex)


def sign_and_encrypt(secret_hex: str, document: bytes) -> str:
    """The base64 data Guacamole's json provider accepts for `document` (the JSON's exact bytes)."""
    key = key_of(secret_hex)
    signed = hmac.new(key, document, hashlib.sha256).digest() + document
    padder = padding.PKCS7(128).padder()
    plain = padder.update(signed) + padder.finalize()
    encryptor = Cipher(algorithms.AES(key), modes.CBC(NULL_IV)).encryptor()
    return base64.b64encode(encryptor.update(plain) + encryptor.finalize()).decode("ascii")


def client_id(identifier: str, data_source: str = DATA_SOURCE) -> str:
    """Guacamole's client URL id of a connection: base64url(identifier NUL "c" NUL data source), unpadded."""
    raw = f"{identifier}\0c\0{data_source}".encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def link(base_url: str, secret_hex: str, username: str, connection: str, protocol: str, parameters: dict,
         expires_at: dt.datetime, single_use: bool = True) -> str:
    """A URL that logs the browser into Guacamole as `username` with the one connection, until
    `expires_at` (and, single use, once)."""
    if expires_at.tzinfo is None:  # the database's naive datetimes are UTC
        expires_at = expires_at.replace(tzinfo=dt.timezone.utc)
    payload = {"username": username, "expires": int(expires_at.timestamp() * 1000)}
    if single_use:
        payload["singleUse"] = True
    # `id` is the connection's opaque unique id in auth-json (for joining it): a new one makes every
    # link different, even two made in the same millisecond (single use is per link).
    payload["connections"] = {connection: {"id": uuid.uuid4().hex, "protocol": protocol,
                                           "parameters": {k: str(v) for k, v in parameters.items()}}}
    data = sign_and_encrypt(secret_hex, json.dumps(payload, separators=(",", ":")).encode())
    return f"{base_url.rstrip('/')}/?data={urllib.parse.quote(data, safe='')}#/client/{client_id(connection)}"
