"""The provisioning engine's two resources, described once each.

Desktops and projects are both "a VM made and kept by a playbook": the same job function
(tasks/engine.py), status writer (lifecycle.py) and reaper serve both; what differs is written
here — model, statuses, playbooks, which task files announce which status, and what a finished
playbook's stats put on the record.
"""
from __future__ import annotations

import enum
import json
import logging
from dataclasses import dataclass
from typing import Callable

from ..models import Desktop, DesktopEvent, NetworkLease, Project, ProjectEvent, VmidLease
from . import project_states as ps
from . import states as ds
from .queue import project_channel, user_channel
from .states import Operation

log = logging.getLogger(__name__)


class JobFailed(RuntimeError):
    """The operation failed; the record is already FAILED with the reason."""


@dataclass(frozen=True)
class Kind:
    name: str
    model: type
    event_model: type
    event_fk: str
    status: type[enum.Enum]
    transitional: frozenset
    failed: enum.Enum
    deleted: enum.Enum
    steps: dict
    final: dict
    failure_verb: dict
    playbook: dict
    task_status: dict
    job_function: str
    extravars: Callable  # (settings, row, operation, force) -> dict; raises JobFailed
    result_fields: Callable  # (settings, operation, stats) -> dict; raises JobFailed
    release: Callable  # (row, settings) -> None: free what the record held once it is deleted
    channel: Callable  # (row) -> list of its pub/sub channels (queue.user_channel, queue.project_channel)
    event: Callable  # (row) -> dict published on status changes
    accepted: dict  # operation -> (status, message) when it is accepted
    allowed_from: dict  # operation -> statuses it may start from
    same_status_steps: bool = False  # a step may keep the status and change only the message

    def advances(self, operation: Operation, current, new, current_message: str = "", new_message: str = "") -> bool:
        order = self.steps[operation]
        if new not in order:
            return False
        current = self.status(current)
        if current not in order:
            return True
        if self.same_status_steps and order.index(new) == order.index(current):
            return new_message != current_message
        return order.index(new) > order.index(current)


# ---- desktops -------------------------------------------------------------------------------

def _desktop_extravars(settings, desktop, operation, force):
    from .plans import load_plans
    plans = load_plans(settings.plans_file)
    if desktop.plan not in plans and operation in (Operation.CREATE, Operation.START):
        raise JobFailed(f"plan {desktop.plan} is no longer defined in {settings.plans_file}")
    values = {"desktop_id": desktop.id, "desktop_vmid": desktop.vmid, "desktop_user": desktop.user_id,
              "desktop_plan": desktop.plan, "desktop_plans_file": str(settings.plans_file)}
    from . import pool
    warm = pool.taken_by(desktop.id)
    if warm is not None:  # its VM came from the warm pool and may still carry the pool's name
        values["desktop_pool_vm_name"] = warm.name
    elif operation is Operation.CREATE and desktop.plan in plans:
        values["desktop_node"] = _place(settings, desktop, plans[desktop.plan])
    if operation is Operation.STOP:
        values["desktop_force"] = bool(force)
    return values


def _place(settings, desktop, plan) -> str:
    """The node a new desktop's VM is cloned to (services/placement.py), written on the record.
    When no node qualifies, the configured node: the clone then meets Proxmox's own error, which
    the job retries as an infrastructure error."""
    from ..models import Desktop
    from .placement import PlacementError, choose_node
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


def _desktop_result(settings, operation, stats):
    fields: dict = {}
    if operation in (Operation.CREATE, Operation.START):
        ip, connection = stats.get("desktop_ip"), stats.get("guacamole_connection_id")
        if not ip or not connection:
            raise JobFailed(f"the playbook reported no {'IP address' if not ip else 'Guacamole connection'}")
        fields.update(ip_address=str(ip), guacamole_connection_id=str(connection),
                      protocol=str(stats.get("guacamole_protocol") or settings.guacamole_protocol))
        if stats.get("vm_node"):  # where the VM really is (a resumed create may have placed it earlier)
            fields["node"] = str(stats["vm_node"])
    if operation is Operation.DELETE:
        from ..models import utcnow
        fields.update(deleted_at=utcnow(), guacamole_connection_id=None)
    return fields


def _desktop_release(desktop, settings=None):
    from . import pool
    VmidLease.delete().where(VmidLease.desktop == desktop.id).execute()
    pool.forget_taken(desktop.id)


DESKTOP = Kind(
    name="desktop", model=Desktop, event_model=DesktopEvent, event_fk="desktop", status=ds.Status,
    transitional=ds.TRANSITIONAL, failed=ds.Status.FAILED, deleted=ds.Status.DELETED, steps=ds.PROGRESSION,
    final=ds.FINAL_STATUS, failure_verb=ds.FAILURE_VERB, playbook=ds.PLAYBOOK, task_status=ds.TASK_FILE_STATUS,
    job_function="controlplane.tasks.desktops.run_desktop_job",
    extravars=_desktop_extravars, result_fields=_desktop_result, release=_desktop_release,
    channel=lambda d: [user_channel(d.user_id)], accepted=ds.ACCEPTED, allowed_from=ds.ALLOWED_FROM,
    event=lambda d: {"type": "desktop_status", "desktop_id": d.id, "user_id": d.user_id, "status": d.status,
                     "statusMessage": d.status_message},
)


# ---- projects -------------------------------------------------------------------------------

def _project_extravars(settings, project, operation, force):
    from .projects import projects_config
    config = projects_config(settings)
    if project.os not in config.os_templates and operation in (Operation.CREATE, Operation.START):
        raise JobFailed(f"os {project.os} is no longer defined in {settings.projects_file}")
    values = {"project_id": project.id, "project_vmid": project.vmid, "project_os": project.os,
              "project_network_cidr": project.network_cidr, "project_os_templates_file": str(settings.projects_file)}
    if operation is Operation.STOP:
        values["project_force"] = bool(force)
    return values


def _project_result(settings, operation, stats):
    from ..models import utcnow
    fields: dict = {}
    if operation in (Operation.CREATE, Operation.START):
        ip = stats.get("vm_ip")
        if not ip:
            raise JobFailed("the playbook reported no IP address")
        fields.update(vm_ip=str(ip), network=str(stats.get("network") or "") or None)
    if operation is Operation.CREATE:
        fields["provisioning_finished_at"] = utcnow()
    if operation is Operation.DELETE:
        fields["deleted_at"] = utcnow()
    return fields


def _project_release(project, settings):
    from .projects import forget_contents
    if settings is None:
        raise ValueError("releasing a project needs the settings (its shared folder lives in shares_dir)")
    VmidLease.delete().where(VmidLease.project_id == project.id).execute()
    NetworkLease.delete().where(NetworkLease.project == project.id).execute()
    forget_contents(settings, project)


def _project_channels(project):
    return [project_channel(project.public_id)]


def _project_event(project):
    return {"type": "project_status", "project_id": project.public_id, "status": project.status,
            "vm_ip": project.vm_ip, "status_message": project.status_message}


PROJECT = Kind(
    name="project", model=Project, event_model=ProjectEvent, event_fk="project", status=ps.ProjectStatus,
    transitional=ps.TRANSITIONAL, failed=ps.ProjectStatus.FAILED, deleted=ps.ProjectStatus.DELETED,
    steps=ps.STEPS, final=ps.FINAL_STATUS, failure_verb=ps.FAILURE_VERB, playbook=ps.PLAYBOOK,
    task_status=ps.TASK_FILE_STATUS, job_function="controlplane.tasks.projects.run_project_job",
    extravars=_project_extravars, result_fields=_project_result, release=_project_release,
    channel=_project_channels, event=_project_event, accepted=ps.ACCEPTED, allowed_from=ps.ALLOWED_FROM,
    same_status_steps=True,
)

KINDS = {k.name: k for k in (DESKTOP, PROJECT)}


def get(name: str) -> Kind:
    return KINDS[name]


def of(row) -> Kind:
    for kind in KINDS.values():
        if isinstance(row, kind.model):
            return kind
    raise TypeError(f"no kind for {type(row).__name__}")


def dumps(payload: dict) -> str:
    return json.dumps(payload, default=str)
