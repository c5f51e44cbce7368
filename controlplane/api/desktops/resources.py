"""The Desktop API: the nine endpoints of desktop-api.md under /api/v1/desktops.

Views are thin: they validate, call services.desktops and return what it gives; the response schemas
(schemas.py) dump it and the blueprint (api/envelope.py) authenticates and wraps it in the contract's
envelope.
"""
from __future__ import annotations

from flask import g
from flask.views import MethodView

from ...errors import DesktopNotFound, ValidationFailed
from ...services import desktops as service
from ...services import proxmox
from ...states import Operation, Status
from ..audit import caller_request_id
from ..common import settings
from ..envelope import DesktopApiBlueprint, says
from . import schemas

blp = DesktopApiBlueprint("desktops", __name__, url_prefix="/api/v1/desktops",
                          description="Create, list, inspect, connect to, start, stop and delete desktops.")

ERRORS = {400: "Validation error, invalid operation or desktop not ready", 401: "Missing or invalid token",
          403: "Another user's userId", 404: "Desktop not found", 500: "Infrastructure or internal error"}
MAX_ID = 2**63 - 1
# The contract's desktop id is a Long, and so is the documented path parameter (the route takes any
# segment, so that a malformed id is a 400 VALIDATION_ERROR in the envelope, not a routing 404).
DESKTOP_ID = {"in": "path", "name": "desktop_id", "required": True, "description": "Desktop ID",
              "schema": {"type": "integer", "format": "int64", "minimum": 1}}


def _desktop_id(raw: str) -> int:
    if not (raw.isascii() and raw.isdigit()) or raw.startswith("0") and raw != "0":  # not "²" nor "١"
        raise ValidationFailed(details={"id": "Desktop ID must be a positive integer"})
    if len(raw) > len(str(MAX_ID)):  # no such desktop; int() of 5000 digits raises ValueError
        raise DesktopNotFound(raw if len(raw) <= 24 else raw[:24] + "…")
    value = int(raw)
    if value == 0 or value > MAX_ID:
        raise DesktopNotFound(raw)
    return value


def _with_errors(*codes):
    def wrap(fn):
        for code in codes:
            fn = blp.alt_response(code, schema=schemas.DesktopError, description=ERRORS[code])(fn)
        return fn
    return wrap


@blp.route("")
class Desktops(MethodView):
    @blp.arguments(schemas.DesktopCreate)
    @blp.response(201, schemas.Desktop)
    @_with_errors(400, 401, 403, 500)
    @blp.alt_response(409, schema=schemas.DesktopError, description="User already has an active desktop")
    def post(self, body):
        """Create a desktop (asynchronous: poll the status endpoint until RUNNING). Idempotent with
        `X-Request-ID`: the same caller retrying with the same id gets the desktop the first
        request made (201, `Idempotent-Replayed: true`), and no second desktop is made."""
        desktop, replayed = service.create(settings(), g.identity, body["userId"], body.get("name"), body["plan"],
                                           body.get("expiresAt"), idempotency_key=caller_request_id())
        g.idempotent_replay = replayed
        says("Desktop creation initiated successfully.")
        return desktop, 201, {"Idempotent-Replayed": "true"} if replayed else {}

    @blp.arguments(schemas.ListQuery, location="query")
    @blp.response(200, schemas.DesktopList)
    @_with_errors(400, 401, 403)
    def get(self, query):
        """List desktops, filtered by user and status (users see their own; admins see all)."""
        status = Status(query["status"]) if "status" in query else None
        found = service.list_desktops(g.identity, query.get("userId"), status)
        return {"desktops": found, "total": len(found)}


@blp.route("/<desktop_id>", parameters=[DESKTOP_ID])
class DesktopItem(MethodView):
    @blp.response(200, schemas.Desktop)
    @_with_errors(400, 401, 404)
    def get(self, desktop_id):
        """Get a desktop's details."""
        return service.get_visible(g.identity, _desktop_id(desktop_id))

    @blp.response(200)
    @_with_errors(400, 401, 404, 500)
    def delete(self, desktop_id):
        """Delete a desktop: its VM and Guacamole connection are removed (asynchronous)."""
        service.request(settings(), g.identity, _desktop_id(desktop_id), Operation.DELETE)
        says("Desktop deleted successfully.")


@blp.route("/user/<path:user_id>")
class DesktopOfUser(MethodView):
    @blp.response(200, schemas.Desktop)
    @_with_errors(401, 403, 404)
    def get(self, user_id):
        """Get the user's active desktop (one per user)."""
        return service.get_for_user(g.identity, user_id)


@blp.route("/<desktop_id>/status", parameters=[DESKTOP_ID])
class DesktopStatus(MethodView):
    @blp.arguments(schemas.StatusQuery, location="query")
    @blp.response(200, schemas.DesktopStatus)
    @_with_errors(400, 401, 404, 500)
    def get(self, query, desktop_id):
        """Get a desktop's status; `refresh=true` reads the VM's live state from Proxmox VE first."""
        cfg = settings()
        desktop = service.get_visible(g.identity, _desktop_id(desktop_id))
        if query["refresh"]:
            desktop = proxmox.refresh(cfg, desktop)
        return desktop


@blp.route("/<desktop_id>/connect", parameters=[DESKTOP_ID])
class DesktopConnect(MethodView):
    @blp.response(200, schemas.Connection)
    @_with_errors(400, 401, 404)
    def get(self, desktop_id):
        """Get the Guacamole URL of a RUNNING desktop."""
        cfg = settings()
        desktop = service.connect(cfg, g.identity, _desktop_id(desktop_id))
        url, expires_at = service.connection_link(cfg, desktop)
        return {"desktopId": desktop.id, "connectionUrl": url, "protocol": desktop.protocol or cfg.guacamole_protocol,
                "expiresAt": expires_at}


@blp.route("/<desktop_id>/start", parameters=[DESKTOP_ID])
class DesktopStart(MethodView):
    @blp.arguments(schemas.EmptyBody, required=False)
    @blp.response(200, schemas.Desktop)
    @_with_errors(400, 401, 404, 500)
    def post(self, _body, desktop_id):
        """Start a STOPPED desktop (asynchronous: STARTING, then RUNNING)."""
        desktop = service.request(settings(), g.identity, _desktop_id(desktop_id), Operation.START)
        says("Desktop started successfully.")
        return desktop


@blp.route("/<desktop_id>/stop", parameters=[DESKTOP_ID])
class DesktopStop(MethodView):
    @blp.arguments(schemas.StopBody, required=False)
    @blp.response(200, schemas.Desktop)
    @_with_errors(400, 401, 404, 500)
    def post(self, body, desktop_id):
        """Stop a RUNNING desktop; `force` powers it off without a graceful shutdown."""
        desktop = service.request(settings(), g.identity, _desktop_id(desktop_id), Operation.STOP,
                                  force=bool((body or {}).get("force", False)))
        says("Desktop stopped successfully.")
        return desktop


@blp.route("/<desktop_id>/events", parameters=[DESKTOP_ID])
class DesktopEvents(MethodView):
    @blp.response(200, schemas.DesktopEvents)
    @_with_errors(400, 401, 404)
    def get(self, desktop_id):
        """Every status change of a desktop, oldest first: what happened, why, and who did it
        (`api`: a user's request; `worker`; `reaper`; `refresh`; `policy:expire`, `policy:idle`,
        `policy:cleanup`: an automatic action). Not in desktop-api.md."""
        desktop = service.get_visible(g.identity, _desktop_id(desktop_id))
        return {"desktopId": desktop.id, "events": service.events(desktop)}
