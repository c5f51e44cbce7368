#!/usr/bin/python
# -*- coding: utf-8 -*-
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# Documentation only: the adoption runs as the action plugin of the same name
# (action_plugins/proxmox_desktop_adopt.py), in the Ansible process, as set_fact or debug do.
from __future__ import annotations

DOCUMENTATION = r"""
---
module: proxmox_desktop_adopt
short_description: Take over a warm pool VM for a desktop in one step, without a module process
description:
  - Reads the VM by id from cluster/resources and its pending configuration; fails when it is a
    template or is named neither O(name) nor O(adopt_name) (unless O(verify_name) is false).
  - Sizes, renames and tags it with one configuration update (cores, memory, name, tags, agent=1), the
    one proxmox_kvm's update would send, and only when something differs.
  - Sets the facts status.yml sets (proxmox_desktop_exists, proxmox_desktop_status,
    proxmox_desktop_vm_node, proxmox_desktop_vm_name, proxmox_desktop_config). A VM that does not
    exist is reported with adopted=false and proxmox_desktop_exists=false.
options:
  # The connection, as proxmox_desktop_vm_info takes it (module_utils/proxmox_desktop_api.py).
  api_host: {type: str, required: true, description: Proxmox VE API host.}
  api_port: {type: int, description: API port.}
  api_user: {type: str, required: true, description: user@realm.}
  api_password: {type: str, no_log: true, description: Password when no token is given.}
  api_token_id: {type: str, description: Token name.}
  api_token_secret: {type: str, no_log: true, description: Token secret.}
  validate_certs: {type: bool, default: false, description: Verify TLS.}
  vmid: {description: The VM's id., type: int, required: true}
  name: {description: The desktop's VM name (the VM is renamed to it)., type: str, required: true}
  adopt_name: {description: The pool VM's name., type: str, required: true}
  verify_name: {description: Refuse a VM named otherwise., type: bool, default: true}
  cores: {description: CPU cores., type: int, required: true}
  memory_mb: {description: Memory in MiB., type: int, required: true}
  tags: {description: Tags the VM must carry., type: list, elements: str, default: []}
  owner: {description: "The owner's name: adds the tag cds-user-<owner>.", type: str, default: ""}
  drop_tags: {description: Tags to remove (the pool's)., type: list, elements: str, default: []}
"""

RETURN = r"""
adopted: {description: Whether the VM existed and is now the desktop's., type: bool, returned: success}
updated: {description: The configuration keys changed., type: list, returned: when adopted}
"""

if __name__ == "__main__":
    raise SystemExit("proxmox_desktop_adopt runs as an action plugin of the proxmox_desktop role")
