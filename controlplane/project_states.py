"""The project state machine, written down once (statuses are the projects contract's, lower case).

Projects share the desktops' operations (create, start, stop, delete) and their engine; their
statuses are fewer: the steps of a create are told in `status_message` while the status stays
`provisioning`.
"""
from __future__ import annotations

import enum

from . import states
from .states import Operation


class ProjectStatus(str, enum.Enum):
    PROVISIONING = "provisioning"
    STARTING = "starting"
    RUNNING = "running"
    STOPPING = "stopping"
    STOPPED = "stopped"
    DELETING = "deleting"
    DELETED = "deleted"
    FAILED = "failed"

    def __str__(self) -> str:
        return self.value


P = ProjectStatus

TRANSITIONAL = frozenset({P.PROVISIONING, P.STARTING, P.STOPPING, P.DELETING})

RESTING = frozenset({P.RUNNING, P.STOPPED, P.FAILED})
# A create or start under way, which a delete cancels (states.CANCELLABLE).
CANCELLABLE = frozenset({P.PROVISIONING, P.STARTING})

ALLOWED_FROM: dict[Operation, frozenset[ProjectStatus]] = {
    Operation.START: frozenset({P.STOPPED}),
    Operation.STOP: frozenset({P.RUNNING}),
    Operation.DELETE: RESTING | CANCELLABLE,
}

ACCEPTED: dict[Operation, tuple[ProjectStatus, str]] = {
    Operation.CREATE: (P.PROVISIONING, "Project creation queued"),
    Operation.START: (P.STARTING, "VM is booting up"),
    Operation.STOP: (P.STOPPING, "Shutting down VM"),
    Operation.DELETE: (P.DELETING, "Removing the project"),
}

# The steps a job announces, in order: (status, message). A step only ever moves forward.
STEPS: dict[Operation, tuple[ProjectStatus, ...]] = {
    Operation.CREATE: (P.PROVISIONING,),
    Operation.START: (P.STARTING,),
    Operation.STOP: (P.STOPPING,),
    Operation.DELETE: (P.DELETING,),
}

FINAL_STATUS: dict[Operation, tuple[ProjectStatus, str]] = {
    Operation.CREATE: (P.RUNNING, "Project is ready"),
    Operation.START: (P.RUNNING, "Project is ready"),
    Operation.STOP: (P.STOPPED, "Project VM is stopped"),
    Operation.DELETE: (P.DELETED, "Project deleted"),
}

FAILURE_VERB = states.FAILURE_VERB  # "Create failed", ... as for desktops

PLAYBOOK: dict[Operation, str] = {
    Operation.CREATE: "project_create.yml",
    Operation.START: "project_start.yml",
    Operation.STOP: "project_stop.yml",
    Operation.DELETE: "project_delete.yml",
}

# (role, task file) → (status, message) the worker shows while that file runs.
TASK_FILE_STATUS: dict[tuple[str, str], tuple[ProjectStatus, str]] = {
    ("proxmox_network", "zone.yml"): (P.PROVISIONING, "Creating the project's network"),
    ("proxmox_network", "vnet.yml"): (P.PROVISIONING, "Creating the project's network"),
    ("proxmox_network", "subnet.yml"): (P.PROVISIONING, "Creating the project's network"),
    ("proxmox_desktop", "clone.yml"): (P.PROVISIONING, "Cloning VM from template"),
    ("proxmox_desktop", "configure.yml"): (P.PROVISIONING, "Attaching the VM to the project's network"),
    ("proxmox_desktop", "start.yml"): (P.PROVISIONING, "VM is booting up"),
    ("proxmox_desktop", "wait_ip.yml"): (P.PROVISIONING, "Waiting for the VM's network"),
    ("guacamole_connection", "present.yml"): (P.PROVISIONING, "Setting up the project's screen"),
    ("guacamole_connection", "absent.yml"): (P.DELETING, "Removing the project's screen"),
    ("proxmox_desktop", "stop.yml"): (P.STOPPING, "Shutting down VM"),
    ("proxmox_desktop", "delete.yml"): (P.DELETING, "Removing VM"),
}
