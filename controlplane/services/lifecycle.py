"""Status changes of desktops and projects: the only code that writes their `status`.

Every change is one transaction that updates the record and appends its event; it is then
published on Redis pub/sub (best effort) for live listeners (the WebSocket). Writes from a job
are conditional on the record still belonging to that job, so a stale or duplicate job cannot
overwrite a newer operation's state.
"""
from __future__ import annotations

import logging

from ..extensions import db
from ..models import DesktopEvent, utcnow  # noqa: F401  (DesktopEvent: used by services.desktops)
from . import kinds

log = logging.getLogger(__name__)


def set_status(row, status, message: str, source: str, *, job_id: str | None = None,
               publish_to: str | None = None, settings=None, **fields) -> bool:
    """Move `row` (a Desktop or a Project) to `status`. With `job_id`, only if the record's
    current job is that job. Returns False (and changes nothing) when it has moved on.
    `settings` are needed to move a project to deleted (releasing it removes its shared folder)."""
    kind = kinds.of(row)
    model = kind.model
    now = utcnow()
    values = {model.status: status.value, model.status_message: message, model.updated_at: now}
    for name, value in fields.items():
        values[getattr(model, name)] = value
    with db.atomic():
        query = model.update(values).where(model.id == row.id)
        if job_id is not None:
            query = query.where(model.job_id == job_id)
        if query.execute() == 0:
            return False
        kind.event_model.create(**{kind.event_fk: row.id}, status=status.value, message=message, source=source,
                                created_at=now)
        if status is kind.deleted:
            kind.release(row, settings)
    row.status, row.status_message, row.updated_at = status.value, message, now
    for name, value in fields.items():
        setattr(row, name, value)
    if publish_to:
        publish(publish_to, row)
    return True


def record_event(row, status, message: str, source: str) -> None:
    kind = kinds.of(row)
    kind.event_model.create(**{kind.event_fk: row.id}, status=status.value, message=message, source=source)


def publish(redis_url: str, row, extra: dict | None = None) -> None:
    """Announce a record's state on its channels (`controlplane:events:<suffix>`)."""
    from .queue import EVENTS_CHANNEL_PREFIX, get_redis
    kind = kinds.of(row)
    payload = kinds.dumps({**kind.event(row), **(extra or {})})
    try:
        conn = get_redis(redis_url)
        for suffix in kind.channel(row):
            conn.publish(f"{EVENTS_CHANNEL_PREFIX}{suffix}", payload)
    except Exception as exc:  # a missed live event must never fail a status write
        log.warning("could not publish status of %s %s: %s", kind.name, row.id, exc)
