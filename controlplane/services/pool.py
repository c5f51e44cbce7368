"""The warm pool: per plan, VMs cloned from the plan's template, sized and (by default) running,
waiting for a desktop; a create takes one and is RUNNING in seconds.

- Size and power per plan: an admin's setting (PoolSetting, `PUT /api/v1/admin/pools/<plan>`)
  or else the plans file's `pool:`. Like OpenUDS's caches: `running` VMs are ready at once,
  `stopped` ones still boot but skip the clone.
- Taking (`take`, in the create's transaction): one conditional UPDATE READY → TAKEN, so two
  creates never get the same VM; the VM-id lease moves to the desktop. A taken VM is the
  desktop's from then on (renamed cds-desktop-<id>, tagged with its owner) and never returns to
  the pool: no pool VM ever carried another user's session.
- Refilling (`refill`): one pass at a time (a Redis lock); makes up each plan's deficit with new
  pool VMs placed by services/placement.py (at most `pool_fill_parallel` filling per plan, and
  fewer pool jobs at once than there are live workers, so one worker is always free for a user's
  create: it never waits behind a refill), removes surplus, failed and abandoned ones. Run after each take and each size change (a job),
  and by the reaper every CONTROLPLANE_REAPER_INTERVAL.
"""
from __future__ import annotations

import datetime as dt
import logging
import os
import uuid
from dataclasses import dataclass

import redis

from ..config import Settings
from ..errors import NotFound, ValidationFailed
from ..extensions import db
from ..models import Desktop, PoolSetting, PoolVm, PoolVmState, VmidLease, utcnow
from . import vmids
from .maintenance import is_draining
from .placement import PlacementError, choose_node
from .plans import POOL_POWERS, load_plans
from .queue import MAINTENANCE_QUEUE_NAME, POOL_QUEUE_NAME, enqueue, get_redis
from .reaper import job_is_alive, live_workers

log = logging.getLogger(__name__)

REFILL_LOCK = "controlplane:pool:refill"
REFILL_AGAIN = "controlplane:pool:refill-again"
REFILL_QUEUED = "controlplane:pool:refill-queued"
FILL_JOB = "controlplane.tasks.pool.fill"
REMOVE_JOB = "controlplane.tasks.pool.remove"
REFILL_JOB = "controlplane.tasks.pool.refill_job"
BACKOFF = "controlplane:pool:backoff:"  # + plan: the last failed fill's reason, for pool_retry_after seconds
# Pool VMs that still hold (or may hold) a VM in Proxmox and count against nothing yet.
WAITING = (PoolVmState.FILLING.value, PoolVmState.READY.value)


@dataclass(frozen=True)
class PoolConfig:
    plan: str
    template: str
    size: int
    power: str
    source: str  # "plans file", or "admin <user>"


def configs(settings: Settings) -> dict[str, PoolConfig]:
    """Every plan's pool (size 0: none)."""
    plans = load_plans(settings.plans_file)
    overrides = {s.plan: s for s in PoolSetting.select()}
    result = {}
    for name, plan in plans.items():
        override = overrides.get(name)
        if override is not None:
            result[name] = PoolConfig(name, plan.template, override.size, override.power,
                                      f"admin {override.updated_by}".strip())
        else:
            result[name] = PoolConfig(name, plan.template, plan.pool_size, plan.pool_power, "plans file")
    return result


def _known_plan(settings: Settings, plan: str) -> None:
    """A plan in the path that the plans file does not have is a pool that does not exist: 404."""
    plans = load_plans(settings.plans_file)
    if plan not in plans:
        raise NotFound(f"No pool for plan {plan!r}: the plans are {', '.join(plans)}")


def set_pool(settings: Settings, plan: str, size: int, power: str, by: str) -> PoolConfig:
    """An admin's size and power for a plan's pool; the next refill pass (queued now) applies it."""
    _known_plan(settings, plan)
    details = {}
    if not 0 <= size <= settings.pool_max_size:
        details["size"] = f"Size must be between 0 and {settings.pool_max_size}"
    if power not in POOL_POWERS:
        details["power"] = "Power must be running or stopped"
    if details:
        raise ValidationFailed(details=details)
    with db.atomic():
        PoolSetting.insert(plan=plan, size=size, power=power, updated_at=utcnow(), updated_by=by).on_conflict(
            conflict_target=[PoolSetting.plan],
            update={PoolSetting.size: size, PoolSetting.power: power, PoolSetting.updated_at: utcnow(),
                    PoolSetting.updated_by: by}).execute()
    request_refill(settings)
    return configs(settings)[plan]


def reset_pool(settings: Settings, plan: str) -> PoolConfig:
    """Forget an admin's setting: the plans file's pool applies again."""
    _known_plan(settings, plan)
    PoolSetting.delete().where(PoolSetting.plan == plan).execute()
    request_refill(settings)
    return configs(settings)[plan]


# ---- taking --------------------------------------------------------------------------------------

def take(settings: Settings, desktop: Desktop, template: str) -> PoolVm | None:
    """Hand a READY pool VM of the desktop's plan (cloned from the plan's `template`) to the
    desktop, inside the caller's transaction: running ones first, the longest waiting first, none
    on a node in maintenance. Returns it, or None when the pool has none. The desktop gets its VM
    id (the lease moves) and node."""
    mine = (PoolVm.plan == desktop.plan) & (PoolVm.template == template) & (PoolVm.state == PoolVmState.READY.value)
    nodes = {vm.node for vm in PoolVm.select(PoolVm.node).where(mine)}
    if not nodes:
        return None
    usable = [n for n in nodes if not is_draining(settings, n)]
    for _ in range(5):  # each loss of a race to a concurrent create looks again
        candidate = (PoolVm.select().where(mine, PoolVm.node.in_(usable))
                     .order_by((PoolVm.power == "running").desc(), PoolVm.ready_at, PoolVm.id).first())
        if candidate is None:
            return None
        now = utcnow()
        taken = (PoolVm.update(state=PoolVmState.TAKEN.value, desktop=desktop.id, taken_at=now, updated_at=now,
                               message=f"Taken by desktop {desktop.id}")
                 .where(PoolVm.id == candidate.id, PoolVm.state == PoolVmState.READY.value).execute())
        if taken:
            VmidLease.update(desktop=desktop.id, pool_vm_id=None).where(VmidLease.vmid == candidate.vmid).execute()
            candidate.state, candidate.desktop_id, candidate.taken_at = PoolVmState.TAKEN.value, desktop.id, now
            return candidate
    return None


def give_back(desktop: Desktop) -> None:
    """Undo `take` for a create that could not be enqueued (nothing touched the VM yet)."""
    vm = PoolVm.get_or_none(PoolVm.desktop == desktop.id, PoolVm.state == PoolVmState.TAKEN.value)
    if vm is None:
        return
    with db.atomic():
        PoolVm.update(state=PoolVmState.READY.value, desktop=None, taken_at=None, updated_at=utcnow(),
                      message="Given back: the create could not be queued").where(PoolVm.id == vm.id).execute()
        VmidLease.update(desktop=None, pool_vm_id=vm.id).where(VmidLease.vmid == vm.vmid).execute()


def taken_by(desktop_id: int) -> PoolVm | None:
    return PoolVm.get_or_none(PoolVm.desktop == desktop_id)


# ---- refilling -----------------------------------------------------------------------------------

def request_refill(settings: Settings) -> None:
    """Have a refill pass run soon (a job; at most one queued at a time). Best effort: the
    reaper's periodic pass catches up if Redis refuses."""
    try:
        conn = get_redis(settings.redis_url)
        conn.set(REFILL_AGAIN, "1", ex=300)  # a pass running now goes round once more
        if conn.set(REFILL_QUEUED, "1", nx=True, ex=30):
            enqueue(settings.redis_url, REFILL_JOB, timeout=300, queue=MAINTENANCE_QUEUE_NAME,
                    description="refill the warm pool")
    except redis.RedisError as exc:
        log.warning("could not queue a pool refill: %s", exc)


def refill(settings: Settings) -> dict:
    """One pass over every plan's pool (see the module's docstring); returns what it did. Passes
    never overlap; a request made during one makes it go round again."""
    conn = get_redis(settings.redis_url)
    token = f"{os.getpid()}-{uuid.uuid4().hex[:8]}"
    if not conn.set(REFILL_LOCK, token, nx=True, ex=120):
        conn.set(REFILL_AGAIN, "1", ex=300)
        return {"skipped": "another refill pass is running"}
    done: dict[str, list] = {"filling": [], "removing": [], "notes": []}
    try:
        conn.delete(REFILL_QUEUED)
        for _ in range(10):
            conn.delete(REFILL_AGAIN)
            with db.connection_context():
                _pass(settings, conn, done)
            if not conn.exists(REFILL_AGAIN):
                break
    finally:
        if conn.get(REFILL_LOCK) == token.encode():
            conn.delete(REFILL_LOCK)
    return {k: v for k, v in done.items() if v}


def _pass(settings: Settings, conn, done: dict) -> None:
    now = utcnow()
    live = live_workers(conn, settings.worker_stale_after)
    settled_before = now - dt.timedelta(seconds=settings.abandoned_after)

    # Broken or abandoned pool VMs are removed (their VM may exist: the removal checks by name).
    for vm in PoolVm.select().where(PoolVm.state.in_([PoolVmState.FILLING.value, PoolVmState.REMOVING.value,
                                                      PoolVmState.FAILED.value])):
        if vm.state == PoolVmState.FAILED.value:
            _remove(settings, vm, "its fill failed", done)
        elif vm.updated_at < settled_before and not job_is_alive(conn, vm.job_id, live, vm.job_heartbeat_at,
                                                                 settings.worker_stale_after):
            _remove(settings, vm, f"{'its fill' if vm.state == PoolVmState.FILLING.value else 'its removal'} "
                                  "job is no longer running", done)

    plans = load_plans(settings.plans_file)
    pools = configs(settings)
    budget = _fill_budget(live)
    for vm in PoolVm.select().where(PoolVm.state == PoolVmState.READY.value):
        if vm.plan not in pools:
            _remove(settings, vm, f"plan {vm.plan} is no longer defined", done)
        elif is_draining(settings, vm.node):
            _remove(settings, vm, f"node {vm.node} is in maintenance", done)
    for config in pools.values():
        waiting = list(PoolVm.select().where(PoolVm.plan == config.plan, PoolVm.state.in_(WAITING))
                       .order_by(PoolVm.id))
        # VMs of another template or power than the pool now asks for are replaced.
        for vm in [v for v in waiting if v.state == PoolVmState.READY.value
                   and (v.template != config.template or v.power != config.power)]:
            _remove(settings, vm, "the pool's template or power changed", done)
            waiting.remove(vm)
        surplus = len(waiting) - config.size
        for vm in sorted((v for v in waiting if v.state == PoolVmState.READY.value), key=lambda v: -v.id)[:max(surplus, 0)]:
            _remove(settings, vm, f"the pool of {config.plan} is larger than its size {config.size}", done)
        deficit = config.size - len(waiting)
        if deficit <= 0:
            continue
        filling = sum(1 for v in waiting if v.state == PoolVmState.FILLING.value)
        if conn.exists(BACKOFF + config.plan):
            done["notes"].append(f"{config.plan}: a fill failed less than {settings.pool_retry_after} s ago; waiting")
            continue
        wanted = min(deficit, max(settings.pool_fill_parallel - filling, 0))
        budget -= _fill(settings, config, plans[config.plan], min(wanted, budget), done)
        if wanted > 0 and budget <= 0 and not any(f["plan"] == config.plan for f in done["filling"]):
            done["notes"].append(f"{config.plan}: waiting for a worker (pool jobs leave one free for users)")


def _fill(settings: Settings, config: PoolConfig, plan, count: int, done: dict) -> int:
    """Queue up to `count` fills of the plan's pool, each placed on a node; returns how many."""
    made = 0
    for _ in range(count):
        try:
            choice = choose_node(settings, plan.memory_mb, plan.template)
        except PlacementError as exc:
            done["notes"].append(f"{config.plan}: {exc}")
            break
        vm = _new_pool_vm(settings, config, choice.node)
        if vm is None:
            done["notes"].append(f"{config.plan}: no free VM id")
            break
        made += 1
        done["filling"].append({"id": vm.id, "plan": vm.plan, "vmid": vm.vmid, "node": vm.node,
                                "placement": choice.reason})
    return made


def _fill_budget(live: set[str]) -> int:
    """How many more fills may be queued now: pool jobs (fills and removals) in flight stay below
    the number of live workers (every worker serves every queue, users' first), so a user's create
    always finds a worker free of the pool's work; with one worker, one pool job at a time."""
    in_flight = PoolVm.select().where(PoolVm.state.in_([PoolVmState.FILLING.value,
                                                        PoolVmState.REMOVING.value])).count()
    return max(max(len(live) - 1, 1) - in_flight, 0)


def _new_pool_vm(settings: Settings, config: PoolConfig, node: str) -> PoolVm | None:
    job_id = f"pool-fill-{uuid.uuid4().hex[:12]}"
    try:
        with db.atomic():
            vmid = vmids.allocate(None, settings.vmid_min, settings.vmid_max)
            vm = PoolVm.create(plan=config.plan, template=config.template, vmid=vmid, node=node, power=config.power,
                               state=PoolVmState.FILLING.value, message="Cloning from the template", job_id=job_id)
            VmidLease.update(pool_vm_id=vm.id).where(VmidLease.vmid == vmid).execute()
    except vmids.VmidRangeExhausted:
        return None
    try:
        enqueue(settings.redis_url, FILL_JOB, vm.id, queue=POOL_QUEUE_NAME, job_id=job_id,
                timeout=settings.job_timeout, meta={"kind": "pool", "pool_vm_id": vm.id},
                description=f"fill pool VM {vm.id} ({vm.plan})")
    except redis.RedisError:
        with db.atomic():
            VmidLease.delete().where(VmidLease.vmid == vm.vmid).execute()
            vm.delete_instance()
        raise
    return vm


def _remove(settings: Settings, vm: PoolVm, why: str, done: dict) -> None:
    """Mark a pool VM REMOVING (conditional on its state) and queue the job that deletes it."""
    job_id = f"pool-remove-{uuid.uuid4().hex[:12]}"
    changed = (PoolVm.update(state=PoolVmState.REMOVING.value, job_id=job_id, updated_at=utcnow(),
                             message=f"{vm.message} — removing: {why}" if vm.state == PoolVmState.FAILED.value
                             else f"Removing: {why}")
               .where(PoolVm.id == vm.id, PoolVm.state == vm.state, PoolVm.job_id == vm.job_id).execute())
    if not changed:
        return
    enqueue(settings.redis_url, REMOVE_JOB, vm.id, queue=POOL_QUEUE_NAME, job_id=job_id,
            timeout=settings.job_timeout, meta={"kind": "pool", "pool_vm_id": vm.id},
            description=f"remove pool VM {vm.id} ({vm.plan})")
    done["removing"].append({"id": vm.id, "plan": vm.plan, "vmid": vm.vmid, "why": why})


# ---- reading -------------------------------------------------------------------------------------

def note_failure(settings: Settings, plan: str, reason: str) -> None:
    """A fill of `plan` failed: its pool waits pool_retry_after seconds before the next one."""
    try:
        if settings.pool_retry_after:
            get_redis(settings.redis_url).set(BACKOFF + plan, reason[:500], ex=settings.pool_retry_after)
    except redis.RedisError as exc:
        log.warning("could not record the failed fill of %s: %s", plan, exc)


def _last_failures(settings: Settings, plans) -> dict[str, str]:
    try:
        conn = get_redis(settings.redis_url)
        values = conn.mget([BACKOFF + p for p in plans]) if plans else []
    except redis.RedisError:
        return {}
    return {p: v.decode() for p, v in zip(plans, values) if v}


@dataclass(frozen=True)
class PoolReport:
    """One plan's pool for admins: its configuration, its VMs (those not taken), why its last fill
    failed (while it waits to retry), and its VMs counted by state."""
    config: PoolConfig
    vms: list
    last_failure: str | None

    def _count(self, state: PoolVmState) -> int:
        return sum(1 for v in self.vms if v.state == state.value)

    @property
    def ready(self) -> int:
        return self._count(PoolVmState.READY)

    @property
    def filling(self) -> int:
        return self._count(PoolVmState.FILLING)

    @property
    def failed(self) -> int:
        return self._count(PoolVmState.FAILED)

    @property
    def removing(self) -> int:
        return self._count(PoolVmState.REMOVING)


def report(settings: Settings) -> list[PoolReport]:
    """Every plan's pool with its VMs (those not taken), for admins."""
    vms: dict[str, list[PoolVm]] = {}
    for vm in PoolVm.select().where(PoolVm.state != PoolVmState.TAKEN.value).order_by(PoolVm.id):
        vms.setdefault(vm.plan, []).append(vm)
    pools = []
    all_configs = configs(settings)
    failures = _last_failures(settings, list(all_configs))
    for config in all_configs.values():
        pools.append(PoolReport(config, vms.pop(config.plan, []), failures.get(config.plan)))
    for plan, orphans in vms.items():  # a plan that left the plans file: its VMs are being removed
        pools.append(PoolReport(PoolConfig(plan, orphans[0].template, 0, orphans[0].power, "no longer a plan"),
                                orphans, None))
    return pools
