"""Admin operations under /api/v1/admin (not in desktop-api.md; the desktop API's envelopes):
lifecycle policy passes, run by the cron playbooks (playbooks/cleanup_expired.yml, stop_idle.yml,
reconcile.yml)
and by the periodic maintenance job. Admin tokens only.
"""
from __future__ import annotations

from flask import g
from flask.views import MethodView
from flask_smorest import Blueprint
from marshmallow import EXCLUDE, Schema, fields

from ...auth import current_identity
from ...errors import Forbidden, NotFound
from ...services import policies
from ..common import settings
from ..desktops.resources import envelope
from ..desktops.schemas import DesktopError, Envelope

blp = Blueprint("admin", __name__, url_prefix="/api/v1/admin",
                description="Admin operations: lifecycle policies (expiry, idle stop, clean-up) and reconciliation.")


@blp.before_request
def _admin_only():
    g.identity = current_identity(settings())
    if not g.identity.is_admin:
        raise Forbidden("This operation needs an admin token")


class PolicyRunBody(Schema):
    class Meta:
        unknown = EXCLUDE

    dryRun = fields.Boolean(load_default=False, metadata={"description": "Decide and report, change nothing"},
                            error_messages={"invalid": "dryRun must be true or false"})


class PolicyAction(Schema):
    desktopId = fields.Integer(required=True, allow_none=True)
    userId = fields.String(required=True, allow_none=True)
    status = fields.String(required=True, metadata={"description": "The desktop's status before the action"})
    action = fields.String(required=True, metadata={"description": "stop, delete or fail; reconcile: fail, "
                                                                   "remove-vm, remove-connection"})
    target = fields.String(allow_none=True, metadata={"description": "reconcile: vm <vmid>, connection <id>, "
                                                                     "project <id>"})
    reason = fields.String(required=True)
    done = fields.Boolean(required=True, metadata={"description": "false in a dry run, or when it could not be done"})
    error = fields.String(allow_none=True, required=True)


class PolicyRun(Schema):
    policy = fields.String(required=True)
    dryRun = fields.Boolean(required=True)
    ranAt = fields.String(required=True, metadata={"format": "date-time"})
    actions = fields.List(fields.Nested(PolicyAction), required=True)
    notes = fields.List(fields.String(), required=True)


class PolicyRunEnvelope(Envelope):
    data = fields.Nested(PolicyRun, required=True)


@blp.route("/policies/<name>")
class PolicyPass(MethodView):
    @blp.arguments(PolicyRunBody, required=False)
    @blp.response(200, PolicyRunEnvelope)
    @blp.alt_response(401, schema=DesktopError, description="Missing or invalid token")
    @blp.alt_response(403, schema=DesktopError, description="Not an admin")
    @blp.alt_response(404, schema=DesktopError, description="Unknown policy")
    @blp.alt_response(409, schema=DesktopError, description="A pass of this policy is running")
    def post(self, body, name):
        """Run one pass of a lifecycle policy: `expire` (stop expired desktops, delete them after
        the grace period), `idle` (stop desktops idle past their plan's limit), `cleanup` (fail
        desktops stuck in a transition, delete old failed ones), `reconcile` (remove VMs and
        Guacamole connections no live record owns, fail records whose VM vanished). One pass per
        policy at a time."""
        if name not in policies.POLICIES:
            raise NotFound(f"Unknown policy {name}; known: {', '.join(policies.POLICIES)}")
        result = policies.run(settings(), name, dry_run=bool((body or {}).get("dryRun", False)))
        return envelope(result)
