"""The reading side of guacamole-auth-json, as Guacamole does it (its documentation and its
CryptoService): the stand-in's own code, not the product's (services/guacamole_json.py writes the
links), so a mistake in the product's encoding is not read back by the same mistake.

    data (base64) --AES/CBC/PKCS5Padding, key = the 128-bit secret, IV = 16 zero bytes--> signed
    signed = HMAC-SHA256(key, json) (32 bytes) || json (UTF-8)
"""
from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import json
import re

from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

_KEY = re.compile(r"^[0-9a-fA-F]{32}$")


class InvalidData(ValueError):
    """Data Guacamole would refuse: not base64, another key, a bad signature, not a JSON object."""


def decrypt(secret_hex: str, data: str) -> dict:
    """The JSON object in `data` once its signature checks out; InvalidData otherwise. Expiry and
    single use are the caller's (they need a clock and a memory)."""
    if not _KEY.match(secret_hex or ""):
        raise ValueError("the auth-json secret must be 32 hexadecimal digits (128 bits)")
    key = binascii.unhexlify(secret_hex)
    try:
        encrypted = base64.b64decode(data, validate=True)
    except (binascii.Error, ValueError, TypeError):
        raise InvalidData("not base64") from None
    if not encrypted or len(encrypted) % 16:
        raise InvalidData("not AES-128-CBC data")
    decryptor = Cipher(algorithms.AES(key), modes.CBC(b"\0" * 16)).decryptor()
    padded = decryptor.update(encrypted) + decryptor.finalize()
    pad = padded[-1]
    if not 1 <= pad <= 16 or padded[-pad:] != bytes([pad]) * pad:  # PKCS#5: n bytes of value n
        raise InvalidData("bad padding: another key")
    signed = padded[:-pad]
    if len(signed) < 32:
        raise InvalidData("bad signature")
    signature, document = signed[:32], signed[32:]
    if not hmac.compare_digest(signature, hmac.new(key, document, hashlib.sha256).digest()):
        raise InvalidData("bad signature")
    try:
        value = json.loads(document.decode("utf-8"))
    except (UnicodeDecodeError, ValueError):
        raise InvalidData("not JSON") from None
    if not isinstance(value, dict):
        raise InvalidData("not a JSON object")
    return value
