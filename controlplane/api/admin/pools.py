"""The warm pool for admins (services/pool.py): each plan's pool with its VMs, and its size."""
from __future__ import annotations

from flask import g
from flask.views import MethodView
from marshmallow import EXCLUDE, Schema, fields, validate

from ...services import pool
from ...services.plans import POOL_POWERS
from ..common import ApiDateTime, settings
from ..desktops.schemas import DesktopError
from ..envelope import says
from .blueprint import blp

PLAN = {"in": "path", "name": "plan", "required": True, "description": "A plan of the plans file (BASIC, ...)",
        "schema": {"type": "string"}}


class PoolVmOut(Schema):
    """A pool VM (models.PoolVm)."""
    id = fields.Integer(required=True)
    name = fields.String(required=True, metadata={"description": "Its VM's name in Proxmox VE (cds-pool-<id>)"})
    vmid = fields.Integer(required=True)
    node = fields.String(required=True)
    state = fields.String(required=True, metadata={"description": "FILLING, READY, FAILED or REMOVING"})
    power = fields.String(required=True, metadata={"description": "running or stopped"})
    ipAddress = fields.String(attribute="ip_address", required=True, allow_none=True)
    message = fields.String(required=True)
    createdAt = ApiDateTime(attribute="created_at", required=True)
    readyAt = ApiDateTime(attribute="ready_at", required=True, allow_none=True)


class PoolOut(Schema):
    """One plan's pool (services.pool.PoolReport)."""
    plan = fields.String(attribute="config.plan", required=True)
    template = fields.String(attribute="config.template", required=True)
    size = fields.Integer(attribute="config.size", required=True,
                          metadata={"description": "VMs the pool keeps (READY or FILLING)"})
    power = fields.String(attribute="config.power", required=True,
                          metadata={"description": "running: a create is RUNNING in seconds; "
                                                   "stopped: it skips the clone but still boots"})
    source = fields.String(attribute="config.source", required=True,
                           metadata={"description": "plans file, or admin <user id>"})
    ready = fields.Integer(required=True)
    filling = fields.Integer(required=True)
    failed = fields.Integer(required=True)
    removing = fields.Integer(required=True)
    lastFailure = fields.String(attribute="last_failure", required=True, allow_none=True,
                                metadata={"description": "Why the last fill failed, while the pool waits to retry"})
    vms = fields.List(fields.Nested(PoolVmOut), required=True)


class PoolsOut(Schema):
    pools = fields.List(fields.Nested(PoolOut), required=True)


class PoolBody(Schema):
    class Meta:
        unknown = EXCLUDE

    size = fields.Integer(required=True, strict=True,
                          validate=validate.Range(min=0, error="Size must not be negative"),
                          metadata={"description": "VMs to keep; 0 empties the pool. At most "
                                                   "CONTROLPLANE_POOL_MAX_SIZE (50 unless configured)"},
                          error_messages={"required": "size is required", "invalid": "size must be an integer"})
    power = fields.String(load_default="running",
                          validate=validate.OneOf(POOL_POWERS, error="Power must be running or stopped"), metadata={"description": "running (default) or stopped"},
                          error_messages={"invalid": "power must be running or stopped"})


def _one(plan: str) -> pool.PoolReport:
    return next(p for p in pool.report(settings()) if p.config.plan == plan)


@blp.route("/pools")
class Pools(MethodView):
    @blp.response(200, PoolsOut)
    @blp.alt_response(401, schema=DesktopError, description="Missing or invalid token")
    @blp.alt_response(403, schema=DesktopError, description="Not an admin")
    def get(self):
        """Every plan's warm pool: its size, where it comes from, and its VMs (not those taken)."""
        return {"pools": pool.report(settings())}


@blp.route("/pools/<plan>", parameters=[PLAN])
class Pool(MethodView):
    @blp.arguments(PoolBody)
    @blp.response(200, PoolOut)
    @blp.alt_response(400, schema=DesktopError, description="A bad size or power")
    @blp.alt_response(401, schema=DesktopError, description="Missing or invalid token")
    @blp.alt_response(403, schema=DesktopError, description="Not an admin")
    @blp.alt_response(404, schema=DesktopError, description="No such plan in the plans file")
    def put(self, body, plan):
        """Set a plan's pool (overrides the plans file's `pool:`); VMs are made or removed in the
        background until it has `size` READY."""
        pool.set_pool(settings(), plan, body["size"], body.get("power", "running"), by=g.identity.user_id)
        says("Pool updated; it is being filled in the background.")
        return _one(plan)

    @blp.response(200, PoolOut)
    @blp.alt_response(401, schema=DesktopError, description="Missing or invalid token")
    @blp.alt_response(403, schema=DesktopError, description="Not an admin")
    @blp.alt_response(404, schema=DesktopError, description="No such plan in the plans file")
    def delete(self, plan):
        """Forget the admin's setting: the plans file's pool applies again."""
        pool.reset_pool(settings(), plan)
        says("Pool reset to the plans file.")
        return _one(plan)
