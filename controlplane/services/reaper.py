"""Desktops left in a transition by a job that no longer runs (worker killed, API died between
commit and enqueue, Redis lost the job) are found here and resumed or failed.

Policy: an abandoned operation is enqueued again up to `max_resumes` times (the playbooks are
idempotent); after that the desktop is FAILED with the reason, and can be deleted.
"""
from __future__ import annotations

import datetime as dt
import logging

import redis
from rq.exceptions import NoSuchJobError
from rq.job import Job, JobStatus
from rq.worker import Worker

from ..config import Settings
from ..extensions import db
from ..models import Desktop, utcnow
from . import jobs, lifecycle
from .queue import get_redis
from .states import FAILURE_VERB, TRANSITIONAL, Operation, Status

log = logging.getLogger(__name__)

WAITING = {JobStatus.QUEUED, JobStatus.SCHEDULED, JobStatus.DEFERRED}


def _live_workers(conn, stale_after: int) -> set[str]:
    now = dt.datetime.now(dt.timezone.utc)
    names = set()
    for worker in Worker.all(connection=conn):
        beat = worker.last_heartbeat
        if beat is None:
            continue
        if beat.tzinfo is None:
            beat = beat.replace(tzinfo=dt.timezone.utc)
        if (now - beat).total_seconds() < stale_after:
            names.add(worker.name)
    return names


def job_is_alive(conn, job_id: str | None, live_workers: set[str]) -> bool:
    if not job_id:
        return False
    try:
        job = Job.fetch(job_id, connection=conn)
    except NoSuchJobError:
        return False
    status = job.get_status(refresh=True)
    if status in WAITING:
        return True
    return status == JobStatus.STARTED and job.worker_name in live_workers


def _was_forced(settings: Settings, job_id: str | None) -> bool:
    """Whether the abandoned job was a forced one (a resumed forced stop stays forced)."""
    if not job_id:
        return False
    try:
        job = Job.fetch(job_id, connection=get_redis(settings.redis_url))
    except (NoSuchJobError, redis.RedisError):
        return False
    return bool(job.meta.get("force", False))


def resolve_abandoned(settings: Settings, desktop: Desktop, reason: str) -> str:
    """Resume the desktop's operation, or fail it. Returns what was done."""
    if Status(desktop.status) not in TRANSITIONAL or not desktop.operation:
        return "settled"
    op = Operation(desktop.operation)
    if desktop.resumes < settings.max_resumes:
        force = _was_forced(settings, desktop.job_id)
        job_id = jobs.new_job_id(desktop.id, op)
        with db.atomic():
            changed = (Desktop.update(job_id=job_id, resumes=Desktop.resumes + 1, updated_at=utcnow())
                       .where(Desktop.id == desktop.id, Desktop.job_id == desktop.job_id).execute())
        if not changed:
            return "moved on"
        try:
            jobs.enqueue(settings, op, desktop.id, job_id, force=force)
        except redis.RedisError as exc:
            log.error("could not re-enqueue %s for desktop %s: %s", op.value, desktop.id, exc)
            return "retry later"
        desktop.job_id = job_id
        lifecycle.set_status(desktop, Status(desktop.status),
                             f"{desktop.status_message} (resumed after the worker stopped: {reason})",
                             "reaper", job_id=job_id, publish_to=settings.redis_url)
        log.warning("desktop %s: resumed %s after %s", desktop.id, op.value, reason)
        return "resumed"
    message = f"{FAILURE_VERB[op]}: the worker running it stopped ({reason}) and it was not resumed"
    lifecycle.set_status(desktop, Status.FAILED, message, "reaper", job_id=desktop.job_id,
                         publish_to=settings.redis_url, operation=None)
    log.warning("desktop %s: %s", desktop.id, message)
    return "failed"


def reap(settings: Settings) -> dict[str, int]:
    """One pass over transitional desktops whose job is gone. Safe to run from several places."""
    conn = get_redis(settings.redis_url)
    cutoff = utcnow() - dt.timedelta(seconds=settings.abandoned_after)
    # A busy worker beats every settings.worker_heartbeat seconds (cli.cmd_worker); the threshold
    # must stay well above that, or a live job would be taken for dead and run twice.
    live = _live_workers(conn, stale_after=settings.worker_stale_after)
    outcome: dict[str, int] = {}
    with db.connection_context():
        stuck = Desktop.select().where(Desktop.status.in_([s.value for s in TRANSITIONAL]),
                                       Desktop.updated_at < cutoff)
        for desktop in stuck:
            if job_is_alive(conn, desktop.job_id, live):
                continue
            result = resolve_abandoned(settings, desktop, "its job is no longer running")
            outcome[result] = outcome.get(result, 0) + 1
    return outcome
