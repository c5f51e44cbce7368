"""What every view needs: the settings, the time in the contract's format."""
from __future__ import annotations

import datetime as dt

from flask import current_app, request
from marshmallow import Schema, fields

from ..config import Settings
from ..errors import ValidationFailed
from ..timestamps import utc_z

SETTINGS_KEY = "controlplane.settings"
# The documented form of "not blank" (value.strip() is not empty): a character that is not white space
# as Python's str.isspace() has it, which also counts U+001C-U+001F, and U+0085 that ECMA's \s lacks.
NOT_BLANK = r"[^\s\x1c-\x1f\x85]"


def settings() -> Settings:
    return current_app.extensions[SETTINGS_KEY]


def iso(value: dt.datetime | None) -> str | None:
    """ISO 8601 with the configured zone's offset, e.g. 2024-11-28T10:30:00+05:30."""
    if value is None:
        return None
    if value.tzinfo is None:
        value = value.replace(tzinfo=dt.timezone.utc)
    return value.astimezone(settings().tz).isoformat(timespec="seconds")


def now_iso() -> str:
    return iso(dt.datetime.now(dt.timezone.utc))


class ApiDateTime(fields.DateTime):
    """The Desktop API's one date-time: a stored timestamp (naive UTC) written with the configured
    zone's offset (iso). Dump only."""

    def _serialize(self, value, attr, obj, **kwargs):
        return iso(value)


class ProjectsDateTime(fields.DateTime):
    """The projects API's one date-time: UTC with a Z, e.g. 2026-02-23T10:00:00Z (timestamps.utc_z).
    Dump only."""

    def _serialize(self, value, attr, obj, **kwargs):
        return utc_z(value)


class JsonBoolean(fields.Boolean):
    """A boolean in a JSON body: true or false, as documented (marshmallow's Boolean also takes
    0, 1, "yes", "off", ...)."""

    def _deserialize(self, value, attr, data, **kwargs):
        if not isinstance(value, bool):
            raise self.make_error("invalid")
        return value


def refuse_unusable_input() -> None:
    """The API blueprints' input check, once the caller is authenticated. A JSON body is parsed here
    (the one parse, api/jsonbody.py: no deep nesting, no huge integers, no unpaired surrogates),
    so a body the views cannot use is a validation error before any view or limit reads it.
    A NUL (0x00) in a path parameter, the query or the JSON body is a validation error: PostgreSQL
    text cannot hold one (psycopg2 raises ValueError), and SQLite would store it."""
    def has_nul(value) -> bool:
        if isinstance(value, str):
            return "\x00" in value
        if isinstance(value, dict):
            return any(has_nul(k) or has_nul(v) for k, v in value.items())
        if isinstance(value, list):
            return any(has_nul(v) for v in value)
        return False

    # Not silent: a body that is not JSON, or that jsonbody refuses, is a 400 naming why.
    body = request.get_json() if request.is_json and request.get_data(cache=True) else None
    found = [name for name, value in (request.view_args or {}).items() if has_nul(value)]
    found += [name for name, value in request.args.items(multi=True) if has_nul(name) or has_nul(value)]
    if isinstance(body, dict):
        found += [name for name, value in body.items() if has_nul(name) or has_nul(value)]
    elif has_nul(body):
        found.append("body")
    if found:
        raise ValidationFailed(details={name: "Must not contain NUL (0x00) characters" for name in found})


class ListAnswer(Schema):
    """A list answer of the projects API: `success: true` beside the list, as its other answers have
    it and as clients written for the contract's origin expect (an addition within the contract)."""
    success = fields.Boolean(required=True, dump_default=True)
