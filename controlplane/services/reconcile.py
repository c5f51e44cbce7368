"""Reconciliation: Proxmox VE (VMs tagged as ours) and Guacamole (connections named as ours)
compared with the database. VMs and connections no live record owns are removed (by a job running
playbooks/remove_orphans.yml, which checks each VM's name again before deleting it); settled
records whose VM is gone are FAILED; warm pool VMs whose VM is gone are failed (the next refill
replaces them). Run as the "reconcile" policy (policies.run).
"""
from __future__ import annotations

import datetime as dt
import logging
import re
from dataclasses import dataclass

import redis

from ..config import Settings
from ..models import Desktop, PoolVm, PoolVmState, Project, VmidLease, utcnow
from ..project_states import ProjectStatus
from ..states import Status
from . import guacamole, kinds, lifecycle, proxmox
from .policy_runs import Action
from .queue import MAINTENANCE_QUEUE_NAME, enqueue

log = logging.getLogger(__name__)


MANAGED_TAGS = {"cloud-desktop": "desktop", "cloud-project": "project"}  # what the playbooks tag VMs with
_OUR_NAME = re.compile(r"^cds-(desktop|project|pool)-([0-9]+)$")
_NAME_TAG = {"desktop": "desktop", "project": "project", "pool": "desktop"}  # a pool VM is tagged cloud-desktop


@dataclass
class _Live:
    """What the database says lives, read once per pass."""
    desktops: dict
    projects: dict
    pool_vms: dict  # warm pool VMs, and those taken by a desktop being made
    leased: set  # VM ids a record is being created or changed for


def reconcile(settings: Settings, now: dt.datetime, dry_run: bool) -> tuple[list[Action], list[str]]:
    """Compare Proxmox (VMs tagged as ours) and Guacamole (connections named as ours) with the
    database: VMs and connections no live record owns are removed (by a job running
    playbooks/remove_orphans.yml, which checks each VM's name again before deleting it), and
    settled records whose VM is gone are FAILED. A VM that a record is still being created for
    holds a VM-id lease and is never an orphan."""
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
    live = _Live(desktops={d.id: d for d in Desktop.select().where(Desktop.status != Status.DELETED.value)},
                 projects={p.id: p for p in Project.select().where(Project.status != ProjectStatus.DELETED.value)},
                 pool_vms={v.id: v for v in PoolVm.select()},
                 leased={lease.vmid for lease in VmidLease.select(VmidLease.vmid)})
    seen_vmids = {int(vm["vmid"]) for vm in vms}
    orphan_vms, actions = _orphan_vms(settings, vms, live, notes)
    orphan_connections, connection_actions = _orphan_connections(connections or {}, live)
    actions += connection_actions
    actions += _vanished_pool_vms(live, seen_vmids, now, dry_run)
    actions += _vanished_records(settings, live, seen_vmids, dry_run)
    if (orphan_vms or orphan_connections) and not dry_run:
        _remove(settings, orphan_vms, orphan_connections, actions, notes)
    return actions, notes


def _orphan_vms(settings: Settings, vms: list[dict], live: _Live, notes: list[str]) -> tuple[list[dict], list[Action]]:
    """VMs tagged and named as ours that no live record owns: (what to remove, the actions)."""
    orphans: list[dict] = []
    actions: list[Action] = []
    for vm in vms:
        vmid, name = int(vm["vmid"]), str(vm.get("name") or "")
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
        owner = {"desktop": live.desktops, "project": live.projects, "pool": live.pool_vms}[kind].get(record_id)
        if owner is not None and (owner.vmid == vmid or vmid in live.leased):
            continue  # its own, or its record is being created or changed
        user = next((t[len("cds-user-"):] for t in tags if t.startswith("cds-user-")), None)
        if kind == "pool":
            why = f"pool VM {record_id} does not exist" if owner is None else f"pool VM {record_id} has VM {owner.vmid}"
        else:
            why = (f"{kind} {record_id} does not exist or was deleted" if owner is None
                   else f"{kind} {record_id} now has VM {owner.vmid}")
        orphans.append({"vmid": vmid, "name": name, "node": str(vm.get("node") or settings.proxmox_node)})
        actions.append(Action(record_id if kind == "desktop" else None, user, "", "remove-vm",
                              f"VM {vmid} ({name}) belongs to no live record: {why}", target=f"vm {vmid}"))
    return orphans, actions


def _orphan_connections(connections: dict[str, str], live: _Live) -> tuple[list[str], list[Action]]:
    """Guacamole connections named as a desktop's or a project's that no live record owns."""
    orphans: list[str] = []
    actions: list[Action] = []
    for identifier, name in sorted(connections.items()):
        match = _OUR_NAME.match(name)
        if not match or match.group(1) not in ("desktop", "project"):
            continue
        kind, record_id = match.group(1), int(match.group(2))
        if record_id in (live.desktops if kind == "desktop" else live.projects):
            continue
        orphans.append(name)
        actions.append(Action(record_id if kind == "desktop" else None, None, "", "remove-connection",
                              f"connection {identifier} ({name}) belongs to no live {kind}: {kind} {record_id} "
                              "does not exist or was deleted", target=f"connection {identifier}"))
    return orphans, actions


def _vanished_pool_vms(live: _Live, seen_vmids: set[int], now: dt.datetime, dry_run: bool) -> list[Action]:
    """Warm pool VMs whose VM is gone are failed: the next refill pass replaces them. Only those
    READY for a while: one that became READY after Proxmox was read was not in that list."""
    settled = now - dt.timedelta(minutes=1)
    actions = []
    for pool_vm in live.pool_vms.values():
        if pool_vm.state != PoolVmState.READY.value or pool_vm.vmid in seen_vmids or not pool_vm.ready_at \
                or pool_vm.ready_at >= settled:
            continue
        reason = f"VM {pool_vm.vmid} no longer exists in Proxmox VE"
        action = Action(None, None, PoolVmState.READY.value, "fail", reason, target=f"pool vm {pool_vm.id}")
        if not dry_run:
            action.done = bool(PoolVm.update(state=PoolVmState.FAILED.value, message=f"Fill failed: {reason}",
                                             updated_at=utcnow())
                               .where(PoolVm.id == pool_vm.id, PoolVm.state == PoolVmState.READY.value).execute())
            if not action.done:
                action.error = "the pool VM was taken meanwhile"
        actions.append(action)
    return actions


def _vanished_records(settings: Settings, live: _Live, seen_vmids: set[int], dry_run: bool) -> list[Action]:
    """Settled desktops and projects whose VM is gone are FAILED (transitional ones belong to their job)."""
    vanished = [(d, f"vm {d.vmid}", d.id, d.user_id) for d in live.desktops.values()
                if Status(d.status) in (Status.RUNNING, Status.STOPPED)]
    vanished += [(p, f"project {p.public_id}", None, p.owner_id) for p in live.projects.values()
                 if p.status in (ProjectStatus.RUNNING.value, ProjectStatus.STOPPED.value)]
    actions = []
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
    return actions


def _remove(settings: Settings, orphan_vms: list[dict], orphan_connections: list[str], actions: list[Action],
            notes: list[str]) -> None:
    """Queue the job that removes the orphans (playbooks/remove_orphans.yml); the remove actions say
    whether it was queued."""
    try:
        job = enqueue(settings.redis_url, "controlplane.tasks.maintenance.remove_orphans", orphan_vms,
                      orphan_connections, timeout=settings.job_timeout, queue=MAINTENANCE_QUEUE_NAME,
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
