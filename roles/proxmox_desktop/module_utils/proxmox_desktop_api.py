# -*- coding: utf-8 -*-
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# The proxmoxer connection of the role's action plugins (proxmox_desktop_vm_info, _adopt, _guest_ip),
# which run this file by its path (runpy): plugins of a role outside a collection cannot import each other.
from __future__ import annotations

import warnings

from ansible.errors import AnsibleActionFail
from ansible.module_utils.common.arg_spec import ArgumentSpecValidator
from ansible.module_utils.common.parameters import remove_values
from ansible.plugins.action import ActionBase

# The connection options every one of those plugins takes.
API_OPTIONS = {
    "api_host": {"type": "str", "required": True},
    "api_port": {"type": "int"},
    "api_user": {"type": "str", "required": True},
    "api_password": {"type": "str", "no_log": True},
    "api_token_id": {"type": "str"},
    "api_token_secret": {"type": "str", "no_log": True},
    "validate_certs": {"type": "bool", "default": False},
}


def connect(args: dict):
    """A ProxmoxAPI for the plugin's validated arguments: an API token when one is given (no login),
    else a ticket login with the password."""
    from proxmoxer import ProxmoxAPI  # imported by the warm Ansible process before it forks a run

    auth = {"user": args["api_user"]}
    if args["api_port"]:
        auth["port"] = args["api_port"]
    if args["api_password"]:
        auth["password"] = args["api_password"]
    else:
        auth["token_name"] = args["api_token_id"]
        auth["token_value"] = args["api_token_secret"]
    with warnings.catch_warnings():  # an unverified lab certificate: validate_certs says so already
        warnings.simplefilter("ignore")
        return ProxmoxAPI(args["api_host"], verify_ssl=args["validate_certs"], **auth)


def validate(spec: dict, task_args: dict, **rules):
    """(validated arguments, their no_log values) of a task for `spec`, which includes API_OPTIONS:
    a password or a token, the token's id with its secret. Raises AnsibleActionFail on bad input."""
    checked = ArgumentSpecValidator(spec, required_one_of=[("api_password", "api_token_id")],
                                    required_together=[("api_token_id", "api_token_secret")], **rules
                                    ).validate(task_args)
    if checked.error_messages:
        raise AnsibleActionFail("; ".join(checked.error_messages))
    return checked.validated_parameters, checked._no_log_values


class ProxmoxAction(ActionBase):
    """The role's Proxmox action plugins: validate the task's arguments against SPEC (RULES: more
    ArgumentSpecValidator rules), then answer act(args, result), with no value of a no_log option
    (the password, the token) in it, as AnsibleModule does."""
    TRANSFERS_FILES = False
    SPEC: dict = API_OPTIONS
    RULES: dict = {}

    def run(self, tmp=None, task_vars=None):
        result = super().run(tmp, task_vars)
        args, secrets = validate(self.SPEC, self._task.args, **self.RULES)
        result["changed"] = False
        return remove_values(self.act(args, result), secrets)

    def act(self, args: dict, result: dict) -> dict:
        raise NotImplementedError
