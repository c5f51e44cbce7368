"""Warm pool jobs (services/pool.py): make a pool VM (fill), remove one, run a refill pass.

Fill and remove are PoolVmJob runs of the one job engine (tasks/engine.py PlaybookJob): the same
stale-job check, heartbeat, retries of infrastructure errors and failed steps, and one final
write as a desktop's jobs, on the pool VM's row (its state and message).
"""
from __future__ import annotations

import logging

from ..config import Settings
from ..extensions import db
from ..models import PoolVm, PoolVmState, VmidLease, utcnow
from ..runner.ansible import PlaybookResult
from ..services import pool
from ..states import Operation
from .engine import PlaybookJob, settings, with_verb

log = logging.getLogger(__name__)

# What each operation on a pool VM is: the state it runs in, its playbook, its failure's words.
_STATE = {Operation.CREATE: PoolVmState.FILLING, Operation.DELETE: PoolVmState.REMOVING}
_PLAYBOOK = {Operation.CREATE: "pool_vm_create.yml", Operation.DELETE: "pool_vm_delete.yml"}
_VERB = {Operation.CREATE: "Fill failed", Operation.DELETE: "Removal failed"}


class PoolVmJob(PlaybookJob):
    model = PoolVm
    name = "pool VM"

    def load(self, resource_id: int, job_id: str | None, op: Operation):
        vm = super().load(resource_id, job_id, op)
        return vm if vm is not None and vm.state == _STATE[op].value else None

    def niceness(self, cfg: Settings) -> int:
        """Fills and removals run niced (pool_niceness): on a busy node a user's create (which the pool
        is for) gets the cores first, and the pool uses what is left."""
        return cfg.pool_niceness

    def playbook(self, op: Operation) -> str:
        return _PLAYBOOK[op]

    def failure_verb(self, op: Operation) -> str:
        return _VERB[op]

    def extravars(self, cfg: Settings, row: PoolVm, op: Operation, force: bool) -> dict:
        if op is Operation.DELETE:
            return {"pool_vm_id": row.id, "pool_vm_vmid": row.vmid}
        return {"pool_vm_id": row.id, "pool_vm_vmid": row.vmid, "pool_vm_plan": row.plan, "pool_vm_power": row.power,
                "pool_vm_node": row.node, "desktop_plans_file": str(cfg.plans_file)}

    def _owned(self, row: PoolVm, op: Operation):
        return (PoolVm.id == row.id) & (PoolVm.state == _STATE[op].value) & (PoolVm.job_id == row.job_id)

    def waiting(self, cfg: Settings, row: PoolVm, op: Operation, message: str, hand_to: str | None) -> bool:
        row.message = message
        changes = {"message": message, "updated_at": utcnow(), **({"job_id": hand_to} if hand_to else {})}
        return bool(PoolVm.update(**changes).where(self._owned(row, op)).execute())

    def fail(self, cfg: Settings, row: PoolVm, op: Operation, reason: str) -> None:
        row.message = with_verb(_VERB[op], reason)
        if op is Operation.DELETE:  # still REMOVING: the refill pass tries again once its job is gone
            PoolVm.update(message=row.message, updated_at=utcnow()).where(self._owned(row, op)).execute()
            return
        PoolVm.update(state=PoolVmState.FAILED.value, message=row.message, updated_at=utcnow()).where(
            self._owned(row, op)).execute()
        pool.note_failure(cfg, row.plan, row.message)
        log.error("pool VM %s (%s): %s", row.id, row.plan, row.message)
        pool.request_refill(cfg)

    def succeed(self, cfg: Settings, job, row: PoolVm, op: Operation, result: PlaybookResult) -> dict:
        if op is Operation.DELETE:
            with db.atomic():
                VmidLease.delete().where(VmidLease.vmid == row.vmid, VmidLease.pool_vm_id == row.id).execute()
                PoolVm.delete().where(PoolVm.id == row.id, PoolVm.job_id == row.job_id).execute()
            pool.request_refill(cfg)  # a fill may have waited for this job's worker
            return {"id": row.id, "vmid": row.vmid, "removed": True}
        now, stats = utcnow(), result.stats
        changed = PoolVm.update(state=PoolVmState.READY.value, ip_address=str(stats.get("vm_ip") or "") or None,
                                node=str(stats.get("vm_node") or row.node), ready_at=now, updated_at=now,
                                message="Ready").where(self._owned(row, op)).execute()
        if not changed:
            log.warning("pool VM %s was given up while it was being made; the refill removes it", row.id)
        pool.request_refill(cfg)  # a pass waiting on this one's slot may go on
        return {"id": row.id, "vmid": row.vmid, "state": "READY" if changed else "given up", "stats": stats}


def fill(pool_vm_id: int) -> dict:
    """The RQ job that makes a pool VM (services/pool.py FILL_JOB)."""
    return PoolVmJob().run(pool_vm_id, Operation.CREATE.value)


def remove(pool_vm_id: int) -> dict:
    """The RQ job that removes a pool VM (services/pool.py REMOVE_JOB)."""
    return PoolVmJob().run(pool_vm_id, Operation.DELETE.value)


def refill_job() -> dict:
    return pool.refill(settings())
