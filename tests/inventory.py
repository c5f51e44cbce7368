"""An inventory of the tests' own: the lab's, with some playbook knobs changed, as an operator changes
them (the playbooks' knobs live in the inventory, not in the control plane's settings)."""
from __future__ import annotations

import shutil
from pathlib import Path

import yaml

from controlplane.config import REPO_ROOT


def lab_inventory(folder: Path, **knobs) -> Path:
    """A copy of inventory/lab in `folder` whose localhost has the variables `knobs` (host_vars win over
    the lab's group_vars); returns the inventory's path, for Settings.inventory."""
    inventory = folder / "inventory"
    shutil.copytree(REPO_ROOT / "inventory" / "lab", inventory)
    (inventory / "host_vars").mkdir()
    (inventory / "host_vars" / "localhost.yml").write_text(yaml.safe_dump(knobs))
    return inventory


# What the tests' labs change: they wait less than a real cloud would (fakepve answers at once and
# the lab's guest agents report an address within a second or so).
QUICK = {"proxmox_desktop_timeout": 30, "proxmox_desktop_ip_wait_retries": 8, "proxmox_desktop_ip_wait_delay": 1}
