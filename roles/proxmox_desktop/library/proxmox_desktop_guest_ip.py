#!/usr/bin/python
# -*- coding: utf-8 -*-
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# Documentation only: the wait runs as the action plugin of the same name
# (action_plugins/proxmox_desktop_guest_ip.py), in the Ansible process, as set_fact or debug do.
from __future__ import annotations

DOCUMENTATION = r"""
---
module: proxmox_desktop_guest_ip
short_description: Wait for a VM's guest agent to report its IPv4 address, without a module process
description:
  - Polls the guest agent's network-get-interfaces up to O(retries) + 1 times, O(delay) seconds apart,
    until it reports O(expected_ip), or any usable IPv4 address when none is expected.
  - Loopback, link-local and the interfaces matching O(ignore_interfaces) do not count.
  - Sets the facts proxmox_desktop_ip and proxmox_desktop_ips.
  - Also takes proxmox_desktop_adopt's connection options (api_host, api_port, api_user, api_password,
    api_token_id, api_token_secret, validate_certs).
options:
  node: {description: The VM's node., type: str, required: true}
  vmid: {description: The VM's id., type: int, required: true}
  expected_ip: {description: The static address the VM must report; empty for any., type: str, default: ""}
  ignore_interfaces: {description: Interfaces whose addresses do not count (a regular expression)., type: str, default: "^$"}
  retries: {description: Polls after the first., type: int, default: 60}
  delay: {description: Seconds between polls., type: float, default: 2}
"""

RETURN = r"""
attempts: {description: Polls made., type: int, returned: always}
"""

if __name__ == "__main__":
    raise SystemExit("proxmox_desktop_guest_ip runs as an action plugin of the proxmox_desktop role")
