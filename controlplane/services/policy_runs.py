"""What every policy pass shares: acting on a record as a user's request would (act), one pass of a
kind at a time (exclusive), what a pass reports (Action) and the record of passes kept for
GET /api/v1/admin/policies/runs (record, runs, prune_records).

The passes themselves: policies.py (expire, idle, cleanup), reconcile.py, maintenance.py (drain).
"""
from __future__ import annotations

import contextlib
import datetime as dt
import json
import logging
import uuid
from dataclasses import dataclass

from ..config import Settings
from ..errors import Busy
from ..extensions import db
from ..models import AuditEntry, PolicyRun, utcnow
from ..states import Operation
from . import kinds, lifecycle
from .queue import get_redis

log = logging.getLogger(__name__)

LOCK_TTL = 600  # seconds: longer than any pass; a crashed pass's lock expires by itself


class PolicyRunning(Busy):
    """Another pass of the same policy runs."""


@dataclass
class Action:
    desktopId: int | None  # None: a VM or connection no desktop owns
    userId: str | None
    status: str  # the desktop's before the action ("" when there is none)
    action: str  # stop, delete, fail; reconcile: fail, remove-vm, remove-connection
    reason: str
    done: bool = False  # for removals: the removal job is queued
    error: str | None = None
    target: str | None = None  # reconcile: "vm <vmid>", "connection <identifier>", "project <id>"


def naive_utc(value: dt.datetime) -> dt.datetime:
    """The form timestamp columns store (models.utcnow): naive UTC, whole seconds."""
    if value.tzinfo is not None:
        value = value.astimezone(dt.timezone.utc).replace(tzinfo=None)
    return value.replace(microsecond=0)


@contextlib.contextmanager
def exclusive(settings: Settings, key: str, busy: str):
    """One holder of `key` at a time (a Redis lock that expires by itself after LOCK_TTL)."""
    conn = get_redis(settings.redis_url)
    token = uuid.uuid4().hex
    if not conn.set(key, token, nx=True, ex=LOCK_TTL):
        raise PolicyRunning(busy)
    try:
        yield conn
    finally:
        # Release only our own lock (it may have expired and been taken by another holder).
        conn.eval("if redis.call('get', KEYS[1]) == ARGV[1] then return redis.call('del', KEYS[1]) end return 0",
                  1, key, token)


def act(settings: Settings, row, operation: Operation, reason: str, source: str, action: Action,
         force: bool = False) -> Action:
    """Accept `operation` on a desktop or project for a policy, as a user's request would be."""
    kind = kinds.of(row)
    if kind.status(row.status) not in kind.allowed_from[operation]:
        action.error = f"cannot {operation.value} a {kind.name} in {row.status} state"
        return action
    accepted, message = kind.accepted[operation]
    if operation is Operation.STOP and force:
        message = "Forcing VM power-off"
    try:
        fresh = lifecycle.accept(settings, row, operation, accepted, f"{message}: {reason}", force=force,
                                 source=source, reason=reason)
    except lifecycle.QueueUnavailable as exc:
        action.error = f"the job queue is unavailable ({exc})"
        return action
    if fresh is None:
        action.error = f"the {kind.name} changed meanwhile"
        return action
    action.done = True
    return action



# ---- the record ---------------------------------------------------------------------------------

def record(result: dict, ran_by: str) -> None:
    """Keep a pass that did or found something (not a dry run) for GET /api/v1/admin/policies/runs."""
    if result["dryRun"] or not (result["actions"] or result["notes"]):
        return
    with db.connection_context():
        PolicyRun.create(policy=result["policy"], ran_by=ran_by[:255], actions=json.dumps(result["actions"]),
                         notes=json.dumps(result["notes"]))


def runs(policy: str | None = None, limit: int = 50) -> list[dict]:
    """The recorded passes, newest first."""
    query = PolicyRun.select().order_by(PolicyRun.id.desc()).limit(limit)
    if policy:
        query = query.where(PolicyRun.policy == policy)
    with db.connection_context():
        return [{"id": r.id, "policy": r.policy, "ranAt": r.ran_at, "ranBy": r.ran_by,
                 "actions": json.loads(r.actions), "notes": json.loads(r.notes)} for r in query]


def prune_records(settings: Settings) -> int:
    """Drop policy runs and audit entries older than audit_retention_days (0: keep them)."""
    if not settings.audit_retention_days:
        return 0
    cutoff = utcnow() - dt.timedelta(days=settings.audit_retention_days)
    with db.connection_context():
        return (PolicyRun.delete().where(PolicyRun.ran_at < cutoff).execute()
                + AuditEntry.delete().where(AuditEntry.at < cutoff).execute())
