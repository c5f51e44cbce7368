"""The audit log's lifecycle entries: the outcome of every operation a job carried out on a desktop or
a project (the HTTP requests themselves are recorded by api/audit.py). Who asked and the request id
come from the job (services/jobs.py): the caller and their X-Request-ID, or a policy, or the reaper.
"""
from __future__ import annotations

import logging

from ..models import AuditEntry
from . import kinds

log = logging.getLogger(__name__)


def record_outcome(row, operation, *, ok: bool, requested_by: str | None, request_id: str | None) -> None:
    """One entry: method JOB, action `<kind>.<operation>`, the record's final status as result. Never
    raises (the audit must not change what happened); a failure to write is logged."""
    kind = kinds.of(row)
    ident = getattr(row, "public_id", None) or row.id
    try:
        AuditEntry.create(request_id=(request_id or "")[:128] or "job", user_id=requested_by, is_admin=False,
                          method="JOB", path=(f"/api/v1/desktops/{ident}" if kind.name == "desktop" else f"/api/projects/{ident}")[:512],
                          action=f"{kind.name}.{operation.value}"[:64], target=f"{kind.name} {ident}"[:255],
                          status=200 if ok else 500, result=str(row.status)[:64])
    except Exception:
        log.exception("could not record the outcome of %s %s on %s %s", operation.value, kind.name, kind.name, ident)
