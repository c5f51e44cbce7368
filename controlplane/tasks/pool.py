"""Warm pool jobs (services/pool.py): make a pool VM, remove one, run a refill pass.

Like every job they take ids, load the row, run a playbook through ansible-runner, write the
result conditionally on the row still being this job's, and raise on failure.
"""
from __future__ import annotations

import logging

from rq import get_current_job

from ..extensions import db
from ..models import PoolVm, PoolVmState, VmidLease, utcnow
from ..runner.ansible import run_playbook
from ..services import pool
from .engine import failed_step, settings

log = logging.getLogger(__name__)


class PoolJobFailed(RuntimeError):
    """The pool VM could not be made or removed; its row says why."""


def _owned(pool_vm_id: int, state: PoolVmState) -> PoolVm | None:
    """The pool VM, if it is still in `state` and this job is still its job (else the job is stale)."""
    job = get_current_job()
    vm = PoolVm.get_or_none(PoolVm.id == pool_vm_id)
    if vm is None or vm.state != state.value or (job is not None and vm.job_id != job.id):
        return None
    return vm


def fill(pool_vm_id: int) -> dict:
    cfg = settings()
    with db.connection_context():
        vm = _owned(pool_vm_id, PoolVmState.FILLING)
        if vm is None:
            return {"id": pool_vm_id, "skipped": "stale job"}
        extravars = {"pool_vm_id": vm.id, "pool_vm_vmid": vm.vmid, "pool_vm_plan": vm.plan, "pool_vm_power": vm.power,
                     "pool_vm_node": vm.node, "desktop_plans_file": str(cfg.plans_file)}
        result = run_playbook(cfg.ansible_dir, "pool_vm_create.yml", cfg.inventory_path, extravars,
                              cfg.playbook_env("pool_vm_create.yml"),
                              timeout=cfg.job_timeout, secrets=cfg.secrets())
        owned = (PoolVm.id == vm.id) & (PoolVm.state == PoolVmState.FILLING.value) & (PoolVm.job_id == vm.job_id)
        if result.ok:
            now = utcnow()
            stats = result.stats
            changed = PoolVm.update(state=PoolVmState.READY.value, ip_address=str(stats.get("vm_ip") or "") or None,
                                    node=str(stats.get("vm_node") or vm.node), ready_at=now, updated_at=now,
                                    message="Ready").where(owned).execute()
            if not changed:
                log.warning("pool VM %s was given up while it was being made; the refill removes it", vm.id)
            pool.request_refill(cfg)  # a pass waiting on this one's slot may go on
            return {"id": vm.id, "vmid": vm.vmid, "state": "READY" if changed else "given up", "stats": stats}
        step = failed_step(result)
        reason = f"Fill failed at {step}" if step else f"Fill failed: {result.reason()}"
        PoolVm.update(state=PoolVmState.FAILED.value, message=reason, updated_at=utcnow()).where(owned).execute()
        pool.note_failure(cfg, vm.plan, reason)
        log.error("pool VM %s (%s): %s", vm.id, vm.plan, reason)
        pool.request_refill(cfg)
        raise PoolJobFailed(f"pool VM {vm.id}: {reason}")


def remove(pool_vm_id: int) -> dict:
    cfg = settings()
    with db.connection_context():
        vm = _owned(pool_vm_id, PoolVmState.REMOVING)
        if vm is None:
            return {"id": pool_vm_id, "skipped": "stale job"}
        result = run_playbook(cfg.ansible_dir, "pool_vm_delete.yml", cfg.inventory_path,
                              {"pool_vm_id": vm.id, "pool_vm_vmid": vm.vmid}, cfg.playbook_env("pool_vm_delete.yml"),
                              timeout=cfg.job_timeout, secrets=cfg.secrets())
        if not result.ok:
            PoolVm.update(message=f"Removal failed: {result.reason()}", updated_at=utcnow()).where(
                PoolVm.id == vm.id, PoolVm.job_id == vm.job_id).execute()
            raise PoolJobFailed(f"pool VM {vm.id}: removal failed: {result.reason()}")
        with db.atomic():
            VmidLease.delete().where(VmidLease.vmid == vm.vmid, VmidLease.pool_vm_id == vm.id).execute()
            PoolVm.delete().where(PoolVm.id == vm.id, PoolVm.job_id == vm.job_id).execute()
        return {"id": vm.id, "vmid": vm.vmid, "removed": True}


def refill_job() -> dict:
    return pool.refill(settings())
