"""User ids as the identity provider issues them, and the only names they take outside.

A user id is the IdP's text (JWT_USER_CLAIM, `sub` by default): with self-registration, anyone
picks it. It is accepted when `problem()` finds nothing wrong with it, and then never reaches
Guacamole or Proxmox as it is, only as `handle()` of it:

- Guacamole: `guacamole_username()`, the reserved namespace `cds-u-<handle>`. Guacamole's
  database extension gives a user logged in through auth-json the permissions of the database
  user of the same name, so the name `/connect` signs must never be an account of anyone else
  (`guacadmin` would get an admin session). No Guacamole account outside the control plane may
  start with `cds-u-` (README: "Pointing it at a real Proxmox and Guacamole").
- Proxmox: the owner tag `cds-user-<handle>` (roles/proxmox_desktop).

`handle()` is injective: a plain id (lower-case ASCII letters and digits in runs joined by single
`.`, `_` or `-`, at most 48 characters) is its own handle, so `user_12345` stays readable; any
other id becomes `<hint>--<digest>`: a readable hint (ASCII-folded, lower case, at most 24
characters) and 128 bits of the SHA-256 of the exact id. A plain handle never holds `--`, every
other one ends in `--` and 32 hex digits: two ids share a handle only if SHA-256 collides. Handles
are lower-case ASCII, so they stay apart where Guacamole compares names ignoring case (MySQL), and
at most 58 characters (Guacamole keeps 128).

Pure standard library on purpose: playbooks/filter_plugins/cds_user_ids.py loads this very file,
so that the playbooks, run by the worker or by hand, map ids exactly as `/connect` does.
"""
from __future__ import annotations

import hashlib
import re
import unicodedata

MAX_LENGTH = 255  # the database's user id columns
GUACAMOLE_PREFIX = "cds-u-"
PROXMOX_TAG_PREFIX = "cds-user-"
PLAIN_MAX = 48
HINT_MAX = 24
DIGEST_HEX = 32  # 128 bits

_PLAIN = re.compile(r"[a-z0-9]+(?:[._-][a-z0-9]+)*")
# Bidirectional embeddings, overrides and isolates: text that displays as something else.
_BIDI_CONTROLS = frozenset("\u202a\u202b\u202c\u202d\u202e\u2066\u2067\u2068\u2069")


def problem(user_id: object) -> str | None:
    """Why `user_id` cannot be a user id (a sentence to show), or None when it can. Refused: not a
    string, blank, longer than MAX_LENGTH characters, control characters (NUL, newline, DEL, C1),
    lone surrogates (not Unicode text) and bidirectional overrides. Everything else is mapped."""
    if not isinstance(user_id, str) or not user_id.strip():
        return "User ID is required"
    if len(user_id) > MAX_LENGTH:
        return f"User ID must be at most {MAX_LENGTH} characters"
    for char in user_id:
        category = unicodedata.category(char)
        if category == "Cc":
            return "User ID must not contain control characters"
        if category == "Cs":
            return "User ID must be valid Unicode text"
        if char in _BIDI_CONTROLS:
            return "User ID must not contain bidirectional control characters"
    return None


def handle(user_id: str) -> str:
    """The user id's injective, lower-case ASCII name outside: itself when plain, else
    `<hint>--<digest>` (see the module's description)."""
    if len(user_id) <= PLAIN_MAX and _PLAIN.fullmatch(user_id):
        return user_id
    folded = unicodedata.normalize("NFKD", user_id).encode("ascii", "ignore").decode("ascii").lower()
    hint = re.sub(r"[^a-z0-9]+", "-", folded).strip("-")[:HINT_MAX].rstrip("-") or "id"
    digest = hashlib.sha256(user_id.encode("utf-8", "surrogatepass")).hexdigest()[:DIGEST_HEX]
    return f"{hint}--{digest}"


def guacamole_username(user_id: str) -> str:
    """The Guacamole user a control-plane user is, in the reserved namespace: `/connect` signs
    auth-json data with it and the desktop playbooks grant the connection to it."""
    return GUACAMOLE_PREFIX + handle(user_id)


def proxmox_owner_tag(user_id: str) -> str:
    """The Proxmox tag naming a VM's owner (what roles/proxmox_desktop makes of its handle)."""
    return PROXMOX_TAG_PREFIX + handle(user_id)
