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

import redis

from ..config import Settings
from ..models import Desktop, PoolVm, PoolVmState, Project, VmidLease, utcnow
from ..project_states import ProjectStatus
from ..states import Status
from . import guacamole, kinds, lifecycle, proxmox
from .policy_runs import Action
from .queue import get_queue

log = logging.getLogger(__name__)


MANAGED_TAGS = {"cloud-desktop": "desktop", "cloud-project": "project"}  # what the playbooks tag VMs with
_OUR_NAME = re.compile(r"^cds-(desktop|project|pool)-([0-9]+)$")
_NAME_TAG = {"desktop": "desktop", "project": "project", "pool": "desktop"}  # a pool VM is tagged cloud-desktop


def reconcile(settings: Settings, now: dt.datetime, dry_run: bool) -> tuple[list[Action], list[str]]:  # noqa: C901
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


