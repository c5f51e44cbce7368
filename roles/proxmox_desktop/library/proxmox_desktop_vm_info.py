#!/usr/bin/python
# -*- coding: utf-8 -*-
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# Documentation only: the lookup runs as the action plugin of the same name
# (action_plugins/proxmox_desktop_vm_info.py), in the Ansible process, as set_fact or debug do.
from __future__ import annotations

DOCUMENTATION = r"""
---
module: proxmox_desktop_vm_info
short_description: Look a QEMU VM up by id or name, as community.proxmox.proxmox_vm_info does, without a module process
description:
  - Makes proxmox_vm_info's calls (log in, /version, cluster/resources, the node's qemu list and,
    when asked, the VM's configuration) with proxmoxer and returns its answer, proxmox_vms.
  - Runs in the Ansible process (an action plugin): no interpreter is started for it.
options:
  api_host: {description: The Proxmox VE API host., type: str, required: true}
  api_port: {description: Its port., type: int}
  api_user: {description: The user (user@realm)., type: str, required: true}
  api_password: {description: Its password (or a token)., type: str, no_log: true}
  api_token_id: {description: The API token's name., type: str}
  api_token_secret: {description: The API token's secret., type: str, no_log: true}
  validate_certs: {description: Check the API's TLS certificate., type: bool, default: false}
  vmid: {description: The VM's id., type: int}
  name: {description: The VM's name (from cluster/resources)., type: str}
  config: {description: "none, current or pending (the configuration the next boot uses).", type: str, default: none}
"""

RETURN = r"""
proxmox_vms: {description: The VMs found, as proxmox_vm_info returns them., type: list, returned: success}
"""

if __name__ == "__main__":
    raise SystemExit("proxmox_desktop_vm_info runs as an action plugin of the proxmox_desktop role")
