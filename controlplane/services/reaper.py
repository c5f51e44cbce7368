"""Desktops and projects left in a transition by a job that no longer runs (worker killed, API died between
commit and enqueue, Redis lost the job) are found here and resumed or failed.

Policy: an abandoned operation is enqueued again up to `max_resumes` times (the playbooks are
idempotent); after that the record is FAILED with the reason, and can be deleted. (The private
folders such a killed job's playbook run left on its host are removed by every worker and reaper
process: cli.remove_leftover_runs.)
"""
from __future__ import annotations

import datetime as dt
import logging

import redis
from rq.exceptions import NoSuchJobError
from rq import Queue
from rq.job import Job, JobStatus
from rq.worker import Worker

from ..config import Settings
from ..extensions import db
from ..models import utcnow
from ..states import Operation
from . import jobs, kinds, lifecycle
from .audit import record_outcome
from .queue import get_redis

log = logging.getLogger(__name__)

WAITING = {JobStatus.QUEUED, JobStatus.SCHEDULED, JobStatus.DEFERRED}


def live_workers(conn, stale_after: int) -> set[str]:
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


def job_is_alive(conn, job_id: str | None, live_workers: set[str], heartbeat_at: dt.datetime | None = None,
                 stale_after: float = 0) -> bool:
    """Whether the record's job still runs or waits: a fresh heartbeat on the record (written by the
    running job itself, so it survives a Redis that lost its data), or Redis' word."""
    if not job_id:
        return False
    if heartbeat_at is not None and stale_after:
        if heartbeat_at.tzinfo is not None:
            heartbeat_at = heartbeat_at.astimezone(dt.timezone.utc).replace(tzinfo=None)
        if (utcnow() - heartbeat_at).total_seconds() < stale_after:
            return True
    try:
        job = Job.fetch(job_id, connection=conn)
    except NoSuchJobError:
        return False
    status = job.get_status(refresh=True)
    if status == JobStatus.QUEUED:
        # Still in its queue, or popped by a worker that died before it could start it: RQ leaves such
        # a job 'queued' in that worker's intermediate list, where its own clean-up fails it only
        # after ten minutes or more. Not in the queue, it waits for nothing.
        return conn.lpos(Queue(job.origin, connection=conn).key, job_id) is not None
    if status in WAITING:
        return True
    return status == JobStatus.STARTED and job.worker_name in live_workers


def _old_meta(settings: Settings, job_id: str | None) -> dict:
    """What the abandoned job was asked (a resumed forced stop stays forced, a policy's reason stays)."""
    if not job_id:
        return {}
    try:
        job = Job.fetch(job_id, connection=get_redis(settings.redis_url))
    except (NoSuchJobError, redis.RedisError):
        return {}
    return job.meta or {}


def resolve_abandoned(settings: Settings, row, reason: str) -> str:
    """Resume the desktop's or project's operation, or fail it. Returns what was done."""
    kind = kinds.of(row)
    model = kind.model
    if kind.status(row.status) not in kind.transitional or not row.operation:
        return "settled"
    op = Operation(row.operation)
    if row.resumes < settings.max_resumes:
        meta = _old_meta(settings, row.job_id)
        force = bool(meta.get("force", False))
        job_id = jobs.new_job_id(row.id, op, kind.name)
        with db.atomic():
            changed = (model.update(job_id=job_id, resumes=model.resumes + 1, updated_at=utcnow())
                       .where(model.id == row.id, model.job_id == row.job_id).execute())
        if not changed:
            return "moved on"
        try:
            jobs.enqueue(settings, op, row.id, job_id, force=force, kind=kind.name, reason=meta.get("reason"),
                         requested_by=meta.get("requested_by") or "reaper", request_id=meta.get("request_id"))
        except redis.RedisError as exc:
            log.error("could not re-enqueue %s for %s %s: %s", op.value, kind.name, row.id, exc)
            return "retry later"
        row.job_id = job_id
        lifecycle.set_status(row, kind.status(row.status),
                             f"{row.status_message} (resumed after the worker stopped: {reason})",
                             "reaper", job_id=job_id, publish_to=settings.redis_url, settings=settings)
        log.warning("%s %s: resumed %s after %s", kind.name, row.id, op.value, reason)
        return "resumed"
    message = f"{kind.failure_verb[op]}: the worker running it stopped ({reason}) and it was not resumed"
    if lifecycle.set_status(row, kind.failed, message, "reaper", job_id=row.job_id,
                            publish_to=settings.redis_url, settings=settings, operation=None):
        meta = _old_meta(settings, row.job_id)
        record_outcome(row, op, ok=False, requested_by=meta.get("requested_by") or "reaper",
                       request_id=meta.get("request_id") or row.job_id)
    log.warning("%s %s: %s", kind.name, row.id, message)
    return "failed"


def reap(settings: Settings) -> dict[str, int]:
    """One pass over transitional desktops whose job is gone. Safe to run from several places."""
    conn = get_redis(settings.redis_url)
    cutoff = utcnow() - dt.timedelta(seconds=settings.abandoned_after)
    # A busy worker beats every settings.worker_heartbeat seconds (cli.cmd_worker); the threshold
    # must stay well above that, or a live job would be taken for dead and run twice.
    live = live_workers(conn, stale_after=settings.worker_stale_after)
    outcome: dict[str, int] = {}
    with db.connection_context():
        for kind in kinds.KINDS.values():
            model = kind.model
            stuck = model.select().where(model.status.in_([s.value for s in kind.transitional]),
                                         model.updated_at < cutoff)
            for row in stuck:
                if job_is_alive(conn, row.job_id, live, row.job_heartbeat_at, settings.worker_stale_after):
                    continue
                result = resolve_abandoned(settings, row, "its job is no longer running")
                outcome[result] = outcome.get(result, 0) + 1
    return outcome
