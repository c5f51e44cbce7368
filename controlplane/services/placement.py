"""Which Proxmox node a new VM goes to.

Read from `cluster/resources` (type node): only online nodes, only those allowed
(CONTROLPLANE_PROXMOX_NODES, empty: all), never one in maintenance (maintenance.drain). A clone can
land on another node than its template's only from shared storage (PVE refuses a `target` for
local disks), so without CONTROLPLANE_PROXMOX_SHARED_STORAGE every VM goes to its template's
node. Among the candidates: the most free memory once the VMs this control plane is still
creating there are counted (cluster/resources lags behind new VMs), then the fewest of our VMs
(so that equal nodes share the pool and the desktops), then the idlest CPU.

Runs in workers and the reaper (refill passes, create jobs), never in an API request.
"""
from __future__ import annotations

import datetime as dt
import logging
from dataclasses import dataclass

from peewee import fn

from ..config import Settings
from ..models import Desktop, PoolVm, PoolVmState, utcnow
from ..states import TRANSITIONAL, Status
from . import proxmox
from .maintenance import is_draining
from .plans import load_plans

log = logging.getLogger(__name__)

GIB = 1024 ** 3
RECENT = dt.timedelta(minutes=5)  # a VM this young may not show in a node's memory use yet


class PlacementError(RuntimeError):
    """No node can take the VM (all offline, in maintenance or not allowed)."""


@dataclass(frozen=True)
class Choice:
    node: str
    reason: str


def _resources(settings: Settings) -> tuple[list[dict], dict[str, str]]:
    """The cluster's nodes, and each template's node by name: one `cluster/resources` call."""
    items = proxmox.with_login(settings, lambda pve: pve.cluster.resources.get())
    nodes = [i for i in items if i.get("type") == "node"]
    templates = {str(i.get("name") or ""): str(i["node"]) for i in items
                 if i.get("type") == "qemu" and int(i.get("template") or 0)}
    return nodes, templates


def _ours_by_node(settings: Settings) -> tuple[dict[str, int], dict[str, int]]:
    """(memory MB of our VMs still being made there, count of our VMs) per node, counted in SQL."""

    plan_memory = {name: plan.memory_mb for name, plan in load_plans(settings.plans_file).items()}
    since = utcnow() - RECENT
    live = Desktop.status != Status.DELETED.value
    fresh = Desktop.status.in_([s.value for s in TRANSITIONAL]) | (Desktop.created_at >= since)
    count = {node: n for node, n in Desktop.select(Desktop.node, fn.COUNT(Desktop.id))
             .where(live, Desktop.node.is_null(False)).group_by(Desktop.node).tuples()}
    reserved = {node: int(mb) for node, mb in Desktop.select(Desktop.node, fn.SUM(Desktop.memory_mb))
                .where(live, fresh, Desktop.node.is_null(False)).group_by(Desktop.node).tuples()}
    waiting = PoolVm.state != PoolVmState.TAKEN.value
    making = (PoolVm.state == PoolVmState.FILLING.value) | (PoolVm.created_at >= since)
    for node, n in PoolVm.select(PoolVm.node, fn.COUNT(PoolVm.id)).where(waiting).group_by(PoolVm.node).tuples():
        count[node] = count.get(node, 0) + n
    for node, plan, n in (PoolVm.select(PoolVm.node, PoolVm.plan, fn.COUNT(PoolVm.id)).where(waiting, making)
                          .group_by(PoolVm.node, PoolVm.plan).tuples()):
        reserved[node] = reserved.get(node, 0) + n * plan_memory.get(plan, 0)
    return reserved, count


def choose_node(settings: Settings, memory_mb: int, template: str) -> Choice:
    """The node for a new VM of `memory_mb` cloned from `template`. Raises PlacementError when no
    node can take it; when Proxmox cannot be read, falls back to CONTROLPLANE_PROXMOX_NODE (the
    clone then meets whatever Proxmox says, and the job's retries handle it)."""
    try:
        nodes, templates = _resources(settings)
        home = None if settings.proxmox_shared_storage else templates.get(template)
    except Exception as exc:
        log.warning("placement: could not read the cluster (%s); using %s", type(exc).__name__, settings.proxmox_node)
        return Choice(settings.proxmox_node, "the cluster could not be read")
    allowed = set(settings.proxmox_node_list)
    candidates, skipped = [], []
    for item in nodes:
        name = str(item.get("node") or "")
        if allowed and name not in allowed:
            continue
        if item.get("status") != "online":
            skipped.append(f"{name} is offline")
        elif is_draining(settings, name):
            skipped.append(f"{name} is in maintenance")
        elif home is not None and name != home:
            continue  # local storage: clones stay on the template's node
        else:
            candidates.append(item)
    if not candidates:
        where = f"template {template}'s node {home}" if home else "any allowed node"
        raise PlacementError(f"no Proxmox node can take the VM: {where} is not available"
                             + (f" ({'; '.join(skipped)})" if skipped else ""))
    reserved, count = _ours_by_node(settings)

    def free_after(item) -> int:
        name = str(item["node"])
        free = int(item.get("maxmem") or 0) - int(item.get("mem") or 0) - reserved.get(name, 0) * 1024 * 1024
        return free

    def key(item):
        name = str(item["node"])
        idle_cpus = float(item.get("maxcpu") or 0) * (1.0 - float(item.get("cpu") or 0))
        return (-(free_after(item) // GIB), count.get(name, 0), -round(idle_cpus, 1), name)

    best = min(candidates, key=key)
    free_gib = free_after(best) / GIB
    # A node short of memory for the VM is still the best there is (Proxmox overcommits, the guest
    # balloons): the choice says so, and nothing is logged for a decision it did not change.
    short = free_after(best) < memory_mb * 1024 * 1024
    reason = f"{free_gib:.1f} GiB free{' (less than the VM asks)' if short else ''}, " \
             f"{count.get(str(best['node']), 0)} of our VMs" + (f"; skipped {', '.join(skipped)}" if skipped else "")
    return Choice(str(best["node"]), reason)


def place_desktop(settings: Settings, desktop: Desktop, plan) -> str:
    """The node a new desktop's VM is cloned to, written on the record. When no node qualifies,
    the configured node: the clone then meets Proxmox's own error, which the job retries as an
    infrastructure error."""
    try:
        choice = choose_node(settings, plan.memory_mb, plan.template)
        node, why = choice.node, choice.reason
    except PlacementError as exc:
        node, why = settings.proxmox_node, str(exc)
    log.info("desktop %s goes to node %s (%s)", desktop.id, node, why)
    if desktop.node != node:
        Desktop.update(node=node).where(Desktop.id == desktop.id).execute()
        desktop.node = node
    return node
