"""The desktop state machine, written down once.

Statuses are the contract's (desktop-api.md, "Status Definitions"). Operations a user may ask
for are allowed only from the statuses listed in ALLOWED_FROM; the worker moves a desktop along
PROGRESSION for the operation it runs and ends it in FINAL_STATUS (or FAILED).
"""
from __future__ import annotations

import enum


class Status(str, enum.Enum):
    PENDING = "PENDING"
    PROVISIONING = "PROVISIONING"
    STARTING = "STARTING"
    WAITING_FOR_IP = "WAITING_FOR_IP"
    CONFIGURING = "CONFIGURING"
    RUNNING = "RUNNING"
    STOPPING = "STOPPING"
    STOPPED = "STOPPED"
    DELETING = "DELETING"
    DELETED = "DELETED"
    FAILED = "FAILED"

    def __str__(self) -> str:  # so f"{status}" prints RUNNING, not Status.RUNNING
        return self.value


class Operation(str, enum.Enum):
    CREATE = "create"
    START = "start"
    STOP = "stop"
    DELETE = "delete"

    def __str__(self) -> str:
        return self.value


TRANSITIONAL = frozenset({Status.PENDING, Status.PROVISIONING, Status.STARTING, Status.WAITING_FOR_IP,
                          Status.CONFIGURING, Status.STOPPING, Status.DELETING})
# A user has at most one desktop that is not DELETED (the database enforces it too).
INACTIVE = frozenset({Status.DELETED})
# Where no job is under way: the statuses the contract's user actions start from.
RESTING = frozenset({Status.RUNNING, Status.STOPPED, Status.FAILED})
# A create (or a start) under way: a delete asked for now cancels it (the job stops where it is,
# then the delete removes whatever it had made), as every peer lets you cancel a launch.
CANCELLABLE = frozenset({Status.PENDING, Status.PROVISIONING, Status.STARTING, Status.WAITING_FOR_IP,
                         Status.CONFIGURING})

ALLOWED_FROM: dict[Operation, frozenset[Status]] = {
    Operation.START: frozenset({Status.STOPPED}),
    Operation.STOP: frozenset({Status.RUNNING}),
    Operation.DELETE: RESTING | CANCELLABLE,
}

# Status (and message) the API sets when it accepts an operation, before the job runs.
ACCEPTED: dict[Operation, tuple[Status, str]] = {
    Operation.CREATE: (Status.PENDING, "Desktop creation queued"),
    Operation.START: (Status.STARTING, "VM is booting up"),
    Operation.STOP: (Status.STOPPING, "Shutting down VM"),
    Operation.DELETE: (Status.DELETING, "Removing desktop"),
}

# Statuses a running job may move through, in order; events only ever move forward.
PROGRESSION: dict[Operation, tuple[Status, ...]] = {
    Operation.CREATE: (Status.PENDING, Status.PROVISIONING, Status.STARTING, Status.WAITING_FOR_IP,
                       Status.CONFIGURING),
    Operation.START: (Status.STARTING, Status.WAITING_FOR_IP, Status.CONFIGURING),
    Operation.STOP: (Status.STOPPING,),
    Operation.DELETE: (Status.DELETING,),
}

FINAL_STATUS: dict[Operation, tuple[Status, str]] = {
    Operation.CREATE: (Status.RUNNING, "Desktop is ready"),
    Operation.START: (Status.RUNNING, "Desktop is ready"),
    Operation.STOP: (Status.STOPPED, "Desktop is stopped"),
    Operation.DELETE: (Status.DELETED, "Desktop deleted"),
}

FAILURE_VERB: dict[Operation, str] = {
    Operation.CREATE: "Create failed",
    Operation.START: "Start failed",
    Operation.STOP: "Stop failed",
    Operation.DELETE: "Delete failed",
}

PLAYBOOK: dict[Operation, str] = {
    Operation.CREATE: "desktop_create.yml",
    Operation.START: "desktop_start.yml",
    Operation.STOP: "desktop_stop.yml",
    Operation.DELETE: "desktop_delete.yml",
}

# Which Ansible task file announces which status (role, file) -> (status, message).
# The worker maps ansible-runner task events through this table.
TASK_FILE_STATUS: dict[tuple[str, str], tuple[Status, str]] = {
    ("proxmox_desktop", "clone.yml"): (Status.PROVISIONING, "Cloning VM from template"),
    ("proxmox_desktop", "configure.yml"): (Status.PROVISIONING, "Applying the plan's CPU and memory"),
    ("proxmox_desktop", "adopt.yml"): (Status.PROVISIONING, "Preparing a VM from the warm pool"),
    ("proxmox_desktop", "start.yml"): (Status.STARTING, "VM is booting up"),
    ("proxmox_desktop", "wait_ip.yml"): (Status.WAITING_FOR_IP, "Waiting for the guest agent to report an IP address"),
    ("guacamole_connection", "present.yml"): (Status.CONFIGURING, "Setting up Guacamole connection"),
    ("proxmox_desktop", "stop.yml"): (Status.STOPPING, "Shutting down VM"),
    ("guacamole_connection", "absent.yml"): (Status.DELETING, "Removing Guacamole connection"),
    ("proxmox_desktop", "delete.yml"): (Status.DELETING, "Removing VM"),
}


def can(operation: Operation, status: Status | str) -> bool:
    return Status(status) in ALLOWED_FROM[operation]
