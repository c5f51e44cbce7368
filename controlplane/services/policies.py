"""Lifecycle policies: expiry, idle auto-stop, and the clean-up of stuck and old failed desktops.

Each policy is one pass over the database that decides, then acts through the same path as a
user's request (lifecycle.accept: the state machine, an event, a job), so the worker, the reaper
and the WebSocket see nothing special. Every action is recorded as a desktop event whose source
names the policy (`policy:expire`, `policy:idle`, `policy:cleanup`) and whose message says why;
the final status message keeps the reason ("Desktop is stopped: expired at ...").

Passes are run by the periodic maintenance job (tasks/maintenance.py), by the admin API
(POST /api/v1/admin/policies/<name>) and so by the cron playbooks. One pass per policy at a time
(a Redis lock); a dry run decides and reports without acting.
"""
from __future__ import annotations

import contextlib
import datetime as dt
import logging
import re
import uuid
from dataclasses import asdict, dataclass

import redis

from ..config import Settings
from ..errors import ApiError
from ..extensions import db
from ..models import Desktop, DesktopEvent, utcnow
from . import guacamole, kinds, lifecycle, proxmox
from .plans import duration_text, load_plans
from .queue import get_redis
from .states import ALLOWED_FROM, FAILURE_VERB, TRANSITIONAL, Operation, Status

log = logging.getLogger(__name__)

POLICIES = ("expire", "idle", "cleanup", "reconcile")
LOCK_TTL = 600  # seconds: longer than any pass; a crashed pass's lock expires by itself


class PolicyRunning(ApiError):
    status, code = 409, "POLICY_RUNNING"
    default_message = "This policy is already running"


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


def iso(value: dt.datetime | None) -> str | None:
    if value is None:
        return None
    if value.tzinfo is None:
        value = value.replace(tzinfo=dt.timezone.utc)
    return value.isoformat(timespec="seconds")


def _naive_utc(value: dt.datetime) -> dt.datetime:
    """The form timestamp columns store (models.utcnow): naive UTC, whole seconds."""
    if value.tzinfo is not None:
        value = value.astimezone(dt.timezone.utc).replace(tzinfo=None)
    return value.replace(microsecond=0)


# ---- running a pass -----------------------------------------------------------------------------

@contextlib.contextmanager
def _exclusive(settings: Settings, key: str, busy: str):
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


def run(settings: Settings, name: str, dry_run: bool = False, now: dt.datetime | None = None,
        ran_by: str = "periodic job") -> dict:
    """One pass of policy `name`; raises PolicyRunning while another pass of it runs. A pass that
    acted or noted something is recorded (PolicyRun), unless it is a dry run."""
    if name not in POLICIES:
        raise ValueError(f"unknown policy {name!r}")
    with _exclusive(settings, f"controlplane:policy:{name}:lock",
                    f"The {name} policy is already running; try again when it has finished"):
        now = _naive_utc(now) if now is not None else utcnow()
        with db.connection_context():
            actions, notes = _PASSES[name](settings, now, dry_run)
    result = {"policy": name, "dryRun": dry_run, "ranAt": iso(now), "actions": [asdict(a) for a in actions],
              "notes": notes}
    record(result, ran_by)
    if actions and not dry_run:
        log.info("policy %s: %s", name, ", ".join(f"{a.action} desktop {a.desktopId}"
                                                   f"{'' if a.done else ' (not done: ' + str(a.error) + ')'}"
                                                   for a in actions))
    return result


def _act(settings: Settings, row, operation: Operation, reason: str, source: str, action: Action,
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
        if now >= expires_at + grace and status in ALLOWED_FROM[Operation.DELETE]:
            operation = Operation.DELETE
            reason = (f"expired at {iso(expires_at)}; deleted after the grace period of "
                      f"{duration_text(settings.expiry_grace)}")
        elif status is Status.RUNNING:
            operation = Operation.STOP
            reason = f"expired at {iso(expires_at)}; it will be deleted after {iso(expires_at + grace)}"
        else:
            continue  # stopped or failed and still in its grace period, or in a transition
        action = Action(desktop.id, desktop.user_id, desktop.status, operation.value, reason)
        actions.append(action if dry_run else _act(settings, desktop, operation, reason, "policy:expire", action))
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
        reason = (f"idle: no connection since {iso(since)} (plan {desktop.plan} stops desktops idle for "
                  f"{duration_text(limit)})")
        action = Action(desktop.id, desktop.user_id, desktop.status, Operation.STOP.value, reason)
        actions.append(action if dry_run else _act(settings, desktop, Operation.STOP, reason, "policy:idle", action))
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
        reason = (f"stuck in {desktop.status} since {iso(desktop.updated_at)} (more than "
                  f"{duration_text(stuck_after)})")
        action = Action(desktop.id, desktop.user_id, desktop.status, "fail", reason)
        actions.append(action if dry_run else _fail_stuck(settings, desktop, reason, action))
    if settings.failed_retention:
        old = (Desktop.select()
               .where(Desktop.status == Status.FAILED.value,
                      Desktop.updated_at < now - dt.timedelta(seconds=settings.failed_retention))
               .order_by(Desktop.id))
        for desktop in old:
            reason = (f"failed since {iso(desktop.updated_at)}; failed desktops are kept for "
                      f"{duration_text(settings.failed_retention)}")
            action = Action(desktop.id, desktop.user_id, desktop.status, Operation.DELETE.value, reason)
            actions.append(action if dry_run else
                           _act(settings, desktop, Operation.DELETE, reason, "policy:cleanup", action))
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


# ---- reconciliation -----------------------------------------------------------------------------

MANAGED_TAGS = {"cloud-desktop": "desktop", "cloud-project": "project"}  # what the playbooks tag VMs with
_OUR_NAME = re.compile(r"^cds-(desktop|project|pool)-([0-9]+)$")
_NAME_TAG = {"desktop": "desktop", "project": "project", "pool": "desktop"}  # a pool VM is tagged cloud-desktop


# Complexity above 15 (C901): each drift the reconciliation finds (issue 19 splits it).
def _reconcile(settings: Settings, now: dt.datetime, dry_run: bool) -> tuple[list[Action], list[str]]:  # noqa: C901
    """Compare Proxmox (VMs tagged as ours) and Guacamole (connections named as ours) with the
    database: VMs and connections no live record owns are removed (by a job running
    playbooks/remove_orphans.yml, which checks each VM's name again before deleting it), and
    settled records whose VM is gone are FAILED. A VM that a record is still being created for
    holds a VM-id lease and is never an orphan."""
    from ..models import PoolVm, PoolVmState, Project, VmidLease
    from .project_states import ProjectStatus
    try:
        vms = [vm for vm in proxmox.cluster_vms(settings)
               if vm.get("type") == "qemu" and not int(vm.get("template") or 0)]
    except Exception as exc:
        log.warning("reconcile: Proxmox VE could not be read: %s", type(exc).__name__)
        return [], [f"skipped: could not read Proxmox VE's VMs ({type(exc).__name__})"]
    notes: list[str] = []
    try:
        connections = guacamole.connections(settings)
    except guacamole.GuacamoleError as exc:
        connections = None
        notes.append(f"connections not checked: {exc}")

    live_desktops = {d.id: d for d in Desktop.select().where(Desktop.status != Status.DELETED.value)}
    live_projects = {p.id: p for p in Project.select().where(Project.status != ProjectStatus.DELETED.value)}
    pool_vms = {v.id: v for v in PoolVm.select()}  # warm pool VMs, and those taken by a desktop being made
    leased = {lease.vmid for lease in VmidLease.select(VmidLease.vmid)}
    actions: list[Action] = []
    orphan_vms: list[dict] = []
    seen_vmids = set()

    for vm in vms:
        vmid, name = int(vm["vmid"]), str(vm.get("name") or "")
        seen_vmids.add(vmid)
        tags = set(re.split(r"[;, ]+", str(vm.get("tags") or "")))
        kinds_tagged = {MANAGED_TAGS[t] for t in tags if t in MANAGED_TAGS}
        if not kinds_tagged:
            continue  # not ours
        match = _OUR_NAME.match(name)
        if not match or _NAME_TAG[match.group(1)] not in kinds_tagged:
            notes.append(f"VM {vmid} ({name or 'no name'}) is tagged {', '.join(sorted(t for t in tags if t in MANAGED_TAGS))} "
                         "but not named like ours: left alone")
            continue
        kind, record_id = match.group(1), int(match.group(2))
        owner = {"desktop": live_desktops, "project": live_projects, "pool": pool_vms}[kind].get(record_id)
        if owner is not None and owner.vmid == vmid:
            continue
        if vmid in leased and owner is not None:
            continue  # its record is being created or changed
        user = next((t[len("cds-user-"):] for t in tags if t.startswith("cds-user-")), None)
        why = (f"{kind} {record_id} does not exist or was deleted" if owner is None
               else f"{kind} {record_id} now has VM {owner.vmid}")
        if kind == "pool":
            why = (f"pool VM {record_id} does not exist" if owner is None else f"pool VM {record_id} has VM {owner.vmid}")
        orphan_vms.append({"vmid": vmid, "name": name, "node": str(vm.get("node") or settings.proxmox_node)})
        actions.append(Action(record_id if kind == "desktop" else None, user, "", "remove-vm",
                              f"VM {vmid} ({name}) belongs to no live record: {why}", target=f"vm {vmid}"))

    orphan_connections: list[str] = []
    if connections is not None:
        for identifier, name in sorted(connections.items()):
            match = _OUR_NAME.match(name)
            if not match or match.group(1) != "desktop":
                continue
            desktop_id = int(match.group(2))
            if desktop_id in live_desktops:
                continue
            orphan_connections.append(name)
            actions.append(Action(desktop_id, None, "", "remove-connection",
                                  f"connection {identifier} ({name}) belongs to no live desktop: desktop {desktop_id} "
                                  "does not exist or was deleted", target=f"connection {identifier}"))

    # Warm pool VMs whose VM is gone are failed: the next refill pass replaces them. Only those
    # READY for a while: one that became READY after Proxmox was read above was not in that list.
    settled = now - dt.timedelta(minutes=1)
    for pool_vm in pool_vms.values():
        if pool_vm.state == PoolVmState.READY.value and pool_vm.vmid not in seen_vmids and pool_vm.ready_at \
                and pool_vm.ready_at < settled:
            reason = f"VM {pool_vm.vmid} no longer exists in Proxmox VE"
            action = Action(None, None, PoolVmState.READY.value, "fail", reason, target=f"pool vm {pool_vm.id}")
            if not dry_run:
                action.done = bool(PoolVm.update(state=PoolVmState.FAILED.value, message=f"Fill failed: {reason}",
                                                 updated_at=utcnow())
                                   .where(PoolVm.id == pool_vm.id, PoolVm.state == PoolVmState.READY.value).execute())
                if not action.done:
                    action.error = "the pool VM was taken meanwhile"
            actions.append(action)

    # Settled records whose VM is gone (transitional ones belong to their job).
    vanished = [(d, f"vm {d.vmid}", d.id, d.user_id) for d in live_desktops.values()
                if Status(d.status) in (Status.RUNNING, Status.STOPPED)]
    vanished += [(p, f"project {p.public_id}", None, p.owner_id) for p in live_projects.values()
                 if p.status in (ProjectStatus.RUNNING.value, ProjectStatus.STOPPED.value)]
    for row, target, desktop_id, user in vanished:
        if row.vmid is None or row.vmid in seen_vmids:
            continue
        kind = kinds.of(row)
        reason = f"VM {row.vmid} no longer exists in Proxmox VE"
        action = Action(desktop_id, user, row.status, "fail", reason, target=target)
        if not dry_run:
            if lifecycle.set_status(row, kind.failed, reason, "policy:reconcile", job_id=row.job_id,
                                    publish_to=settings.redis_url, settings=settings, operation=None):
                action.done = True
            else:
                action.error = f"the {kind.name} changed meanwhile"
        actions.append(action)

    if (orphan_vms or orphan_connections) and not dry_run:
        from .queue import get_queue
        try:
            job = get_queue(settings.redis_url).enqueue(
                "controlplane.tasks.maintenance.remove_orphans", orphan_vms, orphan_connections,
                job_timeout=settings.job_timeout, result_ttl=24 * 3600, failure_ttl=7 * 24 * 3600,
                description=f"remove {len(orphan_vms)} orphaned VM(s) and {len(orphan_connections)} connection(s)")
        except redis.RedisError as exc:
            for action in actions:
                if action.action.startswith("remove-"):
                    action.error = f"the job queue is unavailable ({exc})"
        else:
            notes.append(f"removal job {job.id} queued")
            for action in actions:
                if action.action.startswith("remove-"):
                    action.done = True
    return actions, notes


_PASSES = {"expire": _expire, "idle": _idle, "cleanup": _cleanup, "reconcile": _reconcile}


# ---- draining a node ----------------------------------------------------------------------------

def _draining_key(node: str) -> str:
    return f"controlplane:node:{node}:draining"


def is_draining(settings: Settings, node: str | None) -> bool:
    """Whether `node` is in maintenance (drained and not released): no starts or creates there.
    Redis down: not known to be draining (the request goes on and meets whatever Proxmox says)."""
    if not node or not settings.redis_url:
        return False
    try:
        return bool(get_redis(settings.redis_url).exists(_draining_key(node)))
    except redis.RedisError:
        return False


def maintenance_refusal(settings: Settings, node: str | None, what: str) -> str | None:
    """Why `what` (e.g. "start desktop") cannot happen on `node` now, or None if it can."""
    if is_draining(settings, node):
        return f"Cannot {what}: node {node} is under maintenance; try again later"
    return None


def node_report(settings: Settings, node: str) -> dict:
    """What runs on `node`: desktops and projects by status, and whether it is draining."""
    from ..models import Project
    from .project_states import ProjectStatus
    with db.connection_context():
        desktops = list(Desktop.select(Desktop.id, Desktop.status)
                        .where(Desktop.node == node, Desktop.status != Status.DELETED.value))
        projects = list(Project.select(Project.public_id, Project.status)
                        .where(Project.node == node, Project.status != ProjectStatus.DELETED.value))
    by_status: dict[str, list] = {}
    for d in desktops:
        by_status.setdefault(d.status, []).append(d.id)
    project_status: dict[str, list] = {}
    for p in projects:
        project_status.setdefault(p.status, []).append(p.public_id)
    busy = ({s.value for s in TRANSITIONAL} | {Status.RUNNING.value})
    return {"node": node, "draining": is_draining(settings, node), "desktops": by_status, "projects": project_status,
            "settled": not (busy & set(by_status)) and not ({"running", "starting", "stopping", "provisioning", "deleting"}
                                                            & set(project_status))}


def drain(settings: Settings, node: str, dry_run: bool = False, force: bool = False,
          ran_by: str = "periodic job") -> dict:
    """Maintenance: mark `node` as draining (no new starts or creates there) and stop, gracefully
    unless `force`, every RUNNING desktop and project on it. Desktops in a transition are listed
    in the notes (run again once they settle). release() ends the maintenance."""
    from ..models import Project
    from .project_states import ProjectStatus
    with _exclusive(settings, f"controlplane:drain:{node}:lock",
                    f"Node {node} is already being drained; try again when that has finished") as conn:
        if not dry_run:
            conn.set(_draining_key(node), utcnow().isoformat())
        reason = f"node {node} is drained for maintenance"
        actions, notes = [], []
        with db.connection_context():
            for desktop in Desktop.select().where(Desktop.node == node,
                                                  Desktop.status != Status.DELETED.value).order_by(Desktop.id):
                if Status(desktop.status) in TRANSITIONAL:
                    notes.append(f"desktop {desktop.id} is {desktop.status}: not stopped by this run")
                if desktop.status != Status.RUNNING.value:
                    continue
                action = Action(desktop.id, desktop.user_id, desktop.status, Operation.STOP.value, reason,
                                target=f"desktop {desktop.id}")
                actions.append(action if dry_run else
                               _act(settings, desktop, Operation.STOP, reason, "policy:drain", action, force=force))
            for project in Project.select().where(Project.node == node,
                                                  Project.status == ProjectStatus.RUNNING.value).order_by(Project.id):
                action = Action(None, project.owner_id, project.status, Operation.STOP.value, reason,
                                target=f"project {project.public_id}")
                actions.append(action if dry_run else
                               _act(settings, project, Operation.STOP, reason, "policy:drain", action, force=force))
    result = {"policy": "drain", "dryRun": dry_run, "ranAt": iso(utcnow()), "actions": [asdict(a) for a in actions],
              "notes": [f"node {node} is in maintenance until released", *notes] if not dry_run else notes}
    record(result, ran_by)
    return result


def release(settings: Settings, node: str, ran_by: str = "periodic job") -> bool:
    """End a node's maintenance. Returns whether it was draining."""
    was = bool(get_redis(settings.redis_url).delete(_draining_key(node)))
    if was:
        record({"policy": "drain", "dryRun": False, "actions": [],
                "notes": [f"node {node} released from maintenance"]}, ran_by)
    return was


# ---- the record ---------------------------------------------------------------------------------

def record(result: dict, ran_by: str) -> None:
    """Keep a pass that did or found something (not a dry run) for GET /api/v1/admin/policies/runs."""
    import json

    from ..models import PolicyRun
    if result["dryRun"] or not (result["actions"] or result["notes"]):
        return
    with db.connection_context():
        PolicyRun.create(policy=result["policy"], ran_by=ran_by[:255], actions=json.dumps(result["actions"]),
                         notes=json.dumps(result["notes"]))


def runs(policy: str | None = None, limit: int = 50) -> list[dict]:
    """The recorded passes, newest first."""
    import json

    from ..models import PolicyRun
    query = PolicyRun.select().order_by(PolicyRun.id.desc()).limit(limit)
    if policy:
        query = query.where(PolicyRun.policy == policy)
    with db.connection_context():
        return [{"id": r.id, "policy": r.policy, "ranAt": iso(r.ran_at), "ranBy": r.ran_by,
                 "actions": json.loads(r.actions), "notes": json.loads(r.notes)} for r in query]


def prune_records(settings: Settings) -> int:
    """Drop policy runs and audit entries older than audit_retention_days (0: keep them)."""
    from ..models import AuditEntry, PolicyRun
    if not settings.audit_retention_days:
        return 0
    cutoff = utcnow() - dt.timedelta(days=settings.audit_retention_days)
    with db.connection_context():
        return (PolicyRun.delete().where(PolicyRun.ran_at < cutoff).execute()
                + AuditEntry.delete().where(AuditEntry.at < cutoff).execute())
