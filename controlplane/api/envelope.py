"""The blueprints of the two APIs, each written once: DesktopApiBlueprint (/api/v1: desktops and
admin) and ProjectsApiBlueprint (/api: projects, invitations, chat, user settings and usage).

Both authenticate every request (g.identity) and check its input before any view; each API's
errors are rendered by api/errors.py in its own envelope. The Desktop API also wraps every answer
in the contract's envelope, here instead of in each view.

A view returns its data (a domain object, or a dict of them) and, when the contract has one, says
its message with `says()`; the response schema given to `@blp.response` dumps the data, and this
blueprint wraps it: {"success": true, "message"?, "data", "timestamp"} (desktop-api.md). The
OpenAPI document shows the same wrapping (each response schema inside its envelope); error
schemas (`envelope = False`) are documented as they are."""
from __future__ import annotations

import functools

from flask import g, request
from flask_smorest import Blueprint
from marshmallow import Schema, fields

from ..auth import current_identity
from ..errors import Forbidden
from .common import now_iso, refuse_unusable_input, settings

_MESSAGE = "desktop_api_message"


def says(message: str) -> None:
    """The envelope's `message` for the answer of this request (e.g. "Desktop deleted successfully.")."""
    setattr(g, _MESSAGE, message)


class Nothing(Schema):
    """The data of an answer that has none (null)."""


class ApiBlueprint(Blueprint):
    """Every request authenticated (and, with admin_only, by an admin), its input checked
    (refuse_unusable_input) before any view; OPTIONS is answered by Flask without a token."""

    def __init__(self, *args, admin_only: bool = False, **kwargs):
        super().__init__(*args, **kwargs)
        self.admin_only = admin_only
        self.before_request(self._authenticate)

    def _authenticate(self) -> None:
        if request.method == "OPTIONS":  # Flask answers it (Allow); no token, as flask-jwt-extended exempts it
            return
        g.identity = current_identity(settings())
        if self.admin_only and not g.identity.is_admin:
            raise Forbidden("This operation needs an admin token")
        refuse_unusable_input()


class ProjectsApiBlueprint(ApiBlueprint):
    """The projects API (projects-api.md): its answers are the schemas' dumps as they are."""


class DesktopApiBlueprint(ApiBlueprint):
    """The Desktop API (desktop-api.md): every answer in {success, message?, data, timestamp}."""

    @staticmethod
    def _prepare_response_content(data):
        body = {"success": True}
        message = g.pop(_MESSAGE, None)
        if message is not None:
            body["message"] = message
        body["data"] = data
        body["timestamp"] = now_iso()
        return body

    @staticmethod
    def _make_doc_response_schema(schema):
        if schema is not None and not getattr(schema, "envelope", True):
            return schema  # an error: its own shape
        return _enveloped(type(schema) if schema is not None else Nothing)


@functools.cache
def _enveloped(schema_class: type) -> type:
    """The envelope around `schema_class` for the OpenAPI document (one class per data schema)."""
    if schema_class is Nothing:
        data = fields.Raw(allow_none=True, required=True, metadata={"description": "Always null"})
    else:
        data = fields.Nested(schema_class, required=True)
    return type(f"{schema_class.__name__}Envelope", (Schema,), {
        "success": fields.Boolean(required=True),
        "message": fields.String(),
        "data": data,
        "timestamp": fields.String(required=True, metadata={"format": "date-time"}),
    })
