"""Marshmallow schemas of the Desktop API, field names and messages as the contract has them."""
from __future__ import annotations

from marshmallow import EXCLUDE, Schema, ValidationError, fields, validate, validates

from ... import user_ids
from ...services.desktops import connection_url as service_connection_url
from ...services.desktops import plan_choices
from ...services.plans import load_plans
from ...states import Status
from ..common import NOT_BLANK, ApiDateTime, JsonBoolean, settings

STATUS_CHOICES = [s.value for s in Status]
# What user_ids.problem() accepts, for the OpenAPI document: not blank, no control characters (C0,
# DEL, C1) and no bidirectional controls (lone surrogates are not JSON text: the body parser refuses them).
_USER_ID_CONTROL = r"\x00-\x1f\x7f-\x9f\u202a-\u202e\u2066-\u2069"
USER_ID_PATTERN = rf"^[^{_USER_ID_CONTROL}]*[^\s{_USER_ID_CONTROL}][^{_USER_ID_CONTROL}]*$"


def _plans_text() -> str:
    return plan_choices(settings())


class DesktopCreate(Schema):
    class Meta:
        unknown = EXCLUDE

    userId = fields.String(required=True, metadata={"description": "Unique identifier for the user", "example": "user_12345",
                                                    "maxLength": 255, "pattern": USER_ID_PATTERN},  # as _user checks
                           error_messages={"required": "User ID is required", "null": "User ID is required",
                                           "invalid": "User ID must be a string"})
    name = fields.String(load_default=None, allow_none=True,
                         metadata={"description": 'Display name; defaults to "Desktop-{userId}"', "maxLength": 100,
                                   "pattern": NOT_BLANK},  # not blank, as _name checks
                         error_messages={"invalid": "Name must be a string"})
    plan = fields.String(load_default="BASIC", metadata={"description": "BASIC, STANDARD or PREMIUM", "example": "STANDARD"},
                         error_messages={"invalid": "Plan must be a string", "null": "Plan must not be null"})
    expiresAt = fields.AwareDateTime(
        load_default=None, allow_none=True,
        metadata={"description": "When the desktop expires (stopped, then deleted after a grace period); "
                                 "default and latest: the plan's lifetime, if it has one", "format": "date-time"},
        error_messages={"invalid": "expiresAt must be an ISO 8601 date-time",
                        "invalid_awareness": "expiresAt must have a time zone offset"})

    @validates("userId")
    def _user(self, value, **_):
        why = user_ids.problem(value)  # blank, over 255 characters, control characters
        if why:
            raise ValidationError(why)

    @validates("name")
    def _name(self, value, **_):
        if value is None:
            return
        if not value.strip():
            raise ValidationError("Name must not be blank")
        if len(value) > 100:
            raise ValidationError("Name must be at most 100 characters")

    @validates("plan")
    def _plan(self, value, **_):
        if value not in load_plans(settings().plans_file):
            raise ValidationError(f"Plan must be one of {_plans_text()}")


class StopBody(Schema):
    class Meta:
        unknown = EXCLUDE

    force = JsonBoolean(load_default=False, metadata={"description": "Immediate power-off instead of a graceful shutdown"},
                        error_messages={"invalid": "Force must be true or false"})


class EmptyBody(Schema):
    class Meta:
        unknown = EXCLUDE


class ListQuery(Schema):
    class Meta:
        unknown = EXCLUDE

    userId = fields.String(metadata={"description": "Filter by user ID"})
    status = fields.String(validate=validate.OneOf(STATUS_CHOICES, error="Status must be one of " + ", ".join(STATUS_CHOICES)),
                           metadata={"description": "Filter by desktop status"})


class StatusQuery(Schema):
    class Meta:
        unknown = EXCLUDE

    refresh = fields.Boolean(load_default=False, metadata={"description": "Force refresh from Proxmox VE"},
                             error_messages={"invalid": "Refresh must be true or false"})


class ConnectionUrl(fields.String):
    """A desktop's Guacamole URL while it is RUNNING (services.desktops.connection_url), else null."""

    def serialize(self, attr, obj, accessor=None, **kwargs):
        return service_connection_url(settings(), obj)


class Desktop(Schema):
    """A desktop (models.Desktop) as the contract shows it."""
    id = fields.Integer(required=True)
    userId = fields.String(attribute="user_id", required=True)
    name = fields.String(required=True)
    status = fields.String(required=True, validate=validate.OneOf(STATUS_CHOICES))
    statusMessage = fields.String(attribute="status_message", required=True)
    plan = fields.String(required=True)
    cpuCores = fields.Integer(attribute="cpu_cores", required=True)
    memoryMb = fields.Integer(attribute="memory_mb", required=True)
    ipAddress = fields.String(attribute="ip_address", allow_none=True, required=True)
    connectionUrl = ConnectionUrl(allow_none=True, required=True)
    createdAt = ApiDateTime(attribute="created_at", required=True)
    updatedAt = ApiDateTime(attribute="updated_at", required=True)
    lastAccessedAt = ApiDateTime(attribute="last_accessed_at", allow_none=True, required=True)
    expiresAt = ApiDateTime(attribute="expires_at", allow_none=True, required=True,
                            metadata={"description": "When the desktop expires; null: never"})


class DesktopList(Schema):
    desktops = fields.List(fields.Nested(Desktop), required=True)
    total = fields.Integer(required=True)


class DesktopStatus(Schema):
    """A desktop's status (models.Desktop)."""
    desktopId = fields.Integer(attribute="id", required=True)
    status = fields.String(required=True)
    statusMessage = fields.String(attribute="status_message", required=True)
    ready = fields.Function(lambda desktop: desktop.status == Status.RUNNING.value, required=True,
                            metadata={"type": "boolean"})


class Connection(Schema):
    desktopId = fields.Integer(required=True)
    connectionUrl = fields.String(required=True)
    protocol = fields.String(required=True, metadata={"description": "vnc or rdp (Guacamole has no SPICE)"})
    expiresAt = ApiDateTime(allow_none=True, required=True)


class DesktopEvent(Schema):
    """One status change (models.DesktopEvent)."""
    status = fields.String(required=True)
    message = fields.String(required=True)
    source = fields.String(required=True, metadata={"description": "api, worker, reaper, refresh, or policy:<name>"})
    createdAt = ApiDateTime(attribute="created_at", required=True)


class DesktopEvents(Schema):
    desktopId = fields.Integer(required=True)
    events = fields.List(fields.Nested(DesktopEvent), required=True)


class DesktopError(Schema):
    envelope = False  # documented as it is (api/envelope.py)

    success = fields.Boolean(required=True)
    error = fields.String(required=True)
    message = fields.String(required=True)
    details = fields.Dict(keys=fields.String(), values=fields.String())
    path = fields.String(required=True)
    timestamp = fields.String(required=True)
