"""Desktop jobs (DesktopJob): what a desktop's playbook is given and what its stats put on the
record; everything else is the engine's (tasks/engine.py VmJob)."""
from __future__ import annotations

from ..config import Settings
from ..models import Desktop, utcnow
from ..services import kinds, placement
from ..services.kinds import JobFailed
from ..services.plans import load_plans
from ..services.pool import taken_by
from ..states import Operation
from .engine import VmJob


class DesktopJob(VmJob):
    kind = kinds.DESKTOP

    def extravars(self, cfg: Settings, row: Desktop, op: Operation, force: bool) -> dict:
        plans = load_plans(cfg.plans_file)
        if row.plan not in plans and op in (Operation.CREATE, Operation.START):
            raise JobFailed(f"plan {row.plan} is no longer defined in {cfg.plans_file}")
        values = {"desktop_id": row.id, "desktop_vmid": row.vmid, "desktop_user": row.user_id,
                  "desktop_plan": row.plan, "desktop_plans_file": str(cfg.plans_file)}
        warm = taken_by(row.id)
        if warm is not None:  # its VM came from the warm pool and may still carry the pool's name
            values["desktop_pool_vm_name"] = warm.name
        elif op is Operation.CREATE and row.plan in plans:
            values["desktop_node"] = placement.place_desktop(cfg, row, plans[row.plan])
        if op is Operation.STOP:
            values["desktop_force"] = bool(force)
        return values

    def result_fields(self, cfg: Settings, op: Operation, stats: dict) -> dict:
        fields: dict = {}
        if op in (Operation.CREATE, Operation.START):
            ip, connection = stats.get("desktop_ip"), stats.get("guacamole_connection_id")
            if not ip or not connection:
                raise JobFailed(f"the playbook reported no {'IP address' if not ip else 'Guacamole connection'}")
            fields.update(ip_address=str(ip), guacamole_connection_id=str(connection),
                          protocol=str(stats.get("guacamole_protocol") or cfg.guacamole_protocol))
            if stats.get("vm_node"):  # where the VM really is (a resumed create may have placed it earlier)
                fields["node"] = str(stats["vm_node"])
        if op is Operation.DELETE:
            fields.update(deleted_at=utcnow(), guacamole_connection_id=None)
        return fields


def run_desktop_job(desktop_id: int, operation: str, force: bool = False) -> dict:
    """The RQ job function of every desktop operation (kinds.DESKTOP.job_function)."""
    return DesktopJob().run(desktop_id, operation, force)
