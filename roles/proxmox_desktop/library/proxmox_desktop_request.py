#!/usr/bin/python
# -*- coding: utf-8 -*-
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# Documentation only: the request runs as the action plugin of the same name
# (action_plugins/proxmox_desktop_request.py), in the Ansible process, as set_fact or debug do.
from __future__ import annotations

DOCUMENTATION = r"""
---
module: proxmox_desktop_request
short_description: One Proxmox VE API request, answered as ansible.builtin.uri answers, without a module process
description:
  - Sends one request with the urllib opener ansible.builtin.uri uses and returns uri's status,
    json and msg; fails when the status is not in status_code, with uri's message.
  - Runs in the Ansible process (an action plugin): no interpreter is started for it.
options:
  url: {description: The full URL., type: str, required: true}
  method: {description: GET, POST, PUT or DELETE., type: str, default: GET}
  headers: {description: Request headers (the ticket's cookie and CSRF token, or the API token)., type: dict, default: {}}
  body: {description: Sent form-urlencoded., type: dict}
  validate_certs: {description: Check the API's TLS certificate., type: bool, default: true}
  timeout: {description: Seconds for the request., type: int, default: 30}
  status_code: {description: The statuses that are a success., type: list, elements: int, default: [200]}
"""

RETURN = r"""
status: {description: The HTTP status (-1 when there was no answer)., type: int, returned: always}
json: {description: The answer's body when it is JSON., type: dict, returned: when the answer is JSON}
msg: {description: What happened, in uri's words., type: str, returned: always}
"""

if __name__ == "__main__":
    raise SystemExit("proxmox_desktop_request runs as an action plugin of the proxmox_desktop role")
