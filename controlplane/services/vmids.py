"""VM ids come from a configured range, leased in the database (no cluster/nextid race).

A lease is taken when a desktop or project is created and released only when its VM is confirmed deleted,
so an id is never reused while a VM might still carry it.
"""
from __future__ import annotations

import peewee as pw

from ..extensions import db
from ..models import VmidLease

ATTEMPTS = 20


class VmidRangeExhausted(RuntimeError):
    pass


def allocate(desktop_id: int | None, low: int, high: int, project_id: int | None = None) -> int:
    """Lease the lowest free VM id in [low, high] for the desktop (or the project). Call inside a
    transaction."""
    for _ in range(ATTEMPTS):
        taken = {row.vmid for row in VmidLease.select(VmidLease.vmid)
                 .where(VmidLease.vmid.between(low, high)).order_by(VmidLease.vmid)}
        candidate = next((v for v in range(low, high + 1) if v not in taken), None)
        if candidate is None:
            raise VmidRangeExhausted(f"no free VM id in {low}-{high}")
        try:
            with db.atomic():  # a savepoint: a lost race leaves the outer transaction usable
                VmidLease.create(vmid=candidate, desktop=desktop_id, project_id=project_id)
            return candidate
        except pw.IntegrityError:
            continue  # another create took it between our read and insert; look again
    raise VmidRangeExhausted(f"could not lease a VM id in {low}-{high} after {ATTEMPTS} attempts")
