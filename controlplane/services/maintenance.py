"""Node maintenance: a drained node takes no new desktops, projects or starts (is_draining,
maintenance_refusal, read by placement, the pool and the create and start paths) and its running
desktops and projects are stopped (drain) until it is released (release).
"""
from __future__ import annotations

import logging
from dataclasses import asdict

import redis

from ..config import Settings
from ..extensions import db
from ..models import Desktop, Project, utcnow
from ..project_states import ProjectStatus
from ..states import TRANSITIONAL, Operation, Status
from .policy_runs import Action, act, exclusive, record
from .queue import get_redis

log = logging.getLogger(__name__)


def draining_key(node: str) -> str:
    return f"controlplane:node:{node}:draining"


def is_draining(settings: Settings, node: str | None) -> bool:
    """Whether `node` is in maintenance (drained and not released): no starts or creates there.
    Redis down: not known to be draining (the request goes on and meets whatever Proxmox says)."""
    if not node or not settings.redis_url:
        return False
    try:
        return bool(get_redis(settings.redis_url).exists(draining_key(node)))
    except redis.RedisError:
        return False


def maintenance_refusal(settings: Settings, node: str | None, what: str) -> str | None:
    """Why `what` (e.g. "start desktop") cannot happen on `node` now, or None if it can."""
    if is_draining(settings, node):
        return f"Cannot {what}: node {node} is under maintenance; try again later"
    return None


def node_report(settings: Settings, node: str) -> dict:
    """What runs on `node`: desktops and projects by status, and whether it is draining."""
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
    with exclusive(settings, f"controlplane:drain:{node}:lock",
                    f"Node {node} is already being drained; try again when that has finished") as conn:
        if not dry_run:
            conn.set(draining_key(node), utcnow().isoformat())
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
                               act(settings, desktop, Operation.STOP, reason, "policy:drain", action, force=force))
            for project in Project.select().where(Project.node == node,
                                                  Project.status == ProjectStatus.RUNNING.value).order_by(Project.id):
                action = Action(None, project.owner_id, project.status, Operation.STOP.value, reason,
                                target=f"project {project.public_id}")
                actions.append(action if dry_run else
                               act(settings, project, Operation.STOP, reason, "policy:drain", action, force=force))
    result = {"policy": "drain", "dryRun": dry_run, "ranAt": utcnow(), "actions": [asdict(a) for a in actions],
              "notes": [f"node {node} is in maintenance until released", *notes] if not dry_run else notes}
    record(result, ran_by)
    return result


def release(settings: Settings, node: str, ran_by: str = "periodic job") -> bool:
    """End a node's maintenance. Returns whether it was draining."""
    was = bool(get_redis(settings.redis_url).delete(draining_key(node)))
    if was:
        record({"policy": "drain", "dryRun": False, "actions": [],
                "notes": [f"node {node} released from maintenance"]}, ran_by)
    return was
