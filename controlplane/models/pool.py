"""The warm pool: VMs cloned ahead of demand for a plan, handed to a new desktop in one step.

A pool VM is made by a job (tasks/pool.py: FILLING → READY), taken by exactly one desktop create
(READY → TAKEN, one conditional UPDATE: never the same VM twice) and from then on is that
desktop's VM: it is never given back, so a pool VM never carried anyone's session. Surplus or
broken ones are removed (REMOVING, then the row goes).
"""
from __future__ import annotations

import enum

import peewee as pw

from .base import BaseModel, utcnow
from .desktops import Desktop


class PoolVmState(str, enum.Enum):
    FILLING = "FILLING"  # its job is cloning (and starting) it
    READY = "READY"  # waiting for a desktop
    TAKEN = "TAKEN"  # handed to a desktop (desktop_id): from now on that desktop's VM
    FAILED = "FAILED"  # its job failed; removed by the next refill pass
    REMOVING = "REMOVING"  # surplus or broken: a job is deleting it

    def __str__(self) -> str:
        return self.value


class PoolVm(BaseModel):
    id = pw.BigAutoField()
    plan = pw.CharField(max_length=32, index=True)
    template = pw.CharField(max_length=255)
    vmid = pw.IntegerField(unique=True)
    node = pw.CharField(max_length=64)
    power = pw.CharField(max_length=16)  # running or stopped: how it waits
    state = pw.CharField(max_length=16, default=PoolVmState.FILLING.value, index=True)
    message = pw.TextField(default="")
    ip_address = pw.CharField(max_length=64, null=True)
    job_id = pw.CharField(max_length=128, null=True)
    job_heartbeat_at = pw.DateTimeField(null=True)  # its running job's sign of life (tasks/engine.py)
    desktop = pw.ForeignKeyField(Desktop, null=True, backref="pool_vms", on_delete="SET NULL")
    created_at = pw.DateTimeField(default=utcnow)
    updated_at = pw.DateTimeField(default=utcnow)
    ready_at = pw.DateTimeField(null=True)
    taken_at = pw.DateTimeField(null=True)

    @property
    def name(self) -> str:
        """The VM's name in Proxmox until a desktop takes it (then cds-desktop-<id>)."""
        return f"cds-pool-{self.id}"


class PoolSetting(BaseModel):
    """An admin's size for a plan's pool (PUT /api/v1/admin/pools/<plan>); without one, the plans
    file's `pool:` applies."""
    plan = pw.CharField(max_length=32, primary_key=True)
    size = pw.IntegerField()
    power = pw.CharField(max_length=16)
    updated_at = pw.DateTimeField(default=utcnow)
    updated_by = pw.CharField(max_length=255, default="")


POOL_MODELS = (PoolVm, PoolSetting)
