"""Lifecycle policies: expiry, idle auto-stop, and the clean-up of stuck and old failed desktops.

Each policy is one pass over the database that decides, then acts through the same path as a
user's request (lifecycle.accept: the state machine, an event, a job), so the worker, the reaper
and the WebSocket see nothing special. Every action is recorded as a desktop event whose source
names the policy (`policy:expire`, `policy:idle`, `policy:cleanup`) and whose message says why;
the final status message keeps the reason ("Desktop is stopped: expired at ...").

Passes are run by the periodic maintenance job (tasks/maintenance.py), by the admin API
(POST /api/v1/admin/policies/<name>) and so by the cron playbooks. One pass per policy at a time
(a Redis lock); a dry run decides and reports without acting. What the passes share is in
policy_runs.py; the reconciliation in reconcile.py; node maintenance (drain) in maintenance.py.
"""
from __future__ import annotations

import datetime as dt
import logging
from dataclasses import asdict

import redis

from .. import metrics
from ..config import Settings
from ..extensions import db
from ..models import Desktop, DesktopEvent, utcnow
from ..states import FAILURE_VERB, RESTING, TRANSITIONAL, Operation, Status
from ..timestamps import utc_iso
from . import guacamole, lifecycle
from .plans import duration_text, load_plans
from .policy_runs import Action, PolicyRunning, act, exclusive, naive_utc, record
from .queue import get_redis
from .reconcile import reconcile

__all__ = ["POLICIES", "PolicyRunning", "run"]

log = logging.getLogger(__name__)

POLICIES = ("expire", "idle", "cleanup", "reconcile")


def run(settings: Settings, name: str, dry_run: bool = False, now: dt.datetime | None = None,
        ran_by: str = "periodic job") -> dict:
    """One pass of policy `name`; raises PolicyRunning while another pass of it runs. A pass that
    acted or noted something is recorded (PolicyRun), unless it is a dry run."""
    if name not in POLICIES:
        raise ValueError(f"unknown policy {name!r}")
    with exclusive(settings, f"controlplane:policy:{name}:lock",
                    f"The {name} policy is already running; try again when it has finished"):
        now = naive_utc(now) if now is not None else utcnow()
        with db.connection_context():
            actions, notes = _PASSES[name](settings, now, dry_run)
    if not dry_run:
        for action in actions:
            metrics.policy_acted(name, action.action, action.done)
    result = {"policy": name, "dryRun": dry_run, "ranAt": now, "actions": [asdict(a) for a in actions],
              "notes": notes}
    record(result, ran_by)
    if actions and not dry_run:
        log.info("policy %s: %s", name, ", ".join(f"{a.action} desktop {a.desktopId}"
                                                   f"{'' if a.done else ' (not done: ' + str(a.error) + ')'}"
                                                   for a in actions))
    return result


# ---- expiry -------------------------------------------------------------------------------------

def _expire(settings: Settings, now: dt.datetime, dry_run: bool) -> tuple[list[Action], list[str]]:
    """Expired desktops are stopped; once the grace period is over too, deleted."""
    grace = dt.timedelta(seconds=settings.expiry_grace)
    actions = []
    expired = (Desktop.select()
               .where(Desktop.expires_at.is_null(False), Desktop.expires_at <= now,
                      Desktop.status.not_in([Status.DELETED.value, Status.DELETING.value]))
               .order_by(Desktop.id))
    for desktop in expired:
        expires_at = desktop.expires_at
        status = Status(desktop.status)
        if now >= expires_at + grace and status in RESTING:  # never cancels a job under way
            operation = Operation.DELETE
            reason = (f"expired at {utc_iso(expires_at)}; deleted after the grace period of "
                      f"{duration_text(settings.expiry_grace)}")
        elif status is Status.RUNNING:
            operation = Operation.STOP
            reason = f"expired at {utc_iso(expires_at)}; it will be deleted after {utc_iso(expires_at + grace)}"
        else:
            continue  # stopped or failed and still in its grace period, or in a transition
        action = Action(desktop.id, desktop.user_id, desktop.status, operation.value, reason)
        actions.append(action if dry_run else act(settings, desktop, operation, reason, "policy:expire", action))
    return actions, []


# ---- idle ---------------------------------------------------------------------------------------

def _running_since(desktop: Desktop) -> dt.datetime:
    event = (DesktopEvent.select(DesktopEvent.created_at)
             .where(DesktopEvent.desktop == desktop.id, DesktopEvent.status == Status.RUNNING.value)
             .order_by(DesktopEvent.id.desc()).first())
    return event.created_at if event else desktop.updated_at


def _idle(settings: Settings, now: dt.datetime, dry_run: bool) -> tuple[list[Action], list[str]]:
    """RUNNING desktops nobody has connected to for their plan's idle_stop_after are stopped.

    Activity is /connect (lastAccessedAt) and the connections Guacamole reports as active, which
    also move lastAccessedAt to now. If Guacamole cannot be asked, nothing is stopped: a desktop
    in use must never be taken for idle."""
    plans = load_plans(settings.plans_file)
    limits = {name: plan.idle_stop_after for name, plan in plans.items() if plan.idle_stop_after}
    if not limits:
        return [], []
    running = list(Desktop.select().where(Desktop.status == Status.RUNNING.value, Desktop.plan.in_(list(limits)))
                   .order_by(Desktop.id))
    if not running:
        return [], []
    try:
        active = guacamole.active_connection_ids(settings)
    except guacamole.GuacamoleError as exc:
        log.warning("idle policy: skipped, Guacamole's active connections are unknown: %s", exc)
        return [], [f"skipped: could not read Guacamole's active connections ({exc})"]
    actions = []
    for desktop in running:
        if desktop.guacamole_connection_id and desktop.guacamole_connection_id in active:
            if not dry_run:
                Desktop.update(last_accessed_at=now).where(Desktop.id == desktop.id).execute()
            continue
        since = max(t for t in (desktop.last_accessed_at, _running_since(desktop)) if t is not None)
        limit = limits[desktop.plan]
        if now - since < dt.timedelta(seconds=limit):
            continue
        reason = (f"idle: no connection since {utc_iso(since)} (plan {desktop.plan} stops desktops idle for "
                  f"{duration_text(limit)})")
        action = Action(desktop.id, desktop.user_id, desktop.status, Operation.STOP.value, reason)
        actions.append(action if dry_run else act(settings, desktop, Operation.STOP, reason, "policy:idle", action))
    return actions, []


# ---- stuck and failed ---------------------------------------------------------------------------

def _cleanup(settings: Settings, now: dt.datetime, dry_run: bool) -> tuple[list[Action], list[str]]:
    """Desktops in a transition for longer than stuck_after are FAILED (their job is stopped);
    FAILED desktops older than failed_retention are deleted."""
    actions = []
    stuck_after = settings.effective_stuck_after
    stuck = (Desktop.select()
             .where(Desktop.status.in_([s.value for s in TRANSITIONAL]),
                    Desktop.updated_at < now - dt.timedelta(seconds=stuck_after))
             .order_by(Desktop.id))
    for desktop in stuck:
        reason = (f"stuck in {desktop.status} since {utc_iso(desktop.updated_at)} (more than "
                  f"{duration_text(stuck_after)})")
        action = Action(desktop.id, desktop.user_id, desktop.status, "fail", reason)
        actions.append(action if dry_run else _fail_stuck(settings, desktop, reason, action))
    if settings.failed_retention:
        old = (Desktop.select()
               .where(Desktop.status == Status.FAILED.value,
                      Desktop.updated_at < now - dt.timedelta(seconds=settings.failed_retention))
               .order_by(Desktop.id))
        for desktop in old:
            reason = (f"failed since {utc_iso(desktop.updated_at)}; failed desktops are kept for "
                      f"{duration_text(settings.failed_retention)}")
            action = Action(desktop.id, desktop.user_id, desktop.status, Operation.DELETE.value, reason)
            actions.append(action if dry_run else
                           act(settings, desktop, Operation.DELETE, reason, "policy:cleanup", action))
    return actions, []


def _fail_stuck(settings: Settings, desktop: Desktop, reason: str, action: Action) -> Action:
    operation = Operation(desktop.operation) if desktop.operation else None
    verb = FAILURE_VERB[operation] if operation else "Operation failed"
    old_job = desktop.job_id
    if not lifecycle.set_status(desktop, Status.FAILED, f"{verb}: {reason}", "policy:cleanup", job_id=old_job,
                                publish_to=settings.redis_url, settings=settings, operation=None):
        action.error = "the desktop changed meanwhile"
        return action
    # Its job, if it still runs, no longer owns the desktop (writes are conditional on the job
    # id); stop it too.
    Desktop.update(job_id=None).where(Desktop.id == desktop.id, Desktop.job_id == old_job).execute()
    if old_job:
        _stop_job(settings, old_job)
    action.done = True
    return action


def _stop_job(settings: Settings, job_id: str) -> None:
    from rq.command import send_stop_job_command
    from rq.exceptions import InvalidJobOperation, NoSuchJobError
    from rq.job import Job, JobStatus
    conn = get_redis(settings.redis_url)
    try:
        job = Job.fetch(job_id, connection=conn)
        if job.get_status() == JobStatus.STARTED:
            send_stop_job_command(conn, job_id)
        elif not job.is_finished and not job.is_failed:
            job.cancel()
    except (NoSuchJobError, InvalidJobOperation, redis.RedisError) as exc:
        log.info("cleanup: job %s not stopped: %s", job_id, exc)


_PASSES = {"expire": _expire, "idle": _idle, "cleanup": _cleanup, "reconcile": reconcile}
