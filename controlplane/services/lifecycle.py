"""Status changes of desktops and projects: the only code that writes their `status`.

Every change is one transaction that updates the record and appends its event; it is then
published on Redis pub/sub (best effort) for live listeners (the WebSocket). Writes from a job
are conditional on the record still belonging to that job, so a stale or duplicate job cannot
overwrite a newer operation's state.
"""
from __future__ import annotations

import logging
from typing import Callable

import redis

from ..extensions import db
from ..models import utcnow
from ..states import Operation
from . import jobs, kinds, queue

log = logging.getLogger(__name__)


def set_status(row, status, message: str, source: str, *, job_id: str | None = None,
               expect: dict | None = None, publish_to: str | None = None, settings=None, hand_to: str | None = None,
               **fields) -> bool:
    """Move `row` (a Desktop or a Project) to `status`. With `job_id`, only if the record's
    current job is that job; with `expect` ({field: value read}, None for NULL), only if the
    record's fields still have those values. Returns False (and changes nothing) when it has moved on.
    `hand_to`: the job that now owns the record (a retry's). `settings` are needed to move a project
    to deleted (releasing it removes its shared folder)."""
    kind = kinds.of(row)
    model = kind.model
    now = utcnow()
    values = {model.status: status.value, model.status_message: message, model.updated_at: now}
    if hand_to is not None:
        fields["job_id"] = hand_to
    for name, value in fields.items():
        values[getattr(model, name)] = value
    with db.atomic():
        query = model.update(values).where(model.id == row.id)
        if job_id is not None:
            query = query.where(model.job_id == job_id)
        for name, value in (expect or {}).items():
            column = getattr(model, name)
            query = query.where(column.is_null() if value is None else column == value)
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
    """Announce a record's state on its channels (queue.user_channel, queue.project_channel)."""
    kind = kinds.of(row)
    queue.publish(redis_url, kind.channel(row), {**kind.event(row), **(extra or {})})


class QueueUnavailable(Exception):
    """The operation could not be enqueued; the record was put back as it was (or, for a create,
    removed)."""


def enqueue_create(settings, row, undo: Callable[[], None] | None = None) -> None:
    """Enqueue the CREATE job of a record just committed with its job id (the one create path of
    desktops and projects). If Redis refuses it, nothing was made yet: in one transaction, `undo`
    puts back what the create took from elsewhere (a warm pool VM), the record releases what it
    holds (its kind's release: leases, folder...) and goes, so that the user can simply retry;
    QueueUnavailable is raised. Published once enqueued."""
    kind = kinds.of(row)
    try:
        jobs.enqueue(settings, Operation.CREATE, row.id, row.job_id, kind=kind.name)
    except redis.RedisError as exc:
        log.error("enqueue of create for %s %s failed: %s", kind.name, row.id, exc)
        with db.atomic():
            if undo is not None:
                undo()
            kind.release(row, settings)
            row.delete_instance(recursive=True)
        raise QueueUnavailable(str(exc)) from None
    publish(settings.redis_url, row)


ACCEPT_TRIES = 5  # a job under way may move the record on between the caller's read and our write


def accept(settings, row, operation, accepted, message: str, force: bool = False, source: str = "api",
           reason: str | None = None):
    """Accept an operation on a desktop or project whose current status allows it: move it to
    `accepted` (conditional on the status and job the write saw, so two concurrent requests cannot
    both win), record the event (from `source`: the API, or a policy), enqueue the job, and
    publish. Returns the fresh record, or None when its status no longer allows the operation. If
    Redis refuses the job, the record is put back and QueueUnavailable is raised. `reason` (why a
    policy acts) travels with the job and ends up in the final status message.

    A delete of a record whose create or start is under way (its kind's `cancellable` statuses)
    cancels that job: the record is the delete's from now on, so the running job stops its playbook
    at once (tasks/engine.py), a job not started yet is cancelled in RQ, and the delete's job waits
    for the old one to end (its meta's `after`) before removing whatever the old one had made."""
    kind = kinds.of(row)
    model = kind.model
    job_id = jobs.new_job_id(row.id, operation, kind.name)
    for _ in range(ACCEPT_TRIES):
        previous = {"status": row.status, "status_message": row.status_message, "operation": row.operation,
                    "job_id": row.job_id}
        cancels = (operation is Operation.DELETE and kind.status(row.status) in kind.cancellable
                   and row.job_id is not None)
        said = f"{(row.operation or 'operation').capitalize()} cancelled; {message[:1].lower()}{message[1:]}" \
            if cancels else message
        with db.atomic():
            same_job = model.job_id.is_null() if row.job_id is None else model.job_id == row.job_id
            changed = (model.update(status=accepted.value, status_message=said, operation=operation.value,
                                    job_id=job_id, resumes=0, updated_at=utcnow())
                       .where(model.id == row.id, model.status == row.status, same_job).execute())
            if changed:
                record_event(row, accepted, said, source)
        if changed:
            break
        row = model.get_or_none(model.id == row.id)  # moved on meanwhile: is the operation still allowed?
        if row is None or kind.status(row.status) not in kind.allowed_from[operation]:
            return None
    else:
        return None
    after = previous["job_id"] if cancels else None
    try:
        jobs.enqueue(settings, operation, row.id, job_id, force=force, kind=kind.name, reason=reason,
                     requested_by=None if source == "api" else source, after=after)
    except redis.RedisError as exc:
        log.error("enqueue of %s for %s %s failed: %s", operation.value, kind.name, row.id, exc)
        model.update(**previous).where(model.id == row.id, model.job_id == job_id).execute()
        raise QueueUnavailable(str(exc)) from None
    if after:
        queue.cancel_if_waiting(settings.redis_url, after)
    fresh = model.get_by_id(row.id)
    publish(settings.redis_url, fresh)
    return fresh
