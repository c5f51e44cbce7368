"""Admin operations under /api/v1/admin (not in desktop-api.md; the desktop API's envelopes):
lifecycle policy passes, run by the cron playbooks (playbooks/cleanup_expired.yml, stop_idle.yml,
reconcile.yml)
and by the periodic maintenance job. Admin tokens only.
"""
from __future__ import annotations

import re

from flask import g
from flask.views import MethodView
from marshmallow import EXCLUDE, Schema, fields, validate

from ...errors import ValidationFailed
from ...models import AuditEntry
from ...services import maintenance, policies, policy_runs
from ..common import ApiDateTime, JsonBoolean, settings
from ..desktops.schemas import DesktopError
from .blueprint import blp


class PolicyRunBody(Schema):
    class Meta:
        unknown = EXCLUDE

    dryRun = JsonBoolean(load_default=False, metadata={"description": "Decide and report, change nothing"},
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
    ranAt = ApiDateTime(required=True)
    actions = fields.List(fields.Nested(PolicyAction), required=True)
    notes = fields.List(fields.String(), required=True)


class RunsQuery(Schema):
    class Meta:
        unknown = EXCLUDE

    policy = fields.String(metadata={"description": "Only this policy's runs (expire, idle, cleanup, reconcile, drain)"})
    limit = fields.Integer(load_default=50, validate=validate.Range(min=1, max=500),
                           error_messages={"invalid": "limit must be an integer"})


class RecordedRun(Schema):
    id = fields.Integer(required=True)
    policy = fields.String(required=True)
    ranAt = ApiDateTime(required=True)
    ranBy = fields.String(required=True, metadata={"description": "periodic job, or admin <user id>"})
    actions = fields.List(fields.Nested(PolicyAction), required=True)
    notes = fields.List(fields.String(), required=True)


class RecordedRuns(Schema):
    runs = fields.List(fields.Nested(RecordedRun), required=True)


@blp.route("/policies/runs")
class PolicyRuns(MethodView):
    @blp.arguments(RunsQuery, location="query")
    @blp.response(200, RecordedRuns)
    @blp.alt_response(400, schema=DesktopError, description="Bad query")
    @blp.alt_response(401, schema=DesktopError, description="Missing or invalid token")
    @blp.alt_response(403, schema=DesktopError, description="Not an admin")
    def get(self, query):
        """Every automatic action, newest first: the recorded passes of the policies, the
        reconciliation and drains that did or found something (who ran them, when, what, why)."""
        return {"runs": policy_runs.runs(query.get("policy"), query["limit"])}


# Only the policies' names: /policies/runs is another resource (GET), so POST is not allowed there.
@blp.route(f"/policies/<any({', '.join(policies.POLICIES)}):name>")
class PolicyPass(MethodView):
    @blp.arguments(PolicyRunBody, required=False)
    @blp.response(200, PolicyRun)
    @blp.alt_response(400, schema=DesktopError, description="A bad body")
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
        result = policies.run(settings(), name, dry_run=bool((body or {}).get("dryRun", False)),
                              ran_by=f"admin {g.identity.user_id}")
        return result


NODE_NAME = re.compile(r"^[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?$")
NODE = {"in": "path", "name": "node", "required": True, "description": "A Proxmox VE node name",
        "schema": {"type": "string", "pattern": NODE_NAME.pattern}}  # documented as _node() checks it


def _node(raw: str) -> str:
    if not NODE_NAME.match(raw):
        raise ValidationFailed(details={"node": "Node must be a Proxmox VE node name (letters, digits, -)"})
    return raw


class DrainBody(PolicyRunBody):
    force = JsonBoolean(load_default=False, metadata={"description": "Power off instead of a graceful shutdown"},
                        error_messages={"invalid": "force must be true or false"})


class NodeReport(Schema):
    node = fields.String(required=True)
    draining = fields.Boolean(required=True, metadata={"description": "In maintenance: no starts or creates there"})
    desktops = fields.Dict(keys=fields.String(), values=fields.List(fields.Integer()), required=True,
                           metadata={"description": "status → desktop ids on the node"})
    projects = fields.Dict(keys=fields.String(), values=fields.List(fields.String()), required=True,
                           metadata={"description": "status → project ids on the node"})
    settled = fields.Boolean(required=True, metadata={"description": "Nothing runs or is in a transition there"})


@blp.route("/nodes/<node>", parameters=[NODE])
class Node(MethodView):
    @blp.response(200, NodeReport)
    @blp.alt_response(400, schema=DesktopError, description="Not a node name")
    @blp.alt_response(401, schema=DesktopError, description="Missing or invalid token")
    @blp.alt_response(403, schema=DesktopError, description="Not an admin")
    def get(self, node):
        """What is on a node (desktops and projects by status) and whether it is in maintenance."""
        return maintenance.node_report(settings(), _node(node))


@blp.route("/nodes/<node>/drain", parameters=[NODE])
class NodeDrain(MethodView):
    @blp.arguments(DrainBody, required=False)
    @blp.response(200, PolicyRun)
    @blp.alt_response(400, schema=DesktopError, description="Not a node name, or a bad body")
    @blp.alt_response(401, schema=DesktopError, description="Missing or invalid token")
    @blp.alt_response(403, schema=DesktopError, description="Not an admin")
    @blp.alt_response(409, schema=DesktopError, description="The node is being drained by another request")
    def post(self, body, node):
        """Maintenance: put the node in maintenance (desktops and projects there cannot be started
        or created) and stop every RUNNING desktop and project on it (gracefully unless `force`).
        Poll GET /nodes/<node> until `settled`; DELETE ends the maintenance."""
        body = body or {}
        return maintenance.drain(settings(), _node(node), dry_run=bool(body.get("dryRun", False)),
                                 force=bool(body.get("force", False)), ran_by=f"admin {g.identity.user_id}")

    @blp.response(200, NodeReport)
    @blp.alt_response(400, schema=DesktopError, description="Not a node name")
    @blp.alt_response(401, schema=DesktopError, description="Missing or invalid token")
    @blp.alt_response(403, schema=DesktopError, description="Not an admin")
    def delete(self, node):
        """End the node's maintenance: desktops and projects there can be started again."""
        cfg = settings()
        maintenance.release(cfg, _node(node), ran_by=f"admin {g.identity.user_id}")
        return maintenance.node_report(cfg, node)


class AuditQuery(Schema):
    class Meta:
        unknown = EXCLUDE

    userId = fields.String(metadata={"description": "Only this user's requests"})
    requestId = fields.String(metadata={"description": "Only the request with this X-Request-ID"})
    limit = fields.Integer(load_default=100, validate=validate.Range(min=1, max=1000),
                           error_messages={"invalid": "limit must be an integer"})


class AuditRecord(Schema):
    """One audit entry (models.AuditEntry)."""
    id = fields.Integer(required=True)
    at = ApiDateTime(required=True)
    requestId = fields.String(attribute="request_id", required=True)
    userId = fields.String(attribute="user_id", required=True, allow_none=True,
                           metadata={"description": "null: no valid token"})
    admin = fields.Boolean(attribute="is_admin", required=True)
    method = fields.String(required=True)
    path = fields.String(required=True)
    action = fields.String(required=True, metadata={"description": "The endpoint, e.g. desktops.DesktopStop"})
    target = fields.String(required=True, metadata={"description": "e.g. desktop 12, project proj_..."})
    status = fields.Integer(required=True)
    result = fields.String(required=True, metadata={"description": "ok, or the error code"})


class AuditList(Schema):
    entries = fields.List(fields.Nested(AuditRecord), required=True)


@blp.route("/audit")
class Audit(MethodView):
    @blp.arguments(AuditQuery, location="query")
    @blp.response(200, AuditList)
    @blp.alt_response(400, schema=DesktopError, description="Bad query")
    @blp.alt_response(401, schema=DesktopError, description="Missing or invalid token")
    @blp.alt_response(403, schema=DesktopError, description="Not an admin")
    def get(self, query):
        """The audit log, newest first: every request that asked for a change, with who, what, on
        what, the answer and its X-Request-ID; and the outcome of every operation a job carried
        out (method JOB, action `desktop.create`..., result the final status), under the request id
        of the request that asked for it (or the policy or reaper that did). Each automatic action
        is also in GET /policies/runs and in its desktop's events."""
        found = AuditEntry.select().order_by(AuditEntry.id.desc()).limit(query["limit"])
        if "userId" in query:
            found = found.where(AuditEntry.user_id == query["userId"])
        if "requestId" in query:
            found = found.where(AuditEntry.request_id == query["requestId"])
        return {"entries": found}

