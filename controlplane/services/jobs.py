"""Enqueueing operations on desktops and projects as RQ jobs (one job per operation)."""
from __future__ import annotations

import logging
import uuid

from ..config import Settings
from ..states import Operation
from . import kinds, queue

log = logging.getLogger(__name__)



def new_job_id(resource_id: int, operation: Operation, kind: str = "desktop") -> str:
    return f"{kind}-{resource_id}-{operation.value}-{uuid.uuid4().hex[:12]}"


def origin() -> dict:
    """Who asked for the operation and in which request, when it is asked over HTTP: for the audit
    entry of its outcome."""
    try:
        from flask import g, has_request_context
    except ImportError:  # pragma: no cover
        return {}
    if not has_request_context():
        return {}
    identity = g.get("identity")
    return {"requested_by": getattr(identity, "user_id", None), "request_id": g.get("request_id")}


def enqueue(settings: Settings, operation: Operation, resource_id: int, job_id: str, force: bool = False,
            kind: str = "desktop", reason: str | None = None, requested_by: str | None = None,
            request_id: str | None = None, after: str | None = None):
    """Put the operation's job on the queue. Raises redis errors to the caller.

    The job's arguments are ids and flags only: never secrets, never user input beyond ids. Its
    meta may carry `reason`, written by a policy (never user input), for the final message, and
    who asked for it in which request (`requested_by`, `request_id`: the caller's, a policy's name,
    the reaper) for the audit log, and `after`: the job it cancels, which it waits for (ours: an id
    of new_job_id's form)."""
    described = kinds.get(kind)
    meta = {"kind": kind, "resource_id": resource_id, "operation": operation.value, "force": force}
    if reason:
        meta["reason"] = reason
    if after:
        meta["after"] = after
    asked = origin()
    meta["requested_by"] = requested_by or asked.get("requested_by")
    meta["request_id"] = request_id or asked.get("request_id") or job_id
    if kind == "desktop":
        meta["desktop_id"] = resource_id
    return queue.enqueue(settings.redis_url, described.job_function, resource_id, operation.value, force,
                         job_id=job_id, timeout=settings.job_timeout, meta=meta,
                         on_failure="controlplane.tasks.engine.on_job_failure",
                         description=f"{operation.value} {kind} {resource_id}")
