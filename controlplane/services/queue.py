"""Redis and the RQ queues, passed explicitly (no Connection context manager), and the one function that
puts a job on them (enqueue): every job's defaults are here."""
from __future__ import annotations

import datetime as dt
import functools
import hashlib
import json
import logging
import math
import time

import redis
from rq import Callback, Queue
from rq.exceptions import InvalidJobOperation, NoSuchJobError
from rq.job import Job, JobStatus

log = logging.getLogger(__name__)

QUEUE_NAME = "desktops"  # users' desktop and project operations, and those the policies ask for
# The control plane's own upkeep: the refill pass, the periodic policies and reconciliation, the
# removal of orphans. Taken only when no user's job waits.
MAINTENANCE_QUEUE_NAME = "maintenance"
# Warm pool fills and removals: taken only when nothing above waits, so refilling never delays a
# user's request.
POOL_QUEUE_NAME = "pool"
# The queues every worker serves, in this order (RQ takes the first job of the first queue that has one).
WORKER_QUEUES = (QUEUE_NAME, MAINTENANCE_QUEUE_NAME, POOL_QUEUE_NAME)
EVENTS_CHANNEL_PREFIX = "controlplane:events:"


def user_channel(user_id: str) -> str:
    """The Redis channel of a user's events. User ids are the IdP's text: they reach Redis only as a
    digest, so no id can name another channel, a key pattern or anything beyond our prefix."""
    return f"{EVENTS_CHANNEL_PREFIX}user:{hashlib.sha256(user_id.encode('utf-8', 'surrogatepass')).hexdigest()}"


def project_channel(public_id: str) -> str:
    """The Redis channel of a project's events (its public id, ours, digested all the same)."""
    return f"{EVENTS_CHANNEL_PREFIX}project:{hashlib.sha256(public_id.encode('utf-8', 'surrogatepass')).hexdigest()}"


def publish(redis_url: str, channels: list[str], event: dict) -> bool:
    """The one way events reach live listeners (the WebSocket sessions of every API process): `event`
    as JSON on each of `channels` (user_channel, project_channel). Best effort: a missed live event
    must never fail what it announces, so a Redis error is logged and False returned."""
    payload = json.dumps(event, default=str)
    try:
        conn = get_redis(redis_url)
        for channel in channels:
            conn.publish(channel, payload)
        return True
    except Exception as exc:  # noqa: BLE001 - whatever it is, the write it announces stands
        log.warning("could not publish a %s event: %s", event.get("type", "live"), exc)
        return False


@functools.lru_cache(maxsize=4)
def get_redis(url: str) -> redis.Redis:
    return redis.Redis.from_url(url, socket_connect_timeout=2, socket_timeout=10, health_check_interval=30)


def get_queue(url: str, name: str = QUEUE_NAME) -> Queue:
    return Queue(name, connection=get_redis(url))


# Every job's defaults (Redash's rq_job idea: one enqueue, its defaults in one place).
RESULT_TTL = 24 * 3600  # seconds a finished job's result is kept
FAILURE_TTL = 7 * 24 * 3600  # seconds a failed job is kept (rq info, the reaper's reading of it)
TIMEOUT_MARGIN = 120  # seconds RQ waits beyond a job's own time budget before it kills the work horse


def enqueue(redis_url: str, function: str, *args, timeout: int, queue: str = QUEUE_NAME, job_id: str | None = None,
            meta: dict | None = None, description: str | None = None, on_failure: str | None = None,
            delay: float = 0):
    """Put `function(*args)` (a dotted name: the worker imports it) on `queue`; raises redis errors to
    the caller. `timeout`: the job's own time budget in seconds (a playbook job: its playbook's
    timeout, which ansible-runner enforces); RQ's backstop is TIMEOUT_MARGIN later. `delay`: seconds
    before it may run (RQ's scheduled jobs, which the workers' schedulers enqueue when due; a worker
    is not held meanwhile). Arguments are ids and flags, never secrets or user text."""
    options = dict(job_id=job_id, job_timeout=timeout + TIMEOUT_MARGIN, result_ttl=RESULT_TTL, failure_ttl=FAILURE_TTL,
                   meta=meta or {}, description=description, on_failure=Callback(on_failure) if on_failure else None)
    if delay > 0:
        # RQ keeps a scheduled job's time in whole seconds, rounded down: rounded up here, the job
        # waits at least `delay` (then up to the scheduler's next look, every second).
        due = dt.datetime.fromtimestamp(math.ceil(time.time() + delay), tz=dt.timezone.utc)
        return get_queue(redis_url, queue).enqueue_at(due, function, *args, **options)
    return get_queue(redis_url, queue).enqueue(function, *args, **options)


def cancel_if_waiting(redis_url: str, job_id: str) -> bool:
    """Cancel the job if it has not started (queued, scheduled for a retry, deferred): True if it was.
    Best effort: a job that starts anyway finds that its record names another job and skips."""
    try:
        job = Job.fetch(job_id, connection=get_redis(redis_url))
        if job.get_status(refresh=False) not in (JobStatus.QUEUED, JobStatus.SCHEDULED, JobStatus.DEFERRED):
            return False
        job.cancel()
        return True
    except (NoSuchJobError, InvalidJobOperation):
        return False
    except redis.RedisError as exc:
        log.warning("could not cancel job %s: %s", job_id, exc)
        return False


def wait_until_ended(redis_url: str, job_id: str, timeout: float, poll: float = 0.1) -> bool:
    """Wait while the job runs (RQ's started status), at most `timeout` seconds: True once it is no
    longer running (or unknown), False when it still ran at the deadline (its worker died without
    telling RQ, say)."""
    deadline = time.monotonic() + timeout
    conn = get_redis(redis_url)
    while True:
        try:
            status = Job.fetch(job_id, connection=conn).get_status(refresh=False)
        except NoSuchJobError:
            return True
        if status != JobStatus.STARTED:
            return True
        if time.monotonic() >= deadline:
            return False
        time.sleep(poll)
