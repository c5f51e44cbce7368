"""Project jobs (ProjectJob): what a project's playbook is given and what its stats put on the
record; everything else is the engine's (tasks/engine.py VmJob)."""
from __future__ import annotations

from ..config import Settings
from ..models import Project, utcnow
from ..services import kinds
from ..services.kinds import JobFailed
from ..services.plans import projects_config
from ..states import Operation
from .engine import VmJob


class ProjectJob(VmJob):
    kind = kinds.PROJECT

    def extravars(self, cfg: Settings, row: Project, op: Operation, force: bool) -> dict:
        config = projects_config(cfg)
        if row.os not in config.os_templates and op in (Operation.CREATE, Operation.START):
            raise JobFailed(f"os {row.os} is no longer defined in {cfg.projects_file}")
        values = {"project_id": row.id, "project_vmid": row.vmid, "project_os": row.os,
                  "project_network_cidr": row.network_cidr, "project_os_templates_file": str(cfg.projects_file)}
        if op is Operation.STOP:
            values["project_force"] = bool(force)
        return values

    def result_fields(self, cfg: Settings, op: Operation, stats: dict) -> dict:
        fields: dict = {}
        if op in (Operation.CREATE, Operation.START):
            ip = stats.get("vm_ip")
            if not ip:
                raise JobFailed("the playbook reported no IP address")
            fields.update(vm_ip=str(ip), network=str(stats.get("network") or "") or None)
            if stats.get("guacamole_connection_id"):  # its screen (POST /api/projects/{id}/connect)
                fields["guacamole_connection_id"] = str(stats["guacamole_connection_id"])
        if op is Operation.CREATE:
            fields["provisioning_finished_at"] = utcnow()
        if op is Operation.DELETE:
            fields.update(deleted_at=utcnow(), guacamole_connection_id=None)
        return fields


def run_project_job(project_id: int, operation: str, force: bool = False) -> dict:
    """The RQ job function of every project operation (kinds.PROJECT.job_function)."""
    return ProjectJob().run(project_id, operation, force)
