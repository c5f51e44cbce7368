"""Status changes of a desktop: the only code that writes `Desktop.status`.

Every change is one transaction that updates the desktop and appends a DesktopEvent; it is then
published on Redis pub/sub (best effort) for live listeners. Writes from a job are conditional
on the desktop still belonging to that job, so a stale or duplicate job cannot overwrite a newer
operation's state.
"""
from __future__ import annotations

import json
import logging

from ..extensions import db
from ..models import Desktop, DesktopEvent, VmidLease, utcnow
from .states import Status

log = logging.getLogger(__name__)


def set_status(desktop: Desktop, status: Status, message: str, source: str, *, job_id: str | None = None,
               publish_to: str | None = None, **fields) -> bool:
    """Move `desktop` to `status`. With `job_id`, only if the desktop's current job is that job.

    Returns False (and changes nothing) when the desktop has moved on to another job.
    """
    now = utcnow()
    values = {Desktop.status: status.value, Desktop.status_message: message, Desktop.updated_at: now}
    for name, value in fields.items():
        values[getattr(Desktop, name)] = value
    with db.atomic():
        query = Desktop.update(values).where(Desktop.id == desktop.id)
        if job_id is not None:
            query = query.where(Desktop.job_id == job_id)
        if query.execute() == 0:
            return False
        DesktopEvent.create(desktop=desktop.id, status=status.value, message=message, source=source,
                            created_at=now)
        if status is Status.DELETED:
            VmidLease.delete().where(VmidLease.desktop == desktop.id).execute()
    desktop.status, desktop.status_message, desktop.updated_at = status.value, message, now
    for name, value in fields.items():
        setattr(desktop, name, value)
    if publish_to:
        publish(publish_to, desktop)
    return True


def publish(redis_url: str, desktop: Desktop) -> None:
    """Announce a status change on `controlplane:events:user:<userId>` (for the WebSocket)."""
    from .queue import EVENTS_CHANNEL_PREFIX, get_redis
    payload = json.dumps({"type": "desktop_status", "desktop_id": desktop.id, "user_id": desktop.user_id,
                          "status": desktop.status, "statusMessage": desktop.status_message})
    try:
        get_redis(redis_url).publish(f"{EVENTS_CHANNEL_PREFIX}user:{desktop.user_id}", payload)
    except Exception as exc:  # a missed live event must never fail a status write
        log.warning("could not publish status of desktop %s: %s", desktop.id, exc)
