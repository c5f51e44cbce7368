"""Guacamole's object model as its REST API shows it, for the lab's stand-in (lab/guacamole.py):
the constants of guacamole-client, its APIError bodies, client identifiers, how a JDBC data source
stores connection and user attributes, permission sets and password hashes. The stand-in's own
code, from Guacamole's documentation and sources: nothing here comes from the product.
"""
from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import json
import re
import secrets
from typing import Any

# --------------------------------------------------------------------------
# Constants taken from guacamole-client

#: Protocols the stand-in accepts (a real Guacamole stores any string and only
#: guacd refuses an unknown one at connect time; refusing early catches typos
#: such as "spice", which no released Guacamole supports).
PROTOCOLS = ("vnc", "rdp", "ssh", "telnet", "kubernetes")

#: ModeledConnection.ATTRIBUTE_NAMES (auth-jdbc): the only connection
#: attributes a JDBC data source keeps; others are filtered out.
CONNECTION_NUMERIC_ATTRIBUTES = ("max-connections", "max-connections-per-user", "weight", "guacd-port")
CONNECTION_ATTRIBUTES = (
    "guacd-encryption",
    "failover-only",
    "weight",
    "max-connections",
    "guacd-hostname",
    "guacd-port",
    "max-connections-per-user",
)

#: ModeledUser attributes (auth-jdbc).
USER_BOOLEAN_ATTRIBUTES = ("disabled", "expired")
USER_ATTRIBUTES = (
    "guac-email-address",
    "guac-organizational-role",
    "guac-full-name",
    "expired",
    "timezone",
    "access-window-start",
    "guac-organization",
    "access-window-end",
    "disabled",
    "valid-until",
    "valid-from",
)

#: ConnectionService.CONNECTION_PARAMETER_VALUE_LIMIT (1.6).
PARAMETER_VALUE_LIMIT = 4096

#: guacamole_entity.name is varchar(128) in the PostgreSQL and MySQL schemas: a longer name makes
#: the INSERT fail, which Guacamole answers as an internal error.
USERNAME_LIMIT = 128

OBJECT_PERMISSIONS = ("READ", "UPDATE", "DELETE", "ADMINISTER")
SYSTEM_PERMISSIONS = (
    "CREATE_CONNECTION",
    "CREATE_CONNECTION_GROUP",
    "CREATE_SHARING_PROFILE",
    "CREATE_USER",
    "CREATE_USER_GROUP",
    "AUDIT",
    "ADMINISTER",
)
#: guacadmin's system permissions in the schema's initial data.
ADMIN_SYSTEM_PERMISSIONS = [
    "CREATE_CONNECTION",
    "CREATE_CONNECTION_GROUP",
    "CREATE_SHARING_PROFILE",
    "CREATE_USER",
    "CREATE_USER_GROUP",
    "ADMINISTER",
]
#: PermissionSetResource paths -> APIPermissionSet keys.
OBJECT_PERMISSION_KEYS = (
    "connectionPermissions",
    "connectionGroupPermissions",
    "sharingProfilePermissions",
    "activeConnectionPermissions",
    "userPermissions",
    "userGroupPermissions",
)

#: Data sources backed by guacamole-auth-jdbc, which also register a
#: "<name>-shared" data source for sharing links.
JDBC_DATA_SOURCES = ("postgresql", "mysql", "sqlserver")

TOKEN_TIMEOUT = 60 * 60  # api-session-timeout default: 60 minutes idle
ACTIVE_TIMEOUT = 60  # seconds an open client page counts as an active connection (it asks every 20 s)
PBKDF2_ITERATIONS = 50_000
STATE_VERSION = 1

UNTRANSLATED_KEY = "APP.TEXT_UNTRANSLATED"

#: How an auth-json session without a database user of its name is known inside the stand-in (NUL:
#: no database user can be named so): a skeleton user, holding no permission.
SKELETON_PREFIX = "\0skeleton:"


# --------------------------------------------------------------------------
# Errors


class GuacamoleError(Exception):
    """An error answered with Guacamole's APIError body."""

    def __init__(self, status: int, type_: str, message: str, *,
                 translatable: dict | None = None, expected: list | None = None):
        super().__init__(message)
        self.status = status
        self.type = type_
        self.message = message
        self.translatable = translatable
        self.expected = expected

    def body(self) -> dict:
        return error_body(self.type, self.message, translatable=self.translatable,
                          expected=self.expected)


def error_body(type_: str, message: str, *, translatable: dict | None = None,
               expected: list | None = None) -> dict:
    if translatable is None:
        translatable = {"key": UNTRANSLATED_KEY, "variables": {"MESSAGE": message}}
    return {
        "message": message,
        "translatableMessage": translatable,
        "statusCode": None,
        "expected": expected,
        "patches": None,
        "type": type_,
    }


def error_type_for_status(status: int) -> str:
    if status in (401, 403):
        return "PERMISSION_DENIED"
    if status == 404:
        return "NOT_FOUND"
    if 400 <= status < 500:
        return "BAD_REQUEST"
    return "INTERNAL_ERROR"


def bad_request(message: str, **kw) -> GuacamoleError:
    return GuacamoleError(400, "BAD_REQUEST", message, **kw)


def not_found(message: str) -> GuacamoleError:
    return GuacamoleError(404, "NOT_FOUND", message)


def permission_denied(message: str = "Permission denied.") -> GuacamoleError:
    return GuacamoleError(403, "PERMISSION_DENIED", message)


def internal_error(message: str = "Unexpected internal error.") -> GuacamoleError:
    return GuacamoleError(500, "INTERNAL_ERROR", message)


USERNAME_PASSWORD_FIELDS = [
    {"name": "username", "type": "USERNAME"},
    {"name": "password", "type": "PASSWORD"},
]


# --------------------------------------------------------------------------
# Helpers


def base64url_nopad(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).decode("ascii").rstrip("=")


def client_identifier(identifier: str, data_source: str, type_: str = "c") -> str:
    """Guacamole's ClientIdentifier: base64url(identifier NUL type NUL dataSource), no padding."""
    return base64url_nopad(f"{identifier}\0{type_}\0{data_source}".encode("utf-8"))


_CLIENT_ID_RE = re.compile(r"^[A-Za-z0-9_\-+/]+={0,2}$")


def parse_client_identifier(value: str) -> tuple[str, str, str] | None:
    """(identifier, type, dataSource) from a client identifier, or None if malformed."""
    if not value or not _CLIENT_ID_RE.match(value):
        return None
    text = value.rstrip("=").replace("+", "-").replace("/", "_")
    text += "=" * (-len(text) % 4)
    try:
        raw = base64.urlsafe_b64decode(text).decode("utf-8")
    except (binascii.Error, ValueError):
        return None
    parts = raw.split("\0")
    if len(parts) != 3 or not parts[0] or not parts[1]:
        return None
    return parts[0], parts[1], parts[2]


def coerce_value(value: Any, what: str) -> str | None:
    """How Jackson reads a JSON value into a Map<String, String> entry."""
    if value is None or isinstance(value, str):
        return value
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return json.dumps(value)
    raise bad_request(f"Invalid value for {what}: must be a string.")


def coerce_map(value: Any, what: str) -> dict[str, str | None]:
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise bad_request(f"Invalid {what}: must be a JSON object.")
    return {str(k): coerce_value(v, f"{what} \"{k}\"") for k, v in value.items()}


_INT_RE = re.compile(r"^[+-]?[0-9]+$")


def _numeric(value: str | None) -> str | None:
    """NumericField.parse then format: "" -> null, "007" -> "7", junk -> null."""
    if value is None or value == "":
        return None
    if not _INT_RE.match(value):
        return None
    number = int(value)
    if not -(2 ** 31) <= number < 2 ** 31:
        return None
    return str(number)


def normalize_connection_attributes(given: dict[str, str | None]) -> dict[str, str | None]:
    """What a JDBC data source stores and reads back for connection attributes."""
    out: dict[str, str | None] = {}
    for name in CONNECTION_ATTRIBUTES:
        value = given.get(name)
        if name in CONNECTION_NUMERIC_ATTRIBUTES:
            out[name] = _numeric(value)
        elif name == "failover-only":
            out[name] = "true" if value == "true" else None
        elif name == "guacd-encryption":
            out[name] = value if value in ("none", "ssl") else None
        else:
            out[name] = value or None
    return out


def normalize_user_attributes(given: dict[str, str | None]) -> dict[str, str | None]:
    out: dict[str, str | None] = {}
    for name in USER_ATTRIBUTES:
        value = given.get(name)
        if name in USER_BOOLEAN_ATTRIBUTES:
            out[name] = "true" if value == "true" else None
        else:
            out[name] = value or None
    return out


def hash_password(password: str, salt: bytes | None = None) -> dict:
    salt = salt if salt is not None else secrets.token_bytes(16)
    digest = hashlib.pbkdf2_hmac("sha256", password.encode("utf-8"), salt, PBKDF2_ITERATIONS)
    return {"algorithm": "pbkdf2-sha256", "iterations": PBKDF2_ITERATIONS,
            "salt": salt.hex(), "hash": digest.hex()}


def check_password(password: str, stored: dict | None) -> bool:
    if not stored or password is None:
        return False
    try:
        salt = bytes.fromhex(stored["salt"])
        expected = bytes.fromhex(stored["hash"])
        iterations = int(stored.get("iterations", PBKDF2_ITERATIONS))
    except (KeyError, ValueError, TypeError):
        return False
    digest = hashlib.pbkdf2_hmac("sha256", password.encode("utf-8"), salt, iterations)
    return hmac.compare_digest(digest, expected)


def empty_permissions() -> dict:
    perms: dict[str, Any] = {key: {} for key in OBJECT_PERMISSION_KEYS}
    perms["systemPermissions"] = []
    return perms
