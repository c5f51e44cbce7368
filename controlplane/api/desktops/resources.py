"""The Desktop API: the nine endpoints of desktop-api.md under /api/v1/desktops.

Views are thin: authenticate, validate, call services.desktops, shape the contract's envelope.
"""
from __future__ import annotations

from flask import g, request
from flask.views import MethodView
from flask_smorest import Blueprint

from ...auth import current_identity
from ...errors import DesktopNotFound, ValidationFailed
from ...models import Desktop
from ...services import desktops as service
from ...services import proxmox
from ...states import Operation, Status
from ..audit import caller_request_id
from ..common import iso, now_iso, refuse_unusable_input, settings
from . import schemas

blp = Blueprint("desktops", __name__, url_prefix="/api/v1/desktops",
                description="Create, list, inspect, connect to, start, stop and delete desktops.")

ERRORS = {400: "Validation error, invalid operation or desktop not ready", 401: "Missing or invalid token",
          403: "Another user's userId", 404: "Desktop not found", 500: "Infrastructure or internal error"}
MAX_ID = 2**63 - 1
# The contract's desktop id is a Long, and so is the documented path parameter (the route takes any
# segment, so that a malformed id is a 400 VALIDATION_ERROR in the envelope, not a routing 404).
DESKTOP_ID = {"in": "path", "name": "desktop_id", "required": True, "description": "Desktop ID",
              "schema": {"type": "integer", "format": "int64", "minimum": 1}}


@blp.before_request
def _authenticate():
    if request.method == "OPTIONS":  # Flask answers it (Allow); no token, as flask-jwt-extended exempts it
        return
    g.identity = current_identity(settings())
    refuse_unusable_input()


def _desktop_id(raw: str) -> int:
    if not (raw.isascii() and raw.isdigit()) or raw.startswith("0") and raw != "0":  # not "²" nor "١"
        raise ValidationFailed(details={"id": "Desktop ID must be a positive integer"})
    if len(raw) > len(str(MAX_ID)):  # no such desktop; int() of 5000 digits raises ValueError
        raise DesktopNotFound(raw if len(raw) <= 24 else raw[:24] + "…")
    value = int(raw)
    if value == 0 or value > MAX_ID:
        raise DesktopNotFound(raw)
    return value


def desktop_data(desktop: Desktop) -> dict:
    cfg = settings()
    ever_running = desktop.ip_address is not None
    return {
        "id": desktop.id, "userId": desktop.user_id, "name": desktop.name, "status": desktop.status,
        "statusMessage": desktop.status_message, "plan": desktop.plan, "cpuCores": desktop.cpu_cores,
        "memoryMb": desktop.memory_mb, "ipAddress": desktop.ip_address if ever_running else None,
        "connectionUrl": service.connection_url(cfg, desktop), "createdAt": iso(desktop.created_at),
        "updatedAt": iso(desktop.updated_at), "lastAccessedAt": iso(desktop.last_accessed_at),
        "expiresAt": iso(desktop.expires_at),
    }


def envelope(data, message: str | None = None) -> dict:
    body = {"success": True}
    if message is not None:
        body["message"] = message
    body["data"] = data
    body["timestamp"] = now_iso()
    return body


def _with_errors(*codes):
    def wrap(fn):
        for code in codes:
            fn = blp.alt_response(code, schema=schemas.DesktopError, description=ERRORS[code])(fn)
        return fn
    return wrap


@blp.route("")
class Desktops(MethodView):
    @blp.arguments(schemas.DesktopCreate)
    @blp.response(201, schemas.DesktopEnvelope)
    @_with_errors(400, 401, 403, 500)
    @blp.alt_response(409, schema=schemas.DesktopError, description="User already has an active desktop")
    def post(self, body):
        """Create a desktop (asynchronous: poll the status endpoint until RUNNING). Idempotent with
        `X-Request-ID`: the same caller retrying with the same id gets the desktop the first
        request made (201, `Idempotent-Replayed: true`), and no second desktop is made."""
        desktop, replayed = service.create(settings(), g.identity, body["userId"], body.get("name"), body["plan"],
                                           body.get("expiresAt"), idempotency_key=caller_request_id())
        g.idempotent_replay = replayed
        headers = {"Idempotent-Replayed": "true"} if replayed else {}
        return envelope(desktop_data(desktop), "Desktop creation initiated successfully."), 201, headers

    @blp.arguments(schemas.ListQuery, location="query")
    @blp.response(200, schemas.DesktopListEnvelope)
    @_with_errors(400, 401, 403)
    def get(self, query):
        """List desktops, filtered by user and status (users see their own; admins see all)."""
        status = Status(query["status"]) if "status" in query else None
        found = service.list_desktops(g.identity, query.get("userId"), status)
        return envelope({"desktops": [desktop_data(d) for d in found], "total": len(found)})


@blp.route("/<desktop_id>", parameters=[DESKTOP_ID])
class DesktopItem(MethodView):
    @blp.response(200, schemas.DesktopEnvelope)
    @_with_errors(400, 401, 404)
    def get(self, desktop_id):
        """Get a desktop's details."""
        return envelope(desktop_data(service.get_visible(g.identity, _desktop_id(desktop_id))))

    @blp.response(200, schemas.DeletedEnvelope)
    @_with_errors(400, 401, 404, 500)
    def delete(self, desktop_id):
        """Delete a desktop: its VM and Guacamole connection are removed (asynchronous)."""
        service.request(settings(), g.identity, _desktop_id(desktop_id), Operation.DELETE)
        return envelope(None, "Desktop deleted successfully.")


@blp.route("/user/<path:user_id>")
class DesktopOfUser(MethodView):
    @blp.response(200, schemas.DesktopEnvelope)
    @_with_errors(401, 403, 404)
    def get(self, user_id):
        """Get the user's active desktop (one per user)."""
        return envelope(desktop_data(service.get_for_user(g.identity, user_id)))


@blp.route("/<desktop_id>/status", parameters=[DESKTOP_ID])
class DesktopStatus(MethodView):
    @blp.arguments(schemas.StatusQuery, location="query")
    @blp.response(200, schemas.DesktopStatusEnvelope)
    @_with_errors(400, 401, 404, 500)
    def get(self, query, desktop_id):
        """Get a desktop's status; `refresh=true` reads the VM's live state from Proxmox VE first."""
        cfg = settings()
        desktop = service.get_visible(g.identity, _desktop_id(desktop_id))
        if query["refresh"]:
            desktop = proxmox.refresh(cfg, desktop)
        return envelope({"desktopId": desktop.id, "status": desktop.status, "statusMessage": desktop.status_message,
                         "ready": desktop.status == Status.RUNNING.value})


@blp.route("/<desktop_id>/connect", parameters=[DESKTOP_ID])
class DesktopConnect(MethodView):
    @blp.response(200, schemas.ConnectionEnvelope)
    @_with_errors(400, 401, 404)
    def get(self, desktop_id):
        """Get the Guacamole URL of a RUNNING desktop."""
        cfg = settings()
        desktop = service.connect(cfg, g.identity, _desktop_id(desktop_id))
        url, expires_at = service.connection_link(cfg, desktop)
        return envelope({"desktopId": desktop.id, "connectionUrl": url,
                         "protocol": desktop.protocol or cfg.guacamole_protocol,
                         "expiresAt": iso(expires_at) if expires_at else None})


@blp.route("/<desktop_id>/start", parameters=[DESKTOP_ID])
class DesktopStart(MethodView):
    @blp.arguments(schemas.EmptyBody, required=False)
    @blp.response(200, schemas.DesktopEnvelope)
    @_with_errors(400, 401, 404, 500)
    def post(self, _body, desktop_id):
        """Start a STOPPED desktop (asynchronous: STARTING, then RUNNING)."""
        desktop = service.request(settings(), g.identity, _desktop_id(desktop_id), Operation.START)
        return envelope(desktop_data(desktop), "Desktop started successfully.")


@blp.route("/<desktop_id>/stop", parameters=[DESKTOP_ID])
class DesktopStop(MethodView):
    @blp.arguments(schemas.StopBody, required=False)
    @blp.response(200, schemas.DesktopEnvelope)
    @_with_errors(400, 401, 404, 500)
    def post(self, body, desktop_id):
        """Stop a RUNNING desktop; `force` powers it off without a graceful shutdown."""
        desktop = service.request(settings(), g.identity, _desktop_id(desktop_id), Operation.STOP,
                                  force=bool((body or {}).get("force", False)))
        return envelope(desktop_data(desktop), "Desktop stopped successfully.")


@blp.route("/<desktop_id>/events", parameters=[DESKTOP_ID])
class DesktopEvents(MethodView):
    @blp.response(200, schemas.DesktopEventsEnvelope)
    @_with_errors(400, 401, 404)
    def get(self, desktop_id):
        """Every status change of a desktop, oldest first: what happened, why, and who did it
        (`api`: a user's request; `worker`; `reaper`; `refresh`; `policy:expire`, `policy:idle`,
        `policy:cleanup`: an automatic action). Not in desktop-api.md."""
        desktop = service.get_visible(g.identity, _desktop_id(desktop_id))
        events = [{"status": e.status, "message": e.message, "source": e.source, "createdAt": iso(e.created_at)}
                  for e in service.events(desktop)]
        return envelope({"desktopId": desktop.id, "events": events})
