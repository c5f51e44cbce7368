"""Desktops, their events and VM-id leases, and the records kept beside them (policy runs, the audit
log, idempotency keys)."""
from __future__ import annotations

import peewee as pw

from ..states import Status
from .base import BaseModel, utcnow


class Desktop(BaseModel):
    id = pw.BigAutoField()
    user_id = pw.CharField(max_length=255)
    name = pw.CharField(max_length=100)
    status = pw.CharField(max_length=32, default=Status.PENDING.value)
    status_message = pw.TextField(default="")
    plan = pw.CharField(max_length=32)
    cpu_cores = pw.IntegerField()
    memory_mb = pw.IntegerField()
    vmid = pw.IntegerField(null=True)
    node = pw.CharField(max_length=64, null=True)
    ip_address = pw.CharField(max_length=64, null=True)
    guacamole_connection_id = pw.CharField(max_length=64, null=True)
    protocol = pw.CharField(max_length=16, null=True)
    operation = pw.CharField(max_length=16, null=True)  # the operation in flight or last run
    job_id = pw.CharField(max_length=128, null=True)  # its RQ job
    resumes = pw.IntegerField(default=0)  # times an abandoned job of this operation was resumed
    job_heartbeat_at = pw.DateTimeField(null=True)  # the running job's last sign of life (tasks/engine.py)
    created_at = pw.DateTimeField(default=utcnow)
    updated_at = pw.DateTimeField(default=utcnow)
    last_accessed_at = pw.DateTimeField(null=True)
    expires_at = pw.DateTimeField(null=True)  # stopped then, deleted after the expiry grace (policies)
    deleted_at = pw.DateTimeField(null=True)

    class Meta:
        indexes = ()


# One active (non-DELETED) desktop per user, in the database: concurrent creates race here.
Desktop.add_index(
    Desktop.index(Desktop.user_id, unique=True, name="desktop_one_active_per_user")
    .where(Desktop.status != Status.DELETED.value)
)
Desktop.add_index(Desktop.index(Desktop.status, name="desktop_status"))


class DesktopEvent(BaseModel):
    """Every status change of a desktop, in order: who moved it, to what, why."""
    id = pw.BigAutoField()
    desktop = pw.ForeignKeyField(Desktop, backref="events", on_delete="CASCADE")
    status = pw.CharField(max_length=32)
    message = pw.TextField(default="")
    source = pw.CharField(max_length=32)  # api, worker, reaper, refresh
    created_at = pw.DateTimeField(default=utcnow)


class VmidLease(BaseModel):
    """A VM id held by a desktop or a project, from allocation until its VM is confirmed gone."""
    vmid = pw.IntegerField(primary_key=True)
    desktop = pw.ForeignKeyField(Desktop, null=True, backref="leases", on_delete="SET NULL")
    project_id = pw.BigIntegerField(null=True, index=True)  # migration 2; Project is defined later
    pool_vm_id = pw.BigIntegerField(null=True, index=True)  # migration 8: a warm pool VM's, until a desktop takes it
    created_at = pw.DateTimeField(default=utcnow)


class PolicyRun(BaseModel):
    """A pass of a lifecycle policy, reconciliation or drain that did or found something: what,
    when, by whom (the periodic job, or an admin through the API) and the actions with their
    reasons (services/policies.py). Dry runs are not recorded."""
    id = pw.BigAutoField()
    policy = pw.CharField(max_length=32, index=True)
    ran_at = pw.DateTimeField(default=utcnow, index=True)
    ran_by = pw.CharField(max_length=255)  # "periodic job", or "admin <user id>"
    actions = pw.TextField(default="[]")  # JSON list of services.policy_runs.Action
    notes = pw.TextField(default="[]")  # JSON list of strings


class AuditEntry(BaseModel):
    """A request that asked for a change (POST, PUT, PATCH, DELETE under /api), whatever came of
    it: who, what, on what, the answer, and its request id (api/audit.py)."""
    id = pw.BigAutoField()
    at = pw.DateTimeField(default=utcnow, index=True)
    request_id = pw.CharField(max_length=128, index=True)
    user_id = pw.CharField(max_length=255, null=True, index=True)  # None: no valid token
    is_admin = pw.BooleanField(default=False)
    method = pw.CharField(max_length=8)
    path = pw.CharField(max_length=512)
    action = pw.CharField(max_length=64)  # the endpoint, e.g. desktops.DesktopStop
    target = pw.CharField(max_length=255, default="")  # e.g. desktop 12, project proj_...
    status = pw.IntegerField()
    result = pw.CharField(max_length=64)  # ok, or the error code


class IdempotencyKey(BaseModel):
    """A create retried with the same X-Request-ID returns the desktop the first one made."""
    id = pw.BigAutoField()
    user_id = pw.CharField(max_length=255)
    key = pw.CharField(max_length=128)
    desktop = pw.ForeignKeyField(Desktop, on_delete="CASCADE")
    created_at = pw.DateTimeField(default=utcnow)

    class Meta:
        indexes = ((("user_id", "key"), True),)


MODELS = (Desktop, DesktopEvent, VmidLease, PolicyRun, AuditEntry, IdempotencyKey)
