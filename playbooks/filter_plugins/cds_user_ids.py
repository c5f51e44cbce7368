# -*- coding: utf-8 -*-
"""Filters of the desktop playbooks: the names a control-plane user id takes in Guacamole and
Proxmox. They are controlplane/user_ids.py's functions, loaded from this repository by path
(without importing the controlplane package), so a playbook run by the worker or by hand maps an
id exactly as /connect does.

    {{ desktop_user | cds_guacamole_user }}  ->  cds-u-user_12345, cds-u-zoe--<digest>
    {{ desktop_user | cds_user_handle }}     ->  user_12345, zoe--<digest> (the owner tag's text)

An id the API would refuse (blank, control characters, over 255 characters) fails the task.
"""
from __future__ import annotations

import importlib.util
from pathlib import Path

from ansible.errors import AnsibleFilterError

_SOURCE = Path(__file__).resolve().parents[2] / "controlplane" / "user_ids.py"
_spec = importlib.util.spec_from_file_location("_cds_user_ids", _SOURCE)
_user_ids = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(_user_ids)


def _checked(user_id):
    problem = _user_ids.problem(user_id)
    if problem is not None:
        raise AnsibleFilterError(f"not a usable user id: {problem}")
    return str(user_id)


def cds_guacamole_user(user_id):
    return _user_ids.guacamole_username(_checked(user_id))


def cds_user_handle(user_id):
    return _user_ids.handle(_checked(user_id))


class FilterModule:
    def filters(self):
        return {"cds_guacamole_user": cds_guacamole_user, "cds_user_handle": cds_user_handle}
