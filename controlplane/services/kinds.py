"""The provisioning engine's two records, described once each.

Desktops and projects are both "a VM made and kept by a playbook": the same job class
(tasks/engine.py VmJob), status writer (lifecycle.py) and reaper serve both; what differs is
written here — model, statuses, playbooks, which task files announce which status, its channels
and events, and what goes with a deleted record. What a job gives its playbook and takes from its
stats is the job's (tasks/desktops.py DesktopJob, tasks/projects.py ProjectJob).
"""
from __future__ import annotations

import enum
import logging
from dataclasses import dataclass
from typing import Callable

from .. import project_states as ps
from .. import states as ds
from ..models import (
    ChatMessage,
    Desktop,
    DesktopEvent,
    Invitation,
    NetworkLease,
    PoolVm,
    Project,
    ProjectEvent,
    ProjectMember,
    VmidLease,
)
from ..states import Operation
from . import share_locks, shares
from .queue import project_channel, user_channel

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
    release: Callable  # (row, settings) -> None: free what the record held once it is deleted
    channel: Callable  # (row) -> list of its pub/sub channels (queue.user_channel, queue.project_channel)
    event: Callable  # (row) -> dict published on status changes
    accepted: dict  # operation -> (status, message) when it is accepted
    allowed_from: dict  # operation -> statuses it may start from
    cancellable: frozenset  # statuses of a job under way that a delete cancels (states.CANCELLABLE)
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

def _desktop_release(desktop, settings=None):
    VmidLease.delete().where(VmidLease.desktop == desktop.id).execute()
    PoolVm.delete().where(PoolVm.desktop == desktop.id).execute()  # the pool VM it took, if any


DESKTOP = Kind(
    name="desktop", model=Desktop, event_model=DesktopEvent, event_fk="desktop", status=ds.Status,
    transitional=ds.TRANSITIONAL, failed=ds.Status.FAILED, deleted=ds.Status.DELETED, steps=ds.PROGRESSION,
    final=ds.FINAL_STATUS, failure_verb=ds.FAILURE_VERB, playbook=ds.PLAYBOOK, task_status=ds.TASK_FILE_STATUS,
    job_function="controlplane.tasks.desktops.run_desktop_job",
    release=_desktop_release,
    channel=lambda d: [user_channel(d.user_id)], accepted=ds.ACCEPTED, allowed_from=ds.ALLOWED_FROM,
    cancellable=ds.CANCELLABLE,
    event=lambda d: {"type": "desktop_status", "desktop_id": d.id, "user_id": d.user_id, "status": d.status,
                     "statusMessage": d.status_message},
)


# ---- projects -------------------------------------------------------------------------------

def _project_release(project, settings):
    """Once the project's VM and network are gone: its leases, chat, members, invitations and shared
    folder go too. (In the transaction that marks the project deleted: the share is refused from then
    on, whether or not its folder could be removed.)"""
    if settings is None:
        raise ValueError("releasing a project needs the settings (its shared folder lives in shares_dir)")
    VmidLease.delete().where(VmidLease.project_id == project.id).execute()
    NetworkLease.delete().where(NetworkLease.project == project.id).execute()
    ChatMessage.delete().where(ChatMessage.project == project.id).execute()
    Invitation.delete().where(Invitation.project == project.id).execute()
    ProjectMember.delete().where(ProjectMember.project == project.id).execute()
    shares.remove_folder(settings, project.public_id)
    share_locks.drop(settings, project.public_id)


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
    release=_project_release,
    channel=_project_channels, event=_project_event, accepted=ps.ACCEPTED, allowed_from=ps.ALLOWED_FROM,
    cancellable=ps.CANCELLABLE, same_status_steps=True,
)

KINDS = {k.name: k for k in (DESKTOP, PROJECT)}


def get(name: str) -> Kind:
    return KINDS[name]


def of(row) -> Kind:
    for kind in KINDS.values():
        if isinstance(row, kind.model):
            return kind
    raise TypeError(f"no kind for {type(row).__name__}")
